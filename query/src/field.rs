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
    /// Any other name: a record or resource attribute; the store decides which wins.
    AttributeOrResource(&'a str),
}

/// Resolves a field name: `None` is the default field, names in `top_level` are columns,
/// `attributes.KEY` and `resource.KEY` are attributes (an empty `KEY` is not split off),
/// and anything else may be either kind of attribute.
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
        ] {
            assert_eq!(resolve(field, &top), expected, "{field:?}");
        }
        assert_eq!(
            resolve(Some("attributes.x"), &["attributes.x"]),
            FieldRef::Top("attributes.x")
        );
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
