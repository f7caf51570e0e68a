"""A running gateway follows its engines as Kubernetes or DNS discovery sees them come
and go: real simulated engines, a list/watch API server in the test (tests/k8s_api.py)
or a DNS server in the test, and ``gantry status`` to watch it."""

from __future__ import annotations

import json
import subprocess

import httpx

from gantry.netutil import free_port
from tests.helpers import (
    Proc,
    bearer,
    gantry_cmd,
    gateway,
    metric_value,
    new_key,
    sim,
    wait_key_active,
    wait_until,
)
from tests.k8s_api import FakeKubeAPI, endpoint_slice

SERVICE = "kubernetes.io/service-name=vllm"


def served(engine: Proc) -> float:
    text = httpx.get(engine.url + "/metrics", timeout=5).text
    return metric_value(text, "vllm:request_success_total")


def status(url: str, key: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gantry_cmd("status", "--url", url, "--key", key, *extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


def page(url: str, key: str) -> dict:
    r = httpx.get(url + "/admin/status", headers=bearer(key), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def routable(url: str, key: str) -> set[str]:
    return {e["name"] for e in page(url, key)["engines"] if e["healthy"] and not e["draining"]}


def complete(url: str, key: str, n: int) -> None:
    for _ in range(n):
        r = httpx.post(
            url + "/v1/completions",
            json={"model": "m", "prompt": "hi", "max_tokens": 2},
            headers=bearer(key),
            timeout=30,
        )
        assert r.status_code == 200, r.text


def test_kubernetes_discovery_drives_routing(tmp_path):
    sim_args = ("--served-model-name", "m", "--profile", "instant")
    with (
        sim(tmp_path, *sim_args) as a,
        sim(tmp_path, *sim_args) as b,
        FakeKubeAPI() as api,
    ):
        slice_a = endpoint_slice("vllm-a", "vllm", a.port, {"pod-a": ("127.0.0.1", False)})
        slice_b = endpoint_slice("vllm-b", "vllm", b.port, {"pod-b": ("127.0.0.1", False)})
        api.put(slice_a)
        cfg = tmp_path / "g.yaml"
        cfg.write_text(
            "engines:\n  discovery:\n    kubernetes:\n"
            f"      {{namespace: ns, label_selector: '{SERVICE}', port: http,"
            f" server: '{api.url}', backoff_initial_s: 0.05, backoff_max_s: 0.5}}\n"
            "health: {interval_s: 0.2}\nrouting: {policy: round_robin}\n"
        )
        port = free_port()
        db = f"sqlite:///{tmp_path}/gantry-{port}.db"
        with gateway(tmp_path, "-c", str(cfg), port=port, secure=True) as gw:
            admin, _ = new_key(db, "--tenant", "ops", "--role", "admin")
            user, _ = new_key(db, "--tenant", "t")
            wait_key_active(gw.url, user)
            wait_until(lambda: routable(gw.url, admin) == {"pod-a"})
            complete(gw.url, user, 4)
            assert served(a) == 4 and served(b) == 0
            # a pod becomes ready: it joins routing
            api.put(slice_b)
            wait_until(lambda: routable(gw.url, admin) == {"pod-a", "pod-b"})
            complete(gw.url, user, 4)
            assert served(b) == 2  # round robin over both
            # the pod terminates: drained and removed, no request goes there any more
            api.put(endpoint_slice("vllm-b", "vllm", b.port, {"pod-b": ("127.0.0.1", True)}))
            wait_until(lambda: {e["name"] for e in page(gw.url, admin)["engines"]} == {"pod-a"})
            complete(gw.url, user, 4)
            assert served(b) == 2 and served(a) == 10
            # missed while no watch ran, then 410 Gone: the gateway lists again and sees it
            api.change_unseen(obj=slice_b)
            wait_until(lambda: routable(gw.url, admin) == {"pod-a", "pod-b"})
            r = status(gw.url, admin, "--json")
            assert r.returncode == 0, r.stderr
            p = json.loads(r.stdout)
            (k8s,) = p["discovery"]
            assert k8s["source"] == "kubernetes" and k8s["up"] and k8s["resyncs"] == 1
            assert {e["source"] for e in p["engines"]} == {"kubernetes"}
            # the screen: engines by name, never by address
            r = status(gw.url, admin)
            assert r.returncode == 0, r.stderr
            assert "pod-a" in r.stdout and "kubernetes: up" in r.stdout
            assert f":{a.port}" not in r.stdout and "127.0.0.1" not in r.stdout
            # the API server goes away: the engines stay, the outage shows
            api.stop()
            wait_until(lambda: not page(gw.url, admin)["discovery"][0]["up"])
            assert routable(gw.url, admin) == {"pod-a", "pod-b"}
            metrics = httpx.get(gw.url + "/metrics", headers=bearer(admin)).text
            assert metric_value(metrics, "gantry_discovery_up", source="kubernetes") == 0
            assert (
                metric_value(
                    metrics, "gantry_discovery_events_total", source="kubernetes", event="error"
                )
                >= 1
            )
            assert "DOWN" in status(gw.url, admin).stdout
            assert gw.logs().count("kubernetes discovery failed") == 1  # logged once
            # bad input: one line, non-zero exit
            for r in (status(gw.url, user), status(gw.url, "nope")):
                assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
                assert "Traceback" not in r.stderr
            assert "403" in status(gw.url, user).stderr
            down = status(f"http://127.0.0.1:{free_port()}", admin)
            assert down.returncode != 0 and "cannot reach the gateway" in down.stderr
            assert len(down.stderr.strip().splitlines()) == 1
