//! Compiles Gantry's query AST into a tantivy query for one signal's schema.
//!
//! Attributes are raw `key=value` terms, so an attribute match is one term lookup; a range on an attribute walks
//! the `key=` slice of each segment's term dictionary and keeps the values inside the range.

use std::ops::Bound as StdBound;

use gantry_query::{Bound, FieldRef, Query, resolve};
use tantivy::query::{
    AllQuery, BooleanQuery, Occur, PhraseQuery, Query as TantivyQuery, RangeQuery, RegexQuery,
    TermQuery, TermSetQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{Searcher, Term};

use gantry_proto::Signal;

use super::schema::{Fields, kind_number, status_number};
use crate::StoreError;
use crate::model::severity_range;

/// Most distinct attribute values an attribute range may expand to.
const MAX_RANGE_TERMS: usize = 100_000;

type Compiled = Box<dyn TantivyQuery>;

/// Top-level field names of each signal; other names are attributes.
pub fn top_level(signal: Signal) -> &'static [&'static str] {
    match signal {
        Signal::Logs => &["service", "severity", "body", "trace_id", "span_id"],
        Signal::Traces => &[
            "service",
            "name",
            "operation",
            "trace_id",
            "span_id",
            "parent_span_id",
            "duration_ms",
            "status",
            "kind",
            "version",
        ],
        Signal::Metrics => &["service", "name"],
    }
}

/// A query compiler bound to one searcher (ranges on attributes read its term dictionaries).
pub struct Compiler<'a> {
    signal: Signal,
    fields: &'a Fields,
    searcher: &'a Searcher,
    analyzer: TextAnalyzer,
}

impl<'a> Compiler<'a> {
    /// A compiler for a signal's partition.
    pub fn new(signal: Signal, fields: &'a Fields, searcher: &'a Searcher) -> Self {
        let analyzer = searcher
            .index()
            .tokenizers()
            .get("default")
            .expect("the default tokenizer exists");
        Self {
            signal,
            fields,
            searcher,
            analyzer,
        }
    }

    /// Compiles a whole query.
    pub fn compile(&mut self, query: &Query) -> Result<Compiled, StoreError> {
        Ok(match query {
            Query::All => Box::new(AllQuery),
            Query::And(clauses) => {
                let mut subqueries = Vec::with_capacity(clauses.len());
                for clause in clauses {
                    subqueries.push(match clause {
                        Query::Not(inner) => (Occur::MustNot, self.compile(inner)?),
                        other => (Occur::Must, self.compile(other)?),
                    });
                }
                if subqueries.iter().all(|(occur, _)| *occur == Occur::MustNot) {
                    subqueries.push((Occur::Must, Box::new(AllQuery)));
                }
                Box::new(BooleanQuery::new(subqueries))
            }
            Query::Or(clauses) => {
                let mut subqueries = Vec::with_capacity(clauses.len());
                for clause in clauses {
                    subqueries.push((Occur::Should, self.compile(clause)?));
                }
                Box::new(BooleanQuery::new(subqueries))
            }
            Query::Not(inner) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(AllQuery) as Compiled),
                (Occur::MustNot, self.compile(inner)?),
            ])),
            Query::Term { field, value } => self.leaf(field.as_deref(), Leaf::Term(value))?,
            Query::Phrase { field, text } => self.leaf(field.as_deref(), Leaf::Phrase(text))?,
            Query::Prefix { field, prefix } => self.leaf(field.as_deref(), Leaf::Prefix(prefix))?,
            Query::Exists { field } => self.leaf(Some(field), Leaf::Exists)?,
            Query::Range {
                field,
                lower,
                upper,
            } => self.leaf(Some(field), Leaf::Range(lower, upper))?,
        })
    }

    fn leaf(&mut self, field: Option<&str>, leaf: Leaf<'_>) -> Result<Compiled, StoreError> {
        match resolve(field, top_level(self.signal)) {
            FieldRef::Default => match self.signal {
                Signal::Logs => self.text(self.fields.body.expect("logs schema"), leaf),
                Signal::Traces | Signal::Metrics => {
                    self.raw(self.fields.name.expect("schema has a name"), leaf)
                }
            },
            FieldRef::Top(name) => self.top(name, leaf),
            FieldRef::Attribute(key) => self.attribute(self.fields.attrs, key, leaf),
            FieldRef::Resource(key) => self.attribute(self.fields.res, key, leaf),
            FieldRef::AttributeOrResource(key) => Ok(Box::new(BooleanQuery::new(vec![
                (Occur::Should, self.attribute(self.fields.attrs, key, leaf)?),
                (Occur::Should, self.attribute(self.fields.res, key, leaf)?),
            ]))),
        }
    }

    fn top(&mut self, name: &str, leaf: Leaf<'_>) -> Result<Compiled, StoreError> {
        let fields = self.fields;
        match (self.signal, name) {
            (Signal::Logs, "body") => self.text(fields.body.expect("logs schema"), leaf),
            (Signal::Logs, "severity") => {
                let field = fields.severity.expect("logs schema");
                numeric(field, name, leaf, |text| {
                    severity_range(text).map(|(lo, hi)| (u64::from(lo), u64::from(hi)))
                })
            }
            (Signal::Traces, "duration_ms") => {
                let field = fields.duration.expect("spans schema");
                numeric(field, name, leaf, |text| {
                    let ms: f64 = text.parse().ok()?;
                    let ns = (ms * 1e6).max(0.0) as u64;
                    Some((ns, ns.saturating_add(999_999)))
                })
            }
            (Signal::Traces, "status") => {
                numeric(fields.status.expect("spans schema"), name, leaf, |text| {
                    status_number(&text.to_ascii_lowercase()).map(|n| (n, n))
                })
            }
            (Signal::Traces, "kind") => {
                numeric(fields.kind.expect("spans schema"), name, leaf, |text| {
                    kind_number(&text.to_ascii_lowercase()).map(|n| (n, n))
                })
            }
            (Signal::Metrics, "service") => self.attribute(fields.res, "service.name", leaf),
            (_, "service") => self.raw(fields.service, leaf),
            (_, "name" | "operation") => self.raw(fields.name.expect("schema has a name"), leaf),
            (_, "trace_id") => self.raw(fields.trace_id.expect("schema has trace ids"), leaf),
            (_, "span_id") => self.raw(fields.span_id.expect("schema has span ids"), leaf),
            (_, "parent_span_id") => self.raw(fields.parent_span_id.expect("spans schema"), leaf),
            (_, "version") => self.raw(fields.version.expect("spans schema"), leaf),
            _ => Err(StoreError::Invalid(format!(
                "field `{name}` cannot be searched here"
            ))),
        }
    }

    /// A tokenized text field (the log body).
    fn text(&mut self, field: Field, leaf: Leaf<'_>) -> Result<Compiled, StoreError> {
        match leaf {
            Leaf::Term(text) | Leaf::Phrase(text) => {
                let mut tokens = Vec::new();
                let mut stream = self.analyzer.token_stream(text);
                while let Some(token) = stream.next() {
                    tokens.push((token.position, Term::from_field_text(field, &token.text)));
                }
                Ok(match tokens.len() {
                    0 => {
                        return Err(StoreError::Invalid(format!(
                            "`{text}` has nothing searchable in the body (only punctuation, or words over 40 characters): search an attribute or a shorter word"
                        )));
                    }
                    1 => Box::new(TermQuery::new(tokens.remove(0).1, IndexRecordOption::Basic)),
                    _ => Box::new(PhraseQuery::new_with_offset(tokens)),
                })
            }
            Leaf::Prefix(prefix) => regex(
                field,
                &format!("{}.*", regex_escape(&prefix.to_lowercase())),
            ),
            Leaf::Exists => Ok(Box::new(AllQuery)),
            Leaf::Range(lower, upper) => Ok(text_range(field, lower, upper, str::to_lowercase)),
        }
    }

    /// An untokenized string field.
    fn raw(&mut self, field: Field, leaf: Leaf<'_>) -> Result<Compiled, StoreError> {
        match leaf {
            Leaf::Term(value) | Leaf::Phrase(value) => Ok(Box::new(TermQuery::new(
                Term::from_field_text(field, value),
                IndexRecordOption::Basic,
            ))),
            Leaf::Prefix(prefix) => regex(field, &format!("{}.*", regex_escape(prefix))),
            Leaf::Exists => regex(field, ".+"),
            Leaf::Range(lower, upper) => Ok(text_range(field, lower, upper, str::to_owned)),
        }
    }

    /// `key=value` terms of an attribute field.
    fn attribute(
        &mut self,
        field: Field,
        key: &str,
        leaf: Leaf<'_>,
    ) -> Result<Compiled, StoreError> {
        match leaf {
            Leaf::Term(value) | Leaf::Phrase(value) => Ok(Box::new(TermQuery::new(
                Term::from_field_text(field, &format!("{key}={value}")),
                IndexRecordOption::Basic,
            ))),
            Leaf::Prefix(prefix) => regex(
                field,
                &format!("{}={}.*", regex_escape(key), regex_escape(prefix)),
            ),
            Leaf::Exists => regex(field, &format!("{}=.*", regex_escape(key))),
            Leaf::Range(lower, upper) => self.attribute_range(field, key, lower, upper),
        }
    }

    fn attribute_range(
        &self,
        field: Field,
        key: &str,
        lower: &Bound,
        upper: &Bound,
    ) -> Result<Compiled, StoreError> {
        let prefix = format!("{key}=");
        let numeric = [lower, upper]
            .iter()
            .all(|bound| bound_text(bound).is_none_or(|text| text.parse::<f64>().is_ok()));
        let inside = |value: &str| -> bool {
            let compare = |bound_value: &str| -> Option<std::cmp::Ordering> {
                if numeric {
                    value
                        .parse::<f64>()
                        .ok()?
                        .partial_cmp(&bound_value.parse::<f64>().ok()?)
                } else {
                    Some(value.cmp(bound_value))
                }
            };
            let above = match lower {
                Bound::Unbounded => true,
                Bound::Included(b) => compare(b).is_some_and(|o| o.is_ge()),
                Bound::Excluded(b) => compare(b).is_some_and(|o| o.is_gt()),
            };
            let below = match upper {
                Bound::Unbounded => true,
                Bound::Included(b) => compare(b).is_some_and(|o| o.is_le()),
                Bound::Excluded(b) => compare(b).is_some_and(|o| o.is_lt()),
            };
            above && below
        };
        let mut terms = std::collections::BTreeSet::new();
        let mut end = prefix.clone().into_bytes();
        *end.last_mut().expect("prefix ends with =") += 1;
        for segment in self.searcher.segment_readers() {
            let inverted = segment.inverted_index(field)?;
            let mut stream = inverted
                .terms()
                .range()
                .ge(prefix.as_bytes())
                .lt(&end)
                .into_stream()?;
            while stream.advance() {
                let Ok(term) = std::str::from_utf8(stream.key()) else {
                    continue;
                };
                if inside(&term[prefix.len()..]) {
                    terms.insert(term.to_owned());
                    if terms.len() > MAX_RANGE_TERMS {
                        return Err(StoreError::Invalid(format!(
                            "the range on `{key}` matches more than {MAX_RANGE_TERMS} distinct values: narrow it"
                        )));
                    }
                }
            }
        }
        Ok(Box::new(TermSetQuery::new(
            terms.iter().map(|term| Term::from_field_text(field, term)),
        )))
    }
}

#[derive(Clone, Copy)]
enum Leaf<'q> {
    Term(&'q str),
    Phrase(&'q str),
    Prefix(&'q str),
    Exists,
    Range(&'q Bound, &'q Bound),
}

/// A u64 field whose values users write as names or numbers (severity, status, kind, duration).
fn numeric(
    field: Field,
    name: &str,
    leaf: Leaf<'_>,
    parse: impl Fn(&str) -> Option<(u64, u64)>,
) -> Result<Compiled, StoreError> {
    let value = |text: &str| {
        parse(text).ok_or_else(|| {
            StoreError::Invalid(format!("`{text}` is not a valid value for `{name}`"))
        })
    };
    let range = |lo: StdBound<u64>, hi: StdBound<u64>| -> Compiled {
        let term = |n| Term::from_field_u64(field, n);
        Box::new(RangeQuery::new(lo.map(term), hi.map(term)))
    };
    match leaf {
        Leaf::Term(text) | Leaf::Phrase(text) => {
            let (lo, hi) = value(text)?;
            Ok(range(StdBound::Included(lo), StdBound::Included(hi)))
        }
        Leaf::Exists => Ok(Box::new(AllQuery)),
        Leaf::Prefix(_) => Err(StoreError::Invalid(format!(
            "`{name}` does not take a wildcard"
        ))),
        Leaf::Range(lower, upper) => {
            let lo = match lower {
                Bound::Unbounded => StdBound::Unbounded,
                Bound::Included(text) => StdBound::Included(value(text)?.0),
                Bound::Excluded(text) => StdBound::Excluded(value(text)?.1),
            };
            let hi = match upper {
                Bound::Unbounded => StdBound::Unbounded,
                Bound::Included(text) => StdBound::Included(value(text)?.1),
                Bound::Excluded(text) => StdBound::Excluded(value(text)?.0),
            };
            if matches!((&lo, &hi), (StdBound::Unbounded, StdBound::Unbounded)) {
                return Ok(Box::new(AllQuery));
            }
            Ok(range(lo, hi))
        }
    }
}

fn bound_text(bound: &Bound) -> Option<&str> {
    match bound {
        Bound::Unbounded => None,
        Bound::Included(text) | Bound::Excluded(text) => Some(text),
    }
}

fn text_range(
    field: Field,
    lower: &Bound,
    upper: &Bound,
    normalize: fn(&str) -> String,
) -> Compiled {
    if matches!((lower, upper), (Bound::Unbounded, Bound::Unbounded)) {
        return Box::new(AllQuery);
    }
    Box::new(RangeQuery::new(
        text_bound(field, lower, normalize),
        text_bound(field, upper, normalize),
    ))
}

fn text_bound(field: Field, bound: &Bound, normalize: fn(&str) -> String) -> StdBound<Term> {
    match bound {
        Bound::Unbounded => StdBound::Unbounded,
        Bound::Included(text) => StdBound::Included(Term::from_field_text(field, &normalize(text))),
        Bound::Excluded(text) => StdBound::Excluded(Term::from_field_text(field, &normalize(text))),
    }
}

fn regex(field: Field, pattern: &str) -> Result<Compiled, StoreError> {
    RegexQuery::from_pattern(pattern, field)
        .map(|query| Box::new(query) as Compiled)
        .map_err(|error| StoreError::Invalid(format!("cannot search for this pattern: {error}")))
}

fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests;
