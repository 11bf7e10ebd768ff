//! The reverse proxy of one routed service, on hyper (through axum, for the server side) and hyper-util's pooled
//! client: hop-by-hop headers are dropped (RFC 9110, section 7.6.1), `traceparent` is set to the router's span,
//! and a request that could not reach its instance (the connection was refused before anything was sent) is tried
//! once on another, when it has no body to resend. While the table names a version to mirror to, a share of
//! the safe requests is copied to one of its instances (see [`mirror`]).

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

use super::spans::{LiveAnswer, RouterSpan, SpanSink, parse_traceparent, traceparent};
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

/// Mirrored copies in flight per service at most; past it, requests are not copied (a copy never waits).
pub const MIRRORS_IN_FLIGHT: usize = 256;
/// How long a mirrored copy may take, and how long it waits for the live answer to be recorded.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Permits for mirrored copies in flight ([`MIRRORS_IN_FLIGHT`]).
    pub mirrors: Arc<tokio::sync::Semaphore>,
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
    // Only a router marks a mirrored copy: a caller cannot.
    parts.headers.remove("x-gantry-mirror");
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
        mirror_of: None,
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
    // Where the live answer goes when this request is mirrored.
    let mut live: Option<tokio::sync::oneshot::Sender<LiveAnswer>> = None;
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
                live,
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
        if attempt == 0 && requested.is_none() && bodyless {
            live = mirror(&state, table.as_ref(), &parts, &path_and_query, &span);
        }
        let Ok(uri) =
            format!("http://{}{path_and_query}", upstream.address).parse::<axum::http::Uri>()
        else {
            return answer_self(
                &state,
                span,
                live,
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
                tell(live, &span);
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
                    live,
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
        live,
        clock,
        StatusCode::BAD_GATEWAY,
        "upstream_failed",
        "no instance answered\n".into(),
    )
}

/// Hands the live answer to the request's mirrored copy, if it has one.
fn tell(live: Option<tokio::sync::oneshot::Sender<LiveAnswer>>, span: &RouterSpan) {
    if let Some(live) = live {
        let _ = live.send(LiveAnswer {
            version: span.version.clone(),
            status: span.status,
            duration_ns: span.end_ns.saturating_sub(span.start_ns),
        });
    }
}

/// Copies a safe request (`GET`, `HEAD`, `OPTIONS`, no body: RFC 9110, section 9.2.1, so the copy has no effect
/// the service's callers did not ask for) to an instance of the table's mirror version, when the table names one,
/// the live request went to another version, the draw falls within the mirror's share, and fewer than
/// [`MIRRORS_IN_FLIGHT`] copies are in flight. The copy runs on its own task, continues the request's trace with a
/// span of its own and carries `x-gantry-mirror: 1`; its answer is read through and dropped. Returns where the live
/// answer must be sent: the copy's span records both, once both are known.
///
/// Both answers are taken alike, so that a pair leans to neither version: a copy refused a connection is tried once
/// on another instance, as the live request is; a pair where either side gave no answer (the copy past
/// [`MIRROR_TIMEOUT`], the live request abandoned by its caller) is not recorded.
fn mirror(
    state: &Arc<State>,
    table: Option<&Arc<super::Table>>,
    parts: &axum::http::request::Parts,
    path_and_query: &str,
    live_span: &RouterSpan,
) -> Option<tokio::sync::oneshot::Sender<LiveAnswer>> {
    let table = Arc::clone(table?);
    let wanted = table.mirror.clone()?;
    let safe = matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if !safe || live_span.version == wanted.version {
        return None;
    }
    if rand::random::<f64>() * 100.0 >= wanted.percent {
        return None;
    }
    // Only when the version has an instance here.
    table
        .pick_with_share(None, None, Some(&wanted.version))
        .filter(|(target, _)| target.version == wanted.version)?;
    let permit = state.mirrors.clone().try_acquire_owned().ok()?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let state = Arc::clone(state);
    let method = parts.method.clone();
    let path_and_query = path_and_query.to_owned();
    let mut headers = parts.headers.clone();
    // The copy's span: the live one's request, with a span id, a version and a start of its own.
    let mut span = RouterSpan {
        span_id: rand::random(),
        version: wanted.version.clone(),
        start_ns: now_ns(),
        share: None,
        ..live_span.clone()
    };
    tokio::spawn(async move {
        let _permit = permit;
        let clock = Instant::now();
        if let Ok(value) = HeaderValue::from_str(&traceparent(&span.trace_id, &span.span_id)) {
            headers.insert("traceparent", value);
        }
        headers.insert("x-gantry-mirror", HeaderValue::from_static("1"));
        let mut avoid: Option<String> = None;
        for attempt in 0..2 {
            let Some((target, _)) = table
                .pick_with_share(avoid.as_deref(), None, Some(&wanted.version))
                .filter(|(target, _)| target.version == wanted.version)
            else {
                return;
            };
            span.instance_id = target.instance_id.clone();
            span.peer = target.address.clone();
            let Ok(uri) =
                format!("http://{}{path_and_query}", target.address).parse::<axum::http::Uri>()
            else {
                return;
            };
            let mut request = axum::http::Request::new(Body::empty());
            *request.method_mut() = method.clone();
            *request.uri_mut() = uri;
            *request.headers_mut() = headers.clone();
            target.outstanding.fetch_add(1, Ordering::Relaxed);
            let guard = InFlight(target.clone());
            let answer = tokio::time::timeout(MIRROR_TIMEOUT, state.client.request(request)).await;
            span.end_ns = span.start_ns + clock.elapsed().as_nanos() as u64;
            match answer {
                // No answer in time: not a pair.
                Err(_) => return,
                Ok(Err(error)) if error.is_connect() && attempt == 0 => {
                    avoid = Some(target.instance_id.clone());
                    continue;
                }
                Ok(Err(_)) => {
                    span.status = StatusCode::BAD_GATEWAY.as_u16();
                    span.error = Some("upstream_failed".to_owned());
                }
                Ok(Ok(response)) => {
                    span.status = response.status().as_u16();
                    // Read through (and drop) so that the connection goes back to the pool.
                    let mut body = response.into_body();
                    let _ = tokio::time::timeout(MIRROR_TIMEOUT, async {
                        while let Some(Ok(_)) = body.frame().await {}
                    })
                    .await;
                }
            }
            drop(guard);
            break;
        }
        // The live answer may never come (its caller went away): the copy is then not a pair, and not recorded.
        if let Ok(Ok(live)) = tokio::time::timeout(MIRROR_TIMEOUT, receiver).await {
            span.mirror_of = Some(live);
            state.spans.record(span);
        }
    });
    Some(sender)
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
    live: Option<tokio::sync::oneshot::Sender<LiveAnswer>>,
    clock: Instant,
    status: StatusCode,
    error: &str,
    message: String,
) -> Response<Body> {
    span.status = status.as_u16();
    span.end_ns = span.start_ns + clock.elapsed().as_nanos() as u64;
    span.error = Some(error.to_owned());
    tell(live, &span);
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
