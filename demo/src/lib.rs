//! The demo platform: a small bank like the one in Gantry's origin story. `gateway` (the HTTP entry) calls
//! `accounts` and `payments`, and `payments` calls `ledger`, each through the routed address of the service it
//! calls (`ACCOUNTS_URL`, `PAYMENTS_URL`, `LEDGER_URL`). One binary, a role per instance (`gantry demo-service
//! --role ...`). Every service is instrumented with the OpenTelemetry Rust SDK: a server span per request with the
//! caller's context, a client span per call with its context passed on, the `http.server.request.duration`
//! histogram, and log records (errors included) correlated with the span. A bad release is simulated with
//! `ERROR_RATE` (the fraction of requests answered 500) and `EXTRA_LATENCY_MS` (added to every request).
//!
//! [`load`] is the load generator `gantry demo` runs against `gateway`.

pub mod load;
mod telemetry;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use opentelemetry::KeyValue;
use opentelemetry::logs::{AnyValue, LogRecord, Logger, LoggerProvider, Severity};
use opentelemetry::metrics::{Histogram, MeterProvider};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use rand::Rng;

/// A demo service's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP entry: `GET /transfer`, `GET /balance/{id}`.
    Gateway,
    /// `GET /accounts/{id}`.
    Accounts,
    /// `POST /payments`: records the payment in the ledger.
    Payments,
    /// `POST /entries`.
    Ledger,
    /// Answers `ok` to every request, without telemetry: the upstream of `gantry bench router`.
    Echo,
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gateway" => Ok(Role::Gateway),
            "accounts" => Ok(Role::Accounts),
            "payments" => Ok(Role::Payments),
            "ledger" => Ok(Role::Ledger),
            "echo" => Ok(Role::Echo),
            other => Err(format!(
                "unknown role `{other}`: gateway, accounts, payments or ledger"
            )),
        }
    }
}

struct Service {
    role: Role,
    tracer: opentelemetry_sdk::trace::SdkTracer,
    logger: opentelemetry_sdk::logs::SdkLogger,
    duration: Histogram<f64>,
    client: reqwest::Client,
    error_rate: f64,
    extra_latency: Duration,
    version: String,
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// Runs one demo service on `GANTRY_HOST:PORT` until SIGTERM or Ctrl-C.
///
/// # Errors
/// `PORT` is missing, the port cannot be bound, or the telemetry cannot be set up.
pub async fn serve(role: Role) -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .map_err(|_| anyhow::anyhow!("PORT is not set: demo services run under a Gantry agent"))?
        .parse()?;
    let host = env_or("GANTRY_HOST", "127.0.0.1");
    if role == Role::Echo {
        // Uninstrumented: its RED and its canary verdicts come from the routers' spans alone. The same knobs.
        let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
        let error_rate: f64 = env_or("ERROR_RATE", "0").parse().unwrap_or(0.0);
        let extra = Duration::from_millis(env_or("EXTRA_LATENCY_MS", "0").parse().unwrap_or(0));
        // The answer names the version that gave it.
        let version = env_or("GANTRY_VERSION", "dev");
        let app = Router::new().fallback(move || {
            let version = version.clone();
            async move {
                if !extra.is_zero() {
                    tokio::time::sleep(extra).await;
                }
                if rand::random::<f64>() < error_rate {
                    (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        format!("injected error from {version}\n"),
                    )
                } else {
                    (axum::http::StatusCode::OK, format!("ok from {version}\n"))
                }
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(terminated())
            .await?;
        return Ok(());
    }
    let telemetry = telemetry::init()?;
    let name = format!("{role:?}").to_lowercase();
    let service = Arc::new(Service {
        role,
        tracer: telemetry.tracer.tracer("gantry-demo"),
        logger: telemetry.logger.logger("gantry-demo"),
        duration: telemetry
            .meter
            .meter("gantry-demo")
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_description("Duration of HTTP server requests")
            .build(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        error_rate: env_or("ERROR_RATE", "0").parse().unwrap_or(0.0),
        extra_latency: Duration::from_millis(env_or("EXTRA_LATENCY_MS", "0").parse().unwrap_or(0)),
        version: env_or("GANTRY_VERSION", "dev"),
    });
    let app = match role {
        Role::Gateway => Router::new()
            .route("/transfer", get(transfer))
            .route("/balance/{id}", get(balance)),
        Role::Accounts => Router::new().route("/accounts/{id}", get(account)),
        Role::Payments => Router::new().route("/payments", post(payment)),
        Role::Ledger => Router::new().route("/entries", post(entry)),
        Role::Echo => Router::new(),
    }
    .route("/healthz", get(|| async { "ok" }))
    .with_state(service.clone());
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    emit(
        &service,
        Severity::Info,
        &format!("{name} {} listening on {host}:{port}", service.version),
        None,
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    telemetry.shutdown();
    Ok(())
}

/// Resolves at SIGTERM or Ctrl-C.
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn emit(service: &Service, severity: Severity, body: &str, cx: Option<&opentelemetry::Context>) {
    let mut record = service.logger.create_log_record();
    record.set_severity_number(severity);
    record.set_severity_text(severity.name());
    record.set_body(AnyValue::from(body.to_owned()));
    if let Some(cx) = cx {
        let span = cx.span();
        let context = span.span_context();
        record.set_trace_context(
            context.trace_id(),
            context.span_id(),
            Some(context.trace_flags()),
        );
    }
    service.logger.emit(record);
}

/// Runs `work` in a server span continued from the caller's context, with the knobs applied: extra latency, and
/// an error answer for a fraction of requests.
async fn handle<F, Fut>(
    service: &Service,
    method: Method,
    route: &str,
    headers: &HeaderMap,
    work: F,
) -> axum::response::Response
where
    F: FnOnce(opentelemetry::Context) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, (StatusCode, String)>>,
{
    let started = Instant::now();
    let parent = telemetry::extract(headers);
    let span = service
        .tracer
        .span_builder(format!("{method} {route}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("http.route", route.to_owned()),
        ])
        .start_with_context(&service.tracer, &parent);
    let cx = parent.with_span(span);
    if !service.extra_latency.is_zero() {
        tokio::time::sleep(service.extra_latency).await;
    }
    let failing =
        service.error_rate > 0.0 && rand::rng().random_bool(service.error_rate.clamp(0.0, 1.0));
    let result = if failing {
        Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected failure (ERROR_RATE)".to_owned(),
        ))
    } else {
        work(cx.clone()).await
    };
    let (status, body) = match result {
        Ok(body) => (StatusCode::OK, body),
        Err((status, message)) => {
            emit(
                service,
                Severity::Error,
                &format!("{method} {route} failed: {message}"),
                Some(&cx),
            );
            (status, serde_json::json!({"error": message}))
        }
    };
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if status.is_server_error() {
        span.set_status(Status::error(
            body["error"].as_str().unwrap_or("error").to_owned(),
        ));
    }
    span.end();
    service.duration.record(
        started.elapsed().as_secs_f64(),
        &[
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("http.route", route.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
        ],
    );
    (status, axum::Json(body)).into_response()
}

/// Calls another service in a client span, passing the context on.
async fn call(
    service: &Service,
    cx: &opentelemetry::Context,
    method: reqwest::Method,
    url: String,
) -> Result<serde_json::Value, (StatusCode, String)> {
    let span = service
        .tracer
        .span_builder(format!("{method}"))
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("url.full", url.clone()),
        ])
        .start_with_context(&service.tracer, cx);
    let call_cx = cx.with_span(span);
    let mut headers = reqwest::header::HeaderMap::new();
    telemetry::inject(&call_cx, &mut headers);
    let answer = service
        .client
        .request(method, &url)
        .headers(headers)
        .send()
        .await;
    let span = call_cx.span();
    let result = match answer {
        Ok(response) => {
            let status = response.status();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if status.is_success() {
                response
                    .json()
                    .await
                    .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))
            } else {
                Err((StatusCode::BAD_GATEWAY, format!("{url} answered {status}")))
            }
        }
        Err(error) => Err((StatusCode::BAD_GATEWAY, format!("{url}: {error}"))),
    };
    if let Err((_, message)) = &result {
        span.set_status(Status::error(message.clone()));
    }
    span.end();
    result
}

fn upstream(key: &str) -> String {
    env_or(key, "http://127.0.0.1:1")
}

async fn transfer(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let s = service.clone();
    handle(
        &service,
        Method::GET,
        "/transfer",
        &headers,
        |cx| async move {
            let id = rand::rng().random_range(1..=1000);
            let account = call(
                &s,
                &cx,
                reqwest::Method::GET,
                format!("{}/accounts/{id}", upstream("ACCOUNTS_URL")),
            )
            .await?;
            let payment = call(
                &s,
                &cx,
                reqwest::Method::POST,
                format!("{}/payments", upstream("PAYMENTS_URL")),
            )
            .await?;
            Ok(serde_json::json!({"account": account, "payment": payment, "version": s.version}))
        },
    )
    .await
}

async fn balance(
    State(service): State<Arc<Service>>,
    Path(id): Path<u32>,
    headers: HeaderMap,
) -> axum::response::Response {
    let s = service.clone();
    handle(
        &service,
        Method::GET,
        "/balance/{id}",
        &headers,
        |cx| async move {
            call(
                &s,
                &cx,
                reqwest::Method::GET,
                format!("{}/accounts/{id}", upstream("ACCOUNTS_URL")),
            )
            .await
        },
    )
    .await
}

async fn account(
    State(service): State<Arc<Service>>,
    Path(id): Path<u32>,
    headers: HeaderMap,
) -> axum::response::Response {
    handle(
        &service,
        Method::GET,
        "/accounts/{id}",
        &headers,
        |_| async move {
            Ok(serde_json::json!({"id": id, "balance_cents": u64::from(id) * 1234 % 1_000_000}))
        },
    )
    .await
}

async fn payment(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let s = service.clone();
    handle(
        &service,
        Method::POST,
        "/payments",
        &headers,
        |cx| async move {
            let entry = call(
                &s,
                &cx,
                reqwest::Method::POST,
                format!("{}/entries", upstream("LEDGER_URL")),
            )
            .await?;
            Ok(serde_json::json!({"payment": rand::rng().random::<u32>(), "entry": entry}))
        },
    )
    .await
}

async fn entry(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let role = service.role;
    handle(
        &service,
        Method::POST,
        "/entries",
        &headers,
        |_| async move {
            Ok(serde_json::json!({"entry": rand::rng().random::<u32>(), "by": format!("{role:?}")}))
        },
    )
    .await
}
