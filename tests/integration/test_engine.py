"""`gantry engine` end to end on simulated engines: start, warm up, /health, restart a
killed engine, stop everything on SIGTERM; and the real-engine path through a stand-in
`vllm` that runs out of memory once."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from gantry.netutil import free_port
from tests.helpers import gantry_cmd, wait_until

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gpus"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@contextmanager
def engine(tmp: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str, int, Path]]:
    port, status = free_port(), free_port()
    while status in (port, port + 1):
        status = free_port()
    log = tmp / "engine.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            gantry_cmd("engine", "--port", str(port), "--status-port", str(status), *args),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield proc, f"http://127.0.0.1:{status}", port, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def health(url: str) -> dict | None:
    try:
        return httpx.get(url + "/health", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None


def all_ready(url: str) -> dict | None:
    h = health(url)
    return h if h and h["state"] == "ready" else None


@pytest.mark.timeout(400)  # the waits below bound a busy machine, not a pace
def test_two_simulated_engines_warm_up_restart_and_stop(tmp_path):
    with engine(
        tmp_path,
        "--simulate",
        "--model",
        "llama-3.1-8b",
        "--gpus",
        "0,1",
        "--tp",
        "1",
        "--speedup",
        "20",
    ) as (proc, url, port, log):
        h = wait_until(lambda: all_ready(url), 180, "both engines ready")
        engines = h["engines"]
        assert [e["name"] for e in engines] == ["engine-0", "engine-1"]
        assert [e["url"] for e in engines] == [
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{port + 1}",
        ]
        assert [e["gpus"] for e in engines] == [[0], [1]]
        assert h["simulated"] is True
        for e in engines:
            assert set(e["warmup_ttft_s"]) == {"16", "256", "2048"}
            assert "--served-model-name" in e["argv"] and "--gpu" in e["argv"]
        # the engines serve the model under the name asked for
        r = httpx.post(
            engines[1]["url"] + "/v1/completions",
            json={"model": "llama-3.1-8b", "prompt": "hi", "max_tokens": 3},
            timeout=10,
        )
        assert r.status_code == 200 and r.json()["model"] == "llama-3.1-8b"
        metrics = httpx.get(url + "/metrics").text
        assert 'gantry_engine_state{engine="engine-0",state="ready"} 1.0' in metrics

        # a killed engine is restarted, warmed up again, and ready
        first = engines[0]["pid"]
        os.kill(first, signal.SIGKILL)

        def restarted() -> dict | None:
            h = all_ready(url)
            e0 = h["engines"][0] if h else None
            return e0 if e0 and e0["restarts"] == 1 and e0["pid"] != first else None

        e0 = wait_until(restarted, 180, "engine-0 restarted and ready")
        assert e0["pid"] and _alive(e0["pid"])
        assert "exited with -9" in log.read_text()
        assert (
            'gantry_engine_restarts_total{engine="engine-0"} 1.0'
            in httpx.get(url + "/metrics").text
        )

        # SIGTERM stops every engine, then the supervisor
        pids = [e["pid"] for e in health(url)["engines"]]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        wait_until(lambda: not any(_alive(p) for p in pids), 10, "every engine gone")
        assert "supervisor stopped 2 engine(s)" in log.read_text()


FAKE_VLLM = """#!{python}
# Stands in for `vllm`: out of memory above 0.85 utilization, else a simulated engine.
import os, sys
argv = sys.argv[1:]
util = float(argv[argv.index("--gpu-memory-utilization") + 1])
if util > 0.85:
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
    sys.exit(1)
print("CUDA_VISIBLE_DEVICES=" + os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
os.execv(sys.executable, [sys.executable, "-m", "gantry.sim", *argv, "--gpu", "L4",
         "--speedup", "20"])
"""


def test_real_engine_path_restarts_with_less_memory_after_an_oom(tmp_path):
    fake = tmp_path / "vllm"
    fake.write_text(FAKE_VLLM.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with engine(
        tmp_path,
        "--model",
        "llama-3.1-8b",
        "--gpu-info",
        str(FIXTURES / "l4x2.json"),
        "--gpus",
        "1",
        "--vllm-bin",
        str(fake),
    ) as (_proc, url, _port, log):
        h = wait_until(lambda: all_ready(url), 60, "the engine ready after an OOM restart")
        (e,) = h["engines"]
        assert h["simulated"] is False
        assert e["restarts"] == 1 and e["oom_restarts"] == 1
        argv = e["argv"]
        assert argv[0] == str(fake) and argv[1:3] == ["serve", "meta-llama/Llama-3.1-8B-Instruct"]
        assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.85"
        assert argv[argv.index("--max-num-seqs") + 1] == "16"
        text = log.read_text()
        assert "[engine-0] torch.OutOfMemoryError" in text
        assert "--gpu-memory-utilization 0.90 → 0.85, --max-num-seqs 32 → 16" in text
        assert "[engine-0] CUDA_VISIBLE_DEVICES=1" in text
        metrics = httpx.get(url + "/metrics").text
        assert 'gantry_gpu_memory_total_bytes{gpu="1"}' in metrics
        assert 'gantry_gpu_throttle_reason{gpu="0",reason="gpu_idle"} 1.0' in metrics
        assert 'gantry_engine_oom_restarts_total{engine="engine-0"} 1.0' in metrics


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", "llama-3.1-70b", "--gpu-type", "L4"], "does not fit on one L4"),
        (["--model", "llama-3.1-8b", "--gpu-type", "X100"], "unknown GPU 'X100'"),
        (["--model", "llama-3.1-8b", "--gpus", "0,1,2", "--tp", "2"], "groups of tp=2"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(args, message):
    r = subprocess.run(gantry_cmd("engine", "--simulate", *args), capture_output=True, timeout=60)
    assert r.returncode == 2
    err = r.stderr.decode().strip().splitlines()
    assert err[-1].startswith("gantry: error:") and message in err[-1]
    assert len([line for line in err if "error" in line]) == 1
