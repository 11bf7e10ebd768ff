#!/usr/bin/env python3
"""Send logs, traces and metrics to a Gantry plane with the real OpenTelemetry Python SDK.

Used by tests/tests/sdk.rs. Everything it sends is tagged with a unique run id so the test can
find it again through the Gantry HTTP API:

* resource: service.name=checkout-<run_id>, service.version=1.2.3
* traces: one SERVER span "POST /checkout" (status ERROR) with three children:
  "reserve-stock" (INTERNAL, ok), "charge-card" (CLIENT, ERROR), "publish-order" (PRODUCER, unset)
* logs: one WARNING record emitted inside the server span, body containing the word
  "sdkword<run_id>", attributes order_id=order-<run_id> and run_id=<run_id>
* metrics: counter orders_<run_id> (3 + 4 = 7), up-down counter inflight_<run_id>
  (+5 -2 = 3), histogram latency_<run_id> (values 1..=100 ms)

On success it prints the trace id (32 hex digits) alone on stdout and exits 0. If any export
does not succeed it prints the failures to stderr and exits 2.
"""

import argparse
import logging
import sys
import warnings

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

RESULTS = []


def checked(cls, signal):
    """Subclass an exporter so every export result is recorded."""

    class Checked(cls):
        def export(self, batch, *args, **kwargs):
            result = super().export(batch, *args, **kwargs)
            RESULTS.append((signal, getattr(result, "name", str(result))))
            return result

    Checked.__name__ = "Checked" + cls.__name__
    return Checked


def exporters(args):
    if args.protocol == "http":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = args.endpoint.rstrip("/")
        headers = {"Authorization": f"Bearer {args.token}"}
        common = dict(headers=headers, timeout=args.timeout, compression=Compression.Gzip)
        return (
            checked(OTLPLogExporter, "logs")(endpoint=f"{base}/v1/logs", **common),
            checked(OTLPSpanExporter, "traces")(endpoint=f"{base}/v1/traces", **common),
            checked(OTLPMetricExporter, "metrics")(endpoint=f"{base}/v1/metrics", **common),
        )

    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    endpoint = args.endpoint
    for prefix in ("http://", "https://"):
        if endpoint.startswith(prefix):
            endpoint = endpoint[len(prefix):]
    common = dict(
        endpoint=endpoint,
        insecure=True,
        headers=(("authorization", f"Bearer {args.token}"),),
        timeout=args.timeout,
    )
    return (
        checked(OTLPLogExporter, "logs")(**common),
        checked(OTLPSpanExporter, "traces")(**common),
        checked(OTLPMetricExporter, "metrics")(**common),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True,
                        help="http: base URL like http://127.0.0.1:4318; grpc: 127.0.0.1:4317")
    parser.add_argument("--protocol", choices=["http", "grpc"], required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--run-id", required=True, help="unique lowercase alphanumeric id")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-export timeout, seconds")
    args = parser.parse_args()

    warnings.simplefilter("ignore", DeprecationWarning)
    run = args.run_id
    resource = Resource.create(
        {"service.name": f"checkout-{run}", "service.version": "1.2.3", "gantry.test.run": run}
    )
    log_exporter, span_exporter, metric_exporter = exporters(args)

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    tracer = tracer_provider.get_tracer("gantry-e2e")

    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    handler = LoggingHandler(level=logging.INFO, logger_provider=logger_provider)
    log = logging.getLogger(f"gantry-e2e-{run}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)

    # A reader that never fires by itself: metrics are exported exactly once, at shutdown.
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=3_600_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = meter_provider.get_meter("gantry-e2e")
    orders = meter.create_counter(f"orders_{run}", unit="1", description="orders placed")
    inflight = meter.create_up_down_counter(f"inflight_{run}", unit="1")
    latency = meter.create_histogram(f"latency_{run}", unit="ms")

    with tracer.start_as_current_span("POST /checkout", kind=SpanKind.SERVER) as server:
        server.set_attribute("http.request.method", "POST")
        server.set_attribute("http.route", "/checkout")
        server.set_attribute("http.response.status_code", 500)
        trace_id = format(server.get_span_context().trace_id, "032x")
        with tracer.start_as_current_span("reserve-stock", kind=SpanKind.INTERNAL) as span:
            span.set_attribute("order_id", f"order-{run}")
            span.set_status(Status(StatusCode.OK))
        with tracer.start_as_current_span("charge-card", kind=SpanKind.CLIENT) as span:
            span.set_attribute("payment.provider", "acme")
            span.set_status(Status(StatusCode.ERROR, "card declined"))
        with tracer.start_as_current_span("publish-order", kind=SpanKind.PRODUCER):
            pass
        log.warning(
            "payment failed sdkword%s for customer", run,
            extra={"order_id": f"order-{run}", "run_id": run, "amount_cents": 4200},
        )
        server.set_status(Status(StatusCode.ERROR, "payment failed"))

    orders.add(3, {"region": "eu"})
    orders.add(4, {"region": "eu"})
    inflight.add(5)
    inflight.add(-2)
    for ms in range(1, 101):
        latency.record(ms, {"route": "/checkout"})

    log.removeHandler(handler)
    ok = logger_provider.force_flush() and tracer_provider.force_flush()
    logger_provider.shutdown()
    tracer_provider.shutdown()
    meter_provider.shutdown()

    failures = [r for r in RESULTS if r[1] != "SUCCESS"]
    signals = {r[0] for r in RESULTS}
    missing = {"logs", "traces", "metrics"} - signals
    if failures or missing or not ok:
        print(f"export failures: {failures}; never exported: {sorted(missing)}; "
              f"flush ok: {ok}; all results: {RESULTS}", file=sys.stderr)
        return 2
    print(trace_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
