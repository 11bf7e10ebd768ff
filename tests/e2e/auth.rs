//! Authentication and authorization: the role × route status matrix, token secrecy, and token changes (CLI and API) taking effect on a running plane.

use anyhow::{Context, Result, bail, ensure};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::api::{
    BOTH_PORTS, CT_JSON, CT_PROTOBUF, Port, SEARCH_TIMEOUT, SIGNALS, Signal, wait_until,
};
use crate::harness::otlp::{
    gauge_metric, hex, log_record, logs_request, make_span, metrics_request, now_nanos,
    number_point, random_span_id, random_trace_id, traces_request,
};
use crate::harness::process::{Plane, ROLES, create_token, gantry_cli, list_tokens, revoke_token};
use crate::harness::unique;

/// What a caller may expect from a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// 401: no, unknown or revoked credentials.
    Unauthenticated,
    /// 403: a valid token whose role may not use the route.
    Forbidden,
    /// Exactly this status.
    Status(u16),
    /// Authorized: any 2xx, or a 4xx that is not 401/403 (e.g. 404 for an unknown trace).
    Allowed,
}

impl Expect {
    fn matches(self, status: u16) -> bool {
        match self {
            Expect::Unauthenticated => status == 401,
            Expect::Forbidden => status == 403,
            Expect::Status(s) => status == s,
            Expect::Allowed => {
                (200..300).contains(&status)
                    || ((400..500).contains(&status) && status != 401 && status != 403)
            }
        }
    }
}

/// Who is calling.
#[derive(Clone, Debug)]
struct Caller {
    label: &'static str,
    /// `None`: no Authorization header at all.
    header: Option<String>,
    /// The role, for valid tokens.
    role: Option<&'static str>,
}

/// A small valid OTLP protobuf body for each path.
fn otlp_body(signal: Signal) -> Vec<u8> {
    let now = now_nanos();
    match signal {
        Signal::Logs => prost::Message::encode_to_vec(&logs_request(
            "authsvc",
            vec![log_record("auth matrix", now, vec![])],
        )),
        Signal::Traces => prost::Message::encode_to_vec(&traces_request(
            "authsvc",
            vec![make_span(
                &random_trace_id(),
                &random_span_id(),
                &[],
                "auth",
                SpanKind::Server,
                now - 1_000,
                now,
                0,
            )],
        )),
        Signal::Metrics => prost::Message::encode_to_vec(&metrics_request(
            "authsvc",
            vec![gauge_metric(
                "auth_gauge",
                vec![number_point(1.0, now, vec![])],
            )],
        )),
    }
}

/// A valid node heartbeat body.
fn node_heartbeat() -> Value {
    json!({
        "facts": {
            "agent_id": unique("auth-matrix-node-"),
            "hostname": "auth-matrix.example",
            "addresses": ["10.0.0.9"],
            "cpus": 2,
            "memory_bytes": 4_294_967_296_u64,
            "os": "linux",
            "agent_version": "0.1.0",
            "labels": {},
            "runtimes": ["process"]
        },
        "shipping": {
            "sent_records": 0,
            "sent_bytes": 0,
            "records_per_sec": 0.0,
            "bytes_per_sec": 0.0,
            "buffer_bytes": 0,
            "buffer_max_bytes": 0,
            "oldest_unshipped_secs": 0.0,
            "dropped_records": 0
        },
        "interval_ms": 5000
    })
}

/// Who a route lets in: callers with a token of one of these roles, or anyone (whatever the credentials).
#[derive(Clone, Copy, Debug)]
enum Who {
    Roles(&'static [&'static str]),
    Anyone,
}

const WRITERS: Who = Who::Roles(&["ingest", "node", "admin"]);
const READERS: Who = Who::Roles(&["viewer", "deployer", "admin"]);
const ADMINS: Who = Who::Roles(&["admin"]);

/// One route of the matrix: the request, who it lets in and what they get.
struct Route {
    method: Method,
    port: Port,
    path: String,
    /// Content type and body.
    body: Option<(&'static str, Vec<u8>)>,
    who: Who,
    ok: Expect,
}

impl Route {
    fn new(method: Method, path: &str, who: Who, ok: Expect) -> Route {
        let (port, path, body) = (Port::Http, path.to_owned(), None);
        Route {
            method,
            port,
            path,
            body,
            who,
            ok,
        }
    }

    /// What `caller` must get: 401 without valid credentials, 403 for a role the route does not let in.
    fn expect(&self, caller: &Caller) -> Expect {
        match (self.who, caller.role) {
            (Who::Anyone, _) => self.ok,
            (Who::Roles(_), None) => Expect::Unauthenticated,
            (Who::Roles(roles), Some(role)) if roles.contains(&role) => self.ok,
            (Who::Roles(_), Some(_)) => Expect::Forbidden,
        }
    }
}

/// `GET path` on the API port.
fn get(path: &str, who: Who, ok: Expect) -> Route {
    Route::new(Method::GET, path, who, ok)
}

/// `POST path` on the API port with a body.
fn post(path: &str, body: (&'static str, Vec<u8>), who: Who, ok: Expect) -> Route {
    Route {
        body: Some(body),
        ..Route::new(Method::POST, path, who, ok)
    }
}

/// `DELETE path` on the API port.
fn delete(path: &str, who: Who, ok: Expect) -> Route {
    Route::new(Method::DELETE, path, who, ok)
}

/// Every route, in the order each caller tries them, with fresh bodies for each caller. The admin token's
/// `DELETE` really removes the victim token.
fn routes(victim_id: &str) -> Result<Vec<Route>> {
    use Expect::{Allowed, Status};
    let mut routes = Vec::new();
    // OTLP/HTTP on both ports.
    for port in BOTH_PORTS {
        for signal in SIGNALS {
            let body = (CT_PROTOBUF, otlp_body(signal));
            let route = post(signal.path(), body, WRITERS, Status(200));
            routes.push(Route { port, ..route });
        }
    }
    // Read API.
    let missing_trace = format!("/api/v1/traces/{}", hex(&random_trace_id()));
    for path in [
        "/api/v1/logs?q=&from=-1h",
        "/api/v1/logs/histogram?q=&from=-1h&buckets=10",
        "/api/v1/traces?from=-1h",
        missing_trace.as_str(),
        "/api/v1/metrics?name=auth_gauge&agg=avg&from=-1h",
        "/api/v1/services?from=-1h",
        "/api/v1/nodes",
        "/api/v1/nodes/no-such-node",
        "/api/v1/deployments?from=-1h",
        "/metrics",
    ] {
        routes.push(get(path, READERS, Allowed));
    }
    let heartbeat = (CT_JSON, serde_json::to_vec(&node_heartbeat())?);
    let new_token = json!({"name": unique("made-by-api-"), "role": "viewer"});
    let new_token = (CT_JSON, serde_json::to_vec(&new_token)?);
    let victim = format!("/api/v1/tokens/{victim_id}");
    routes.extend([
        // Node heartbeats: what agents send, with their node token (an ingest token's node ships telemetry only).
        post("/api/v1/nodes/heartbeat", heartbeat, WRITERS, Status(200)),
        // Token administration.
        get("/api/v1/tokens", ADMINS, Status(200)),
        post("/api/v1/tokens", new_token, ADMINS, Status(201)),
        delete(&victim, ADMINS, Status(204)),
        // Open endpoints, whatever the credentials.
        get("/healthz", Who::Anyone, Status(200)),
        get("/readyz", Who::Anyone, Status(200)),
    ]);
    Ok(routes)
}

async fn status_of(
    plane: &Plane,
    method: Method,
    url: &str,
    caller: &Caller,
    body: Option<(&str, Vec<u8>)>,
) -> Result<u16> {
    let mut req = plane.client.request(method.clone(), url);
    if let Some(h) = &caller.header {
        req = req.header("Authorization", h);
    }
    if let Some((ct, b)) = body {
        req = req.header("Content-Type", ct).body(b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} {url} as {}", caller.label))?;
    Ok(resp.status().as_u16())
}

/// Finds a token's id by name through the admin API.
async fn token_id(plane: &Plane, admin: &str, name: &str) -> Result<String> {
    let (status, body) = plane.api_get("/api/v1/tokens", admin).await?;
    ensure!(status == 200, "GET /api/v1/tokens -> {status}: {body}");
    let list = token_list(&body)?;
    let entry = list
        .iter()
        .find(|t| t["name"] == json!(name))
        .with_context(|| format!("no token named {name} in {body}"))?;
    id_of(entry)
}

/// The `id` of a token entry, a string or a number.
fn id_of(token: &Value) -> Result<String> {
    match &token["id"] {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => bail!("token id is neither a string nor a number: {other}"),
    }
}

/// The token array of `GET /api/v1/tokens` (a bare array or `{"tokens": [...]}`).
fn token_list(body: &Value) -> Result<Vec<Value>> {
    body.as_array()
        .or_else(|| body.get("tokens").and_then(Value::as_array))
        .cloned()
        .with_context(|| format!("GET /api/v1/tokens is not a list of tokens: {body}"))
}

/// Every role (and non-role) against every route.
#[tokio::test]
async fn role_route_matrix() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir)?;
    // Tokens created with the plane stopped.
    let mut callers = vec![
        Caller {
            label: "no token",
            header: None,
            role: None,
        },
        Caller {
            label: "unknown token",
            header: Some(format!("Bearer gty_{:032x}", rand::random::<u128>())),
            role: None,
        },
        Caller {
            label: "not a bearer header",
            header: Some("Basic YWRtaW46YWRtaW4=".into()),
            role: None,
        },
    ];
    let revoked_name = unique("revoked-admin-");
    let revoked = create_token(&dir, "admin", &revoked_name).await?;
    revoke_token(&dir, &revoked_name).await?;
    callers.push(Caller {
        label: "revoked admin token",
        header: Some(format!("Bearer {revoked}")),
        role: None,
    });
    // Admin last: its DELETE really removes the victim token.
    let mut admin = String::new();
    for role in ROLES {
        let t = create_token(&dir, role, &unique(&format!("{role}-"))).await?;
        if role == "admin" {
            admin = t.clone();
        }
        callers.push(Caller {
            label: role,
            header: Some(format!("Bearer {t}")),
            role: Some(role),
        });
    }
    let victim_name = unique("victim-");
    create_token(&dir, "viewer", &victim_name).await?;

    let plane = Plane::start(&dir).await?;
    let victim_id = token_id(&plane, &admin, &victim_name).await?;

    let mut mismatches = Vec::new();
    let mut checked = 0;
    for caller in &callers {
        for route in routes(&victim_id)? {
            let want = route.expect(caller);
            let url = plane.url(route.port, &route.path);
            let got = status_of(&plane, route.method.clone(), &url, caller, route.body).await?;
            checked += 1;
            if !want.matches(got) {
                let what = format!("{} {} ({:?} port)", route.method, route.path, route.port);
                mismatches.push(format!(
                    "{:<22} {what:<55} expected {want:?}, got {got}",
                    caller.label
                ));
            }
        }
    }
    ensure!(
        mismatches.is_empty(),
        "{} of {checked} role × route checks failed:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    Ok(())
}

/// `gantry token list` and `GET /api/v1/tokens` never show a secret; the API shows it once on
/// creation.
#[tokio::test]
async fn token_listings_never_show_secrets() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir)?;
    let mut secrets = Vec::new();
    let mut names = Vec::new();
    for role in ROLES {
        let name = unique(&format!("listed-{role}-"));
        secrets.push(create_token(&dir, role, &name).await?);
        names.push((name, role));
    }
    let admin = secrets[4].clone();

    let check_no_secret = |text: &str, what: &str| -> Result<()> {
        for s in &secrets {
            let body = s.trim_start_matches("gty_");
            ensure!(
                !text.contains(body),
                "{what} shows the secret of a token ({s}):\n{text}"
            );
        }
        Ok(())
    };

    // CLI, plane stopped.
    let listing = list_tokens(&dir).await?;
    check_no_secret(&listing, "`gantry token list` (plane stopped)")?;
    for (name, role) in &names {
        let line = listing
            .lines()
            .find(|l| l.contains(name.as_str()))
            .with_context(|| format!("`gantry token list` lacks {name}:\n{listing}"))?;
        ensure!(
            line.contains(role),
            "the line for {name} lacks its role {role}: {line}"
        );
    }

    let plane = Plane::start(&dir).await?;
    // API.
    let (status, body) = plane.api_get("/api/v1/tokens", &admin).await?;
    ensure!(status == 200, "GET /api/v1/tokens -> {status}: {body}");
    check_no_secret(&body.to_string(), "GET /api/v1/tokens")?;
    let list = token_list(&body)?;
    for (name, role) in &names {
        let t = list
            .iter()
            .find(|t| t["name"] == json!(name))
            .with_context(|| format!("no {name} in {body}"))?;
        ensure!(
            t["role"] == json!(role) && !t["id"].is_null(),
            "token entry should have id, name, role: {t}"
        );
    }

    // Created through the API: the secret is in the 201 and nowhere after.
    let name = unique("api-made-");
    let (status, created) = plane
        .api_send(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": name, "role": "viewer"})),
            &admin,
        )
        .await?;
    ensure!(status == 201, "POST /api/v1/tokens -> {status}: {created}");
    let secret = created["token"]
        .as_str()
        .filter(|t| t.starts_with("gty_"))
        .with_context(|| format!("201 should carry the gty_ token: {created}"))?
        .to_string();
    ensure!(
        created["name"] == json!(name) && created["role"] == "viewer" && !created["id"].is_null(),
        "201 body: {created}"
    );
    let (status, body) = plane.api_get("/api/v1/tokens", &admin).await?;
    ensure!(status == 200, "{status}: {body}");
    ensure!(
        !body.to_string().contains(secret.trim_start_matches("gty_")),
        "GET /api/v1/tokens shows the API-created secret: {body}"
    );
    let listing = list_tokens(&dir).await?;
    check_no_secret(&listing, "`gantry token list` (plane running)")?;
    ensure!(
        !listing.contains(secret.trim_start_matches("gty_")),
        "`gantry token list` shows the API-created secret:\n{listing}"
    );
    ensure!(
        listing.contains(&name),
        "`gantry token list` should list the API-created token {name}:\n{listing}"
    );
    Ok(())
}

/// Tokens created or revoked (CLI or API) while the plane runs take effect on it.
#[tokio::test]
async fn token_changes_apply_to_running_plane() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir)?;
    let admin = create_token(&dir, "admin", "boot-admin").await?;
    let plane = Plane::start(&dir).await?;

    let ingest_status = |token: String| {
        let plane = &plane;
        async move {
            let resp = plane
                .post_otlp(
                    Port::OtlpHttp,
                    "/v1/logs",
                    CT_PROTOBUF,
                    otlp_body(Signal::Logs),
                    &token,
                    &[],
                )
                .await?;
            anyhow::Ok(resp.status().as_u16())
        }
    };
    let api_status = |token: String| {
        let plane = &plane;
        async move {
            let (status, _) = plane.api_get("/api/v1/services?from=-1h", &token).await?;
            anyhow::Ok(status)
        }
    };

    // CLI create while running → picked up.
    let ingest_name = unique("live-ingest-");
    let ingest = create_token(&dir, "ingest", &ingest_name).await?;
    wait_until(SEARCH_TIMEOUT, "a CLI-created token to work", || {
        let f = ingest_status(ingest.clone());
        async move { Ok((f.await? == 200).then_some(())) }
    })
    .await?;
    // CLI revoke by name while running → rejected.
    revoke_token(&dir, &ingest_name).await?;
    wait_until(
        SEARCH_TIMEOUT,
        "a CLI-revoked (by name) token to get 401",
        || {
            let f = ingest_status(ingest.clone());
            async move { Ok((f.await? == 401).then_some(())) }
        },
    )
    .await?;

    // CLI create, CLI revoke by id.
    let viewer_name = unique("live-viewer-");
    let viewer = create_token(&dir, "viewer", &viewer_name).await?;
    wait_until(SEARCH_TIMEOUT, "a CLI-created viewer token to work", || {
        let f = api_status(viewer.clone());
        async move { Ok((f.await? == 200).then_some(())) }
    })
    .await?;
    let id = token_id(&plane, &admin, &viewer_name).await?;
    revoke_token(&dir, &id).await?;
    wait_until(
        SEARCH_TIMEOUT,
        "a CLI-revoked (by id) token to get 401",
        || {
            let f = api_status(viewer.clone());
            async move { Ok((f.await? == 401).then_some(())) }
        },
    )
    .await?;

    // API create and delete.
    let name = unique("api-viewer-");
    let (status, created) = plane
        .api_send(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": name, "role": "viewer"})),
            &admin,
        )
        .await?;
    ensure!(status == 201, "POST /api/v1/tokens -> {status}: {created}");
    let token = created["token"]
        .as_str()
        .context("token in 201")?
        .to_string();
    wait_until(SEARCH_TIMEOUT, "an API-created token to work", || {
        let f = api_status(token.clone());
        async move { Ok((f.await? == 200).then_some(())) }
    })
    .await?;
    let id = id_of(&created)?;
    let (status, body) = plane
        .api_send(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            None,
            &admin,
        )
        .await?;
    ensure!(
        status == 204,
        "DELETE /api/v1/tokens/{id} -> {status}: {body}"
    );
    wait_until(SEARCH_TIMEOUT, "an API-deleted token to get 401", || {
        let f = api_status(token.clone());
        async move { Ok((f.await? == 401).then_some(())) }
    })
    .await?;
    // Deleted tokens stay deleted across a restart.
    let mut plane = plane;
    plane.restart().await?;
    let (status, _) = plane.api_get("/api/v1/services?from=-1h", &token).await?;
    ensure!(
        status == 401,
        "an API-deleted token works again after restart: {status}"
    );
    let (status, _) = plane.api_get("/api/v1/services?from=-1h", &viewer).await?;
    ensure!(
        status == 401,
        "a CLI-revoked token works again after restart: {status}"
    );
    let (status, _) = plane.api_get("/api/v1/services?from=-1h", &admin).await?;
    ensure!(
        status == 200,
        "the admin token should still work after restart: {status}"
    );
    Ok(())
}

/// Unknown roles are refused by the CLI and by the API.
#[tokio::test]
async fn unknown_roles_are_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir)?;
    let dir_s = dir.to_str().context("utf-8 path")?;
    let out = gantry_cli(&[
        "token",
        "create",
        "--data-dir",
        dir_s,
        "--role",
        "superuser",
        "--name",
        "nope",
    ])
    .await?;
    ensure!(
        !out.status.success(),
        "`gantry token create --role superuser` should fail, printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    ensure!(
        !String::from_utf8_lossy(&out.stdout).contains("gty_"),
        "no token may be printed for an unknown role"
    );
    let admin = create_token(&dir, "admin", "the-admin").await?;
    let plane = Plane::start(&dir).await?;
    let (status, body) = plane
        .api_send(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "nope", "role": "superuser"})),
            &admin,
        )
        .await?;
    ensure!(
        matches!(status, 400 | 422),
        "POST /api/v1/tokens with role superuser -> {status}: {body}"
    );
    let listing = list_tokens(&dir).await?;
    ensure!(
        !listing.contains("nope"),
        "a refused token was stored:\n{listing}"
    );
    Ok(())
}
