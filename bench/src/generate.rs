//! A generator of realistic telemetry for benchmarks and the demo: many services, skewed severities, bodies with
//! ids and numbers, 5-15 attributes per record, and traces of a few spans each. Deterministic for a given seed.

use gantry_proto::LogRecord;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord as OtlpLog, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use gantry_proto::ExportRequest;
use gantry_store::model::{Acceptance, convert};

const SERVICE_STEMS: [&str; 20] = [
    "payments",
    "checkout",
    "cart",
    "catalog",
    "search",
    "auth",
    "accounts",
    "ledger",
    "fraud",
    "notifications",
    "shipping",
    "pricing",
    "inventory",
    "gateway",
    "profile",
    "loyalty",
    "billing",
    "reports",
    "ratings",
    "media",
];
const REGIONS: [&str; 4] = ["eu-west-1", "eu-central-1", "us-east-1", "ap-south-1"];
const ROUTES: [&str; 8] = [
    "/api/v1/orders/{id}",
    "/api/v1/payments",
    "/api/v1/cart/items",
    "/api/v1/users/{id}/profile",
    "/api/v1/search",
    "/healthz",
    "/api/v1/invoices/{id}",
    "/api/v1/login",
];
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
const TOPICS: [&str; 4] = ["orders", "payments.events", "audit", "emails"];

/// Generates batches of logs and spans.
pub struct Generator {
    rng: StdRng,
    services: Vec<String>,
    /// Trace ids of generated spans, for trace-by-id queries.
    pub trace_ids: Vec<String>,
    next_id: u64,
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(value: impl Into<String>) -> any_value::Value {
    any_value::Value::StringValue(value.into())
}

fn int(value: i64) -> any_value::Value {
    any_value::Value::IntValue(value)
}

impl Generator {
    /// A generator over `services` services.
    pub fn new(seed: u64, services: usize) -> Self {
        let services = (0..services.max(1))
            .map(|i| {
                let stem = SERVICE_STEMS[i % SERVICE_STEMS.len()];
                if i < SERVICE_STEMS.len() {
                    stem.to_owned()
                } else {
                    format!("{stem}-{}", i / SERVICE_STEMS.len())
                }
            })
            .collect();
        Self {
            rng: StdRng::seed_from_u64(seed),
            services,
            trace_ids: Vec::new(),
            next_id: 1,
        }
    }

    fn resource(&mut self, service: &str) -> Resource {
        let pod = self.rng.random_range(0..6);
        Resource {
            attributes: vec![
                kv("service.name", text(service)),
                kv(
                    "service.version",
                    text(format!(
                        "1.{}.{}",
                        self.rng.random_range(0..4),
                        self.rng.random_range(0..10)
                    )),
                ),
                kv(
                    "host.name",
                    text(format!("node-{:02}", self.rng.random_range(0..12))),
                ),
                kv(
                    "k8s.pod.name",
                    text(format!("{service}-7d9f8c-{pod}x{pod}q")),
                ),
                kv("deployment.environment", text("production")),
            ],
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        }
    }

    fn body(&mut self) -> (String, i32) {
        let r = &mut self.rng;
        let id = r.random_range(1000..999_999);
        let ms = r.random_range(1..2500);
        let roll = r.random_range(0..100);
        let severity = match roll {
            0..=9 => 5,
            10..=79 => 9,
            80..=93 => 13,
            _ => 17,
        };
        let body = match r.random_range(0..10) {
            0 => format!("GET /api/v1/orders/{id} 200 in {ms}ms"),
            1 => format!(
                "payment {id} authorized for customer c-{} amount={}.{:02} EUR",
                r.random_range(100..99_999),
                r.random_range(1..2000),
                r.random_range(0..100)
            ),
            2 => format!("cache miss for key user:{id}:profile, fetching from database"),
            3 => format!(
                "connection refused to 10.0.{}.{}:5432, retrying in {}s (attempt {})",
                r.random_range(0..255),
                r.random_range(0..255),
                r.random_range(1..30),
                r.random_range(1..6)
            ),
            4 => format!(
                "user {id} logged in from 192.168.{}.{}",
                r.random_range(0..255),
                r.random_range(0..255)
            ),
            5 => format!(
                "slow query took {ms}ms: SELECT * FROM orders WHERE customer_id = {id} ORDER BY created_at DESC"
            ),
            6 => format!(
                "kafka consumer lag {} on partition {} of topic {}",
                r.random_range(0..50_000),
                r.random_range(0..24),
                TOPICS[r.random_range(0..TOPICS.len())]
            ),
            7 => format!(
                "request req-{id:x} completed status={} bytes={} duration_ms={ms}",
                [200, 200, 200, 201, 204, 400, 404, 500, 503][r.random_range(0..9)],
                r.random_range(100..500_000)
            ),
            8 => format!(
                "scheduled job invoice-export finished: {} invoices in {ms}ms",
                r.random_range(0..5000)
            ),
            _ => format!(
                "retrying upstream call to inventory after timeout of {ms}ms for sku SKU-{id}"
            ),
        };
        (body, severity)
    }

    fn attributes(&mut self) -> Vec<KeyValue> {
        let r = &mut self.rng;
        let mut attributes = vec![
            kv(
                "http.method",
                text(METHODS[r.random_range(0..METHODS.len())]),
            ),
            kv("http.route", text(ROUTES[r.random_range(0..ROUTES.len())])),
            kv(
                "http.status_code",
                int([200, 200, 200, 201, 204, 400, 404, 500, 503][r.random_range(0..9)]),
            ),
            kv("order_id", int(r.random_range(1..1_000_000))),
            kv("region", text(REGIONS[r.random_range(0..REGIONS.len())])),
        ];
        let optional = [
            (
                "customer_id",
                text(format!("c-{}", r.random_range(100..99_999))),
            ),
            ("thread", text(format!("worker-{}", r.random_range(0..32)))),
            ("request_id", text(format!("{:016x}", r.random::<u64>()))),
            ("duration_ms", int(r.random_range(1..3000))),
            ("retry", int(r.random_range(0..4))),
            (
                "user_agent",
                text("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
            ),
            ("db.system", text("postgresql")),
            (
                "peer.service",
                text(SERVICE_STEMS[r.random_range(0..SERVICE_STEMS.len())]),
            ),
            (
                "feature_flag",
                text(["new-checkout", "fast-search", "none"][r.random_range(0..3)]),
            ),
            ("tenant", text(format!("tenant-{}", r.random_range(0..200)))),
        ];
        let extra = r.random_range(0..=optional.len());
        attributes.extend(optional.into_iter().take(extra).map(|(k, v)| kv(k, v)));
        attributes
    }

    /// A logs request of `records` records spread over `resources` services, stamped around `now_ns`.
    pub fn logs(&mut self, records: usize, now_ns: i64) -> ExportLogsServiceRequest {
        let resources = 4.min(records.max(1));
        let mut resource_logs = Vec::with_capacity(resources);
        for part in 0..resources {
            let service = self.services[self.rng.random_range(0..self.services.len())].clone();
            let resource = self.resource(&service);
            let count = records / resources + usize::from(part < records % resources);
            let mut log_records = Vec::with_capacity(count);
            for _ in 0..count {
                let (body, severity) = self.body();
                let traced = self.rng.random_bool(0.5);
                let jitter = self.rng.random_range(0..1_000_000);
                log_records.push(OtlpLog {
                    time_unix_nano: (now_ns - jitter) as u64,
                    observed_time_unix_nano: now_ns as u64,
                    severity_number: severity,
                    severity_text: String::new(),
                    body: Some(AnyValue {
                        value: Some(text(body)),
                    }),
                    attributes: self.attributes(),
                    trace_id: if traced {
                        self.rng.random::<[u8; 16]>().to_vec()
                    } else {
                        Vec::new()
                    },
                    span_id: if traced {
                        self.rng.random::<[u8; 8]>().to_vec()
                    } else {
                        Vec::new()
                    },
                    ..Default::default()
                });
            }
            resource_logs.push(ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![ScopeLogs {
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        ExportLogsServiceRequest { resource_logs }
    }

    /// A traces request of `traces` traces of 3-6 spans each (a server span and its children).
    pub fn traces(&mut self, traces: usize, now_ns: i64) -> ExportTraceServiceRequest {
        let mut resource_spans = Vec::with_capacity(traces);
        for _ in 0..traces {
            let service = self.services[self.rng.random_range(0..self.services.len())].clone();
            let trace_id: [u8; 16] = self.rng.random();
            self.trace_ids.push(hex::encode(trace_id));
            let root_id: [u8; 8] = self.rng.random();
            let duration = self.rng.random_range(1_000_000..400_000_000i64);
            let start = now_ns - duration;
            let error = self.rng.random_bool(0.03);
            let route = ROUTES[self.rng.random_range(0..ROUTES.len())];
            let mut spans = vec![Span {
                trace_id: trace_id.to_vec(),
                span_id: root_id.to_vec(),
                name: format!("GET {route}"),
                kind: span::SpanKind::Server as i32,
                start_time_unix_nano: start as u64,
                end_time_unix_nano: now_ns as u64,
                attributes: self.attributes(),
                status: Some(Status {
                    code: if error { 2 } else { 1 },
                    message: if error {
                        "upstream timeout".to_owned()
                    } else {
                        String::new()
                    },
                }),
                ..Default::default()
            }];
            for child in 0..self.rng.random_range(2..6) {
                let child_start = start + duration / 10 * child;
                spans.push(Span {
                    trace_id: trace_id.to_vec(),
                    span_id: self.rng.random::<[u8; 8]>().to_vec(),
                    parent_span_id: root_id.to_vec(),
                    name: [
                        "SELECT orders",
                        "redis GET",
                        "POST /charge",
                        "kafka publish",
                        "render",
                    ][child as usize % 5]
                        .to_owned(),
                    kind: span::SpanKind::Client as i32,
                    start_time_unix_nano: child_start as u64,
                    end_time_unix_nano: (child_start + duration / 12) as u64,
                    attributes: vec![
                        kv("db.system", text("postgresql")),
                        kv("net.peer.port", int(5432)),
                    ],
                    ..Default::default()
                });
            }
            resource_spans.push(ResourceSpans {
                resource: Some(self.resource(&service)),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        ExportTraceServiceRequest { resource_spans }
    }

    /// A fresh numeric id, for unique markers.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// The records of a logs request as the plane stores them.
pub fn rows(request: &ExportLogsServiceRequest, now_ns: i64) -> Vec<LogRecord> {
    let window = Acceptance::new(now_ns, std::time::Duration::from_secs(7 * 86_400));
    convert(&ExportRequest::Logs(request.clone()), &window, now_ns).logs
}

/// The size of a record as a log line in a file (`timestamp severity service body key=value ...`): the "raw bytes"
/// every throughput and disk figure is relative to.
pub fn raw_len(record: &LogRecord) -> usize {
    let attributes: usize = record
        .attributes
        .iter()
        .map(|(k, v)| k.len() + 2 + gantry_store::model::value_text(v).len())
        .sum();
    let ids = if record.trace_id.is_empty() {
        0
    } else {
        32 + 16 + 20
    };
    30 + 1
        + record.severity.len()
        + 1
        + record.service.len()
        + 1
        + record.body.len()
        + attributes
        + ids
        + 1
}
