"""OpenTelemetry export for real: the gateway's spans reach an OTLP/HTTP receiver that
decodes them, and tracing that cannot export stops ``gantry serve`` with one line."""

from __future__ import annotations

import gzip
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.helpers import free_port, gantry_cmd, gateway
from tests.recording_engine import recording_engine

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    service: str


@dataclass
class Receiver:
    """What an OTLP/HTTP collector got: decoded spans and any request it refused."""

    url: str
    spans: list[Span] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of_trace(self, trace_id: str) -> dict[str, Span]:
        with self.lock:
            return {s.name: s for s in self.spans if s.trace_id == trace_id}

    def wait_for(self, trace_id: str, names: set[str], timeout: float = 30.0) -> dict[str, Span]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.of_trace(trace_id)
            if names <= got.keys():
                return got
            time.sleep(0.05)
        raise TimeoutError(f"spans {sorted(names)} not received; got {self.spans}")

    def record(self, req: ExportTraceServiceRequest) -> None:
        with self.lock:
            for rs in req.resource_spans:
                attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append(
                            Span(
                                s.name,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                                attrs.get("service.name", ""),
                            )
                        )


@contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    port = free_port()
    rec = Receiver(f"http://127.0.0.1:{port}/v1/traces")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            ctype = self.headers.get("content-type", "")
            if self.path != "/v1/traces" or ctype != "application/x-protobuf":
                with rec.lock:
                    rec.refused.append(f"{self.path} {ctype}")
                self.send_response(404)
                self.end_headers()
                return
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            rec.record(ExportTraceServiceRequest.FromString(body))
            out = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_spans_are_exported_over_otlp_http(tmp_path):
    with otlp_receiver() as rx, recording_engine() as (url, seen):
        env = {
            "GANTRY_TRACING__ENABLED": "true",
            "GANTRY_TRACING__EXPORTER": "otlp",
            "GANTRY_TRACING__OTLP_ENDPOINT": rx.url,
            "GANTRY_TRACING__SERVICE_NAME": "gantry-otlp-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        with gateway(tmp_path, "--engine", url, env=env) as gw:
            r = httpx.post(
                gw.url + "/v1/chat/completions",
                headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
                json={"model": "rec", "messages": [{"role": "user", "content": "x"}]},
            )
            assert r.status_code == 200
            spans = rx.wait_for(TRACE_ID, {"gantry.request", "admission", "routing", "dispatch"})
        assert not rx.refused
        assert {s.service for s in spans.values()} == {"gantry-otlp-test"}
        root = spans["gantry.request"]
        assert root.parent_id == PARENT_ID  # continues the caller's trace
        assert spans["admission"].parent_id == root.span_id
        assert spans["dispatch"].parent_id == root.span_id
        assert spans["routing"].parent_id == spans["dispatch"].span_id
        _, trace_id, parent_id, _ = seen[-1]["traceparent"].split("-")
        assert (trace_id, parent_id) == (TRACE_ID, spans["dispatch"].span_id)


def _stub(root: Path, module: str) -> Path:
    """A package on PYTHONPATH that shadows ``module`` and fails to import, as if the
    distribution providing it were not installed."""
    pkg = root.joinpath(*module.split("."))
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f'raise ModuleNotFoundError("No module named {module!r}")\n')
    if module.startswith("opentelemetry.exporter.otlp.proto.http."):
        (pkg.parent / "__init__.py").write_text("")  # a regular package: shadows the real one
    return root


@pytest.mark.parametrize(
    ("missing", "exporter", "needle"),
    [
        ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "otlp", "OTLP exporter"),
        ("opentelemetry.sdk.trace", "console", "OpenTelemetry SDK"),
    ],
)
def test_tracing_without_its_package_stops_serve_with_one_line(tmp_path, missing, exporter, needle):
    stubs = _stub(tmp_path / "stubs", missing)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stubs), env.get("PYTHONPATH")]))
    env |= {
        "GANTRY_TRACING__ENABLED": "true",
        "GANTRY_TRACING__EXPORTER": exporter,
        "GANTRY_SECURITY__AUTH": "off",
        "GANTRY_SECURITY__DATABASE_URL": f"sqlite:///{tmp_path}/g.db",
    }
    args = ["serve", "--port", str(free_port()), "--engine", "http://127.0.0.1:9"]
    out = subprocess.run(
        gantry_cmd(*args), capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert needle in lines[0] and "gantry[otel]" in lines[0], lines[0]
