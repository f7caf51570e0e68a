"""Engines found at run time: ``engines: {discovery: {kubernetes: {...}, dns: {...}}}``.

Discovered engines join the pool as their endpoints become ready and are drained and
removed as they go (``gantry.engines.discovery``); the pool's health probes apply to
them like to any engine. Frozen, validated once at the edge.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class DiscoveredEngine(BaseModel):
    """What every engine a source finds is given (its URL and name come from the source)."""

    model_config = _FROZEN
    scheme: Literal["http", "https"] = "http"
    models: tuple[str, ...] = ()  # empty: read from each engine's /v1/models
    api_key: str | None = Field(default=None, repr=False)
    transport: Literal["h1", "aiohttp"] = "h1"
    group: str | None = None  # an engine group, for traffic splits
    max_engines: int = Field(default=64, ge=1, le=4096)  # more endpoints are ignored (logged)
    drain_grace_s: float = Field(default=30.0, ge=0)  # a leaving engine's requests get this long
    backoff_initial_s: float = Field(default=0.5, gt=0)  # after a failed list/watch/resolve
    backoff_max_s: float = Field(default=30.0, gt=0)


class KubernetesDiscovery(DiscoveredEngine):
    """EndpointSlices (discovery.k8s.io/v1) of the engines' Service, listed then watched."""

    namespace: str | None = None  # None: the gateway's own (from its service account)
    label_selector: str = Field(min_length=1)  # e.g. kubernetes.io/service-name=vllm
    port: int | str  # a port number, or the name of the slice's port (e.g. "http")
    name_prefix: str = ""  # engines are named <prefix><pod name>
    # Where the API server is: in-cluster (the pod's service account), a kubeconfig file,
    # or an explicit URL (kubectl proxy, tests).
    kubeconfig: str | None = None
    context: str | None = None  # kubeconfig context (default: the file's current one)
    server: str | None = None
    token_file: str | None = None  # with server: a bearer token read from this file
    ca_file: str | None = None  # with server over https: the CA bundle to trust
    watch_timeout_s: int = Field(default=290, ge=1)  # server-side timeout of one watch call
    request_timeout_s: float = Field(default=10.0, gt=0)  # list calls, connecting

    @model_validator(mode="after")
    def _where(self) -> KubernetesDiscovery:
        if isinstance(self.port, int) and not 1 <= self.port <= 65535:
            raise ValueError("discovery.kubernetes.port must be 1..65535 or a port name")
        if self.server is not None and self.kubeconfig is not None:
            raise ValueError("discovery.kubernetes: give server or kubeconfig, not both")
        if self.server is not None and not self.server.startswith(("http://", "https://")):
            raise ValueError("discovery.kubernetes.server must start with http:// or https://")
        return self


class DnsDiscovery(DiscoveredEngine):
    """A name resolved every ``interval_s`` (a headless Service): one engine per address."""

    name: str = Field(min_length=1)  # e.g. vllm.serving.svc.cluster.local
    port: int = Field(ge=1, le=65535)
    interval_s: float = Field(default=10.0, gt=0)
    # Ask this DNS server ("host" or "host:port") for A and AAAA records, instead of the
    # system resolver (needs the dns extra: dnspython)
    nameserver: str | None = None
    timeout_s: float = Field(default=2.0, gt=0)  # one resolution
    name_prefix: str | None = None  # engines are <prefix>-<hash of the address>; default: name's
    # first label. The address itself stays out of names (names appear in public answers).


class DiscoveryConfig(BaseModel):
    model_config = _FROZEN
    kubernetes: KubernetesDiscovery | None = None
    dns: DnsDiscovery | None = None

    @property
    def enabled(self) -> bool:
        return self.kubernetes is not None or self.dns is not None


__all__ = ["DiscoveredEngine", "DiscoveryConfig", "DnsDiscovery", "KubernetesDiscovery"]
