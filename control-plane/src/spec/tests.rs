//! The spec reader: a full spec read with its defaults, and one case per kind of refusal, each checked for the
//! line, column and field it names.

use super::*;
use gantry_proto::platform::{IntOrPercent, Pause};

const FULL: &str = r#"services:
  gateway:
    version: "1.4.0"
    runtime:
      process:
        command: /usr/bin/bank
        args: [--role, gateway]
        env:
          ERROR_RATE: "0"
          DB_PASSWORD: "${secret:db-password}"
    replicas: 2
    resources: {cpu: 250m, memory: 64Mi}
    port: 9100
    depends_on: [accounts]
    health:
      http: {path: /healthz}
      interval: 2s
      timeout: 500ms
      unhealthy_threshold: 2
    constraints: {zone: a}
    rollout:
      strategy: canary
      steps:
        - {weight: 0.5}
        - {weight: 5%, min_requests: 200, min_duration: 1m, pause: until-promoted}
        - {weight: 50, pause: 30s}
      judge: {max_latency_increase: 10%, log_errors: false}
  accounts:
    runtime: {process: {command: bank, args: [--role, accounts]}}
    port: 9101
    health: {tcp: true}
"#;

fn secrets(name: &str) -> bool {
    name == "db-password"
}

#[test]
fn a_full_spec_is_read_with_defaults() {
    let services = parse("platform.yaml", FULL, &secrets).unwrap();
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["gateway", "accounts"], "file order");
    let gateway = &services[0];
    assert_eq!(gateway.replicas, 2);
    assert_eq!(
        gateway.resources,
        Resources {
            cpu_millis: 250,
            memory_bytes: 64 << 20
        }
    );
    assert_eq!(gateway.port, Some(9100));
    let RuntimeSpec::Process(process) = &gateway.runtime;
    assert_eq!(
        process.env["DB_PASSWORD"], "${secret:db-password}",
        "kept as a reference"
    );
    let health = gateway.health.as_ref().unwrap();
    assert_eq!(
        health.probe,
        Probe::Http {
            path: "/healthz".into()
        }
    );
    assert_eq!(
        (
            health.interval_ms,
            health.timeout_ms,
            health.unhealthy_threshold
        ),
        (2000, 500, 2)
    );
    let rollout = &gateway.rollout;
    assert_eq!(rollout.strategy, Strategy::Canary);
    let weights: Vec<f64> = rollout.steps.iter().map(|s| s.weight_percent).collect();
    assert_eq!(weights, [0.5, 5.0, 50.0]);
    assert_eq!(rollout.steps[1].pause, Pause::UntilPromoted);
    assert_eq!(rollout.steps[1].min_duration_ms, 60_000);
    assert_eq!(rollout.steps[2].pause, Pause::For(30_000));
    assert_eq!(rollout.judge.max_latency_increase_percent, Some(10.0));
    let accounts = &services[1];
    assert_eq!(accounts.replicas, 1);
    assert_eq!(accounts.health.as_ref().unwrap().probe, Probe::Tcp);
    assert_eq!(accounts.rollout.strategy, Strategy::Rolling);
    assert_eq!(accounts.rollout.max_surge, IntOrPercent::Percent(25.0));
}

/// Parses `yaml` and checks the refusal's line, column, field and a word of its message.
#[track_caller]
fn refused(yaml: &str, line: u64, column: u64, field: &str, says: &str) {
    let error = parse("p.yaml", yaml, &secrets).expect_err("refused");
    assert_eq!(
        (
            error.location.line,
            error.location.column,
            error.location.field.as_str()
        ),
        (line, column, field),
        "{error}"
    );
    assert!(error.message.contains(says), "{error}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("p.yaml:{line}:{column}: ")),
        "{error}"
    );
}

const HEAD: &str = "services:\n  api:\n    runtime: {process: {command: /bin/api}}\n";

#[test]
fn the_yaml_shape() {
    refused(
        &format!("{HEAD}    colour: red\n"),
        4,
        5,
        "services.api.colour",
        "unknown field `colour`",
    );
    refused(
        &format!("{HEAD}    replicas: two\n"),
        4,
        15,
        "services.api.replicas",
        "invalid",
    );
    refused(
        &format!("{HEAD}    replicas: -1\n"),
        4,
        15,
        "services.api.replicas",
        "invalid",
    );
    refused(
        &format!("{HEAD}    port: 70000\n"),
        4,
        11,
        "services.api.port",
        "invalid",
    );
    refused(
        &format!("{HEAD}    kill_timeout: 5\n"),
        4,
        19,
        "services.api.kill_timeout",
        "no unit",
    );
    refused(
        &format!("{HEAD}    resources: {{memory: lots}}\n"),
        4,
        25,
        "services.api.resources.memory",
        "invalid memory",
    );
    refused(
        &format!("{HEAD}  api:\n    runtime: {{process: {{command: x}}}}\n"),
        4,
        3,
        "services",
        "duplicate",
    );
    refused(
        "services:\n  api:\n    replicas: 1\n",
        3,
        5,
        "services.api",
        "missing field `runtime`",
    );
    refused("service: {}\n", 1, 1, "service", "unknown field");
    refused("services: [\n", 1, 11, "services", "expected mapping");
    refused(
        "services:\n  api:\n    runtime: {process: {command: a}}\n    rollout: {strategy: yolo}\n",
        4,
        25,
        "services.api.rollout.strategy",
        "unknown variant",
    );
}

#[test]
fn what_the_shape_cannot_say() {
    refused(
        "services:\n  Api:\n    runtime: {process: {command: a}}\n",
        2,
        3,
        "services.Api",
        "lowercase",
    );
    refused(
        &format!(
            "{HEAD}    port: 9000\n  web:\n    runtime: {{process: {{command: b}}}}\n    port: 9000\n"
        ),
        7,
        11,
        "services.web.port",
        "already the routed port of `api`",
    );
    refused(
        &format!("{HEAD}    depends_on: [db]\n"),
        4,
        18,
        "services.api.depends_on.0",
        "no service `db`",
    );
    refused(
        &format!("{HEAD}    depends_on: [api]\n"),
        4,
        18,
        "services.api.depends_on.0",
        "itself",
    );
    refused(
        "services:\n  a:\n    runtime: {process: {command: x}}\n    depends_on: [b]\n  b:\n    runtime: {process: {command: x}}\n    depends_on: [c]\n  c:\n    runtime: {process: {command: x}}\n    depends_on: [a]\n",
        10,
        18,
        "services.c.depends_on.0",
        "dependency cycle: a -> b -> c -> a",
    );
    refused(
        "services:\n  api:\n    runtime:\n      process:\n        command: x\n        env: {TOKEN: \"${secret:nope}\"}\n",
        6,
        22,
        "services.api.runtime.process.env.TOKEN",
        "no secret `nope`",
    );
    refused(
        "services:\n  api:\n    runtime:\n      process:\n        command: x\n        env: {TOKEN: \"${secret:db\"}\n",
        6,
        22,
        "services.api.runtime.process.env.TOKEN",
        "unterminated",
    );
    refused(
        "services:\n  api:\n    runtime:\n      process:\n        command: x\n        env: {PORT: \"80\"}\n",
        6,
        15,
        "services.api.runtime.process.env.PORT",
        "set by gantry",
    );
    refused(
        "services:\n  api:\n    runtime: {docker: {image: x}}\n",
        3,
        23,
        "services.api.runtime.docker",
        "not available",
    );
    refused(
        &format!("{HEAD}    replicas: 5000\n"),
        4,
        15,
        "services.api.replicas",
        "at most 1000",
    );
    refused(
        &format!("{HEAD}    health: {{interval: 1s}}\n"),
        4,
        13,
        "services.api.health",
        "exactly one",
    );
    refused(
        &format!("{HEAD}    health: {{tcp: true, interval: 1s, timeout: 2s}}\n"),
        4,
        48,
        "services.api.health.timeout",
        "at most the interval",
    );
    refused(
        &format!("{HEAD}    rollout: {{max_surge: 0, max_unavailable: 0%}}\n"),
        4,
        46,
        "services.api.rollout.max_unavailable",
        "both be 0",
    );
    refused(
        &format!("{HEAD}    rollout: {{strategy: canary}}\n"),
        4,
        14,
        "services.api.rollout.steps",
        "needs steps",
    );
    refused(
        &format!(
            "{HEAD}    rollout: {{strategy: canary, steps: [{{weight: 50}}, {{weight: 5}}]}}\n"
        ),
        4,
        64,
        "services.api.rollout.steps.1.weight",
        "rise step by step",
    );
    refused(
        &format!("{HEAD}    rollout: {{steps: [{{weight: 50}}]}}\n"),
        4,
        23,
        "services.api.rollout.steps",
        "for `strategy: canary`",
    );
}

#[test]
fn stickiness() {
    let sticky = |routing: &str| format!("{HEAD}    port: 9000\n    routing: {routing}\n");
    let spec = parse("p.yaml", &sticky("{sticky: {header: X-User}}"), &secrets).unwrap();
    assert_eq!(
        spec[0].sticky,
        Some(Sticky::Header("x-user".into())),
        "header names are case-insensitive"
    );
    let spec = parse("p.yaml", &sticky("{sticky: {cookie: session}}"), &secrets).unwrap();
    assert_eq!(spec[0].sticky, Some(Sticky::Cookie("session".into())));
    refused(
        &sticky("{sticky: {header: a, cookie: b}}"),
        5,
        23,
        "services.api.routing.sticky",
        "exactly one",
    );
    refused(
        &format!("{HEAD}    routing: {{sticky: {{header: x}}}}\n"),
        3,
        5,
        "services.api.routing.sticky",
        "needs a routed `port`",
    );
}

#[test]
fn secret_references_resolve() {
    assert_eq!(
        secret_references("a ${secret:x} b ${secret:y.z}").unwrap(),
        ["x", "y.z"]
    );
    assert!(secret_references("${secret:}").is_err());
    let lookup = |name: &str| (name == "x").then(|| "S".to_owned());
    assert_eq!(
        resolve_secrets("pre-${secret:x}-post", &lookup).unwrap(),
        "pre-S-post"
    );
    assert_eq!(resolve_secrets("${secret:y}", &lookup).unwrap_err(), "y");
}

#[test]
fn a_big_file_or_an_alias_bomb_is_refused() {
    let big = "#".repeat(MAX_SPEC_BYTES + 1);
    assert!(
        parse("p.yaml", &big, &secrets)
            .unwrap_err()
            .message
            .contains("bytes")
    );
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        bomb.push_str(&format!(
            "{}: &{} [*{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}]\n",
            (b'a' + i) as char,
            (b'a' + i) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char
        ));
    }
    assert!(parse("p.yaml", &bomb, &secrets).is_err());
}

#[test]
fn the_log_rule_is_a_canarys_and_preview_is_blue_greens() {
    refused(
        &format!("{HEAD}    rollout: {{judge: {{log_errors: true}}}}\n"),
        4,
        35,
        "services.api.rollout.judge.log_errors",
        "for `strategy: canary`",
    );
    let canary = format!(
        "{HEAD}    rollout: {{strategy: canary, steps: [{{weight: 10}}], judge: {{log_errors: true}}}}\n"
    );
    let services = parse("p.yaml", &canary, &secrets).unwrap();
    assert!(services[0].rollout.judge.log_errors);
    refused(
        &format!(
            "{HEAD}    port: 9000\n    routing: {{sticky: {{header: x-user}}}}\n    rollout: {{strategy: canary, steps: [{{weight: 10}}], judge: {{log_errors: true}}}}\n"
        ),
        6,
        76,
        "services.api.rollout.judge.log_errors",
        "sticky",
    );
    refused(
        &format!(
            "{HEAD}    rollout: {{strategy: canary, steps: [{{weight: 10}}], preview: {{mirror: 50%}}}}\n"
        ),
        4,
        65,
        "services.api.rollout.preview",
        "for `strategy: blue-green`",
    );
    refused(
        &format!("{HEAD}    rollout: {{strategy: blue-green, preview: {{mirror: 150%}}}}\n"),
        4,
        55,
        "services.api.rollout.preview.mirror",
        "[0%, 100%]",
    );
    refused(
        &format!("{HEAD}    rollout: {{strategy: blue-green, preview: {{mirror: 25%}}}}\n"),
        4,
        46,
        "services.api.rollout.preview",
        "need a routed `port`",
    );
    let blue_green = format!(
        "{HEAD}    port: 9000\n    rollout: {{strategy: blue-green, preview: {{mirror: 25%, min_requests: 50, min_duration: 10s, pause: until-promoted}}}}\n"
    );
    let preview = parse("p.yaml", &blue_green, &secrets).unwrap()[0]
        .rollout
        .preview;
    assert_eq!(
        (
            preview.mirror_percent,
            preview.min_requests,
            preview.min_duration_ms,
            preview.pause
        ),
        (25.0, 50, 10_000, Pause::UntilPromoted)
    );
    let defaults = parse(
        "p.yaml",
        &format!("{HEAD}    rollout: {{strategy: blue-green}}\n"),
        &secrets,
    )
    .unwrap()[0]
        .rollout
        .preview;
    assert_eq!(defaults, gantry_proto::platform::Preview::default());
}

#[test]
fn a_canary_step_at_100_percent_is_refused() {
    refused(
        &format!(
            "{HEAD}    rollout: {{strategy: canary, steps: [{{weight: 50}}, {{weight: 100}}]}}\n"
        ),
        4,
        64,
        "services.api.rollout.steps.1.weight",
        "cannot be judged",
    );
}
