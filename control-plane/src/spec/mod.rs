//! The platform spec: one YAML file describing the platform's services (`gantry apply platform.yaml`), read into
//! the validated [`ServiceSpec`]s the plane stores as revisions.
//!
//! Reading is two steps, as config is everywhere in Gantry: the YAML's own shape (`raw`, serde-saphyr with unknown
//! fields refused), then one [`parse`] that checks what the shape cannot say (names, references between services,
//! port clashes, dependency cycles, secret references, rollout settings) and fills in defaults. Every error names
//! the file, the 1-based line and column, and the field's path, e.g.
//! `platform.yaml:12:15: services.gateway.replicas: invalid u32`.
//!
//! YAML is read with serde-saphyr's defaults: duplicate keys are errors and its budget bounds what anchors and
//! aliases may expand to, so a hostile file cannot make the plane allocate without limit.

pub mod diff;
mod raw;
mod rollout;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gantry_proto::SpecLocation;
use gantry_proto::platform::{
    HealthCheck, Probe, ProcessSpec, Resources, RuntimeSpec, ServiceSpec, Sticky, Strategy,
};
use serde_saphyr::{Location, Spanned};

use raw::{RawHealth, RawPlatform, RawProcess, RawRollout, RawService};

/// The most replicas one service may ask for.
pub const MAX_REPLICAS: u32 = 1000;
/// The largest spec file the plane reads, bytes.
pub const MAX_SPEC_BYTES: usize = 4 << 20;

/// Environment variables Gantry sets for every instance, which a spec may not set.
pub const RESERVED_ENV: [&str; 3] = [
    "PORT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// A spec the plane refuses: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{}:{}: {}{}", location.file, location.line, location.column, field_prefix(&location.field), message)]
pub struct SpecError {
    /// File, line, column and field.
    pub location: SpecLocation,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// Reads a platform spec: `file` is the name errors give, `text` the YAML, `secret_exists` says whether a secret
/// of that name is stored. Returns the services in file order.
///
/// # Errors
/// The first problem found, as a [`SpecError`].
pub fn parse(
    file: &str,
    text: &str,
    secret_exists: &dyn Fn(&str) -> bool,
) -> Result<Vec<ServiceSpec>, SpecError> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(SpecError {
            location: location(file, None, ""),
            message: format!(
                "the file is {} bytes, more than the {MAX_SPEC_BYTES} allowed",
                text.len()
            ),
        });
    }
    let raw: RawPlatform = read_yaml(file, text)?;
    Checker {
        file,
        text,
        secret_exists,
    }
    .check(raw)
}

/// Reads YAML into `T` with serde-saphyr; an error names the file, line, column and the field's path.
///
/// # Errors
/// The first problem serde found.
pub fn read_yaml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, SpecError> {
    let mut path = String::new();
    let mut options = serde_saphyr::options::Options::default();
    options.with_snippet = false;
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |deserializer| {
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            path = error.path().to_string();
            error.into_inner()
        })
    })
    .map_err(|error| {
        let found = error.location();
        let mut message = error.to_string();
        if let Some(at) = found {
            let suffix = format!(" at line {}, column {}", at.line(), at.column());
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_owned();
            }
        }
        SpecError {
            location: location(file, found, &clean_path(&path)),
            message,
        }
    })
}

/// serde_path_to_error's path without the `Spanned` wrappers' `value` segments and its `?` for unknown parts.
fn clean_path(path: &str) -> String {
    if path == "." {
        return String::new();
    }
    path.split('.')
        .filter(|segment| *segment != "value" && *segment != "?")
        .collect::<Vec<_>>()
        .join(".")
}

fn location(file: &str, at: Option<Location>, field: &str) -> SpecLocation {
    SpecLocation {
        file: file.to_owned(),
        line: at.map_or(0, |at| at.line()),
        column: at.map_or(0, |at| at.column()),
        field: field.to_owned(),
    }
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    secret_exists: &'a dyn Fn(&str) -> bool,
}

impl Checker<'_> {
    fn error<T>(
        &self,
        at: Location,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Result<T, SpecError> {
        Err(SpecError {
            location: location(self.file, Some(at), &field.into()),
            message: message.into(),
        })
    }

    /// An error at a mapping key, found as the last occurrence of `key` before its value.
    fn key_error<T, V>(
        &self,
        key: &str,
        value: &Spanned<V>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Result<T, SpecError> {
        let at = value.referenced;
        let found = at
            .span()
            .byte_offset()
            .and_then(|end| self.text.get(..end as usize))
            .and_then(|before| before.rfind(key).map(|start| (before, start)));
        let mut location = location(self.file, Some(at), &field.into());
        if let Some((before, start)) = found {
            let line_start = before[..start].rfind('\n').map_or(0, |newline| newline + 1);
            location.line = before[..start].matches('\n').count() as u64 + 1;
            location.column = before[line_start..start].chars().count() as u64 + 1;
        }
        Err(SpecError {
            location,
            message: message.into(),
        })
    }

    fn check(&self, raw: RawPlatform) -> Result<Vec<ServiceSpec>, SpecError> {
        let entries = raw.services.value.0;
        let names: BTreeSet<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
        let mut services = Vec::with_capacity(entries.len());
        let mut ports: HashMap<u16, &str> = HashMap::new();
        for (name, service) in &entries {
            let spec = self.service(name, service, &names)?;
            if let (Some(port), Some(at)) = (spec.port, &service.value.port)
                && let Some(other) = ports.insert(port, name)
            {
                return self.error(
                        at.referenced,
                        format!("services.{name}.port"),
                        format!("port {port} is already the routed port of `{other}`: each service needs its own"),
                    );
            }
            services.push(spec);
        }
        self.check_cycles(&entries)?;
        Ok(services)
    }

    fn service(
        &self,
        name: &str,
        service: &Spanned<RawService>,
        names: &BTreeSet<&str>,
    ) -> Result<ServiceSpec, SpecError> {
        let field = |rest: &str| format!("services.{name}.{rest}");
        if !valid_service_name(name) {
            return self.key_error(
                name,
                service,
                format!("services.{name}"),
                "a service name is 1-63 lowercase letters, digits and `-`, starting with a letter and not ending with `-`",
            );
        }
        let raw = &service.value;
        if let Some(version) = &raw.version
            && (version.is_empty()
                || version.len() > 64
                || !version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c)))
        {
            return self.error(
                service.referenced,
                field("version"),
                "a version is 1-64 letters, digits, `.`, `_`, `-` or `+`",
            );
        }
        let runtime = self.runtime(name, &raw.runtime)?;
        let replicas = match &raw.replicas {
            Some(replicas) if replicas.value > MAX_REPLICAS => {
                return self.error(
                    replicas.referenced,
                    field("replicas"),
                    format!("at most {MAX_REPLICAS} replicas per service"),
                );
            }
            Some(replicas) => replicas.value,
            None => 1,
        };
        if let Some(port) = &raw.port
            && port.value == 0
        {
            return self.error(
                port.referenced,
                field("port"),
                "the routed port must be 1-65535",
            );
        }
        let mut depends_on = Vec::new();
        for (index, dependency) in raw.depends_on.iter().enumerate() {
            let at = dependency.referenced;
            let path = field(&format!("depends_on.{index}"));
            if dependency.value == name {
                return self.error(at, path, "a service cannot depend on itself");
            }
            if !names.contains(dependency.value.as_str()) {
                return self.error(
                    at,
                    path,
                    format!("no service `{}` in this file", dependency.value),
                );
            }
            if depends_on.contains(&dependency.value) {
                return self.error(at, path, format!("`{}` is listed twice", dependency.value));
            }
            depends_on.push(dependency.value.clone());
        }
        let health = raw
            .health
            .as_ref()
            .map(|health| self.health(name, health))
            .transpose()?;
        for key in raw.constraints.keys() {
            if key.is_empty() {
                return self.error(
                    service.referenced,
                    field("constraints"),
                    "a label name cannot be empty",
                );
            }
        }
        let sticky = match raw.routing.as_ref().and_then(|r| r.value.sticky.as_ref()) {
            None => None,
            Some(sticky) => {
                let field = field("routing.sticky");
                let valid = |name: &str| {
                    !name.is_empty()
                        && name.len() <= 256
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_graphic() && b != b';' && b != b'=')
                };
                match (&sticky.value.header, &sticky.value.cookie) {
                    (Some(header), None) if valid(header) => {
                        Some(Sticky::Header(header.to_ascii_lowercase()))
                    }
                    (None, Some(cookie)) if valid(cookie) => Some(Sticky::Cookie(cookie.clone())),
                    (Some(_), None) | (None, Some(_)) => {
                        return self.error(sticky.referenced, field, "not a header or cookie name");
                    }
                    _ => {
                        return self.error(
                            sticky.referenced,
                            field,
                            "stickiness needs exactly one of `header: NAME` or `cookie: NAME`",
                        );
                    }
                }
            }
        };
        if sticky.is_some() && raw.port.is_none() {
            return self.error(
                service.referenced,
                field("routing.sticky"),
                "stickiness needs a routed `port`",
            );
        }
        let rollout = match &raw.rollout {
            Some(rollout) => self.rollout(name, &rollout.value, rollout.referenced)?,
            None => self.rollout(name, &RawRollout::default(), service.referenced)?,
        };
        // The log rule weighs a request by the routers' random draw; a sticky key's pick is not one.
        if rollout.judge.log_errors
            && sticky.is_some()
            && let Some(log_errors) = raw
                .rollout
                .as_ref()
                .and_then(|r| r.value.judge.log_errors.as_ref())
        {
            return self.error(
                log_errors.referenced,
                field("rollout.judge.log_errors"),
                "the log rule cannot judge a sticky service: its requests are not routed by a random draw",
            );
        }
        // Blue-green's preview mirrors the routers' requests: without a routed port there are none.
        if rollout.strategy == Strategy::BlueGreen
            && raw.port.is_none()
            && let Some(preview) = raw.rollout.as_ref().and_then(|r| r.value.preview.as_ref())
            && rollout.preview.mirror_percent > 0.0
        {
            return self.error(
                preview.referenced,
                field("rollout.preview"),
                "a preview judges mirrored requests, which need a routed `port` (or set `mirror: 0%`)",
            );
        }
        Ok(ServiceSpec {
            name: name.to_owned(),
            version: raw.version.clone(),
            runtime,
            replicas,
            resources: Resources {
                cpu_millis: raw.resources.cpu.map_or(100, |cpu| cpu.0),
                memory_bytes: raw.resources.memory.map_or(128 << 20, |memory| memory.0),
            },
            port: raw.port.as_ref().map(|port| port.value),
            depends_on,
            health,
            constraints: raw.constraints.clone(),
            kill_timeout_ms: raw.kill_timeout.map_or(10_000, |timeout| timeout.0),
            rollout,
            sticky,
        })
    }

    fn runtime(
        &self,
        service: &str,
        runtime: &Spanned<raw::RawRuntime>,
    ) -> Result<RuntimeSpec, SpecError> {
        let field = format!("services.{service}.runtime");
        let raw = &runtime.value;
        for (later, name) in [(&raw.docker, "docker"), (&raw.kubernetes, "kubernetes")] {
            if let Some(later) = later {
                return self.error(
                    later.referenced,
                    format!("{field}.{name}"),
                    format!("the {name} runtime is not available in this version of gantry: use `process`"),
                );
            }
        }
        let Some(process) = &raw.process else {
            return self.error(
                runtime.referenced,
                field,
                "a runtime is needed: `process: {command: ...}`",
            );
        };
        self.process(&format!("{field}.process"), process)
            .map(RuntimeSpec::Process)
    }

    fn process(&self, field: &str, process: &RawProcess) -> Result<ProcessSpec, SpecError> {
        if process.command.value.trim().is_empty() {
            return self.error(
                process.command.referenced,
                format!("{field}.command"),
                "the command is empty",
            );
        }
        let mut env = BTreeMap::new();
        for (key, value) in &process.env.0 {
            let path = format!("{field}.env.{key}");
            if !valid_env_name(key) {
                return self.key_error(
                    key,
                    value,
                    path,
                    "an environment variable's name is letters, digits and `_`, not starting with a digit",
                );
            }
            if RESERVED_ENV.contains(&key.as_str()) || key.starts_with("GANTRY_") {
                return self.key_error(
                    key,
                    value,
                    path,
                    format!("`{key}` is set by gantry for every instance and cannot be set here"),
                );
            }
            for reference in secret_references(&value.value).map_err(|message| SpecError {
                location: location(self.file, Some(value.referenced), &path),
                message,
            })? {
                if !(self.secret_exists)(reference) {
                    return self.error(
                        value.referenced,
                        path,
                        format!("no secret `{reference}`: create it first with `gantry secret set {reference}`"),
                    );
                }
            }
            env.insert(key.clone(), value.value.clone());
        }
        Ok(ProcessSpec {
            command: process.command.value.clone(),
            args: process.args.clone(),
            env,
            working_dir: process.working_dir.clone(),
        })
    }

    fn health(&self, service: &str, health: &Spanned<RawHealth>) -> Result<HealthCheck, SpecError> {
        let field = |rest: &str| format!("services.{service}.health{rest}");
        let raw = &health.value;
        let probes = usize::from(raw.http.is_some())
            + usize::from(raw.tcp == Some(true))
            + usize::from(raw.command.is_some());
        if probes != 1 {
            return self.error(
                health.referenced,
                field(""),
                "a health check needs exactly one of `http: {path: /healthz}`, `tcp: true` or `command: [...]`",
            );
        }
        let probe = if let Some(http) = &raw.http {
            if !http.path.value.starts_with('/') {
                return self.error(
                    http.path.referenced,
                    field(".http.path"),
                    "the path must start with `/`",
                );
            }
            Probe::Http {
                path: http.path.value.clone(),
            }
        } else if let Some(command) = &raw.command {
            let Some((program, args)) = command
                .split_first()
                .filter(|(program, _)| !program.is_empty())
            else {
                return self.error(health.referenced, field(".command"), "the command is empty");
            };
            Probe::Command {
                command: program.clone(),
                args: args.to_vec(),
            }
        } else {
            Probe::Tcp
        };
        let interval = raw.interval.as_ref().map_or(10_000, |v| v.value.0);
        let timeout = raw
            .timeout
            .as_ref()
            .map_or(1_000.min(interval), |v| v.value.0);
        if let Some(at) = &raw.interval
            && interval == 0
        {
            return self.error(
                at.referenced,
                field(".interval"),
                "the interval must be above 0",
            );
        }
        if let Some(at) = &raw.timeout
            && (timeout == 0 || timeout > interval)
        {
            return self.error(
                at.referenced,
                field(".timeout"),
                format!("the timeout must be above 0 and at most the interval ({interval} ms)"),
            );
        }
        let threshold = |value: &Option<Spanned<u32>>, name: &str, default: u32| match value {
            Some(v) if v.value == 0 || v.value > 100 => self.error(
                v.referenced,
                field(&format!(".{name}")),
                "a threshold is 1-100 consecutive checks",
            ),
            Some(v) => Ok(v.value),
            None => Ok(default),
        };
        Ok(HealthCheck {
            probe,
            interval_ms: interval,
            timeout_ms: timeout,
            healthy_threshold: threshold(&raw.healthy_threshold, "healthy_threshold", 1)?,
            unhealthy_threshold: threshold(&raw.unhealthy_threshold, "unhealthy_threshold", 3)?,
            start_period_ms: raw.start_period.map_or(0, |v| v.0),
        })
    }

    /// Refuses a cycle in `depends_on`, naming it at the dependency that closes it.
    fn check_cycles(&self, entries: &[(String, Spanned<RawService>)]) -> Result<(), SpecError> {
        let edges: BTreeMap<&str, &[Spanned<String>]> = entries
            .iter()
            .map(|(name, service)| (name.as_str(), service.value.depends_on.as_slice()))
            .collect();
        // Depth-first search with colours: 1 on the current path, 2 done.
        let mut colour: HashMap<&str, u8> = HashMap::new();
        let mut path: Vec<&str> = Vec::new();
        for (start, _) in entries {
            self.visit(start, &edges, &mut colour, &mut path)?;
        }
        Ok(())
    }

    fn visit<'a>(
        &self,
        node: &'a str,
        edges: &BTreeMap<&'a str, &'a [Spanned<String>]>,
        colour: &mut HashMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Result<(), SpecError> {
        if colour.get(node).copied() == Some(2) {
            return Ok(());
        }
        colour.insert(node, 1);
        path.push(node);
        for (index, next) in edges
            .get(node)
            .copied()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let next_name = next.value.as_str();
            if colour.get(next_name).copied() == Some(1) {
                let from = path.iter().position(|n| *n == next_name).unwrap_or(0);
                let mut cycle: Vec<&str> = path[from..].to_vec();
                cycle.push(next_name);
                return self.error(
                    next.referenced,
                    format!("services.{node}.depends_on.{index}"),
                    format!("dependency cycle: {}", cycle.join(" -> ")),
                );
            }
            self.visit(next_name, edges, colour, path)?;
        }
        path.pop();
        colour.insert(node, 2);
        Ok(())
    }
}

/// An RFC 1123 label: what DNS, Kubernetes and Nomad accept as a service name.
pub fn valid_service_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Whether `name` may be an environment variable's name: a letter or `_`, then letters, digits or `_`.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The secret names a value references with `${secret:NAME}`, in order.
///
/// # Errors
/// An unterminated or malformed reference.
pub fn secret_references(value: &str) -> Result<Vec<&str>, String> {
    const OPEN: &str = "${secret:";
    let mut names = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find('}') else {
            return Err(format!(
                "unterminated secret reference in `{value}`: write `${{secret:NAME}}`"
            ));
        };
        let name = &after[..end];
        if !valid_secret_name(name) {
            return Err(format!(
                "`{name}` is not a secret name: 1-128 letters, digits, `-`, `_` or `.`"
            ));
        }
        names.push(name);
        rest = &after[end + 1..];
    }
    Ok(names)
}

/// Replaces every `${secret:NAME}` in `value` with `lookup(NAME)`.
///
/// # Errors
/// A reference is malformed, or `lookup` has no value for it (the name is returned).
pub fn resolve_secrets(
    value: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    const OPEN: &str = "${secret:";
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated secret reference".to_owned())?;
        let name = &after[..end];
        out.push_str(&lookup(name).ok_or_else(|| name.to_owned())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A secret's name: 1-128 letters, digits, `-`, `_` or `.`.
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[cfg(test)]
mod tests;
