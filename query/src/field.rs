//! Field resolution: mapping query field names onto a store's columns and attributes.

use crate::ast::Query;

/// Where a query field lives in a record, as decided by [`resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldRef<'a> {
    /// No field: the default (free-text) field.
    Default,
    /// A top-level column the store knows by this name.
    Top(&'a str),
    /// `attributes.KEY`: a record (log or span) attribute.
    Attribute(&'a str),
    /// `resource.KEY`: a resource attribute.
    Resource(&'a str),
    /// `body.KEY` where the signal has a top-level `body`: a key of a structured (map) body, as a dotted path.
    Body(&'a str),
    /// Any other name: a record or resource attribute; the store decides which wins.
    AttributeOrResource(&'a str),
}

/// Resolves a field name: `None` is the default field, names in `top_level` are columns,
/// `attributes.KEY` and `resource.KEY` are attributes, `body.KEY` is a key of a structured body
/// when `body` is a top-level name (an empty `KEY` is never split off), and anything else may be
/// either kind of attribute.
pub fn resolve<'a>(field: Option<&'a str>, top_level: &[&str]) -> FieldRef<'a> {
    let Some(name) = field else {
        return FieldRef::Default;
    };
    if top_level.contains(&name) {
        return FieldRef::Top(name);
    }
    let key = |prefix: &str| name.strip_prefix(prefix).filter(|key| !key.is_empty());
    if let Some(key) = key("attributes.") {
        FieldRef::Attribute(key)
    } else if let Some(key) = key("resource.") {
        FieldRef::Resource(key)
    } else if let Some(key) = key("body.").filter(|_| top_level.contains(&"body")) {
        FieldRef::Body(key)
    } else {
        FieldRef::AttributeOrResource(name)
    }
}

impl Query {
    /// The named fields this query uses, each once, in order of first appearance.
    pub fn fields(&self) -> Vec<&str> {
        let mut fields = Vec::new();
        self.collect_fields(&mut fields);
        fields
    }

    /// The leaves of this query (terms, phrases, prefixes, `field:*` and ranges) in reading order: the order of
    /// the positions [`parse_located`](crate::parse_located) gives. [`Query::All`] is not a leaf.
    pub fn leaves(&self) -> Vec<&Query> {
        let mut leaves = Vec::new();
        let mut stack = vec![self];
        while let Some(query) = stack.pop() {
            match query {
                Query::All => {}
                Query::And(items) | Query::Or(items) => stack.extend(items.iter().rev()),
                Query::Not(inner) => stack.push(inner),
                leaf => leaves.push(leaf),
            }
        }
        leaves
    }

    fn collect_fields<'a>(&'a self, fields: &mut Vec<&'a str>) {
        let field = match self {
            Query::All => None,
            Query::Term { field, .. }
            | Query::Phrase { field, .. }
            | Query::Prefix { field, .. } => field.as_deref(),
            Query::Exists { field } | Query::Range { field, .. } => Some(field.as_str()),
            Query::And(items) | Query::Or(items) => {
                items.iter().for_each(|item| item.collect_fields(fields));
                None
            }
            Query::Not(inner) => {
                inner.collect_fields(fields);
                None
            }
        };
        if let Some(field) = field
            && !fields.contains(&field)
        {
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn resolves() {
        let top = ["service", "severity", "trace_id"];
        for (field, expected) in [
            (None, FieldRef::Default),
            (Some("service"), FieldRef::Top("service")),
            (
                Some("attributes.http.status_code"),
                FieldRef::Attribute("http.status_code"),
            ),
            (
                Some("resource.service.name"),
                FieldRef::Resource("service.name"),
            ),
            (Some("order_id"), FieldRef::AttributeOrResource("order_id")),
            (
                Some("k8s.pod.name"),
                FieldRef::AttributeOrResource("k8s.pod.name"),
            ),
            (
                Some("attributes."),
                FieldRef::AttributeOrResource("attributes."),
            ),
            (Some("resource"), FieldRef::AttributeOrResource("resource")),
            (
                Some("body.user.id"),
                FieldRef::AttributeOrResource("body.user.id"),
            ),
        ] {
            assert_eq!(resolve(field, &top), expected, "{field:?}");
        }
        let logs = ["service", "body"];
        for (field, expected) in [
            (Some("body"), FieldRef::Top("body")),
            (Some("body.user.id"), FieldRef::Body("user.id")),
            (Some("body."), FieldRef::AttributeOrResource("body.")),
            (Some("attributes.body.x"), FieldRef::Attribute("body.x")),
            (Some("bodyx"), FieldRef::AttributeOrResource("bodyx")),
        ] {
            assert_eq!(resolve(field, &logs), expected, "{field:?}");
        }
        assert_eq!(
            resolve(Some("attributes.x"), &["attributes.x"]),
            FieldRef::Top("attributes.x")
        );
    }

    #[test]
    fn locates_leaves() {
        for (input, expected) in [
            ("", vec![]),
            ("*", vec![]),
            ("a * b", vec![0, 4]),
            ("error", vec![0]),
            ("service:api", vec![8]),
            ("a service:api", vec![0, 10]),
            ("field:(a OR \"b c\")", vec![7, 12]),
            ("-x:[1 TO 2] y:*", vec![3, 14]),
            ("NOT (a (b OR c)) d", vec![5, 8, 13, 17]),
            ("a OR b c OR -(d)", vec![0, 5, 7, 14]),
            ("f:(>5 OR 4*)", vec![3, 9]),
            ("\"é\" kafka_con*", vec![0, 4]),
        ] {
            let (query, positions) = crate::parse_located(input).unwrap();
            assert_eq!(positions, expected, "{input:?}");
            assert_eq!(query.leaves().len(), positions.len(), "{input:?}");
            let chars: Vec<char> = input.chars().collect();
            for (leaf, position) in query.leaves().into_iter().zip(&positions) {
                // The text at the position is where the leaf's value is written.
                let rest: String = chars[*position..].iter().collect();
                let value = match leaf {
                    Query::Term { value, .. } => value.clone(),
                    Query::Phrase { .. } => "\"".to_owned(),
                    Query::Prefix { prefix, .. } => prefix.clone(),
                    Query::Exists { .. } => "*".to_owned(),
                    Query::Range { .. } => String::new(),
                    _ => unreachable!("not a leaf"),
                };
                assert!(
                    rest.starts_with(&value),
                    "{input:?}: {leaf:?} at {position}"
                );
            }
        }
    }

    #[test]
    fn lists_fields() {
        for (input, expected) in [
            ("", vec![]),
            ("free text", vec![]),
            ("service:api", vec!["service"]),
            (
                "service:api (a OR -order_id:1) x:* service:b t:>5 p:\"q\" r:s*",
                vec!["service", "order_id", "x", "t", "p", "r"],
            ),
            ("f:(a OR b)", vec!["f"]),
        ] {
            assert_eq!(parse(input).unwrap().fields(), expected, "{input:?}");
        }
    }
}
