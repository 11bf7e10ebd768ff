//! What changed between two revisions of a service: both specs flattened to `path = JSON value` leaves and
//! compared, one [`FieldChange`] per leaf that differs, in path order. Lists compare as whole values (`args`,
//! `depends_on`, `steps`), so a reordered list shows as one change; an empty list or map is the same as none.

use std::collections::BTreeMap;

use gantry_proto::platform::{FieldChange, ServiceSpec};
use serde_json::Value;

/// The changes from `before` to `after`; every field as added when `before` is `None`.
pub fn diff(before: Option<&ServiceSpec>, after: &ServiceSpec) -> Vec<FieldChange> {
    let old = before.map(leaves).unwrap_or_default();
    let new = leaves(after);
    let mut changes = Vec::new();
    for (field, value) in &new {
        match old.get(field) {
            Some(previous) if previous == value => {}
            previous => changes.push(FieldChange {
                field: field.clone(),
                before: previous.cloned(),
                after: Some(value.clone()),
            }),
        }
    }
    for (field, value) in &old {
        if !new.contains_key(field) {
            changes.push(FieldChange {
                field: field.clone(),
                before: Some(value.clone()),
                after: None,
            });
        }
    }
    changes.sort_by(|a, b| a.field.cmp(&b.field));
    changes
}

fn leaves(spec: &ServiceSpec) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    // A `ServiceSpec` always serializes (plain fields, string keys).
    let value = serde_json::to_value(spec).unwrap_or(Value::Null);
    flatten(String::new(), value, &mut out);
    out.remove("name");
    out
}

fn flatten(prefix: String, value: Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(path, value, out);
            }
        }
        // Absent, or an empty list or map: nothing to show.
        Value::Null | Value::Object(_) => {}
        Value::Array(items) if items.is_empty() => {}
        other => {
            out.insert(prefix, other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ServiceSpec {
        super::super::parse("t.yaml", yaml, &|_| true)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn changed_added_and_removed_fields() {
        let before = spec(
            "services:\n  api:\n    runtime: {process: {command: /bin/api, env: {A: '1', B: '2'}}}\n    replicas: 2\n",
        );
        let after = spec(
            "services:\n  api:\n    runtime: {process: {command: /bin/api, env: {A: '1', C: '3'}}}\n    replicas: 3\n",
        );
        let lines: Vec<String> = diff(Some(&before), &after)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "~ replicas: 2 => 3",
                "- runtime.process.env.B: \"2\"",
                "+ runtime.process.env.C: \"3\"",
            ]
        );
        assert!(diff(Some(&after), &after).is_empty());
        let first = diff(None, &after);
        assert!(first.iter().all(|change| change.before.is_none()));
        assert!(
            first
                .iter()
                .any(|change| change.field == "runtime.process.command")
        );
    }
}
