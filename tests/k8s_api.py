"""A small Kubernetes API server for EndpointSlices, speaking the real list/watch protocol.

    GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector=k=v
        -> EndpointSliceList with metadata.resourceVersion
    GET ...?watch=true&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=T
        -> one JSON event a line: ADDED / MODIFIED / DELETED (events after RV, then live),
           BOOKMARK when asked for, and 410 Gone when RV is older than what is kept:
           an ERROR event (gone="event") or the HTTP status (gone="http")

It runs on its own thread and event loop, so a synchronous test (or a gateway in another
process) can use it; its methods are called from the test's thread. ``requests`` records
every call (kind, query) for assertions.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from typing import Any

import orjson
from aiohttp import web

from gantry.netutil import free_port

PATH = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"


def endpoint_slice(
    name: str, service: str, port: int, pods: dict[str, tuple[str, bool]], ns: str = "ns"
) -> dict[str, Any]:
    """A slice of ``service`` with pod name -> (IP, terminating) endpoints."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": not term, "serving": True, "terminating": term},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": ns},
            }
            for pod, (ip, term) in pods.items()
        ],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def _matches(obj: dict[str, Any], selector: str) -> bool:
    labels = obj["metadata"].get("labels", {})
    for term in filter(None, selector.split(",")):
        k, _, v = term.partition("=")
        if labels.get(k.strip()) != v.strip():
            return False
    return True


class FakeKubeAPI:
    def __init__(self, gone: str = "event", port: int | None = None) -> None:
        self.gone = gone
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rv = 100
        self.compacted = 0  # watches from an RV below this get 410
        self.slices: dict[str, dict[str, Any]] = {}  # "ns/name" -> object
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._watches: set[tuple[asyncio.Queue[Any], str, bool, str]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    # -- run ------------------------------------------------------------------------------
    def __enter__(self) -> FakeKubeAPI:
        self._thread.start()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _call(self, fn: Any, *args: Any) -> Any:
        async def go() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(go(), self._loop).result(10)

    def start(self) -> None:
        async def go() -> None:
            app = web.Application()
            app.router.add_get(PATH, self._handle)
            self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(go(), self._loop).result(10)

    def stop(self) -> None:
        """The API server goes away (connections refused until ``start()``)."""
        if self._runner is None:
            return
        self._call(self._end_watches)
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._runner = None

    # -- changes (from the test's thread) -------------------------------------------------
    def put(self, obj: dict[str, Any]) -> int:
        return self._call(self._put, copy.deepcopy(obj))

    def delete(self, ns_name: str) -> int:
        return self._call(self._delete, ns_name)

    def bookmark(self) -> int:
        """A BOOKMARK at the current RV to every watch that asked for them."""
        return self._call(self._bookmark)

    def end_watches(self) -> None:
        """The server ends every open watch (as at its timeout)."""
        self._call(self._end_watches)

    def change_unseen(self, obj: dict[str, Any] | None = None, delete: str = "") -> None:
        """End every watch, change a slice and compact the history in one step: a
        client's next watch from its old RV gets 410 and must list again to see it."""

        def go() -> None:
            self._end_watches()
            if obj is not None:
                self._put(copy.deepcopy(obj), notify=False)
            if delete:
                self._delete(delete, notify=False)
            self.compacted = self.rv
            self.history.clear()

        self._call(go)

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in list(self.requests) if k == kind)

    # -- inside the server's loop ---------------------------------------------------------
    def _record(self, kind: str, obj: dict[str, Any], notify: bool = True) -> int:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history = [*self.history, (self.rv, kind, copy.deepcopy(obj))][-1000:]
        if notify:
            for q, ns, _bm, sel in list(self._watches):
                if obj["metadata"]["namespace"] == ns and _matches(obj, sel):
                    q.put_nowait({"type": kind, "object": obj})
        return self.rv

    def _put(self, obj: dict[str, Any], notify: bool = True) -> int:
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        kind = "MODIFIED" if key in self.slices else "ADDED"
        self.slices[key] = obj
        return self._record(kind, obj, notify)

    def _delete(self, key: str, notify: bool = True) -> int:
        obj = self.slices.pop(key)
        return self._record("DELETED", obj, notify)

    def _bookmark(self) -> int:
        for q, _ns, bm, _sel in list(self._watches):
            if bm:
                q.put_nowait(
                    {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": "EndpointSlice",
                            "apiVersion": "discovery.k8s.io/v1",
                            "metadata": {"resourceVersion": str(self.rv)},
                        },
                    }
                )
        return self.rv

    def _end_watches(self) -> None:
        for q, *_ in list(self._watches):
            q.put_nowait(None)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        ns = request.match_info["ns"]
        sel = q.get("labelSelector", "")
        watch = q.get("watch", "").lower() in ("1", "true")
        self.requests.append(("watch" if watch else "list", q))
        if not watch:
            items = [
                o
                for k, o in sorted(self.slices.items())
                if k.startswith(ns + "/") and _matches(o, sel)
            ]
            body = {
                "kind": "EndpointSliceList",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }
            return web.Response(body=orjson.dumps(body), content_type="application/json")
        return await self._watch(request, ns, sel, q)

    async def _watch(
        self, request: web.Request, ns: str, sel: str, q: dict[str, str]
    ) -> web.StreamResponse:
        since = int(q.get("resourceVersion") or self.rv)
        gone = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"too old resource version: {since} ({self.compacted})",
            "reason": "Expired",
            "code": 410,
        }
        if since < self.compacted and self.gone == "http":
            return web.Response(status=410, body=orjson.dumps(gone))
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        if since < self.compacted:
            await resp.write(orjson.dumps({"type": "ERROR", "object": gone}) + b"\n")
            return resp
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for rv, kind, obj in self.history:
            if rv > since and obj["metadata"]["namespace"] == ns and _matches(obj, sel):
                queue.put_nowait({"type": kind, "object": obj})
        entry = (queue, ns, q.get("allowWatchBookmarks") in ("true", "True", "1"), sel)
        self._watches.add(entry)
        timeout = float(q.get("timeoutSeconds") or 1800)
        try:
            async with asyncio.timeout(timeout):
                while (event := await queue.get()) is not None:
                    await resp.write(orjson.dumps(event) + b"\n")
        except TimeoutError:
            pass
        finally:
            self._watches.discard(entry)
        return resp
