//! The query AST every store compiles, and its canonical text printer.

use std::fmt::{self, Write};

/// A parsed query: what [`parse`](crate::parse) produces and each store compiles.
///
/// `field: None` means the default (free-text) field. ASTs built by the parser are
/// canonical: `And`/`Or` hold at least two items and never directly nest their own kind.
/// [`Query::normalized`] brings a hand-built AST into the same shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Matches everything: the empty query or a lone `*`.
    All,
    /// `value` or `field:value`: a single term (no wildcard). The value must be non-empty.
    Term {
        /// The field searched, `None` for the default field.
        field: Option<String>,
        /// The term, with escapes resolved.
        value: String,
    },
    /// `"some words"` or `field:"some words"`.
    Phrase {
        /// The field searched, `None` for the default field.
        field: Option<String>,
        /// The phrase, with escapes resolved.
        text: String,
    },
    /// `foo*` or `field:foo*`: a trailing wildcard.
    Prefix {
        /// The field searched, `None` for the default field.
        field: Option<String>,
        /// The non-empty text before the `*`.
        prefix: String,
    },
    /// `field:*`: the field exists.
    Exists {
        /// The field that must be present.
        field: String,
    },
    /// `field:>300`, `field:>=warn`, `field:<5`, `field:<=5`, `field:[a TO b]`, `field:{a TO b}`, `field:[a TO *]`.
    Range {
        /// The field compared.
        field: String,
        /// The lower end.
        lower: Bound,
        /// The upper end.
        upper: Bound,
    },
    /// Every item matches.
    And(Vec<Query>),
    /// At least one item matches.
    Or(Vec<Query>),
    /// The inner query does not match.
    Not(Box<Query>),
}

/// One end of a [`Query::Range`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// Open end: `*`.
    Unbounded,
    /// The value itself is in range: `[` / `]`, `>=`, `<=`.
    Included(String),
    /// The value itself is out of range: `{` / `}`, `>`, `<`.
    Excluded(String),
}

impl Query {
    /// Joins `items` with AND, flattening nested `And`s; one item is returned as is, none is [`Query::All`].
    pub fn and(items: impl IntoIterator<Item = Query>) -> Query {
        let mut flat = Vec::new();
        for item in items {
            match item {
                Query::And(inner) => flat.extend(inner),
                other => flat.push(other),
            }
        }
        match flat.len() {
            0 => Query::All,
            1 => flat.remove(0),
            _ => Query::And(flat),
        }
    }

    /// Joins `items` with OR, flattening nested `Or`s; one item is returned as is, none is `NOT *`.
    pub fn or(items: impl IntoIterator<Item = Query>) -> Query {
        let mut flat = Vec::new();
        for item in items {
            match item {
                Query::Or(inner) => flat.extend(inner),
                other => flat.push(other),
            }
        }
        match flat.len() {
            0 => Query::Not(Box::new(Query::All)),
            1 => flat.remove(0),
            _ => Query::Or(flat),
        }
    }

    /// Rebuilds every `And`/`Or` through [`Query::and`]/[`Query::or`], giving the shape the parser produces.
    pub fn normalized(self) -> Query {
        match self {
            Query::And(items) => Query::and(items.into_iter().map(Query::normalized)),
            Query::Or(items) => Query::or(items.into_iter().map(Query::normalized)),
            Query::Not(inner) => Query::Not(Box::new(inner.normalized())),
            leaf => leaf,
        }
    }
}

/// Prints canonical query text that parses back to the [normalized](Query::normalized) AST.
///
/// Field names are printed as they are, so they must be valid field names; `Term` values
/// and `Prefix` prefixes must be non-empty.
impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Query::All => f.write_str("*"),
            Query::Term { field, value } => {
                write_field(f, field.as_deref())?;
                write_word(f, value, field.is_some())
            }
            Query::Phrase { field, text } => {
                write_field(f, field.as_deref())?;
                write_quoted(f, text)
            }
            Query::Prefix { field, prefix } => {
                write_field(f, field.as_deref())?;
                write_word(f, prefix, field.is_some())?;
                f.write_char('*')
            }
            Query::Exists { field } => write!(f, "{field}:*"),
            Query::Range {
                field,
                lower,
                upper,
            } => {
                write!(f, "{field}:")?;
                write_range(f, lower, upper)
            }
            Query::And(items) if items.is_empty() => f.write_str("*"),
            Query::Or(items) if items.is_empty() => f.write_str("NOT *"),
            Query::And(items) => write_joined(f, items, " AND ", |q| matches!(q, Query::Or(_))),
            Query::Or(items) => write_joined(f, items, " OR ", |_| false),
            Query::Not(inner) if matches!(**inner, Query::And(_) | Query::Or(_)) => {
                write!(f, "NOT ({inner})")
            }
            Query::Not(inner) => write!(f, "NOT {inner}"),
        }
    }
}

fn write_field(f: &mut fmt::Formatter<'_>, field: Option<&str>) -> fmt::Result {
    field.map_or(Ok(()), |field| write!(f, "{field}:"))
}

fn write_joined(
    f: &mut fmt::Formatter<'_>,
    items: &[Query],
    separator: &str,
    parenthesize: impl Fn(&Query) -> bool,
) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        if parenthesize(item) {
            write!(f, "({item})")?;
        } else {
            write!(f, "{item}")?;
        }
    }
    Ok(())
}

/// Writes a bareword, escaping whatever would end it or change its meaning.
fn write_word(f: &mut fmt::Formatter<'_>, text: &str, fielded: bool) -> fmt::Result {
    // After `field:`, a `:`, a leading `-` or a keyword is already literal.
    let keyword = !fielded && matches!(text, "AND" | "OR" | "NOT" | "&&" | "||");
    for (i, c) in text.chars().enumerate() {
        let special = c.is_whitespace()
            || matches!(c, '\\' | '(' | ')' | '"' | '*')
            || (c == ':' && !fielded)
            || (i == 0 && (keyword || matches!(c, '[' | '{' | '<' | '>')))
            || (i == 0 && !fielded && c == '-');
        if special {
            f.write_char('\\')?;
        }
        f.write_char(c)?;
    }
    Ok(())
}

fn write_quoted(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            f.write_char('\\')?;
        }
        f.write_char(c)?;
    }
    f.write_char('"')
}

fn write_range(f: &mut fmt::Formatter<'_>, lower: &Bound, upper: &Bound) -> fmt::Result {
    let (op, value) = match (lower, upper) {
        (Bound::Included(v), Bound::Unbounded) => (">=", v),
        (Bound::Excluded(v), Bound::Unbounded) => (">", v),
        (Bound::Unbounded, Bound::Included(v)) => ("<=", v),
        (Bound::Unbounded, Bound::Excluded(v)) => ("<", v),
        _ => {
            let (open, lower) = match lower {
                Bound::Excluded(v) => ('{', Some(v)),
                Bound::Included(v) => ('[', Some(v)),
                Bound::Unbounded => ('[', None),
            };
            let (close, upper) = match upper {
                Bound::Excluded(v) => ('}', Some(v)),
                Bound::Included(v) => (']', Some(v)),
                Bound::Unbounded => (']', None),
            };
            f.write_char(open)?;
            write_bound(f, lower)?;
            f.write_str(" TO ")?;
            write_bound(f, upper)?;
            return f.write_char(close);
        }
    };
    f.write_str(op)?;
    write_bound(f, Some(value))
}

/// Writes a range bound bare when that is unambiguous, quoted otherwise; `None` is `*`.
fn write_bound(f: &mut fmt::Formatter<'_>, value: Option<&String>) -> fmt::Result {
    let Some(value) = value else {
        return f.write_char('*');
    };
    let bare = !value.is_empty()
        && value != "TO"
        && value
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '/' | '+'));
    if bare {
        f.write_str(value)
    } else {
        write_quoted(f, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[track_caller]
    fn check_print(input: &str, expected: &str) {
        let query = parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(query.to_string(), expected, "input: {input:?}");
        assert_eq!(parse(expected), Ok(query), "reparse of {expected:?}");
    }

    #[test]
    fn prints_canonical_text() {
        for (input, expected) in [
            ("", "*"),
            ("*", "*"),
            ("service:payments", "service:payments"),
            ("a b OR c", "a AND b OR c"),
            ("a (b OR c)", "a AND (b OR c)"),
            ("-a", "NOT a"),
            ("NOT (a b)", "NOT (a AND b)"),
            ("NOT NOT a", "NOT NOT a"),
            ("a && b || c", "a AND b OR c"),
            ("field:(a OR \"b c\")", "field:a OR field:\"b c\""),
            ("severity:>=warn", "severity:>=warn"),
            ("duration_ms:>300", "duration_ms:>300"),
            ("ts:[1 TO 5}", "ts:[1 TO 5}"),
            ("x:[* TO 5]", "x:<=5"),
            ("x:{a TO *]", "x:>a"),
            ("x:[* TO *]", "x:[* TO *]"),
            ("x:[\"a b\" TO \"*\"]", "x:[\"a b\" TO \"*\"]"),
            ("url:http\\://x", "url:http://x"),
            ("time:12:30:00", "time:12:30:00"),
            ("http\\://x", "http\\://x"),
            ("pay*", "pay*"),
            ("service:*", "service:*"),
            ("\\AND", "\\AND"),
            ("f:AND", "f:AND"),
            ("f:-5", "f:-5"),
            ("\\-a", "\\-a"),
            ("a\\ b", "a\\ b"),
            ("a\\*", "a\\*"),
            ("\\>5", "\\>5"),
            ("\"say \\\"hi\\\" \\\\o/\"", "\"say \\\"hi\\\" \\\\o/\""),
        ] {
            check_print(input, expected);
        }
    }

    #[test]
    fn prints_hand_built_asts() {
        let term = |v: &str| Query::Term {
            field: None,
            value: v.into(),
        };
        for (query, expected) in [
            (Query::And(vec![]), "*"),
            (Query::Or(vec![]), "NOT *"),
            (
                Query::And(vec![term("a"), Query::Or(vec![])]),
                "a AND (NOT *)",
            ),
            (Query::Not(Box::new(Query::Or(vec![term("a")]))), "NOT (a)"),
            (
                Query::And(vec![Query::Or(vec![term("a"), term("b")]), term("c")]),
                "(a OR b) AND c",
            ),
            (term("OR"), "\\OR"),
            (term("-"), "\\-"),
            (term("a:b c"), "a\\:b\\ c"),
        ] {
            assert_eq!(query.to_string(), expected);
            assert_eq!(parse(expected), Ok(query.normalized()));
        }
    }

    #[test]
    fn constructors_flatten_and_collapse() {
        let a = || Query::Term {
            field: None,
            value: "a".into(),
        };
        assert_eq!(Query::and([a()]), a());
        assert_eq!(Query::and([]), Query::All);
        assert_eq!(Query::or([]), Query::Not(Box::new(Query::All)));
        assert_eq!(
            Query::Or(vec![Query::Or(vec![a(), a()]), Query::And(vec![a()])]).normalized(),
            Query::Or(vec![a(), a(), a()])
        );
    }
}
