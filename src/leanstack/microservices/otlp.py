"""Spans over OTLP/HTTP with the JSON encoding: the workers' exporter and a small receiver.

On Kubernetes the workers' span files stay inside their pods, so a worker whose environment
names an OTLP traces endpoint (the OpenTelemetry variables ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
used as given, or ``OTEL_EXPORTER_OTLP_ENDPOINT`` plus ``/v1/traces``) also POSTs its spans
there, batched every flush, as one ``ExportTraceServiceRequest`` in OTLP's JSON encoding (hex
trace and span ids, times as decimal strings). Any OTLP/HTTP receiver accepts it, the
OpenTelemetry Collector's included; :class:`OtlpReceiver` is the one the Kubernetes backend
runs, keeping what arrives as :class:`~leanstack.microservices.observation.Span` records, the
same records the local backend reads from the span files.

The exporter is written by hand rather than with the OpenTelemetry SDK: the worker already keeps
its spans in OTLP's data model with its own trace and span ids (propagated in ``traceparent``),
which the SDK's tracer would re-create, and the request is one JSON document sent over the
worker's own aiohttp session — no exporter thread, no protobuf dependency.
"""

from __future__ import annotations

import gzip
import json
import threading
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from leanstack.errors import LeanstackError
from leanstack.microservices.observation import Span

TRACES_PATH = "/v1/traces"
ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
BASE_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
DEFAULT_PORT = 4318
"""OTLP/HTTP's registered port."""
MAX_BODY_BYTES = 32 << 20
MAX_SPANS = 1_000_000
"""Spans the receiver keeps (the earliest-ended are dropped first): ~1 h of a 24-tier app at
100 req/s."""


def traces_endpoint(env: Mapping[str, str]) -> str | None:
    """The traces URL the OpenTelemetry environment variables name, or ``None``."""
    url = env.get(ENDPOINT_ENV, "").strip()
    if url:
        return url
    base = env.get(BASE_ENDPOINT_ENV, "").strip()
    return base.rstrip("/") + TRACES_PATH if base else None


def export_request(spans: Iterable[Span]) -> bytes:
    """One ``ExportTraceServiceRequest`` (JSON) holding ``spans``, one resource per service."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_service.setdefault(s.service, []).append(s.otlp_span())
    return json.dumps({"resourceSpans": [
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": svc}}]},
         "scopeSpans": [{"scope": {"name": "leanstack"}, "spans": records}]}
        for svc, records in by_service.items()]}, separators=(",", ":")).encode()


def parse_export_request(body: bytes) -> list[Span]:
    """The spans of an ``ExportTraceServiceRequest`` in JSON; ``ValueError`` when malformed."""
    try:
        data = json.loads(body)
        out = []
        for rs in data.get("resourceSpans", []):
            attrs = rs.get("resource", {}).get("attributes", [])
            service = next((a["value"].get("stringValue", "") for a in attrs
                            if a.get("key") == "service.name"), "")
            for ss in rs.get("scopeSpans", []):
                out += [Span.from_otlp_span(service, s) for s in ss.get("spans", [])]
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not an OTLP JSON trace export ({type(e).__name__}: {e})") from None
    return out


class OtlpReceiver:
    """An OTLP/HTTP (JSON) traces endpoint on ``host:port`` that keeps the spans it receives.

    ``POST /v1/traces`` with ``Content-Type: application/json`` (gzip allowed); protobuf bodies
    are refused with 415 (set ``OTEL_EXPORTER_OTLP_PROTOCOL=http/json`` on other exporters).
    Serves from a daemon thread until :meth:`close`. Port 0 picks a free port (see ``url``).
    Spans are kept ordered by end time as they arrive, so :meth:`spans` reads only those that
    ended at or after the time asked for instead of sorting everything kept.
    """

    def __init__(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT,
                 max_spans: int = MAX_SPANS) -> None:
        self._spans: list[Span] = []  # by end time; equal ends in arrival order
        self._max_spans = max_spans
        self._lock = threading.Lock()
        self.received = 0
        self.rejected = 0
        try:
            self._server = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as e:
            raise LeanstackError(f"cannot listen for OTLP spans on {host}:{port} ({e}) — choose "
                                 "another address with --otlp-listen HOST:PORT") from None
        self._server.daemon_threads = True
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver",
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The traces URL on loopback (what a local exporter is given)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}{TRACES_PATH}"

    def add(self, spans: list[Span]) -> None:
        """Keep ``spans`` in end-time order (a late one goes in place, near the end), dropping the
        earliest-ended beyond ``max_spans``."""
        with self._lock:
            for s in sorted(spans, key=_end_ns):
                insort(self._spans, s, key=_end_ns)
            if len(self._spans) > self._max_spans:
                del self._spans[:len(self._spans) - self._max_spans]
            self.received += len(spans)

    def spans(self, since_ns: int = 0) -> list[Span]:
        """Every kept span that ended at or after ``since_ns``, by end time."""
        with self._lock:
            return self._spans[bisect_left(self._spans, since_ns, key=_end_ns):]

    def close(self) -> None:
        """Stop serving and free the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _end_ns(span: Span) -> int:
    return span.end_ns


def _handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
            if self.path.split("?")[0] != TRACES_PATH:
                return self._answer(404, f"only {TRACES_PATH} is served")
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY_BYTES:
                return self._answer(413 if length else 411, "a body up to 32 MiB is needed")
            body = self.rfile.read(length)
            if "json" not in self.headers.get("Content-Type", ""):
                receiver.rejected += 1
                return self._answer(415, "only OTLP/HTTP JSON is accepted (http/json)")
            try:
                if self.headers.get("Content-Encoding", "") == "gzip":
                    body = gzip.decompress(body)
                spans = parse_export_request(body)
            except (OSError, ValueError) as e:
                receiver.rejected += 1
                return self._answer(400, str(e))
            receiver.add(spans)
            self._answer(200, None)

        def _answer(self, status: int, message: str | None) -> None:
            body = json.dumps({} if message is None else {"code": status, "message": message})
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    return Handler
