//! Gantry's query language: one Lucene-style syntax for filtering logs, spans and metric series.
//!
//! A query string is [`parse`]d once into a [`Query`] AST; each storage backend compiles
//! that AST itself. [`Query`]'s `Display` prints canonical text that parses back to the
//! same AST, and [`resolve`] maps field names onto a store's columns and attributes.
//!
//! ```
//! use gantry_query::{Bound, Query, parse};
//!
//! let query = parse("service:payments attributes.http.status_code:>=500")?;
//! assert_eq!(
//!     query,
//!     Query::And(vec![
//!         Query::Term { field: Some("service".into()), value: "payments".into() },
//!         Query::Range {
//!             field: "attributes.http.status_code".into(),
//!             lower: Bound::Included("500".into()),
//!             upper: Bound::Unbounded,
//!         },
//!     ])
//! );
//! assert_eq!(query.to_string(), "service:payments AND attributes.http.status_code:>=500");
//! assert_eq!(query.fields(), ["service", "attributes.http.status_code"]);
//! # Ok::<(), gantry_query::ParseError>(())
//! ```
//!
//! # Syntax
//!
//! - **Clauses** are separated by whitespace; adjacent clauses are joined with AND.
//! - **Operators**: `AND`/`&&`, `OR`/`||`, `NOT` and a leading `-` (`-service:api`).
//!   Only uppercase words and standalone `&&`/`||` are operators (`and` is a term).
//!   NOT binds tightest, then AND, then OR; parentheses group. A `-` must be directly
//!   followed by its clause.
//! - **Fields**: `name:value`, where the name is letters, digits, `_`, `.`, `-`, `@` and `/`
//!   directly followed by `:` (so `12:30` is field `12`; escape it as `12\:30` for free text).
//!   `field:(a OR "b c")` applies the field to every unfielded clause inside the group.
//! - **Terms** are barewords; a backslash escapes any character (`path:a\ b`). Outside a
//!   field value a bareword ends at whitespace, `(`, `)`, `"` or `:`. After `field:` the
//!   value runs to whitespace, `(`, `)` or `"`, and `:`, a leading `-` and `AND`/`OR`/`NOT`
//!   are literal there (`time:12:30:00`, `delta:-5`).
//! - **Phrases**: `"some words"`, with `\"` and `\\` (a backslash escapes any character).
//! - **Wildcards**: only a single trailing `*` is supported: `pay*` is a prefix, a lone `*`
//!   matches everything and `field:*` means the field exists. A leading or inner `*` is an
//!   error (escape it as `\*` to search for a literal star).
//! - **Ranges** need a field: `field:>v`, `>=v`, `<v`, `<=v`, `[a TO b]` (inclusive),
//!   `{a TO b}` (exclusive), mixable as `[a TO b}`, with `*` as an open end. Bounds are
//!   barewords or quoted strings; `*` inside a bound is literal unless it is the whole
//!   bound. A word starting with `>`, `<`, `[` or `{` is a range, so escape it to search
//!   for it as text (`\[ERROR]`).
//! - An empty or blank query is [`Query::All`].
//!
//! Groups and negations nest at most [`MAX_DEPTH`] deep; [`ParseError`] reports the
//! character offset of any problem. [`parse_located`] also gives where each leaf starts, so
//! that a store refusing one leaf can be reported at its position.
#![warn(missing_docs)]

mod ast;
mod field;
mod parser;

pub use ast::{Bound, Query};
pub use field::{FieldRef, resolve};
pub use parser::{MAX_DEPTH, ParseError, parse, parse_located};
