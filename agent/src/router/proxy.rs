//! The reverse proxy of one routed service, on hyper (through axum, for the server side) and hyper-util's pooled
//! client: hop-by-hop headers are dropped (RFC 9110, section 7.6.1), `traceparent` is set to the router's span,
//! and a request that could not reach its instance (the connection was refused before anything was sent) is tried
//! once on another, when it has no body to resend.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::spans::{RouterSpan, SpanSink, parse_traceparent, traceparent};
use super::{Tables, Upstream};

/// The pooled HTTP client routers forward with (HTTP/1.1 to instances).
pub type HttpClient = Client<HttpConnector, Body>;

/// A pooled client; connections idle for 30 s are closed.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// What one service's listener shares.
pub struct State {
    /// The service.
    pub service: String,
    /// Every service's table.
    pub tables: Tables,
    /// The forwarding client.
    pub client: HttpClient,
    /// Where spans go.
    pub spans: SpanSink,
}

/// The listener's application: every path proxied.
pub fn app(state: State) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .with_state(Arc::new(state))
}

/// Headers that belong to one connection, not to the request (RFC 9110, section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    request: Request,
) -> Response<Body> {
    let start_ns = now_ns();
    let clock = Instant::now();
    let (mut parts, body) = request.into_parts();
    let (trace_id, parent_span_id) = match parts
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
    {
        Some((trace, parent)) => (trace, Some(parent)),
        None => (rand::random(), None),
    };
    let span_id: [u8; 8] = rand::random();
    strip_hop_by_hop(&mut parts.headers);
    if let Ok(value) = HeaderValue::from_str(&traceparent(&trace_id, &span_id)) {
        parts.headers.insert("traceparent", value);
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut span = RouterSpan {
        service: state.service.clone(),
        version: String::new(),
        instance_id: String::new(),
        trace_id,
        span_id,
        parent_span_id,
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        status: 0,
        start_ns,
        end_ns: 0,
        peer: String::new(),
        error: None,
        share: None,
    };
    let bodyless = http_body::Body::size_hint(&body).exact() == Some(0);
    let mut body = Some(body);
    let mut avoid: Option<String> = None;
    let table = state
        .tables
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&state.service)
        .cloned();
    let key = table
        .as_ref()
        .and_then(|t| t.sticky.as_ref())
        .and_then(|sticky| sticky_key(sticky, &parts.headers));
    // Blue-green's preview: a request may ask for a version.
    let requested = parts
        .headers
        .get("x-gantry-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    for attempt in 0..2 {
        let Some((upstream, share)) = table.as_ref().and_then(|t| {
            t.pick_with_share(avoid.as_deref(), key.as_deref(), requested.as_deref())
        }) else {
            let message = format!(
                "no healthy instance of `{}`: `gantry status {}` shows why\n",
                state.service, state.service
            );
            return answer_self(
                &state,
                span,
                clock,
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_instance",
                message,
            );
        };
        span.version = upstream.version.clone();
        // The canary judge needs the probability of this pick: a sticky key's pick is not random, and a retry's
        // pick depends on the first one's failure, so neither carries it.
        span.share = share.filter(|_| key.is_none() && attempt == 0);
        span.instance_id = upstream.instance_id.clone();
        span.peer = upstream.address.clone();
        let Ok(uri) =
            format!("http://{}{path_and_query}", upstream.address).parse::<axum::http::Uri>()
        else {
            return answer_self(
                &state,
                span,
                clock,
                StatusCode::BAD_GATEWAY,
                "bad_address",
                "bad upstream address\n".into(),
            );
        };
        let mut outgoing = axum::http::Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .version(axum::http::Version::HTTP_11)
            .body(match body.take() {
                Some(body) => body,
                None => Body::empty(),
            })
            .expect("method, uri and version are valid");
        *outgoing.headers_mut() = parts.headers.clone();
        outgoing.headers_mut().remove(header::HOST);
        if let Some(host) = parts.headers.get(header::HOST) {
            outgoing.headers_mut().insert(header::HOST, host.clone());
        }
        upstream.outstanding.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(upstream.clone());
        match state.client.request(outgoing).await {
            Ok(response) => {
                span.status = response.status().as_u16();
                span.end_ns = start_ns + clock.elapsed().as_nanos() as u64;
                state.spans.record(span);
                let (mut head, incoming) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                // The request stays in flight until its answer's body is read through.
                let body = incoming.map_frame(move |frame| {
                    let _ = &guard;
                    frame
                });
                return Response::from_parts(head, Body::new(body));
            }
            Err(error) => {
                drop(guard);
                let unsent = error.is_connect();
                if unsent && bodyless && attempt == 0 {
                    tracing::debug!(service = %state.service, instance = %upstream.instance_id, %error, "instance unreachable; trying another");
                    avoid = Some(upstream.instance_id.clone());
                    continue;
                }
                let message = format!(
                    "instance `{}` of `{}` failed: {error}\n",
                    upstream.instance_id, state.service
                );
                return answer_self(
                    &state,
                    span,
                    clock,
                    StatusCode::BAD_GATEWAY,
                    "upstream_failed",
                    message,
                );
            }
        }
    }
    answer_self(
        &state,
        span,
        clock,
        StatusCode::BAD_GATEWAY,
        "upstream_failed",
        "no instance answered\n".into(),
    )
}

/// The stickiness key of a request: the header's value, or the cookie's (RFC 6265, section 5.4: `name=value`
/// pairs separated by `; ` in one or more `Cookie` headers).
fn sticky_key(sticky: &gantry_proto::platform::Sticky, headers: &HeaderMap) -> Option<Vec<u8>> {
    match sticky {
        gantry_proto::platform::Sticky::Header(name) => {
            headers.get(name.as_str()).map(|v| v.as_bytes().to_vec())
        }
        gantry_proto::platform::Sticky::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_bytes().to_vec()),
    }
}

/// Decrements an endpoint's in-flight count when dropped.
struct InFlight(Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

fn answer_self(
    state: &State,
    mut span: RouterSpan,
    clock: Instant,
    status: StatusCode,
    error: &str,
    message: String,
) -> Response<Body> {
    span.status = status.as_u16();
    span.end_ns = span.start_ns + clock.elapsed().as_nanos() as u64;
    span.error = Some(error.to_owned());
    state.spans.record(span);
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
