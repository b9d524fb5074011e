"""Realistic OTLP request bodies, captured from the real Python SDK's exporters.

Run with the pinned SDK (fixtures/requirements/current.txt):

    scripts/setup-venvs.sh current
    target/venvs/current/bin/python scripts/make-otlp-bodies.py [OUT_DIR]   # default fixtures/otlp/sdk

A web service's telemetry as the SDK's OTLP/HTTP exporters send it: a resource with the SDK's,
the process detector's and the deployment's attributes; one metrics export with the HTTP server
and client instruments of the semantic conventions (histograms with the default buckets,
several routes and statuses), runtime gauges and counters; one trace export (a batch of server
and client spans with attributes and events) and one log export (records with attributes and
trace context). The exporters post to a stdlib sink on 127.0.0.1 here; what they post is
written as NAME.pb (what OTLP/HTTP protobuf and, framed, OTLP/gRPC carry: the gRPC exporters
serialise the same message) and NAME.json (the same message in OTLP/JSON: lowerCamelCase
names, enums as numbers, 64-bit integers as strings, trace and span ids as hex), for NAME in
metrics, traces, logs.
"""

import base64
import http.server
import json
import logging
import os
import sys
import threading

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "otlp", "sdk"
)

# What a deployed service sets; the process detector adds the process.* attributes.
os.environ["OTEL_SERVICE_NAME"] = "checkout-api"
os.environ["OTEL_RESOURCE_ATTRIBUTES"] = ",".join(
    [
        "service.namespace=shop",
        "service.version=2.14.3",
        "service.instance.id=6f1c2d0e-9b8a-4c1e-a8f3-2b7d5e4c9a10",
        "deployment.environment=production",
        "host.name=web-7f9c6d5b8-x2k4q",
        "host.arch=amd64",
        "os.type=linux",
        "cloud.provider=aws",
        "cloud.region=eu-west-1",
        "k8s.namespace.name=shop",
        "k8s.pod.name=checkout-api-7f9c6d5b8-x2k4q",
        "k8s.deployment.name=checkout-api",
        "container.name=checkout-api",
    ]
)
os.environ["OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"] = "process"

from google.protobuf import json_format  # noqa: E402
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest  # noqa: E402
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (  # noqa: E402
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler  # noqa: E402
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402
from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: E402

BODIES = {}


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        BODIES.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
threading.Thread(target=server.serve_forever, daemon=True).start()
base = f"http://127.0.0.1:{server.server_address[1]}"

resource = Resource.create()
reader = PeriodicExportingMetricReader(
    OTLPMetricExporter(endpoint=f"{base}/v1/metrics"), export_interval_millis=3_600_000
)
meters = MeterProvider(resource=resource, metric_readers=[reader])
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(
    BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces"), schedule_delay_millis=3_600_000)
)
logger_provider = LoggerProvider(resource=resource)
logger_provider.add_log_record_processor(
    BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{base}/v1/logs"), schedule_delay_millis=3_600_000)
)

# The HTTP server and client instruments as the WSGI and requests instrumentations record them.
server_meter = meters.get_meter("opentelemetry.instrumentation.wsgi", "0.66b2")
duration = server_meter.create_histogram("http.server.duration", unit="ms", description="Duration of HTTP server requests.")
active = server_meter.create_up_down_counter("http.server.active_requests", unit="{request}", description="Number of active HTTP server requests.")
client_meter = meters.get_meter("opentelemetry.instrumentation.requests", "0.66b2")
client_duration = client_meter.create_histogram("http.client.duration", unit="ms", description="Measures the duration of outbound HTTP requests.")
app_meter = meters.get_meter("checkout.orders", "2.14.3")
orders = app_meter.create_counter("orders.created", unit="{order}", description="Orders placed.")
cart_items = app_meter.create_histogram("orders.items", unit="{item}", description="Items per order.")
runtime = meters.get_meter("opentelemetry.instrumentation.system_metrics", "0.66b2")
runtime.create_observable_counter(
    "process.runtime.cpython.cpu_time", unit="s",
    callbacks=[lambda o: [__import__("opentelemetry.metrics", fromlist=["Observation"]).Observation(v, {"type": t}) for t, v in (("user", 12.5), ("system", 3.25))]],
)
runtime.create_observable_gauge(
    "process.runtime.cpython.memory", unit="By",
    callbacks=[lambda o: [__import__("opentelemetry.metrics", fromlist=["Observation"]).Observation(v, {"type": t}) for t, v in (("rss", 81_920_000), ("vms", 412_000_000))]],
)
runtime.create_observable_counter(
    "process.runtime.cpython.gc_count", unit="{count}",
    callbacks=[lambda o: [__import__("opentelemetry.metrics", fromlist=["Observation"]).Observation(v, {"count": str(g)}) for g, v in ((0, 1520), (1, 138), (2, 12))]],
)

SERVER = {"http.scheme": "http", "http.flavor": "1.1", "http.server_name": "checkout-api", "net.host.port": 8000}
ROUTES = [
    ("GET", "/health", 200, 12),
    ("GET", "/api/cart", 200, 9),
    ("POST", "/api/orders", 201, 6),
    ("GET", "/api/orders/{order_id}", 200, 8),
    ("GET", "/api/orders/{order_id}", 404, 2),
    ("POST", "/api/payments", 502, 1),
]
for i, (method, route, status, n) in enumerate(ROUTES):
    attrs = dict(SERVER, **{"http.method": method, "http.route": route, "http.status_code": status})
    for k in range(n):
        duration.record(3.5 + 17.0 * ((k * 7 + i) % 11), attrs)
for method in ("GET", "POST"):
    active.add(1, dict(SERVER, **{"http.method": method}))
    active.add(-1, dict(SERVER, **{"http.method": method}))
for host, status, n in (("payments.internal", 200, 5), ("payments.internal", 502, 1), ("inventory.internal", 200, 7)):
    for k in range(n):
        client_duration.record(8.0 + 11.0 * k, {"http.method": "POST", "http.scheme": "https", "net.peer.name": host, "net.peer.port": 443, "http.status_code": status})
for payment, n in (("card", 4), ("paypal", 2)):
    orders.add(n, {"payment.method": payment, "shop.region": "eu"})
    cart_items.record(3 * n, {"payment.method": payment})

tracer = tracer_provider.get_tracer("opentelemetry.instrumentation.wsgi", "0.66b2")
for i, (method, route, status, _) in enumerate(ROUTES):
    with tracer.start_as_current_span(f"{method} {route}", kind=SpanKind.SERVER) as span:
        span.set_attributes(dict(SERVER, **{"http.method": method, "http.route": route, "http.target": route.replace("{order_id}", str(1000 + i)), "http.status_code": status, "http.user_agent": "python-requests/2.32.3", "net.peer.ip": "10.0.3.17", "net.peer.port": 51234 + i}))
        with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT) as db:
            db.set_attributes({"db.system": "postgresql", "db.name": "shop", "db.statement": "SELECT id, status FROM orders WHERE id = %s", "net.peer.name": "db.internal", "net.peer.port": 5432})
        if status >= 500:
            span.add_event("exception", {"exception.type": "requests.exceptions.HTTPError", "exception.message": "502 Server Error: Bad Gateway"})
            span.set_status(Status(StatusCode.ERROR))

handler = LoggingHandler(level=logging.INFO, logger_provider=logger_provider)
log = logging.getLogger("checkout.orders")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False
with tracer.start_as_current_span("POST /api/orders", kind=SpanKind.SERVER):
    for i in range(6):
        log.info("order %s placed", 5000 + i, extra={"order.id": 5000 + i, "payment.method": "card", "shop.region": "eu"})
    log.warning("payment provider slow", extra={"provider": "payments.internal", "elapsed_ms": 812.5})

meters.force_flush()
tracer_provider.force_flush()
logger_provider.force_flush()
meters.shutdown()
tracer_provider.shutdown()
logger_provider.shutdown()
server.shutdown()

ID_FIELDS = {"traceId", "spanId", "parentSpanId"}


def hex_ids(x):
    """OTLP/JSON writes trace and span ids as hex, where proto3 JSON writes base64."""
    if isinstance(x, dict):
        return {k: (base64.b64decode(v).hex() if k in ID_FIELDS and isinstance(v, str) else hex_ids(v)) for k, v in x.items()}
    if isinstance(x, list):
        return [hex_ids(v) for v in x]
    return x


os.makedirs(OUT, exist_ok=True)
for name, path, cls in (
    ("metrics", "/v1/metrics", ExportMetricsServiceRequest),
    ("traces", "/v1/traces", ExportTraceServiceRequest),
    ("logs", "/v1/logs", ExportLogsServiceRequest),
):
    got = BODIES.get(path, [])
    if not got:
        sys.exit(f"the exporter sent nothing to {path}")
    # The export force_flush made (shutdown may send the metrics once more).
    body = got[0]
    msg = cls.FromString(body)
    as_json = hex_ids(json_format.MessageToDict(msg, use_integers_for_enums=True))
    with open(os.path.join(OUT, f"{name}.pb"), "wb") as f:
        f.write(body)
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(as_json, f, separators=(",", ":"))
    print(f"{name}: {len(body)} bytes protobuf, {os.path.getsize(os.path.join(OUT, name + '.json'))} bytes JSON")
