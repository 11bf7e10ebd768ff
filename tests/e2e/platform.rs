//! The platform spec through the real CLI and plane: `gantry apply` plans and applies, every changed service gets a
//! new numbered revision with its author and diff, a refused spec names file, line and field and changes nothing,
//! secrets never show their value, every change is in the audit log, and it all survives a SIGKILL of the plane.

use std::path::Path;
use std::process::Output;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::harness::process::{Plane, gantry_cli, start_with_tokens};

const SPEC: &str = r#"services:
  gateway:
    version: "1.0.0"
    runtime:
      process:
        command: /usr/bin/python3
        args: [-m, http.server]
        env:
          DB_PASSWORD: "${secret:db-password}"
    replicas: 2
    port: 9100
    depends_on: [accounts]
  accounts:
    runtime: {process: {command: /usr/bin/python3, args: [-m, http.server]}}
    port: 9101
    health: {http: {path: /}, interval: 2s}
"#;

const SECRET: &str = "s3cr3t-value-never-shown";

/// Runs `gantry ARGS --plane URL --token TOKEN`.
async fn cli(plane: &Plane, token: &str, args: &[&str]) -> Result<Output> {
    let url = plane.endpoints.http_url();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--plane", &url, "--token", token]);
    gantry_cli(&all).await
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn apply(plane: &Plane, token: &str, file: &Path, extra: &[&str]) -> Result<Output> {
    let mut args = vec!["apply", file.to_str().context("utf-8 path")?];
    args.extend(extra);
    cli(plane, token, &args).await
}

async fn set_secret(plane: &Plane, token: &str, name: &str, value: &str) -> Result<()> {
    let (status, body) = plane
        .api_send(
            reqwest::Method::PUT,
            &format!("/api/v1/secrets/{name}"),
            Some(serde_json::json!({ "value": value })),
            token,
        )
        .await?;
    ensure!(
        status == 201 || status == 204,
        "set secret: {status} {body}"
    );
    Ok(())
}

/// Every revision of every service, as the API lists them.
async fn all_revisions(plane: &Plane, token: &str) -> Result<Vec<Value>> {
    let mut all = Vec::new();
    for service in ["gateway", "accounts", "ledger"] {
        let (status, body) = plane
            .api_get(&format!("/api/v1/services/{service}/revisions"), token)
            .await?;
        match status {
            200 => all.extend(body.as_array().cloned().unwrap_or_default()),
            404 => {}
            _ => anyhow::bail!("revisions of {service}: {status} {body}"),
        }
    }
    Ok(all)
}

#[tokio::test]
async fn apply_plans_revisions_refusals_secrets_and_audit() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    let (mut plane, [deployer, viewer]) =
        start_with_tokens(&dir, &[], &[], ["deployer", "viewer"]).await?;
    let file = tmp.path().join("platform.yaml");
    std::fs::write(&file, SPEC)?;

    // Without the secret the spec is refused at the reference, and nothing is created.
    let out = apply(&plane, &deployer, &file, &[]).await?;
    let (_, stderr) = text(&out);
    ensure!(
        out.status.code() == Some(1),
        "refused apply exits 1: {stderr}"
    );
    ensure!(
        stderr.contains(
            ":9:24: services.gateway.runtime.process.env.DB_PASSWORD: no secret `db-password`"
        ),
        "{stderr}"
    );
    ensure!(all_revisions(&plane, &viewer).await?.is_empty());

    set_secret(&plane, &deployer, "db-password", SECRET).await?;

    // A dry run plans both services and changes nothing.
    let out = apply(&plane, &deployer, &file, &["--dry-run"]).await?;
    let (stdout, stderr) = text(&out);
    ensure!(out.status.success(), "dry run: {stderr}");
    ensure!(stdout.contains("+ gateway: create, revision 1"), "{stdout}");
    ensure!(
        stdout.contains("+ accounts: create, revision 1"),
        "{stdout}"
    );
    ensure!(stdout.contains("dry run: nothing was changed"), "{stdout}");
    ensure!(
        all_revisions(&plane, &viewer).await?.is_empty(),
        "a dry run wrote revisions"
    );

    // Apply, then change one field: one new revision for that service only, with its diff.
    ensure!(apply(&plane, &deployer, &file, &[]).await?.status.success());
    std::fs::write(&file, SPEC.replace("replicas: 2", "replicas: 3"))?;
    let out = apply(&plane, &deployer, &file, &["--json"]).await?;
    let (stdout, stderr) = text(&out);
    ensure!(out.status.success(), "{stderr}");
    let plan: Value = serde_json::from_str(&stdout).context("--json prints JSON")?;
    let change = |service: &str| {
        plan["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["service"] == service)
            .map(|p| (p["change"].clone(), p["revision"].clone()))
    };
    ensure!(
        change("gateway") == Some(("update".into(), 2.into())),
        "{plan}"
    );
    ensure!(
        change("accounts") == Some(("unchanged".into(), 1.into())),
        "{plan}"
    );

    // Applying the same file again changes nothing.
    let out = apply(&plane, &deployer, &file, &[]).await?;
    ensure!(
        text(&out)
            .0
            .contains("0 to create, 0 to update, 2 unchanged"),
        "{:?}",
        text(&out)
    );

    let (status, revisions) = plane
        .api_get("/api/v1/services/gateway/revisions", &viewer)
        .await?;
    ensure!(status == 200, "{status} {revisions}");
    let revisions = revisions.as_array().context("a list")?;
    ensure!(revisions.len() == 2, "{revisions:?}");
    let newest = &revisions[0];
    ensure!(
        newest["revision"] == 2
            && newest["author"]
                .as_str()
                .is_some_and(|a| a.starts_with("deployer-"))
    );
    ensure!(
        newest["diff"] == serde_json::json!([{"field": "replicas", "before": 2, "after": 3}]),
        "{newest}"
    );
    ensure!(
        newest["version"] == "1.0.0"
            && newest["source"]
                .as_str()
                .is_some_and(|s| s.ends_with("platform.yaml"))
    );

    // Each kind of bad spec is refused with file, line and field, and nothing changes.
    let bad = [
        (
            "unknown field",
            SPEC.replace("    port: 9101\n", "    port: 9101\n    colour: red\n"),
            ":16:5: services.accounts.colour: unknown field",
        ),
        (
            "wrong type",
            SPEC.replace("replicas: 2", "replicas: lots"),
            ":10:15: services.gateway.replicas: invalid",
        ),
        (
            "dependency cycle",
            SPEC.replace(
                "    port: 9101\n",
                "    port: 9101\n    depends_on: [gateway]\n",
            ),
            ":16:18: services.accounts.depends_on.0: dependency cycle: gateway -> accounts -> gateway",
        ),
        (
            "port clash",
            SPEC.replace("port: 9101", "port: 9100"),
            ":15:11: services.accounts.port: port 9100 is already the routed port of `gateway`",
        ),
        (
            "unknown secret",
            SPEC.replace("secret:db-password", "secret:nope"),
            ":9:24: services.gateway.runtime.process.env.DB_PASSWORD: no secret `nope`",
        ),
    ];
    let before = all_revisions(&plane, &viewer).await?;
    for (what, content, says) in bad {
        let bad_file = tmp.path().join("bad.yaml");
        std::fs::write(&bad_file, content)?;
        let out = apply(&plane, &deployer, &bad_file, &[]).await?;
        let (_, stderr) = text(&out);
        ensure!(
            out.status.code() == Some(1),
            "{what}: exit {:?} {stderr}",
            out.status
        );
        ensure!(
            stderr.contains(&format!("bad.yaml{says}")),
            "{what}: {stderr}"
        );
        // The API answers 400 with the location as fields too.
        let (status, body) = plane
            .api_send(
                reqwest::Method::POST,
                "/api/v1/apply",
                Some(serde_json::json!({"file": "bad.yaml", "content": std::fs::read_to_string(&bad_file)?})),
                &deployer,
            )
            .await?;
        ensure!(
            status == 400
                && body["spec"]["file"] == "bad.yaml"
                && body["spec"]["line"].as_u64() > Some(0),
            "{what}: {body}"
        );
    }
    ensure!(
        all_revisions(&plane, &viewer).await? == before,
        "a refused spec changed revisions"
    );

    // A viewer may read but not apply; a secret in use cannot be deleted.
    let out = apply(&plane, &viewer, &file, &[]).await?;
    ensure!(
        out.status.code() == Some(1) && text(&out).1.contains("403"),
        "{:?}",
        text(&out)
    );
    let (status, body) = plane
        .api_send(
            reqwest::Method::DELETE,
            "/api/v1/secrets/db-password",
            None,
            &deployer,
        )
        .await?;
    ensure!(
        status == 409
            && body["error"]
                .as_str()
                .is_some_and(|e| e.contains("gateway")),
        "{status} {body}"
    );

    // The audit log has every change and refusal, with who did it.
    let (status, audit) = plane.api_get("/api/v1/audit", &viewer).await?;
    ensure!(status == 200, "{audit}");
    let entries = audit["entries"].as_array().context("entries")?;
    let count = |action: &str, outcome: &str| {
        entries
            .iter()
            .filter(|e| {
                e["action"] == action
                    && e["outcome"]
                        .as_str()
                        .is_some_and(|o| o.starts_with(outcome))
            })
            .count()
    };
    ensure!(count("apply", "ok") == 3, "{audit}");
    ensure!(count("apply", "refused") == 1 + 2 * 5, "{audit}");
    ensure!(count("secret.set", "ok") == 1, "{audit}");

    // The secret's value shows nowhere; every answer shows the reference.
    let (_, services) = plane.api_get("/api/v1/services?from=-1h", &viewer).await?;
    let (_, secrets) = plane.api_get("/api/v1/secrets", &viewer).await?;
    for (what, body) in [
        (
            "revisions",
            Value::Array(all_revisions(&plane, &viewer).await?),
        ),
        ("services", services.clone()),
        ("secrets", secrets),
        ("audit", audit),
    ] {
        ensure!(
            !body.to_string().contains(SECRET),
            "{what} shows the secret: {body}"
        );
    }
    ensure!(
        all_revisions(&plane, &viewer)
            .await?
            .iter()
            .any(|r| r.to_string().contains("${secret:db-password}")),
        "revisions keep the reference"
    );
    let deployed = services["deployed"].as_array().context("deployed")?;
    ensure!(deployed.len() == 2, "{services}");

    // What was acknowledged survives a SIGKILL.
    let out = cli(&plane, &viewer, &["services"]).await?;
    let table = text(&out).0;
    ensure!(
        table.contains("gateway") && table.contains("1.0.0"),
        "{table}"
    );
    plane.kill9()?;
    plane.restart().await?;
    ensure!(
        all_revisions(&plane, &viewer).await? == before,
        "revisions after SIGKILL"
    );
    let out = apply(&plane, &deployer, &file, &[]).await?;
    ensure!(text(&out).0.contains("2 unchanged"), "{:?}", text(&out));
    plane.terminate().await?;
    Ok(())
}
