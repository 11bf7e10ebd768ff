//! What the Docker source knows about one container: its name, image and labels, and the OTLP resource its logs and metrics carry.

use std::collections::HashMap;

use bollard::models::ContainerInspectResponse;
use opentelemetry_proto::tonic::common::v1::KeyValue;

use crate::sources::file::parse::parse_time;
use crate::sources::kv;

/// Label naming the service, read before Compose's.
pub const SERVICE_LABEL: &str = "gantry.service";
/// Label Docker Compose sets to the service name.
pub const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";
/// Label giving the service version.
pub const VERSION_LABEL: &str = "gantry.version";

/// One container, as inspected when it was discovered.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// Full id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// `service.name` of its telemetry.
    pub service: String,
    /// When its current run started (unix nanos; 0 when unknown): the start of its cumulative metrics.
    pub started_unix_nanos: u64,
    /// Whether it was running when inspected.
    pub running: bool,
    /// The host's resource attributes and the container's own.
    pub resource: Vec<KeyValue>,
}

impl Container {
    /// From an inspect answer; `None` when it lacks an id.
    pub fn from_inspect(
        inspect: ContainerInspectResponse,
        host_resource: &[KeyValue],
    ) -> Option<Container> {
        let id = inspect.id?;
        let name = inspect
            .name
            .as_deref()
            .map(|n| n.trim_start_matches('/').to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| id.chars().take(12).collect());
        let config = inspect.config.unwrap_or_default();
        let image = config.image.or(inspect.image).unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        let state = inspect.state.unwrap_or_default();
        let started_unix_nanos = state
            .started_at
            .as_deref()
            .and_then(parse_time)
            .unwrap_or(0);
        Some(Container {
            service: service_name(&labels, &name),
            resource: resource(host_resource, &id, &name, &image, &labels),
            running: state.running.unwrap_or(false),
            started_unix_nanos,
            id,
            name,
        })
    }
}

/// `service.name`: label `gantry.service`, else `com.docker.compose.service`, else the container name.
pub fn service_name(labels: &HashMap<String, String>, container_name: &str) -> String {
    [SERVICE_LABEL, COMPOSE_SERVICE_LABEL]
        .iter()
        .find_map(|key| labels.get(*key).filter(|v| !v.is_empty()))
        .cloned()
        .unwrap_or_else(|| container_name.to_owned())
}

/// `service.version`: label `gantry.version`, else the image tag if the image reference has one.
pub fn service_version(labels: &HashMap<String, String>, image: &str) -> Option<String> {
    labels
        .get(VERSION_LABEL)
        .filter(|v| !v.is_empty())
        .cloned()
        .or_else(|| split_image(image).1.map(str::to_owned))
}

/// An image reference split into its name and tag: `registry:5000/app:1.2@sha256:…` → (`registry:5000/app`,
/// `Some("1.2")`). A colon before the last `/` belongs to the registry's port, not to a tag.
pub fn split_image(image: &str) -> (&str, Option<&str>) {
    if image.starts_with("sha256:") {
        return (image, None);
    }
    let without_digest = image.split_once('@').map_or(image, |(name, _)| name);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[last_slash..].rfind(':') {
        Some(colon) => {
            let colon = last_slash + colon;
            let tag = &without_digest[colon + 1..];
            (&without_digest[..colon], (!tag.is_empty()).then_some(tag))
        }
        None => (without_digest, None),
    }
}

fn resource(
    host_resource: &[KeyValue],
    id: &str,
    name: &str,
    image: &str,
    labels: &HashMap<String, String>,
) -> Vec<KeyValue> {
    let mut attributes = host_resource.to_vec();
    attributes.extend([
        kv("container.id", id),
        kv("container.name", name),
        kv("container.image.name", split_image(image).0),
        kv("container.runtime", "docker"),
        kv("service.name", &service_name(labels, name)),
    ]);
    if let Some(version) = service_version(labels, image) {
        attributes.push(kv("service.version", &version));
    }
    attributes
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerConfig, ContainerState};
    use opentelemetry_proto::tonic::common::v1::any_value;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn service_name_prefers_gantry_then_compose_then_container_name() {
        let check = |pairs: &[(&str, &str)], expected: &str| {
            assert_eq!(service_name(&labels(pairs), "web-1"), expected, "{pairs:?}");
        };
        check(&[], "web-1");
        check(&[(COMPOSE_SERVICE_LABEL, "web")], "web");
        check(
            &[(COMPOSE_SERVICE_LABEL, "web"), (SERVICE_LABEL, "checkout")],
            "checkout",
        );
        check(&[(SERVICE_LABEL, "")], "web-1");
        check(&[("other", "x")], "web-1");
    }

    #[test]
    fn service_version_prefers_the_label_then_the_image_tag() {
        let check = |pairs: &[(&str, &str)], image: &str, expected: Option<&str>| {
            assert_eq!(
                service_version(&labels(pairs), image).as_deref(),
                expected,
                "{pairs:?} {image}"
            );
        };
        check(&[(VERSION_LABEL, "1.2.3")], "app:2.0", Some("1.2.3"));
        check(&[], "app:2.0", Some("2.0"));
        check(&[], "app", None);
        check(&[], "localhost:5000/app", None);
        check(&[], "sha256:0123abcd", None);
    }

    #[test]
    fn image_references_split_into_name_and_tag() {
        let check = |image: &str, name: &str, tag: Option<&str>| {
            assert_eq!(split_image(image), (name, tag), "{image}");
        };
        check("busybox", "busybox", None);
        check("busybox:1.36", "busybox", Some("1.36"));
        check("ghcr.io/org/app:v2", "ghcr.io/org/app", Some("v2"));
        check("localhost:5000/app", "localhost:5000/app", None);
        check("localhost:5000/app:7", "localhost:5000/app", Some("7"));
        check("app:1@sha256:abcd", "app", Some("1"));
        check("app@sha256:abcd", "app", None);
        check("sha256:abcd", "sha256:abcd", None);
        check("app:", "app", None);
    }

    #[test]
    fn resource_from_inspect() {
        let inspect = ContainerInspectResponse {
            id: Some("f00d".into()),
            name: Some("/shop-web-1".into()),
            image: Some("sha256:beef".into()),
            config: Some(ContainerConfig {
                image: Some("registry:5000/shop/web:4.1".into()),
                labels: Some(labels(&[(COMPOSE_SERVICE_LABEL, "web")])),
                ..Default::default()
            }),
            state: Some(ContainerState {
                running: Some(true),
                started_at: Some("2024-05-01T12:00:00.5Z".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let container = Container::from_inspect(inspect, &[kv("host.name", "node-1")]).unwrap();
        assert_eq!(container.name, "shop-web-1");
        assert_eq!(container.service, "web");
        assert!(container.running);
        assert_eq!(container.started_unix_nanos, 1_714_564_800_500_000_000);
        let attributes: Vec<(String, String)> = container
            .resource
            .iter()
            .map(|a| {
                let value = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => panic!("{other:?}"),
                };
                (a.key.clone(), value)
            })
            .collect();
        let expected = [
            ("host.name", "node-1"),
            ("container.id", "f00d"),
            ("container.name", "shop-web-1"),
            ("container.image.name", "registry:5000/shop/web"),
            ("container.runtime", "docker"),
            ("service.name", "web"),
            ("service.version", "4.1"),
        ];
        assert_eq!(
            attributes,
            expected
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        );
    }
}
