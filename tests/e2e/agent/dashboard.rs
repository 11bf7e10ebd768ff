//! The dashboard in headless Chromium against a real plane running the demo bank on a real agent: log in; the
//! overview lists the four services; a log query's hit opens its trace, whose waterfall holds spans of all four
//! services; a deploy's page shows its steps; pause and resume through the buttons (each confirmed); a viewer sees
//! no deploy buttons; log out. Telemetry carrying `<script>`, `<img onerror>`, `javascript:` and ANSI escapes in
//! bodies, attribute keys and values, span and service names is shown as text and never runs. Every page visited
//! is saved as a screenshot.
//!
//! And over plain HTTP: the security headers on every response, forms refused without the session's CSRF token, a
//! viewer's 403 on deploy actions, the login's rate limit, and no session fixation.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fantoccini::Locator;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::Value;

use crate::harness::api::{Port, wait_until};
use crate::harness::browser::Browser;
use crate::harness::otlp::{
    hex, kv, log_with_severity, logs_request, make_span, now_nanos, random_span_id, traces_request,
};
use crate::harness::process::{binary, free_port, gantry_cli_stdin, repo_root, start_with_tokens};
use crate::harness::{skip_unless_ci, unique};

const WAIT: Duration = Duration::from_secs(90);
const PASSWORD: &str = "correct horse battery staple";

/// Text meant to run if a page rendered it as markup: every payload sets `window.__xss` or injects a `data-xss`
/// element when it runs.
const PAYLOADS: [&str; 4] = [
    "<script data-xss>window.__xss=1</script>",
    "<img src=x data-xss onerror=\"window.__xss=1\">",
    "javascript:window.__xss=1//",
    "\u{1b}[31mred\u{1b}[0m<b data-xss>bold</b>",
];

#[tokio::test]
async fn the_dashboard_in_a_browser() -> Result<()> {
    let browser = match Browser::start().await {
        Ok(browser) => browser,
        Err(error) => return skip_unless_ci("the_dashboard_in_a_browser", error),
    };
    let outcome = run(&browser).await;
    browser.close().await?;
    outcome
}

async fn run(browser: &Browser) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let (plane, [admin, node]) = start_with_tokens(&data, &[], &[], ["admin", "node"]).await?;
    let mut agents = super::start_nodes(&plane, &node, &admin, tmp.path(), 1).await?;
    let outcome = flow(browser, &plane, &admin, &data).await;
    // The agent stops the demo's instances when it is stopped (SIGTERM); killed, it would leave them running.
    for agent in &mut agents {
        agent.terminate().await?;
    }
    outcome
}

/// The browser's flow against a plane whose agent runs: everything the module's documentation lists.
async fn flow(
    browser: &Browser,
    plane: &crate::harness::process::Plane,
    admin: &str,
    data: &std::path::Path,
) -> Result<()> {
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect::<Result<_>>()?;
    let gantry = binary("GANTRY_BIN", "gantry", "gantry-plane")?;
    let mut spec = std::fs::read_to_string(repo_root().join("demo/platform.yaml"))?
        .replace("GANTRY_BINARY", &gantry.display().to_string());
    for (i, port) in ports.iter().enumerate() {
        spec = spec.replace(&format!("910{}", i + 1), &port.to_string());
    }
    super::apply(plane, admin, &spec).await?;
    let base = plane.endpoints.http_url();

    // Users: an admin through the API, a viewer through the data directory; passwords on standard input.
    gantry_cli_stdin(
        &[
            "user", "create", "--plane", &base, "--token", admin, "--name", "alice", "--role",
            "admin",
        ],
        &format!("{PASSWORD}\n"),
    )
    .await?;
    gantry_cli_stdin(
        &[
            "user",
            "create",
            "--data-dir",
            data.to_str().context("utf-8")?,
            "--name",
            "vic",
            "--role",
            "viewer",
        ],
        &format!("{PASSWORD}\n"),
    )
    .await?;

    let services = ["gateway", "accounts", "payments", "ledger"];
    wait_until(WAIT, "every demo instance healthy", || async {
        for service in services {
            let instances = super::instances(plane, admin, service).await?;
            if instances.is_empty() || instances.iter().any(|i| i["actual"]["phase"] != "healthy") {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;

    // One traced request through the gateway, and a log line of it as its service would write it.
    let client = reqwest::Client::new();
    let gateway = format!("http://127.0.0.2:{}/transfer", ports[0]);
    for _ in 0..20 {
        ensure!(client.get(&gateway).send().await?.status() == 200);
    }
    let trace = hex(&crate::harness::otlp::random_trace_id());
    let response = client
        .get(&gateway)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await?;
    ensure!(response.status() == 200);
    let marker = unique("audited");
    let mut line = log_with_severity(
        &format!("transfer {marker} done"),
        now_nanos(),
        9,
        "INFO",
        vec![],
    );
    line.trace_id = (0..16)
        .map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()?;
    plane
        .send_logs(Port::Http, admin, &logs_request("gateway", vec![line]))
        .await?;

    // Hostile telemetry: in log bodies, attribute keys and values, a service name, span names.
    let hostile_service = PAYLOADS[1];
    let xss_marker = unique("xss");
    let records = PAYLOADS
        .iter()
        .map(|payload| {
            log_with_severity(
                &format!("{xss_marker} {payload}"),
                now_nanos(),
                17,
                "ERROR",
                vec![kv(payload, payload), kv("link", PAYLOADS[2])],
            )
        })
        .collect();
    plane
        .send_logs(Port::Http, admin, &logs_request(hostile_service, records))
        .await?;
    let hostile_trace = crate::harness::otlp::random_trace_id();
    let now = now_nanos();
    let mut spans = Vec::new();
    let root = random_span_id();
    for (i, payload) in PAYLOADS.iter().enumerate() {
        let id = if i == 0 {
            root.clone()
        } else {
            random_span_id()
        };
        let parent = if i == 0 { Vec::new() } else { root.clone() };
        let mut span = make_span(
            &hostile_trace,
            &id,
            &parent,
            payload,
            SpanKind::Server,
            now,
            now + 5_000_000,
            2,
        );
        span.attributes.push(kv(payload, payload));
        span.events
            .push(opentelemetry_proto::tonic::trace::v1::span::Event {
                time_unix_nano: now + 1_000_000,
                name: format!("exception {payload}"),
                attributes: vec![kv("exception.message", payload)],
                ..Default::default()
            });
        spans.push(span);
    }
    plane
        .send_traces(Port::Http, admin, &traces_request(hostile_service, spans))
        .await?;
    let hostile_trace = hex(&hostile_trace);

    wait_until(
        WAIT,
        "the traced request's spans of all four services",
        || async {
            let (status, body) = plane
                .api_get(&format!("/api/v1/traces/{trace}"), admin)
                .await?;
            if status != 200 {
                return Ok(None);
            }
            let seen: std::collections::BTreeSet<&str> = body["spans"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["service"].as_str())
                .collect();
            Ok(services.iter().all(|s| seen.contains(s)).then_some(()))
        },
    )
    .await?;
    plane.wait_for_logs(admin, &marker, 1).await?;
    plane
        .wait_for_logs(admin, &xss_marker, PAYLOADS.len())
        .await?;

    // Not logged in: the login page, which brings the browser back.
    browser.client.goto(&format!("{base}/")).await?;
    ensure!(
        browser.path().await? == "/login",
        "an anonymous visit goes to the login"
    );
    browser.screenshot("login").await?;
    browser.login(&base, "alice", PASSWORD).await?;
    ensure!(
        browser.path().await? == "/",
        "back on the overview after the login"
    );

    // The overview lists the four services.
    let listed = wait_until(WAIT, "the overview listing the demo services", || async {
        browser.client.refresh().await?;
        let rows = browser
            .client
            .find_all(Locator::Css("tr.service-row"))
            .await?;
        let mut names = Vec::new();
        for row in rows {
            names.push(row.attr("data-service").await?.unwrap_or_default());
        }
        Ok(services
            .iter()
            .all(|s| names.iter().any(|n| n == s))
            .then_some(names))
    })
    .await?;
    ensure!(
        listed.iter().any(|n| n == hostile_service),
        "the hostile service is listed as text: {listed:?}"
    );
    browser.screenshot("overview").await?;

    // A log query; the hit opens its trace; the waterfall holds spans of all four services.
    browser
        .client
        .goto(&format!("{base}/logs?q={marker}&from=-15m"))
        .await?;
    let hit = browser
        .client
        .wait()
        .for_element(Locator::Css("li.log summary"))
        .await?;
    hit.click().await?;
    browser.screenshot("logs").await?;
    browser
        .client
        .find(Locator::Css("li.log a.trace-link"))
        .await?
        .click()
        .await?;
    browser
        .client
        .wait()
        .for_element(Locator::Id("waterfall"))
        .await?;
    ensure!(browser.path().await? == format!("/traces/{trace}"));
    let mut in_waterfall = std::collections::BTreeSet::new();
    for row in browser
        .client
        .find_all(Locator::Css("#waterfall .span-row"))
        .await?
    {
        in_waterfall.insert(row.attr("data-service").await?.unwrap_or_default());
    }
    for service in services {
        ensure!(
            in_waterfall.contains(service),
            "{service} in the waterfall: {in_waterfall:?}"
        );
    }
    let log_beside = browser
        .client
        .find(Locator::Css(".trace-logs li.log"))
        .await?
        .text()
        .await?;
    ensure!(
        log_beside.contains(&marker),
        "the trace's log beside the waterfall: {log_beside}"
    );
    browser.screenshot("trace").await?;

    // The live tail keeps up with 1,000 lines/s: three seconds of them, the newest on top, 1,000 rows kept; with
    // the tab hidden it stops.
    let tail_marker = unique("tail");
    browser
        .client
        .goto(&format!("{base}/logs?q={tail_marker}&from=-5m"))
        .await?;
    browser
        .client
        .find(Locator::Id("live-toggle"))
        .await?
        .click()
        .await?;
    wait_until(Duration::from_secs(10), "the tail to open", || async {
        let status = browser
            .client
            .find(Locator::Id("tail-status"))
            .await?
            .text()
            .await?;
        Ok(status.starts_with("live").then_some(()))
    })
    .await?;
    for second in 0..3u64 {
        let records = (0..1000u64)
            .map(|k| {
                log_with_severity(
                    &format!("{tail_marker} line {:05}", second * 1000 + k),
                    now_nanos(),
                    9,
                    "INFO",
                    vec![],
                )
            })
            .collect();
        plane
            .send_logs(Port::Http, admin, &logs_request("tailer", records))
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    wait_until(WAIT, "the newest line on top of the tail", || async {
        let rows = browser.client.find_all(Locator::Css("#tail li")).await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let top = first.text().await?;
        Ok((top.contains("line 02999") && rows.len() == 1000).then_some(()))
    })
    .await?;
    browser.screenshot("logs-live-tail").await?;
    browser
        .client
        .execute(
            "Object.defineProperty(document, 'hidden', {value: true, configurable: true}); \
             document.dispatchEvent(new Event('visibilitychange'))",
            vec![],
        )
        .await?;
    let status = browser
        .client
        .find(Locator::Id("tail-status"))
        .await?
        .text()
        .await?;
    ensure!(
        status.contains("hidden"),
        "the tail stops with the tab hidden: {status}"
    );
    let records = (0..10u64)
        .map(|k| {
            log_with_severity(
                &format!("{tail_marker} hidden {k}"),
                now_nanos(),
                9,
                "INFO",
                vec![],
            )
        })
        .collect();
    plane
        .send_logs(Port::Http, admin, &logs_request("tailer", records))
        .await?;
    plane
        .wait_for_logs(admin, &format!("{tail_marker} AND hidden"), 10)
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let top = browser
        .client
        .find(Locator::Css("#tail li"))
        .await?
        .text()
        .await?;
    ensure!(
        top.contains("line 02999"),
        "nothing arrives while hidden: {top}"
    );

    // A bad query is shown with the parser's error at its position.
    browser
        .client
        .goto(&format!("{base}/logs?q=service%3A(payments"))
        .await?;
    let error = browser
        .client
        .find(Locator::Id("query-error"))
        .await?
        .text()
        .await?;
    ensure!(
        error.contains("position"),
        "the query's error names its position: {error}"
    );

    // The service page and the trace search.
    browser
        .client
        .goto(&format!("{base}/services/payments"))
        .await?;
    browser.client.find(Locator::Id("instances")).await?;
    browser.screenshot("service").await?;
    browser
        .client
        .goto(&format!("{base}/traces?service=gateway"))
        .await?;
    browser.client.find(Locator::Css("tr.trace-row")).await?;
    browser.screenshot("traces").await?;

    // The service map: the four services, and the calls between them.
    let drawn = wait_until(WAIT, "the service map with the demo's calls", || async {
        browser
            .client
            .goto(&format!("{base}/map?from=-15m"))
            .await?;
        let mut on_map = std::collections::BTreeSet::new();
        for node in browser.client.find_all(Locator::Css("g.map-node")).await? {
            on_map.insert(node.attr("data-service").await?.unwrap_or_default());
        }
        let edges = browser
            .client
            .find_all(Locator::Css("path.edge"))
            .await?
            .len();
        Ok((services.iter().all(|s| on_map.contains(*s)) && edges >= 3).then_some(edges))
    })
    .await?;
    ensure!(
        drawn >= 3,
        "gateway → accounts, gateway → payments, payments → ledger"
    );
    browser.screenshot("map").await?;

    // The metrics explorer: the demo's metrics are listed; one drawn per service.
    let metric = wait_until(WAIT, "the demo's metrics in the explorer", || async {
        browser
            .client
            .goto(&format!("{base}/explore?from=-15m"))
            .await?;
        let mut names = Vec::new();
        for option in browser
            .client
            .find_all(Locator::Css("#metric option"))
            .await?
        {
            names.push(option.attr("value").await?.unwrap_or_default());
        }
        Ok(names.into_iter().find(|n| n.starts_with("http.server")))
    })
    .await?;
    browser
        .client
        .goto(&format!(
            "{base}/explore?name={metric}&agg=max&group_by=service.name&from=-15m"
        ))
        .await?;
    let lines = browser
        .client
        .find_all(Locator::Css("figure.chart path.line"))
        .await?;
    ensure!(!lines.is_empty(), "{metric} drawn per service");
    browser.screenshot("explore").await?;

    // Dashboards as code: the built-ins are listed and drawn.
    browser.client.goto(&format!("{base}/dashboards")).await?;
    let listed = browser
        .client
        .find_all(Locator::Css("#dashboards tbody tr"))
        .await?
        .len();
    ensure!(listed == 4, "the four built-in dashboards, listed {listed}");
    browser.screenshot("dashboards").await?;
    for board in ["platform-overview", "plane-health"] {
        browser
            .client
            .goto(&format!("{base}/dashboards/{board}"))
            .await?;
        let panels = browser
            .client
            .find_all(Locator::Css("#board section.panel"))
            .await?
            .len();
        ensure!(panels >= 4, "{board}: its panels drawn, {panels}");
        ensure!(
            browser
                .client
                .find_all(Locator::Css("#board .query-error"))
                .await?
                .is_empty(),
            "{board}: every panel drawn without error"
        );
        browser.screenshot(&format!("dashboard-{board}")).await?;
    }

    // A deploy: its page shows its steps; pause and resume through the confirmed buttons.
    let (status, deployment) = plane
        .api_send(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(serde_json::json!({"service": "payments", "version": "1.0.1"})),
            admin,
        )
        .await?;
    ensure!(status == 201, "deploy: {status} {deployment}");
    let id = deployment["id"].as_u64().context("deployment id")?;
    browser.client.goto(&format!("{base}/deploys/{id}")).await?;
    let steps = browser.client.find_all(Locator::Css("#steps li")).await?;
    ensure!(
        steps.len() == 2,
        "the demo's payments canary has two steps, shown {}",
        steps.len()
    );
    browser.screenshot("deploy").await?;
    for (button, after) in [("pause", "paused"), ("resume", "progressing")] {
        let status_now = browser
            .client
            .find(Locator::Id("status"))
            .await?
            .text()
            .await?;
        if button == "pause" && status_now == "paused" {
            // An inconclusive step already paused it: resume first, then pause by hand.
            browser
                .client
                .find(Locator::Id("resume"))
                .await?
                .click()
                .await?;
            browser.confirm().await?;
        }
        browser
            .client
            .wait()
            .for_element(Locator::Id(button))
            .await?
            .click()
            .await?;
        let question = browser.confirm().await?;
        ensure!(
            question.contains(&format!("#{id}")),
            "the confirmation names the deploy: {question}"
        );
        let shown = wait_until(Duration::from_secs(20), "the new status", || async {
            let text = browser
                .client
                .find(Locator::Id("status"))
                .await?
                .text()
                .await?;
            Ok((text == after || (after == "progressing" && text != "paused")).then_some(text))
        })
        .await?;
        ensure!(shown != "rolled_back", "{button} did not roll back");
    }
    let (_, audit) = plane.api_get("/api/v1/audit?limit=20", admin).await?;
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["actor"].as_str()?, e["action"].as_str()?)))
        .collect();
    ensure!(
        actions.contains(&("alice", "deployment.pause"))
            && actions.contains(&("alice", "deployment.resume")),
        "the dashboard's actions are audited under the user: {actions:?}"
    );
    browser.client.goto(&format!("{base}/deploys")).await?;
    browser.screenshot("deploys").await?;

    // Hostile telemetry is shown as text and never runs, on every page that renders it.
    let hostile_pages = [
        format!("{base}/logs?q={xss_marker}&from=-15m"),
        format!("{base}/traces/{hostile_trace}"),
        format!("{base}/?from=-15m"),
        format!("{base}/traces?from=-15m"),
        format!("{base}/services/{}", serde_urlencoded_path(hostile_service)),
    ];
    for page in &hostile_pages {
        browser.client.goto(page).await?;
        // Open every expandable row, so that attributes render too.
        browser
            .client
            .execute(
                "document.querySelectorAll('details').forEach(d => d.open = true)",
                vec![],
            )
            .await?;
        ensure!(!browser.dialog_open().await, "a dialog opened on {page}");
        let ran: Value = browser
            .client
            .execute(
                "return [window.__xss === undefined ? 0 : 1, document.querySelectorAll('[data-xss]').length]",
                vec![],
            )
            .await?;
        ensure!(
            ran == serde_json::json!([0, 0]),
            "a payload ran or was injected on {page}: {ran}"
        );
    }
    browser.client.goto(&hostile_pages[1]).await?;
    let events = browser
        .client
        .find_all(Locator::Css("ol.span-events li"))
        .await?;
    ensure!(
        events.len() == PAYLOADS.len(),
        "each span's event in the waterfall: {} in {}",
        events.len(),
        browser.client.source().await?
    );
    browser.client.goto(&hostile_pages[0]).await?;
    browser
        .client
        .execute(
            "document.querySelectorAll('details').forEach(d => d.open = true)",
            vec![],
        )
        .await?;
    let text = browser
        .client
        .find(Locator::Id("log-results"))
        .await?
        .text()
        .await?;
    for shown in [
        "<script data-xss>",
        "<img src=x data-xss",
        "javascript:window.__xss",
        "␛[31mred",
    ] {
        ensure!(text.contains(shown), "`{shown}` shown as text: {text}");
    }
    browser.screenshot("xss-as-text").await?;

    browser.client.goto(&format!("{base}/nodes")).await?;
    browser.client.find(Locator::Css("tr.node-row")).await?;
    browser.screenshot("nodes").await?;
    browser.client.goto(&format!("{base}/admin")).await?;
    browser.client.find(Locator::Id("users")).await?;
    browser.screenshot("admin").await?;
    browser.client.goto(&format!("{base}/audit")).await?;
    browser.screenshot("audit").await?;

    // Log out: the session ends; the overview asks for a login again.
    browser
        .client
        .find(Locator::Id("logout"))
        .await?
        .click()
        .await?;
    wait_until(Duration::from_secs(10), "the logout", || async {
        Ok((browser.path().await? == "/login").then_some(()))
    })
    .await?;
    browser.client.goto(&format!("{base}/")).await?;
    ensure!(browser.path().await? == "/login", "logged out");

    // A viewer sees the deploy but no deploy buttons, and no admin section.
    browser.login(&base, "vic", PASSWORD).await?;
    browser.client.goto(&format!("{base}/deploys/{id}")).await?;
    browser.client.find(Locator::Id("steps")).await?;
    for button in ["pause", "resume", "promote", "promote-full", "abort"] {
        ensure!(
            browser
                .client
                .find_all(Locator::Id(button))
                .await?
                .is_empty(),
            "a viewer sees no `{button}` button"
        );
    }
    ensure!(
        browser
            .client
            .find_all(Locator::Css("a[href='/admin']"))
            .await?
            .is_empty(),
        "a viewer sees no admin link"
    );
    browser.screenshot("deploy-as-viewer").await?;
    browser
        .client
        .find(Locator::Id("logout"))
        .await?
        .click()
        .await?;
    Ok(())
}

/// A path segment, percent-encoded.
fn serde_urlencoded_path(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A browser's side of the dashboard over plain HTTP: cookies kept by hand, redirects not followed.
struct Session {
    client: reqwest::Client,
    base: String,
    cookies: std::collections::BTreeMap<String, String>,
}

impl Session {
    fn new(base: &str) -> Result<Session> {
        Ok(Session {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            base: base.to_owned(),
            cookies: Default::default(),
        })
    }

    fn keep(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all(reqwest::header::SET_COOKIE) {
            let text = value.to_str().unwrap_or_default();
            let pair = text.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() || text.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn get(&mut self, path: &str) -> Result<(u16, String, reqwest::header::HeaderMap)> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header(reqwest::header::COOKIE, self.cookie_header())
            .send()
            .await?;
        self.keep(&response);
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        Ok((status, response.text().await?, headers))
    }

    async fn post(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
    ) -> Result<(u16, String, reqwest::header::HeaderMap)> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::COOKIE, self.cookie_header())
            .form(form)
            .send()
            .await?;
        self.keep(&response);
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        Ok((status, response.text().await?, headers))
    }

    /// The `csrf` hidden field of a page.
    fn csrf(page: &str) -> Option<String> {
        let at = page.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
        Some(page[at..].split('"').next()?.to_owned())
    }

    /// Logs in; returns the login's status (303 on success).
    async fn login(&mut self, name: &str, password: &str) -> Result<u16> {
        let (_, page, _) = self.get("/login").await?;
        let csrf = Session::csrf(&page).context("the login form's token")?;
        let (status, _, _) = self
            .post(
                "/login",
                &[
                    ("name", name),
                    ("password", password),
                    ("csrf", &csrf),
                    ("next", "/"),
                ],
            )
            .await?;
        Ok(status)
    }
}

#[tokio::test]
async fn dashboard_security_over_http() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let (plane, [admin]) = start_with_tokens(&data, &[], &[], ["admin"]).await?;
    let dir = data.to_str().context("utf-8")?;
    for (name, role) in [("dee", "deployer"), ("vic", "viewer")] {
        gantry_cli_stdin(
            &[
                "user",
                "create",
                "--data-dir",
                dir,
                "--name",
                name,
                "--role",
                role,
            ],
            &format!("{PASSWORD}\n"),
        )
        .await?;
    }
    let base = plane.endpoints.http_url();

    // The headers, on pages, the login, static files, the API and errors alike.
    let mut anonymous = Session::new(&base)?;
    for path in [
        "/login",
        "/static/app.css",
        "/healthz",
        "/api/v1/logs",
        "/nope",
        "/",
    ] {
        let (status, _, headers) = anonymous.get(path).await?;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let csp = header("content-security-policy");
        ensure!(
            csp.contains("script-src 'self'")
                && !csp.contains("unsafe-inline")
                && csp.contains("frame-ancestors 'none'"),
            "{path} ({status}): a strict CSP, got `{csp}`"
        );
        ensure!(
            header("x-content-type-options") == "nosniff",
            "{path}: nosniff"
        );
        ensure!(
            !header("referrer-policy").is_empty(),
            "{path}: a Referrer-Policy"
        );
        ensure!(header("x-frame-options") == "DENY", "{path}: frames denied");
    }
    let (status, _, headers) = anonymous.get("/deploys").await?;
    ensure!(
        status == 303,
        "an anonymous page visit is sent to the login ({status})"
    );
    ensure!(
        headers.get("location").and_then(|v| v.to_str().ok()) == Some("/login?next=%2Fdeploys"),
        "{headers:?}"
    );

    // No session fixation: a session id planted before the login is never the one the login gives.
    let mut victim = Session::new(&base)?;
    let planted = "ab".repeat(24);
    victim
        .cookies
        .insert("gantry_session".into(), planted.clone());
    ensure!(victim.login("dee", PASSWORD).await? == 303);
    let given = victim
        .cookies
        .get("gantry_session")
        .cloned()
        .unwrap_or_default();
    ensure!(
        given != planted && given.len() == 48,
        "a fresh session id: {given}"
    );
    let mut attacker = Session::new(&base)?;
    attacker.cookies.insert("gantry_session".into(), planted);
    ensure!(
        attacker.get("/").await?.0 == 303,
        "the planted id is no session"
    );

    // Forms need the session's CSRF token.
    let (status, page, _) = victim.get("/deploys").await?;
    ensure!(status == 200);
    let csrf = Session::csrf(&page).context("the logout form's token")?;
    for form in [vec![], vec![("csrf", "0".repeat(48))]] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body, _) = victim.post("/deploys/1/pause", &form).await?;
        ensure!(
            status == 403 || (form.is_empty() && status == 422),
            "a form without a valid CSRF token is refused: {status} {body}"
        );
    }
    let (status, _, _) = victim
        .post("/deploys/999/pause", &[("csrf", &csrf)])
        .await?;
    ensure!(
        status == 404,
        "with the token the action runs (no such deploy: 404), got {status}"
    );
    // A login form from elsewhere (no login cookie) is refused too.
    let mut cross_site = Session::new(&base)?;
    let (status, page, headers) = cross_site
        .post(
            "/login",
            &[
                ("name", "dee"),
                ("password", PASSWORD),
                ("csrf", "forged"),
                ("next", "/"),
            ],
        )
        .await?;
    ensure!(
        status == 200 && page.contains("expired") && headers.get("location").is_none(),
        "a forged login is refused: {status}"
    );

    // A viewer gets 403 from deploy actions, even with its own valid token.
    let mut viewer = Session::new(&base)?;
    ensure!(viewer.login("vic", PASSWORD).await? == 303);
    let (_, page, _) = viewer.get("/deploys").await?;
    let viewer_csrf = Session::csrf(&page).context("the viewer's token")?;
    for path in [
        "/deploys/1/pause",
        "/deploys/1/abort",
        "/services/payments/rollback",
        "/admin/users",
    ] {
        let (status, _, _) = viewer.post(path, &[("csrf", &viewer_csrf)]).await?;
        ensure!(
            status == 403 || status == 422,
            "a viewer is refused {path}: {status}"
        );
    }
    ensure!(
        viewer.get("/admin").await?.0 == 403,
        "a viewer may not see the admin page"
    );

    // The login resists a brute-force run: after 5 failures the name is locked, right password or not.
    let mut brute = Session::new(&base)?;
    let mut statuses = Vec::new();
    for attempt in 0..7 {
        let password = if attempt == 6 {
            PASSWORD.to_owned()
        } else {
            format!("guess-{attempt}-wrong")
        };
        statuses.push(brute.login("dee", &password).await?);
    }
    ensure!(
        statuses[..5].iter().all(|s| *s == 200) && statuses[5..].iter().all(|s| *s == 429),
        "5 failures shown as the form again, then 429: {statuses:?}"
    );
    let (status, _, headers) = brute.get("/login").await?;
    ensure!(
        status == 200,
        "the form itself still loads: {status} {headers:?}"
    );

    // Behind a TLS-terminating proxy the cookies are `Secure`; over plain HTTP they cannot be.
    let via_proxy = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let form = via_proxy
        .get(format!("{base}/login"))
        .header("x-forwarded-proto", "https")
        .send()
        .await?;
    let login_cookie = form
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        login_cookie.contains("Secure"),
        "the login form's cookie over TLS: {login_cookie}"
    );
    let page = form.text().await?;
    let csrf = Session::csrf(&page).context("the login token")?;
    let answer = via_proxy
        .post(format!("{base}/login"))
        .header("x-forwarded-proto", "https")
        .header("cookie", login_cookie.split(';').next().unwrap_or_default())
        .form(&[
            ("name", "vic"),
            ("password", PASSWORD),
            ("csrf", csrf.as_str()),
            ("next", "/"),
        ])
        .send()
        .await?;
    let session = answer
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("gantry_session="))
        .unwrap_or_default()
        .to_owned();
    ensure!(
        session.contains("Secure")
            && session.contains("HttpOnly")
            && session.contains("SameSite=Lax"),
        "the session cookie over TLS: {session}"
    );
    let plain = victim.cookies.contains_key("gantry_session");
    ensure!(plain, "over plain HTTP the session works without Secure");

    // Logout ends the session on the server: the old cookie no longer opens a page.
    let old = victim.cookies.clone();
    let (_, page, _) = victim.get("/").await?;
    let csrf = Session::csrf(&page).context("the logout token")?;
    ensure!(victim.post("/logout", &[("csrf", &csrf)]).await?.0 == 303);
    let mut replay = Session::new(&base)?;
    replay.cookies = old;
    ensure!(
        replay.get("/").await?.0 == 303,
        "a logged-out session opens nothing"
    );
    drop(admin);
    Ok(())
}
