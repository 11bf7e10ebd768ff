//! Compiles Gantry's query AST into a tantivy query for one signal's schema.
//!
//! Attributes are raw `path=value` terms, so an attribute match is one term lookup; a range on an attribute walks
//! the `path=` slice of each segment's term dictionary and keeps the values inside the range.
//!
//! **A leaf is run exactly as written or refused**: what the index cannot answer exactly (a word the body index
//! drops, a `*` it cannot see, a prefix matching too many words) is a [`StoreError::Query`] naming the leaf, never a
//! query that silently matches more or less than asked.

use std::ops::Bound as StdBound;

use gantry_query::{Bound, FieldRef, Query, resolve};
use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, InvertedIndexRangeQuery, Occur, PhrasePrefixQuery,
    PhraseQuery, Query as TantivyQuery, RangeQuery, TermQuery, TermSetQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::{SimpleTokenizer, TextAnalyzer, TokenStream, Tokenizer};
use tantivy::{Searcher, Term};

use gantry_proto::Signal;

use super::schema::{Fields, kind_number, status_number};
use super::terms::BODY_ROOT;
use crate::StoreError;
use crate::budget::Budget;
use crate::model::severity_range;

/// Most distinct attribute values an attribute range may expand to.
const MAX_RANGE_TERMS: usize = 100_000;

/// Most distinct body words the last word of a prefix that spans several words (`kafka_con*`) may expand to.
pub const MAX_PREFIX_WORDS: usize = 10_000;

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

/// A query compiler bound to one searcher (ranges on attributes and prefixes on the body read its term
/// dictionaries).
pub struct Compiler<'a> {
    signal: Signal,
    fields: &'a Fields,
    searcher: &'a Searcher,
    /// The query's budget: each term a range or a prefix examines counts against it.
    budget: &'a Budget,
    analyzer: TextAnalyzer,
    /// Leaves compiled so far: the index of the next one in reading order ([`Query::leaves`]).
    leaves: usize,
}

impl<'a> Compiler<'a> {
    /// A compiler for a signal's partition, spending `budget`.
    pub fn new(
        signal: Signal,
        fields: &'a Fields,
        searcher: &'a Searcher,
        budget: &'a Budget,
    ) -> Self {
        let analyzer = searcher
            .index()
            .tokenizers()
            .get("default")
            .expect("the default tokenizer exists");
        Self {
            signal,
            fields,
            searcher,
            budget,
            analyzer,
            leaves: 0,
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
            Query::Term { field, value } => self.located(field.as_deref(), Leaf::Term(value))?,
            Query::Phrase { field, text } => self.located(field.as_deref(), Leaf::Phrase(text))?,
            Query::Prefix { field, prefix } => {
                self.located(field.as_deref(), Leaf::Prefix(prefix))?
            }
            Query::Exists { field } => self.located(Some(field), Leaf::Exists)?,
            Query::Range {
                field,
                lower,
                upper,
            } => self.located(Some(field), Leaf::Range(lower, upper))?,
        })
    }

    /// Compiles the next leaf; a refusal names it by its index in reading order.
    fn located(&mut self, field: Option<&str>, leaf: Leaf<'_>) -> Result<Compiled, StoreError> {
        let index = self.leaves;
        self.leaves += 1;
        self.budget.in_leaf(Some(index));
        let compiled = self.leaf(field, leaf);
        self.budget.in_leaf(None);
        compiled.map_err(|error| match error {
            StoreError::Invalid(message) => StoreError::Query {
                message,
                leaf: index,
            },
            other => other,
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
            FieldRef::Body(key) => {
                self.attribute(self.fields.attrs, &format!("{BODY_ROOT}.{key}"), leaf)
            }
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

    /// A tokenized text field (the log body): a term or phrase is split into words like the body was and searched
    /// as a phrase; a prefix too, with its last word as a prefix.
    fn text(&mut self, field: Field, leaf: Leaf<'_>) -> Result<Compiled, StoreError> {
        match leaf {
            Leaf::Term(text) | Leaf::Phrase(text) => {
                let words = self.words(text)?;
                if words.is_empty() {
                    return Err(StoreError::Invalid(format!(
                        "`{text}` has no word to search for in the body (only punctuation): search an attribute, or a word"
                    )));
                }
                Ok(phrase(field, words))
            }
            Leaf::Prefix(prefix) => {
                let mut words = self.words(prefix)?;
                let Some((position, last)) = words.pop() else {
                    return Err(StoreError::Invalid(format!(
                        "`{prefix}*` has no word to search for in the body (only punctuation): put a letter or digit before the `*`"
                    )));
                };
                // Punctuation at the end (`kafka_*`) only ends the last word: it must match whole.
                if ends_in_punctuation(prefix) {
                    words.push((position, last));
                    return Ok(phrase(field, words));
                }
                if words.is_empty() {
                    return Ok(prefix_range(field, &last));
                }
                let expansions = self.words_starting_with(field, &last)?;
                if expansions == 0 {
                    return Ok(Box::new(EmptyQuery));
                }
                if expansions > MAX_PREFIX_WORDS {
                    return Err(StoreError::Invalid(format!(
                        "`{last}*` in `{prefix}*` matches more than {MAX_PREFIX_WORDS} distinct words in the body: make the last word longer"
                    )));
                }
                let mut terms: Vec<(usize, Term)> = words
                    .into_iter()
                    .map(|(position, word)| (position, Term::from_field_text(field, &word)))
                    .collect();
                terms.push((position, Term::from_field_text(field, &last)));
                let mut query = PhrasePrefixQuery::new_with_offset(terms);
                query.set_max_expansions(expansions as u32);
                Ok(Box::new(query))
            }
            Leaf::Exists => Ok(Box::new(AllQuery)),
            Leaf::Range(lower, upper) => {
                for bound in [lower, upper] {
                    if let Some(text) = bound_text(bound)
                        && !is_one_word(text)
                    {
                        return Err(StoreError::Invalid(format!(
                            "a range on the body compares single words, and `{text}` is not one (punctuation separates words there): use one word as each bound"
                        )));
                    }
                }
                Ok(text_range(field, lower, upper, str::to_lowercase))
            }
        }
    }

    /// The words of `text` as the body was split, lowercased, with their positions. Refuses what the body index
    /// cannot see, rather than leave it out of the search: a literal `*`, and words the tokenizer drops (40 bytes
    /// or longer).
    fn words(&mut self, text: &str) -> Result<Vec<(usize, String)>, StoreError> {
        if text.contains('*') {
            return Err(StoreError::Invalid(format!(
                "`{text}` holds a literal `*` (quoted or escaped), which the body index cannot see (punctuation only separates words there): for a prefix, write the word with a trailing `*` outside quotes"
            )));
        }
        let mut words = Vec::new();
        let mut stream = self.analyzer.token_stream(text);
        while let Some(token) = stream.next() {
            words.push((token.position, token.text.clone()));
        }
        let mut splitter = SimpleTokenizer::default();
        let mut raw = splitter.token_stream(text);
        while let Some(token) = raw.next() {
            if !words
                .iter()
                .any(|(position, _)| *position == token.position)
            {
                return Err(StoreError::Invalid(format!(
                    "`{}` is not indexed in the body (words of 40 bytes or more are not): search an attribute, or leave the word out",
                    token.text
                )));
            }
        }
        Ok(words)
    }

    /// How many distinct words of the body start with `prefix`, counting no further than [`MAX_PREFIX_WORDS`] + 1.
    fn words_starting_with(&self, field: Field, prefix: &str) -> Result<usize, StoreError> {
        let mut words = std::collections::BTreeSet::new();
        for segment in self.searcher.segment_readers() {
            let inverted = segment.inverted_index(field)?;
            let mut range = inverted.terms().range().ge(prefix.as_bytes());
            if let Some(end) = prefix_end(prefix.as_bytes()) {
                range = range.lt(end);
            }
            let mut stream = range.into_stream()?;
            while stream.advance() {
                self.budget.term()?;
                words.insert(stream.key().to_vec());
                if words.len() > MAX_PREFIX_WORDS {
                    return Ok(words.len());
                }
            }
        }
        Ok(words.len())
    }

    /// An untokenized string field.
    fn raw(&mut self, field: Field, leaf: Leaf<'_>) -> Result<Compiled, StoreError> {
        match leaf {
            Leaf::Term(value) | Leaf::Phrase(value) => Ok(Box::new(TermQuery::new(
                Term::from_field_text(field, value),
                IndexRecordOption::Basic,
            ))),
            Leaf::Prefix(prefix) => Ok(prefix_range(field, prefix)),
            Leaf::Exists => Ok(Box::new(InvertedIndexRangeQuery::new(
                StdBound::Excluded(Term::from_field_text(field, "")),
                StdBound::Unbounded,
            ))),
            Leaf::Range(lower, upper) => Ok(text_range(field, lower, upper, str::to_owned)),
        }
    }

    /// `path=value` terms of an attribute field. `key:*` is true when the key has a value or keys below it
    /// (`http:*` for `http.method`), as an object field exists in Elasticsearch.
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
            Leaf::Prefix(prefix) => Ok(prefix_range(field, &format!("{key}={prefix}"))),
            Leaf::Exists => Ok(Box::new(BooleanQuery::new(vec![
                (Occur::Should, prefix_range(field, &format!("{key}="))),
                (Occur::Should, prefix_range(field, &format!("{key}."))),
            ]))),
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
                self.budget.term()?;
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

/// Every term of `field` that starts with `prefix`, byte for byte. (The inverted index range compares the bytes of
/// the bounds only, so the end, which need not be UTF-8, is given as bytes.)
fn prefix_range(field: Field, prefix: &str) -> Compiled {
    let upper = match prefix_end(prefix.as_bytes()) {
        Some(end) => StdBound::Excluded(Term::from_field_bytes(field, &end)),
        None => StdBound::Unbounded,
    };
    Box::new(InvertedIndexRangeQuery::new(
        StdBound::Included(Term::from_field_text(field, prefix)),
        upper,
    ))
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// One word as a term, several as a phrase at their positions.
fn phrase(field: Field, mut words: Vec<(usize, String)>) -> Compiled {
    if words.len() == 1 {
        let (_, word) = words.remove(0);
        return Box::new(TermQuery::new(
            Term::from_field_text(field, &word),
            IndexRecordOption::Basic,
        ));
    }
    Box::new(PhraseQuery::new_with_offset(
        words
            .into_iter()
            .map(|(position, word)| (position, Term::from_field_text(field, &word)))
            .collect(),
    ))
}

/// Whether `text` ends with a character the body tokenizer splits on.
fn ends_in_punctuation(text: &str) -> bool {
    text.chars().last().is_some_and(|c| !c.is_alphanumeric())
}

/// Whether the body tokenizer keeps `text` as exactly one word (of any length).
fn is_one_word(text: &str) -> bool {
    !text.is_empty() && text.chars().all(char::is_alphanumeric)
}

#[cfg(test)]
mod tests;
