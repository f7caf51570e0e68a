"""``python -m gantry.sim serve MODEL [flags]``: a simulated engine with ``vllm serve``'s argv."""

import sys

from gantry.sim.vllm_cli import main

sys.exit(main(sys.argv[1:]))
