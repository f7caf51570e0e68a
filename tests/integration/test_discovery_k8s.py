"""Kubernetes discovery against an API server that speaks the list/watch protocol
(tests/k8s_api.py): list with resourceVersion, watch events, bookmarks, 410 Gone (as an
ERROR event and as the HTTP status) followed by a re-list, and the API server going away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from gantry.config import KubernetesDiscovery
from gantry.engines.discovery._kubernetes import KubernetesSource
from tests.k8s_api import FakeKubeAPI, endpoint_slice

SEL = "kubernetes.io/service-name=vllm"


async def until(predicate: Callable[[], object]) -> None:
    async with asyncio.timeout(30):  # a bound for a slow machine, not a pace
        while not predicate():  # noqa: ASYNC110 (the source publishes into a plain list)
            await asyncio.sleep(0.01)


def source(api: FakeKubeAPI, events: list[tuple[str, str]]) -> KubernetesSource:
    cfg = KubernetesDiscovery(
        namespace="ns",
        label_selector=SEL,
        port="http",
        server=api.url,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    return KubernetesSource(cfg, lambda s, e: events.append((s, e)))


@pytest.mark.parametrize("gone", ["event", "http"])
async def test_list_watch_bookmark_and_gone(gone):
    seen: list[dict[str, str]] = []
    events: list[tuple[str, str]] = []
    with FakeKubeAPI(gone=gone) as api:
        api.put(endpoint_slice("vllm-a", "vllm", 8000, {"a0": ("10.0.0.1", False)}))
        api.put(endpoint_slice("other", "redis", 6379, {"r0": ("10.0.0.9", False)}))
        src = source(api, events)
        await src.open()
        task = asyncio.create_task(src.run(seen.append))
        try:
            await until(lambda: seen and seen[-1] == {"a0": "http://10.0.0.1:8000"})
            list_rv = api.requests[0][1]
            assert api.requests[0][0] == "list" and list_rv["labelSelector"] == SEL
            await until(lambda: api.count("watch") == 1)
            watch = api.requests[-1][1]
            assert (
                watch["resourceVersion"] == "102" and watch["allowWatchBookmarks"].lower() == "true"
            )
            assert int(watch["timeoutSeconds"]) > 0
            # watch events: a pod joins, another slice comes, a pod terminates
            api.put(
                endpoint_slice(
                    "vllm-a", "vllm", 8000, {"a0": ("10.0.0.1", False), "a1": ("10.0.0.2", False)}
                )
            )
            api.put(endpoint_slice("vllm-b", "vllm", 9000, {"b0": ("10.0.0.3", False)}))
            await until(lambda: set(seen[-1]) == {"a0", "a1", "b0"})
            assert seen[-1]["b0"] == "http://10.0.0.3:9000"
            api.put(
                endpoint_slice(
                    "vllm-a", "vllm", 8000, {"a0": ("10.0.0.1", True), "a1": ("10.0.0.2", False)}
                )
            )
            await until(lambda: set(seen[-1]) == {"a1", "b0"})
            # a bookmark moves the resourceVersion on; the next watch starts there
            api.put(endpoint_slice("other", "redis", 6380, {"r0": ("10.0.0.9", False)}))
            rv = api.bookmark()
            published = len(seen)
            await asyncio.sleep(0)
            api.end_watches()
            await until(lambda: api.count("watch") == 2)
            assert api.requests[-1][1]["resourceVersion"] == str(rv)
            assert len(seen) == published  # a bookmark changes no engine
            # a change the watch never saw, then 410: the client lists again and sees it
            lists = api.count("list")
            api.change_unseen(delete="ns/vllm-b")
            await until(lambda: set(seen[-1]) == {"a1"})
            assert api.count("list") == lists + 1
            assert src.status.resyncs == 1 and ("kubernetes", "resync") in events
            assert src.status.up and src.status.errors == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await src.aclose()


async def test_api_server_down_keeps_the_last_set(caplog):
    seen: list[dict[str, str]] = []
    events: list[tuple[str, str]] = []
    with FakeKubeAPI() as api:
        api.put(endpoint_slice("vllm-a", "vllm", 8000, {"a0": ("10.0.0.1", False)}))
        src = source(api, events)
        await src.open()
        task = asyncio.create_task(src.run(seen.append))
        try:
            await until(lambda: api.count("watch") == 1)
            with caplog.at_level(logging.DEBUG, "gantry.discovery"):
                api.stop()
                await until(lambda: src.status.errors >= 3)
                assert not src.status.up and seen[-1] == {"a0": "http://10.0.0.1:8000"}
                assert src.status.engines == 1 and src.status.last_error
                warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
                assert len(warnings) == 1 and "keeping the last 1 engine" in warnings[0].message
                # back: the watch resumes (a change made meanwhile arrives through it)
                api.put(endpoint_slice("vllm-a", "vllm", 8000, {"a9": ("10.0.0.7", False)}))
                api.start()
                await until(lambda: seen[-1] == {"a9": "http://10.0.0.7:8000"})
            assert src.status.up and src.status.down_since is None
            assert events.count(("kubernetes", "error")) == src.status.errors
            assert any("is back" in r.message for r in caplog.records)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await src.aclose()


async def test_no_cluster_settings_is_a_config_error(tmp_path):
    from gantry.errors import ConfigError

    cfg = KubernetesDiscovery(label_selector=SEL, port=80, kubeconfig=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="kubeconfig or server"):
        await KubernetesSource(cfg).open()
