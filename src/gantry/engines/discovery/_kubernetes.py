"""Kubernetes discovery: list, then watch, the EndpointSlices of the engines' Service.

The protocol is the API server's own (what informers do):

1. ``GET .../endpointslices?labelSelector=...``: every slice and the list's
   ``resourceVersion``; the set is replaced whole and published.
2. ``GET ...?watch=1&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=T``:
   one JSON event a line. ADDED/MODIFIED/DELETED change one slice; BOOKMARK only moves
   the resourceVersion on; when the server ends the watch (its timeout), the next one
   starts from the last resourceVersion seen, so nothing is missed or replayed.
3. ``410 Gone`` (an ERROR event with code 410, or the HTTP status): the resourceVersion
   is too old; list again (step 1) and watch from the new one.

Anything else that fails (connection refused, 5xx, 403, a malformed event) keeps the
last set, waits with a growing backoff and tries again from the last resourceVersion
(a malformed event: from a new list). kubernetes_asyncio reads the service account or
the kubeconfig and signs requests; the events are read here, as plain JSON lines, so
slices are never turned into generated model objects.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gantry.config import KubernetesDiscovery
from gantry.engines.discovery._slices import BadEvent, SliceSet, resource_version
from gantry.engines.discovery._source import Health, OnEvent, Publish, SourceStatus, log
from gantry.errors import ConfigError

_SA = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class Gone(Exception):
    """410: the resourceVersion is too old; list again."""


class ApiStatus(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"API server answered {status}: {message[:200]}")
        self.status = status


def _message(body: bytes) -> str:
    with contextlib.suppress(ValueError):
        data = orjson.loads(body)
        if isinstance(data, dict):
            return str(data.get("message") or data.get("reason") or "")
    return body[:200].decode("utf-8", "replace")


class KubernetesSource:
    """One list/watch of EndpointSlices. ``open()`` reads the credentials (a
    ``ConfigError`` when there are none); ``run(publish)`` goes on until cancelled."""

    def __init__(self, cfg: KubernetesDiscovery, on_event: OnEvent | None = None) -> None:
        self.cfg = cfg
        self.health = Health("kubernetes", on_event)
        self.slices = SliceSet(port=cfg.port, scheme=cfg.scheme, prefix=cfg.name_prefix)
        self.namespace = cfg.namespace or _own_namespace()
        self._client: Any = None
        self._api: Any = None

    @property
    def status(self) -> SourceStatus:
        return self.health.status

    async def open(self) -> None:
        from kubernetes_asyncio import client, config  # the k8s extra

        cfg, conf = self.cfg, client.Configuration()
        try:
            if cfg.server is not None:
                conf.host = cfg.server.rstrip("/")
                if cfg.token_file:
                    conf.api_key = {"BearerToken": f"Bearer {_read_token(cfg.token_file)}"}
                if cfg.ca_file:
                    conf.ssl_ca_cert = cfg.ca_file
            elif cfg.kubeconfig is not None:
                await config.load_kube_config(
                    config_file=cfg.kubeconfig, context=cfg.context, client_configuration=conf
                )
            else:
                config.load_incluster_config(client_configuration=conf)
        except (OSError, config.ConfigException) as exc:
            raise ConfigError(
                f"discovery.kubernetes: cannot reach the API server's settings ({exc}); "
                "run in a pod with a service account, or set kubeconfig or server"
            ) from None
        self._client = client.ApiClient(conf)
        self._api = client.DiscoveryV1Api(self._client)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def run(self, publish: Publish) -> None:
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    rv = await self._list(publish)
                rv = await self._watch(rv, publish)
            except Gone:
                log.info("kubernetes discovery: resourceVersion %s expired; listing again", rv)
                rv = None
                self.health.status.resyncs += 1
                self.health.event("resync")
            except (aiohttp.ClientError, TimeoutError, OSError, ApiStatus, BadEvent) as exc:
                if isinstance(exc, BadEvent):
                    rv = None  # start again from a consistent list
                wait = self.health.failed(
                    _describe(exc), self.cfg.backoff_initial_s, self.cfg.backoff_max_s
                )
                await asyncio.sleep(wait)

    def _call(self, **kw: Any) -> Any:
        return self._api.list_namespaced_endpoint_slice(
            self.namespace, label_selector=self.cfg.label_selector, _preload_content=False, **kw
        )

    async def _list(self, publish: Publish) -> str:
        resp = await self._call(_request_timeout=self.cfg.request_timeout_s)
        try:
            body = await resp.read()
        finally:
            resp.release()
        if resp.status != 200:
            raise ApiStatus(resp.status, _message(body))
        try:
            data = orjson.loads(body)
            items = data.get("items") or []
            rv = resource_version(data)
        except (ValueError, AttributeError):
            raise BadEvent("the list answer is not an EndpointSliceList") from None
        self.slices.replace(i for i in items if isinstance(i, dict))
        self.health.ok()
        self._publish(publish)
        return rv

    async def _watch(self, rv: str, publish: Publish) -> str:
        t = self.cfg
        resp = await self._call(
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=t.watch_timeout_s,
            _request_timeout=aiohttp.ClientTimeout(
                sock_connect=t.request_timeout_s, sock_read=t.watch_timeout_s + 30
            ),
        )
        try:
            if resp.status == 410:
                raise Gone()
            if resp.status != 200:
                raise ApiStatus(resp.status, _message(await resp.read()))
            self.health.ok()
            while line := await resp.content.readline():
                if line.strip():
                    rv = self._event(line, rv, publish)
            return rv  # the server ended this watch: the next one starts at rv
        finally:
            resp.close()

    def _event(self, line: bytes, rv: str, publish: Publish) -> str:
        try:
            event = orjson.loads(line)
            kind, obj = event["type"], event["object"]
        except (ValueError, KeyError, TypeError):
            raise BadEvent(f"not a watch event: {line[:100]!r}") from None
        if not isinstance(obj, dict):
            raise BadEvent("a watch event without an object")
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiStatus(int(obj.get("code") or 500), str(obj.get("message") or ""))
        new_rv = resource_version(obj)
        if kind != "BOOKMARK" and self.slices.apply(kind, obj):
            self._publish(publish)
        return new_rv

    def _publish(self, publish: Publish) -> None:
        engines = self.slices.engines()
        self.health.status.engines = len(engines)
        publish(engines)

    def __repr__(self) -> str:
        s = self.health.status
        return f"<KubernetesSource ns={self.namespace} up={s.up} engines={s.engines}>"


def _read_token(path: str) -> str:
    return Path(path).read_text().strip()


def _own_namespace() -> str:
    try:
        return (_SA / "namespace").read_text().strip() or "default"
    except OSError:
        return "default"


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


__all__ = ["ApiStatus", "Gone", "KubernetesSource"]
