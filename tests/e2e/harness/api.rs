//! The client side: HTTP requests to a plane's API and OTLP/HTTP listeners, gRPC channels, reading the JSON that
//! comes back, and waiting on a condition until a deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde_json::Value;

use super::process::{Agent, Plane};

/// Deadline for acknowledged data to show up in the query API (contract: ~1 s).
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(10);

pub const CT_PROTOBUF: &str = "application/x-protobuf";
pub const CT_JSON: &str = "application/json";

/// Which listener an OTLP/HTTP request goes to (the contract serves OTLP/HTTP on both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Http,
    OtlpHttp,
}

pub const BOTH_PORTS: [Port; 2] = [Port::Http, Port::OtlpHttp];

/// An OTLP signal, which names its OTLP/HTTP path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Logs,
    Traces,
    Metrics,
}

pub const SIGNALS: [Signal; 3] = [Signal::Logs, Signal::Traces, Signal::Metrics];

impl Signal {
    pub fn path(self) -> &'static str {
        match self {
            Signal::Logs => "/v1/logs",
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }
}

/// A reqwest client that never goes through a proxy and never hangs forever.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        // Below the plane's keep-alive idle limit (its 10 s header read timeout), as the agent does.
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("reqwest client")
}

/// Polls `f` until it returns `Ok(Some(v))` or `timeout` passes. `Ok(None)` and `Err` both mean
/// "not yet"; the last error (if any) is included in the timeout message.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(25);
    let mut last_err: Option<anyhow::Error> = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------------------------
// Reading responses
// ---------------------------------------------------------------------------------------------

/// Reads a JSON field that may be a number or a string holding a number (OTLP JSON int64).
pub fn json_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// `obj[camel]` or `obj[snake]` (camelCase vs snake_case in OTLP JSON responses).
pub fn field<'a>(obj: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    obj.get(camel).or_else(|| obj.get(snake))
}

/// The `Content-Type` of a response (empty if it has none).
pub fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Reads a response into (status, JSON body); a body that is not JSON becomes `Value::String`.
pub async fn json_response(resp: reqwest::Response) -> Result<(u16, Value)> {
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

/// Requires a 200 and returns the body bytes (error includes the body on failure).
async fn expect_200(resp: reqwest::Response) -> Result<Vec<u8>> {
    let status = resp.status();
    let url = resp.url().clone();
    let bytes = resp.bytes().await?.to_vec();
    ensure!(
        status.as_u16() == 200,
        "POST {url} -> {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(bytes)
}

/// `body.hits` as a Vec.
pub fn hits(body: &Value) -> Result<Vec<Value>> {
    body.get("hits")
        .and_then(Value::as_array)
        .cloned()
        .with_context(|| format!("response has no hits array: {body}"))
}

/// One metric series: labels and `(unix_ms, value)` points.
pub type Series = (BTreeMap<String, Value>, Vec<(i64, f64)>);

/// `body.series` as (labels, points) pairs.
fn series(body: &Value) -> Result<Vec<Series>> {
    let arr = body
        .get("series")
        .and_then(Value::as_array)
        .with_context(|| format!("no series array in {body}"))?;
    let mut out = Vec::new();
    for s in arr {
        let labels = s
            .get("labels")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let mut points = Vec::new();
        for p in s
            .get("points")
            .and_then(Value::as_array)
            .with_context(|| format!("series without points: {s}"))?
        {
            let pair = p
                .as_array()
                .with_context(|| format!("point not an array: {p}"))?;
            ensure!(pair.len() == 2, "point is not [ts, value]: {p}");
            let ts = json_i64(&pair[0]).with_context(|| format!("bad point ts {p}"))?;
            let v = match &pair[1] {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .with_context(|| format!("bad point value {p}"))?;
            points.push((ts, v));
        }
        out.push((labels, points));
    }
    Ok(out)
}

/// Every point value of every series.
pub fn values(series: &[Series]) -> Vec<f64> {
    series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .collect()
}

/// A gRPC request carrying `token` as its `authorization` metadata (none if `token` is empty).
pub fn grpc_request<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if !token.is_empty() {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii token"),
        );
    }
    req
}

// ---------------------------------------------------------------------------------------------
// The plane's API
// ---------------------------------------------------------------------------------------------

impl Plane {
    pub fn url(&self, port: Port, path: &str) -> String {
        match port {
            Port::Http => format!("{}{path}", self.endpoints.http_url()),
            Port::OtlpHttp => format!("{}{path}", self.endpoints.otlp_http_url()),
        }
    }

    /// Waits until the running plane accepts `token` as a valid credential.
    pub async fn wait_token_known(&self, token: &str) -> Result<()> {
        wait_until(
            SEARCH_TIMEOUT,
            "the plane to accept a new token",
            || async {
                let (status, _) = self.api_get("/api/v1/tokens", token).await?;
                Ok((status != 401).then_some(()))
            },
        )
        .await
    }

    /// `GET` on the HTTP API; `token` may be empty for "no Authorization header". Returns the
    /// status and the body parsed as JSON (`Value::String(raw)` if it is not JSON).
    pub async fn api_get(&self, path: &str, token: &str) -> Result<(u16, Value)> {
        self.api_get_query(path, &[], token).await
    }

    /// `GET path?query` on the HTTP API (query values are URL-encoded here).
    pub async fn api_get_query(
        &self,
        path: &str,
        query: &[(&str, &str)],
        token: &str,
    ) -> Result<(u16, Value)> {
        let mut req = self.client.get(self.url(Port::Http, path)).query(query);
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("GET {path} {query:?}"))?;
        json_response(resp).await
    }

    /// `GET path?query` on the HTTP API, required to answer 200; returns the body.
    async fn api_get_ok(&self, path: &str, query: &[(&str, &str)], token: &str) -> Result<Value> {
        let (status, body) = self.api_get_query(path, query, token).await?;
        ensure!(status == 200, "GET {path} {query:?} -> {status}: {body}");
        Ok(body)
    }

    /// Sends a request with a JSON body to the HTTP API.
    pub async fn api_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: &str,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .client
            .request(method.clone(), self.url(Port::Http, path));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        json_response(resp).await
    }

    /// POSTs an OTLP/HTTP request. `headers` are extra headers (e.g. `Content-Encoding`).
    pub async fn post_otlp(
        &self,
        port: Port,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        token: &str,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::Response> {
        let mut req = self
            .client
            .post(self.url(port, path))
            .header("Content-Type", content_type)
            .body(body);
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
            .await
            .with_context(|| format!("POST {path} ({content_type})"))
    }

    /// POSTs `req` as protobuf to `signal`'s path on `port`, requires a 200 and decodes the response.
    async fn send_protobuf<Resp: prost::Message + Default>(
        &self,
        port: Port,
        signal: Signal,
        token: &str,
        req: &impl prost::Message,
    ) -> Result<Resp> {
        let path = signal.path();
        let resp = self
            .post_otlp(port, path, CT_PROTOBUF, req.encode_to_vec(), token, &[])
            .await?;
        let bytes = expect_200(resp).await?;
        Resp::decode(bytes.as_slice()).with_context(|| format!("decoding the response to {path}"))
    }

    /// POSTs a protobuf logs request to `port` and requires a 200; returns the response.
    pub async fn send_logs(
        &self,
        port: Port,
        token: &str,
        req: &ExportLogsServiceRequest,
    ) -> Result<ExportLogsServiceResponse> {
        self.send_protobuf(port, Signal::Logs, token, req).await
    }

    /// POSTs a protobuf traces request to `port` and requires a 200; returns the response.
    pub async fn send_traces(
        &self,
        port: Port,
        token: &str,
        req: &ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse> {
        self.send_protobuf(port, Signal::Traces, token, req).await
    }

    /// POSTs a protobuf metrics request to `port` and requires a 200; returns the response.
    pub async fn send_metrics(
        &self,
        port: Port,
        token: &str,
        req: &ExportMetricsServiceRequest,
    ) -> Result<ExportMetricsServiceResponse> {
        self.send_protobuf(port, Signal::Metrics, token, req).await
    }

    /// `GET /api/v1/logs` with `q`, `from=-1h` and `limit`; requires 200, returns the body.
    pub async fn search_logs(&self, token: &str, q: &str, limit: usize) -> Result<Value> {
        let limit = limit.to_string();
        self.api_get_ok(
            "/api/v1/logs",
            &[("q", q), ("from", "-1h"), ("limit", &limit)],
            token,
        )
        .await
    }

    /// Waits until `GET /api/v1/logs?q=...` returns exactly `n` hits; returns them.
    pub async fn wait_for_logs(&self, token: &str, q: &str, n: usize) -> Result<Vec<Value>> {
        let last = std::sync::Mutex::new(Value::Null);
        let res = wait_until(
            SEARCH_TIMEOUT,
            &format!("{n} log hit(s) for q={q:?}"),
            || {
                let last = &last;
                async move {
                    let body = self.search_logs(token, q, n.max(10) * 2).await?;
                    let hits = hits(&body)?;
                    *last.lock().expect("lock") = body;
                    Ok((hits.len() == n).then_some(hits))
                }
            },
        )
        .await;
        res.with_context(|| format!("last response: {}", last.lock().expect("lock")))
    }

    /// Pages through `GET /api/v1/logs?q=&from=&limit=500` with `cursor` until there is no
    /// `next_cursor`; returns every hit.
    pub async fn all_logs(&self, token: &str, q: &str, from: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _page in 0..10_000 {
            let mut query = vec![("q", q), ("from", from), ("limit", "500")];
            if let Some(c) = cursor.as_deref() {
                query.push(("cursor", c));
            }
            let body = self.api_get_ok("/api/v1/logs", &query, token).await?;
            let page = hits(&body)?;
            let next = body
                .get("next_cursor")
                .and_then(Value::as_str)
                .map(str::to_string);
            ensure!(
                !(page.is_empty() && next.is_some()),
                "empty page with a next_cursor: {body}"
            );
            out.extend(page);
            match next {
                Some(c) if !c.is_empty() => cursor = Some(c),
                _ => return Ok(out),
            }
        }
        bail!("more than 10000 pages for q={q:?}: the cursor never ends")
    }

    /// Waits until paging through `q` yields exactly `n` hits; returns them.
    pub async fn wait_for_all_logs(&self, token: &str, q: &str, n: usize) -> Result<Vec<Value>> {
        let last = std::sync::Mutex::new(0usize);
        let res = wait_until(
            SEARCH_TIMEOUT,
            &format!("{n} log hit(s) for q={q:?}"),
            || {
                let last = &last;
                async move {
                    let all = self.all_logs(token, q, "-1h").await?;
                    *last.lock().expect("lock") = all.len();
                    Ok((all.len() == n).then_some(all))
                }
            },
        )
        .await;
        res.with_context(|| format!("last count: {}", last.lock().expect("lock")))
    }

    /// Waits until `GET /api/v1/traces/{trace_id}` answers 200 with exactly `spans` spans; returns the trace.
    pub async fn wait_for_trace(&self, token: &str, trace_id: &str, spans: usize) -> Result<Value> {
        let path = format!("/api/v1/traces/{trace_id}");
        let last = std::sync::Mutex::new(Value::Null);
        let res = wait_until(
            SEARCH_TIMEOUT,
            &format!("trace {trace_id} with {spans} span(s)"),
            || async {
                let (status, body) = self.api_get(&path, token).await?;
                let n = body["spans"].as_array().map_or(0, Vec::len);
                *last.lock().expect("lock") = body.clone();
                Ok((status == 200 && n == spans).then_some(body))
            },
        )
        .await;
        res.with_context(|| format!("last response: {}", last.lock().expect("lock")))
    }

    /// `GET /api/v1/traces` with `query`, required to answer 200; returns the trace summaries.
    pub async fn search_traces(&self, token: &str, query: &[(&str, &str)]) -> Result<Vec<Value>> {
        let body = self.api_get_ok("/api/v1/traces", query, token).await?;
        body["traces"]
            .as_array()
            .cloned()
            .with_context(|| format!("no traces array: {body}"))
    }

    /// `GET /api/v1/metrics` with `query`, required to answer 200; returns its series.
    pub async fn query_metrics(&self, token: &str, query: &[(&str, &str)]) -> Result<Vec<Series>> {
        series(&self.api_get_ok("/api/v1/metrics", query, token).await?)
    }

    /// Waits until the row of `service` in `GET /api/v1/services?from=-1h` satisfies `done`; returns it.
    pub async fn wait_for_service(
        &self,
        token: &str,
        service: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        wait_until(
            SEARCH_TIMEOUT,
            &format!("the row of {service} in /api/v1/services"),
            || async {
                let body = self
                    .api_get_ok("/api/v1/services", &[("from", "-1h")], token)
                    .await?;
                Ok(body["services"]
                    .as_array()
                    .with_context(|| format!("no services array: {body}"))?
                    .iter()
                    .find(|s| s["service"] == service && done(s))
                    .cloned())
            },
        )
        .await
    }

    /// A gRPC channel to the OTLP/gRPC listener.
    pub async fn grpc_channel(&self) -> Result<tonic::transport::Channel> {
        let ep = tonic::transport::Endpoint::from_shared(self.endpoints.otlp_grpc_url())?
            .timeout(Duration::from_secs(60));
        ep.connect()
            .await
            .with_context(|| format!("connecting to {}", self.endpoints.otlp_grpc))
    }

    /// The plane's own `/metrics`, read with `token`, as (sample line without value → value).
    pub async fn self_metrics(&self, token: &str) -> Result<BTreeMap<String, f64>> {
        let response = self
            .client
            .get(self.url(Port::Http, "/metrics"))
            .bearer_auth(token)
            .send()
            .await?;
        ensure!(
            response.status() == 200,
            "/metrics -> {}",
            response.status()
        );
        Ok(samples(&response.text().await?))
    }
}

impl Agent {
    /// The agent's `/metrics` as (sample line without value → value).
    pub async fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let text = http_client()
            .get(format!("http://{}/metrics", self.http))
            .send()
            .await?
            .text()
            .await?;
        Ok(samples(&text))
    }
}

/// The samples of a Prometheus or OpenMetrics text exposition: (line without its value → value).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}
