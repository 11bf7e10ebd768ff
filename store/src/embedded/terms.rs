//! The raw `path=value` terms an attribute value or a structured log body is indexed as: a map's keys extend its
//! path with `.KEY`, each element of an array is indexed under the array's own path, and a scalar is matched as
//! its text (`value_text`). The stored row keeps the value nested; only the index is flat.
//!
//! The shape follows Elasticsearch's and Quickwit's flattening of objects: `{"a": {"b": 1}}` answers `a.b:1`, and
//! `{"tags": ["x", "y"]}` answers `tags:x` and `tags:y`. A literal key `a.b` and a nested `a: {b: …}` give the same
//! path, so one query finds both.

use serde_json::Value;

use crate::model::value_text;

/// How many maps and arrays deep a value is followed. A map or array nested deeper is indexed as one term holding
/// its compact JSON, under the path it has at this depth.
pub const MAX_DEPTH: usize = 20;

/// Most terms one attribute value, or one structured body, is indexed as (one per scalar inside it, in key order
/// and array order); the scalars after that are kept in the stored row but not indexed.
pub const MAX_TERMS: usize = 1_000;

/// The path under which a structured (map) log body's keys are indexed, in the `attrs` field: `body.KEY` in a query
/// looks for `=body.KEY=value`. Keys containing `=` are never indexed (see [`value_terms`]), so no attribute can
/// make a term that starts with `=`.
pub const BODY_ROOT: &str = "=body";

/// Calls `emit(path, text)` for each term of `value` under the path `key`.
///
/// Keys containing `=` are skipped, with everything below them: the term `a=b=c` could not tell the key `a` with
/// the value `b=c` from the key `a=b` with the value `c`, and a query field name cannot contain `=` anyway.
pub fn value_terms(key: &str, value: &Value, emit: impl FnMut(&str, &str)) {
    if !key.contains('=') {
        walk(key, value, emit);
    }
}

/// Calls `emit(path, text)` for each term of a structured body, under [`BODY_ROOT`].
pub fn body_terms(body: &Value, emit: impl FnMut(&str, &str)) {
    walk(BODY_ROOT, body, emit);
}

fn walk(root: &str, value: &Value, mut emit: impl FnMut(&str, &str)) {
    let mut walk = Walk {
        path: root.to_owned(),
        budget: MAX_TERMS,
        emit: &mut emit,
    };
    walk.value(value, 0);
}

struct Walk<'a, F: FnMut(&str, &str)> {
    path: String,
    budget: usize,
    emit: &'a mut F,
}

impl<F: FnMut(&str, &str)> Walk<'_, F> {
    fn value(&mut self, value: &Value, depth: usize) {
        if self.budget == 0 {
            return;
        }
        match value {
            Value::Object(map) if depth < MAX_DEPTH => {
                for (key, inner) in map {
                    if key.contains('=') {
                        continue;
                    }
                    let len = self.path.len();
                    self.path.push('.');
                    self.path.push_str(key);
                    self.value(inner, depth + 1);
                    self.path.truncate(len);
                }
            }
            Value::Array(items) if depth < MAX_DEPTH => {
                for item in items {
                    self.value(item, depth + 1);
                }
            }
            scalar_or_too_deep => {
                self.budget -= 1;
                (self.emit)(&self.path, &value_text(scalar_or_too_deep));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The terms of `value` under `key`, as `path=text`.
    fn check(key: &str, value: Value, expected: &[&str]) {
        let mut terms = Vec::new();
        value_terms(key, &value, |path, text| {
            terms.push(format!("{path}={text}"))
        });
        assert_eq!(terms, expected, "{key}: {value}");
    }

    #[test]
    fn scalars_are_one_term() {
        check("user", json!("bob"), &["user=bob"]);
        check("code", json!(504), &["code=504"]);
        check("ratio", json!(0.25), &["ratio=0.25"]);
        check("ok", json!(true), &["ok=true"]);
        check("gone", Value::Null, &["gone="]);
    }

    #[test]
    fn maps_and_arrays_are_flattened() {
        // The OTLP specification's examples/logs.json.
        check(
            "map.attribute",
            json!({"some.map.key": "some value"}),
            &["map.attribute.some.map.key=some value"],
        );
        check(
            "array.attribute",
            json!(["many", "values"]),
            &["array.attribute=many", "array.attribute=values"],
        );
        check(
            "http",
            json!({"request": {"method": "GET", "header": {"accept": ["a", "b"]}}, "status": 200}),
            &[
                "http.request.header.accept=a",
                "http.request.header.accept=b",
                "http.request.method=GET",
                "http.status=200",
            ],
        );
        check(
            "items",
            json!([{"sku": "a1", "qty": 2}, {"sku": "b2"}, [3, [4]]]),
            &[
                "items.qty=2",
                "items.sku=a1",
                "items.sku=b2",
                "items=3",
                "items=4",
            ],
        );
        check("empty", json!([]), &[]);
        check("none", json!({}), &[]);
        check("nulls", json!([null, "x"]), &["nulls=", "nulls=x"]);
    }

    #[test]
    fn bodies_are_under_their_own_root() {
        let mut terms = Vec::new();
        body_terms(&json!({"user": {"id": 42}, "a=b": 1}), |path, text| {
            terms.push(format!("{path}={text}"))
        });
        assert_eq!(terms, ["=body.user.id=42"]);
    }

    #[test]
    fn keys_with_equals_are_not_indexed() {
        check("a=b", json!("c"), &[]);
        check(
            "m",
            json!({"x=y": 1, "ok": {"p=q": 2, "r": 3}}),
            &["m.ok.r=3"],
        );
    }

    #[test]
    fn depth_and_size_are_capped() {
        let mut deep = json!("bottom");
        for _ in 0..MAX_DEPTH + 1 {
            deep = json!({ "k": deep });
        }
        let path = format!("d{}", ".k".repeat(MAX_DEPTH));
        check("d", deep, &[&format!("{path}={}", json!({"k": "bottom"}))]);

        let many: Vec<Value> = (0..MAX_TERMS + 10).map(|i| json!(i)).collect();
        let mut terms = Vec::new();
        value_terms("many", &Value::Array(many), |path, text| {
            terms.push(format!("{path}={text}"))
        });
        assert_eq!(terms.len(), MAX_TERMS);
        assert_eq!(terms.last().unwrap(), &format!("many={}", MAX_TERMS - 1));
    }
}
