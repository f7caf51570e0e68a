"""Discovery's pure parts: EndpointSlices to engines, DNS answers to engines, bounds,
backoff, and the configuration section."""

from __future__ import annotations

import pytest

from gantry.config import DiscoveryConfig, GatewayConfig, load_config
from gantry.engines.discovery import (
    BadEvent,
    SliceSet,
    endpoints_of,
    engines_of,
    hashed_name,
    next_backoff,
    to_specs,
)
from gantry.errors import ConfigError


def ep(ip: str, pod: str | None = None, **cond: bool) -> dict:
    out: dict = {"addresses": [ip], "conditions": cond}
    if pod:
        out["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "ns"}
    return out


def eps(name: str, *endpoints: dict, port: int = 8000, rv: str = "1") -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv},
        "addressType": "IPv4",
        "endpoints": list(endpoints),
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


@pytest.mark.parametrize(
    ("cond", "usable"),
    [
        ({"ready": True}, True),
        ({}, True),  # unknown readiness counts as ready
        ({"ready": False}, False),
        ({"ready": True, "terminating": True}, False),
        ({"ready": False, "serving": True, "terminating": True}, False),
    ],
)
def test_only_ready_endpoints_that_do_not_terminate_are_engines(cond, usable):
    found = endpoints_of(
        eps("s", ep("10.0.0.1", "vllm-0", **cond)), port=8000, scheme="http", prefix=""
    )
    assert [(e.name, e.url) for e in found] == (
        [("vllm-0", "http://10.0.0.1:8000")] if usable else []
    )


def test_ports_by_name_or_number_and_addresses_kept_out_of_names():
    s = eps("s", ep("10.0.0.1"), ep("fd00::1", "p"), port=9000)
    by_name = endpoints_of(s, port="http", scheme="https", prefix="k-")
    assert [e.url for e in by_name] == ["https://10.0.0.1:9000", "https://[fd00::1]:9000"]
    assert by_name[0].name == hashed_name("k-", "10.0.0.1", 9000) and "10." not in by_name[0].name
    assert by_name[1].name == "k-p"
    assert endpoints_of(s, port="grpc", scheme="http", prefix="") == ()  # no such port
    assert endpoints_of(s, port=8001, scheme="http", prefix="")[0].url == "http://10.0.0.1:8001"


def test_slice_set_list_then_events():
    s = SliceSet(port="http")
    s.replace([eps("a", ep("10.0.0.1", "a0")), eps("b", ep("10.0.0.2", "b0"))])
    assert s.engines() == {"a0": "http://10.0.0.1:8000", "b0": "http://10.0.0.2:8000"}
    assert s.apply("MODIFIED", eps("b", ep("10.0.0.2", "b0", terminating=True)))
    assert set(s.engines()) == {"a0"}
    assert not s.apply("MODIFIED", eps("b", ep("10.0.0.2", "b0", terminating=True)))  # same
    assert s.apply("ADDED", eps("c", ep("10.0.0.3", "c0")))
    assert s.apply("DELETED", eps("a"))
    assert set(s.engines()) == {"c0"}
    s.replace([eps("z", ep("10.0.0.9", "z0"))])  # a re-list replaces everything
    assert set(s.engines()) == {"z0"} and len(s) == 1
    with pytest.raises(BadEvent):
        s.apply("BOOKMARK", eps("z"))
    with pytest.raises(BadEvent):
        s.apply("ADDED", {"metadata": {}})


def test_a_pod_in_two_slices_is_one_engine():
    s = SliceSet(port=8000)
    s.replace([eps("b-v6", ep("fd00::1", "p0")), eps("a-v4", ep("10.0.0.1", "p0"))])
    assert s.engines() == {"p0": "http://10.0.0.1:8000"}


def test_dns_answers_to_engines():
    got = engines_of(
        ["127.0.0.2", "127.0.0.1", "127.0.0.1", "::1", "bogus"], port=80, scheme="http", prefix="e-"
    )
    assert sorted(got.values()) == ["http://127.0.0.1:80", "http://127.0.0.2:80", "http://[::1]:80"]
    assert all(n.startswith("e-") and "127" not in n for n in got)


def test_sets_are_cut_to_max_engines():
    cfg = DiscoveryConfig.model_validate(
        {"dns": {"name": "x", "port": 1, "max_engines": 2, "models": ["m"], "group": "g"}}
    )
    assert cfg.dns is not None
    specs = to_specs({"c": "http://c:1", "a": "http://a:1", "b": "http://b:1"}, cfg.dns, "dns")
    assert list(specs) == ["a", "b"]
    assert specs["a"].models == ("m",) and specs["a"].group == "g" and specs["a"].name == "a"


def test_backoff_doubles_to_its_cap():
    waits, w = [], 0.0
    for _ in range(6):
        w = next_backoff(w, 0.5, 4.0)
        waits.append(w)
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_config_section(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text(
        "engines:\n  discovery:\n    kubernetes: {namespace: serving, label_selector: app=vllm,"
        " port: http, server: 'http://127.0.0.1:1'}\n    dns: {name: vllm.serving, port: 8000}\n"
    )
    cfg = load_config(f)
    assert cfg.discovery.kubernetes is not None and cfg.discovery.kubernetes.port == "http"
    assert cfg.discovery.dns is not None and not cfg.is_embedded
    assert GatewayConfig().discovery.enabled is False
    for bad, words in [
        ("kubernetes: {label_selector: a=b, port: 0}", "1..65535"),
        ("kubernetes: {port: 80}", "label_selector"),
        ("kubernetes: {label_selector: a=b, port: 80, server: x}", "http://"),
        ("dns: {name: x}", "port"),
        ("consul: {}", "consul"),
    ]:
        f.write_text(f"engines:\n  discovery:\n    {bad}\n")
        with pytest.raises(ConfigError, match=words):
            load_config(f)
