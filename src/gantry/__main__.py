from gantry.cli import main

main()
