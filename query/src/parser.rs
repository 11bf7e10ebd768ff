//! Lexer and recursive-descent parser turning query text into a [`Query`].

use std::iter::Peekable;
use std::vec::IntoIter;

use thiserror::Error;

use crate::ast::{Bound, Query};

/// How deeply groups and negations may nest before [`parse`] reports an error.
pub const MAX_DEPTH: usize = 64;

/// Why a query failed to parse, and where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("at position {position}: expected {expected}, found {found}")]
pub struct ParseError {
    /// 0-based character (not byte) offset into the input where the problem is.
    pub position: usize,
    /// What the parser was looking for.
    pub expected: String,
    /// What it found instead.
    pub found: String,
}

impl ParseError {
    fn new(position: usize, expected: impl Into<String>, found: impl Into<String>) -> Self {
        Self {
            position,
            expected: expected.into(),
            found: found.into(),
        }
    }
}

/// Parses query text into a canonical [`Query`]; an empty or blank query is [`Query::All`].
///
/// Never panics; nesting deeper than [`MAX_DEPTH`] is an error.
pub fn parse(input: &str) -> Result<Query, ParseError> {
    parse_located(input).map(|(query, _)| query)
}

/// [`parse`], also returning where each leaf of the query starts: the `n`th entry is the 0-based character offset
/// of the value of the `n`th leaf in [reading order](Query::leaves) (`service:api` → the offset of `api`).
///
/// A store that cannot run one leaf names it by that index, and the caller turns it into a position in the text.
pub fn parse_located(input: &str) -> Result<(Query, Vec<usize>), ParseError> {
    let chars: Vec<char> = input.chars().collect();
    let lexer = Lexer {
        chars: &chars,
        i: 0,
        tokens: Vec::new(),
    };
    let mut parser = Parser {
        tokens: lexer.run()?.into_iter().peekable(),
        chars: &chars,
        depth: 0,
        leaves: Vec::new(),
    };
    if parser.tokens.peek().is_none() {
        return Ok((Query::All, Vec::new()));
    }
    let query = parser.or(None, "a clause")?;
    match parser.tokens.next() {
        None => Ok((query, parser.leaves)),
        Some(token) => Err(ParseError::new(
            token.start,
            "end of query",
            format!("unmatched {}", quote(&chars[token.start..token.end])),
        )),
    }
}

#[derive(Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

#[derive(Debug)]
enum Kind {
    LParen,
    RParen,
    And,
    Or,
    /// `NOT` or a leading `-`.
    Not,
    /// `name:`, always directly followed by a value or `(`.
    Field(String),
    Value(Value),
}

#[derive(Debug)]
enum Value {
    /// A bareword; `star` when it ended in an unescaped `*` (not part of `text`).
    Word {
        text: String,
        star: bool,
    },
    Phrase(String),
    Range(Bound, Bound),
}

/// A run of bareword characters with escapes resolved.
#[derive(Default)]
struct Run {
    text: String,
    escaped: bool,
    /// Unescaped `*`s, where the first one is, and whether one ended the run.
    stars: usize,
    first_star: usize,
    trailing_star: bool,
}

impl Run {
    /// A bareword value: only a single trailing `*` is a wildcard.
    fn into_word(mut self) -> Result<Value, ParseError> {
        match (self.stars, self.trailing_star) {
            (0, _) => Ok(Value::Word {
                text: self.text,
                star: false,
            }),
            (1, true) => {
                self.text.pop();
                Ok(Value::Word {
                    text: self.text,
                    star: true,
                })
            }
            _ => Err(ParseError::new(
                self.first_star,
                "'*' only at the end of a word (leading and inner wildcards are not supported)",
                "'*'",
            )),
        }
    }

    fn keyword(&self) -> Option<Kind> {
        match self.text.as_str() {
            _ if self.escaped => None,
            "AND" | "&&" => Some(Kind::And),
            "OR" | "||" => Some(Kind::Or),
            "NOT" => Some(Kind::Not),
            _ => None,
        }
    }

    fn is_field_name(&self) -> bool {
        !self.escaped
            && self.stars == 0
            && !self.text.is_empty()
            && self
                .text
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '@' | '/'))
    }
}

/// Ends a field value (and a comparison bound): `:` is literal here.
fn ends_value(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '"')
}

/// Ends a bareword outside a field value, where `:` may close a field name.
fn ends_word(c: char) -> bool {
    ends_value(c) || c == ':'
}

/// Ends a bound inside `[a TO b]`.
fn ends_bound(c: char) -> bool {
    ends_value(c) || matches!(c, '[' | ']' | '{' | '}')
}

fn describe(c: Option<char>) -> String {
    match c {
        None => "end of query".into(),
        Some(c) if c.is_whitespace() => "whitespace".into(),
        Some(c) => format!("'{c}'"),
    }
}

fn quote(raw: &[char]) -> String {
    const MAX: usize = 24;
    let text: String = raw.iter().take(MAX).collect();
    let ellipsis = if raw.len() > MAX { "…" } else { "" };
    format!("'{text}{ellipsis}'")
}

struct Lexer<'a> {
    chars: &'a [char],
    i: usize,
    tokens: Vec<Token>,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.i += 1;
        }
    }

    fn push(&mut self, kind: Kind, start: usize) {
        self.tokens.push(Token {
            kind,
            start,
            end: self.i,
        });
    }

    fn run(mut self) -> Result<Vec<Token>, ParseError> {
        loop {
            self.skip_whitespace();
            let start = self.i;
            let Some(c) = self.peek() else {
                return Ok(self.tokens);
            };
            match c {
                '(' | ')' => {
                    self.i += 1;
                    let kind = if c == '(' { Kind::LParen } else { Kind::RParen };
                    self.push(kind, start);
                }
                '-' => {
                    self.i += 1;
                    match self.peek() {
                        Some(next) if !next.is_whitespace() => self.push(Kind::Not, start),
                        next => {
                            return Err(ParseError::new(
                                self.i,
                                "a clause directly after '-'",
                                describe(next),
                            ));
                        }
                    }
                }
                '"' | '>' | '<' | '[' | '{' => {
                    let value = self.special()?;
                    self.push(Kind::Value(value), start);
                }
                _ => self.word(start)?,
            }
        }
    }

    /// Lexes a bareword outside a field value: a field name, a keyword or a term.
    fn word(&mut self, start: usize) -> Result<(), ParseError> {
        let run = self.run_of(ends_word)?;
        if self.peek() == Some(':') {
            if !run.is_field_name() {
                let found = if run.text.is_empty() {
                    "':'".to_owned()
                } else {
                    quote(&self.chars[start..self.i])
                };
                return Err(ParseError::new(start, "a field name before ':'", found));
            }
            self.i += 1;
            self.push(Kind::Field(run.text), start);
            return self.field_value();
        }
        let kind = match run.keyword() {
            Some(keyword) => keyword,
            None => Kind::Value(run.into_word()?),
        };
        self.push(kind, start);
        Ok(())
    }

    /// Lexes what follows `field:`, where `:`, `-` and keywords are literal.
    fn field_value(&mut self) -> Result<(), ParseError> {
        let start = self.i;
        let kind = match self.peek() {
            Some('(') => {
                self.i += 1;
                Kind::LParen
            }
            Some('"' | '>' | '<' | '[' | '{') => Kind::Value(self.special()?),
            Some(c) if !ends_value(c) => Kind::Value(self.run_of(ends_value)?.into_word()?),
            c => return Err(ParseError::new(start, "a value after ':'", describe(c))),
        };
        self.push(kind, start);
        Ok(())
    }

    /// Lexes a value that starts with a special character: a phrase or a range.
    fn special(&mut self) -> Result<Value, ParseError> {
        match self.peek() {
            Some('>' | '<') => self.comparison(),
            Some('[' | '{') => self.interval(),
            _ => self.quoted().map(Value::Phrase),
        }
    }

    /// Consumes bareword characters up to `stop`, resolving backslash escapes.
    fn run_of(&mut self, stop: fn(char) -> bool) -> Result<Run, ParseError> {
        let mut run = Run::default();
        while let Some(c) = self.peek().filter(|&c| !stop(c)) {
            self.i += 1;
            run.trailing_star = false;
            match c {
                '\\' => {
                    let escaped = self.bump().ok_or_else(|| {
                        ParseError::new(self.i - 1, "a character after '\\'", "end of query")
                    })?;
                    run.text.push(escaped);
                    run.escaped = true;
                }
                '*' => {
                    if run.stars == 0 {
                        run.first_star = self.i - 1;
                    }
                    run.stars += 1;
                    run.trailing_star = true;
                    run.text.push('*');
                }
                c => run.text.push(c),
            }
        }
        Ok(run)
    }

    /// Lexes a `"quoted phrase"`, where a backslash escapes any character.
    fn quoted(&mut self) -> Result<String, ParseError> {
        let open = self.i;
        self.i += 1;
        let mut text = String::new();
        while let Some(c) = self.bump() {
            match c {
                '"' => return Ok(text),
                '\\' => match self.bump() {
                    Some(escaped) => text.push(escaped),
                    None => break,
                },
                c => text.push(c),
            }
        }
        Err(ParseError::new(
            open,
            "a closing '\"' for this quote",
            "end of query",
        ))
    }

    /// Lexes one range bound: a quoted string, or a bareword where a lone `*` is open.
    fn bound(
        &mut self,
        stop: fn(char) -> bool,
        expected: &str,
    ) -> Result<Option<String>, ParseError> {
        match self.peek() {
            Some('"') => self.quoted().map(Some),
            Some(c) if !stop(c) => {
                let run = self.run_of(stop)?;
                Ok((run.stars != 1 || run.text != "*").then_some(run.text))
            }
            c => Err(ParseError::new(self.i, expected, describe(c))),
        }
    }

    /// Lexes `>v`, `>=v`, `<v` or `<=v`.
    fn comparison(&mut self) -> Result<Value, ParseError> {
        let start = self.i;
        let greater = self.bump() == Some('>');
        let inclusive = self.peek() == Some('=');
        self.i += usize::from(inclusive);
        let op: String = self.chars[start..self.i].iter().collect();
        let bound = make_bound(
            self.bound(ends_value, &format!("a value after '{op}'"))?,
            inclusive,
        );
        Ok(if greater {
            Value::Range(bound, Bound::Unbounded)
        } else {
            Value::Range(Bound::Unbounded, bound)
        })
    }

    /// Lexes `[a TO b]`, `{a TO b}` or a mix of the two.
    fn interval(&mut self) -> Result<Value, ParseError> {
        let lower_inclusive = self.bump() == Some('[');
        self.skip_whitespace();
        let lower = self.bound(ends_bound, "a lower bound")?;
        self.skip_whitespace();
        let to_start = self.i;
        let to = self.run_of(ends_bound)?;
        if to.escaped || to.text != "TO" {
            let found = if to.text.is_empty() {
                describe(self.peek())
            } else {
                quote(&self.chars[to_start..self.i])
            };
            return Err(ParseError::new(to_start, "'TO'", found));
        }
        self.skip_whitespace();
        let upper = self.bound(ends_bound, "an upper bound after 'TO'")?;
        self.skip_whitespace();
        let upper_inclusive = match self.peek() {
            Some(']') => true,
            Some('}') => false,
            c => {
                let expected = "']' or '}' to close the range";
                return Err(ParseError::new(self.i, expected, describe(c)));
            }
        };
        self.i += 1;
        Ok(Value::Range(
            make_bound(lower, lower_inclusive),
            make_bound(upper, upper_inclusive),
        ))
    }
}

fn make_bound(value: Option<String>, inclusive: bool) -> Bound {
    match value {
        None => Bound::Unbounded,
        Some(v) if inclusive => Bound::Included(v),
        Some(v) => Bound::Excluded(v),
    }
}

/// Recursive descent over the tokens. `field` is the field a surrounding `field:( … )`
/// applies to unfielded clauses; `expected` describes the clause being looked for.
struct Parser<'a> {
    tokens: Peekable<IntoIter<Token>>,
    chars: &'a [char],
    depth: usize,
    /// Where each leaf made so far starts, in the order they were made (which is reading order).
    leaves: Vec<usize>,
}

impl Parser<'_> {
    fn raw(&self, token: &Token) -> String {
        quote(&self.chars[token.start..token.end])
    }

    fn enter(&mut self, at: usize) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::new(
                at,
                format!("at most {MAX_DEPTH} nested groups or negations"),
                "deeper nesting",
            ));
        }
        Ok(())
    }

    /// `or := and (("OR" | "||") and)*`
    fn or(&mut self, field: Option<&str>, expected: &str) -> Result<Query, ParseError> {
        let mut items = vec![self.and(field, expected)?];
        while let Some(op) = self.tokens.next_if(|t| matches!(t.kind, Kind::Or)) {
            items.push(self.and(field, &format!("a clause after {}", self.raw(&op)))?);
        }
        Ok(Query::or(items))
    }

    /// `and := unary (("AND" | "&&")? unary)*`
    fn and(&mut self, field: Option<&str>, expected: &str) -> Result<Query, ParseError> {
        let mut items = vec![self.unary(field, expected)?];
        loop {
            if let Some(op) = self.tokens.next_if(|t| matches!(t.kind, Kind::And)) {
                items.push(self.unary(field, &format!("a clause after {}", self.raw(&op)))?);
            } else if self
                .tokens
                .peek()
                .is_none_or(|t| matches!(t.kind, Kind::Or | Kind::RParen))
            {
                return Ok(Query::and(items));
            } else {
                items.push(self.unary(field, expected)?);
            }
        }
    }

    /// `unary := ("NOT" | "-") unary | primary`
    fn unary(&mut self, field: Option<&str>, expected: &str) -> Result<Query, ParseError> {
        let Some(op) = self.tokens.next_if(|t| matches!(t.kind, Kind::Not)) else {
            return self.primary(field, expected);
        };
        self.enter(op.start)?;
        let inner = self.unary(field, &format!("a clause after {}", self.raw(&op)))?;
        self.depth -= 1;
        Ok(Query::Not(Box::new(inner)))
    }

    /// `primary := "(" or ")" | field ":" (value | "(" or ")") | value`
    fn primary(&mut self, field: Option<&str>, expected: &str) -> Result<Query, ParseError> {
        let Some(token) = self.tokens.next() else {
            return Err(ParseError::new(self.chars.len(), expected, "end of query"));
        };
        let found = self.raw(&token);
        let Token { kind, start, .. } = token;
        match kind {
            Kind::LParen => self.group(start, field),
            Kind::Field(name) => self.primary(Some(&name), "a value after ':'"),
            Kind::Value(value) => {
                let leaf = leaf(value, field).ok_or_else(|| {
                    ParseError::new(start, "a field before the range (as in 'field:>5')", found)
                })?;
                if leaf != Query::All {
                    self.leaves.push(start);
                }
                Ok(leaf)
            }
            Kind::RParen | Kind::And | Kind::Or | Kind::Not => {
                Err(ParseError::new(start, expected, found))
            }
        }
    }

    fn group(&mut self, open: usize, field: Option<&str>) -> Result<Query, ParseError> {
        self.enter(open)?;
        let inner = self.or(field, "a clause inside '( )'")?;
        self.depth -= 1;
        match self.tokens.next_if(|t| matches!(t.kind, Kind::RParen)) {
            Some(_) => Ok(inner),
            None => Err(ParseError::new(
                open,
                "a closing ')' for this '('",
                "end of query",
            )),
        }
    }
}

/// Builds a leaf query; `None` for a range without a field.
fn leaf(value: Value, field: Option<&str>) -> Option<Query> {
    let field = field.map(str::to_owned);
    Some(match value {
        Value::Word { text, star: true } if text.is_empty() => match field {
            Some(field) => Query::Exists { field },
            None => Query::All,
        },
        Value::Word { text, star: true } => Query::Prefix {
            field,
            prefix: text,
        },
        Value::Word { text, star: false } => Query::Term { field, value: text },
        Value::Phrase(text) => Query::Phrase { field, text },
        Value::Range(lower, upper) => Query::Range {
            field: field?,
            lower,
            upper,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(value: &str) -> Query {
        Query::Term {
            field: None,
            value: value.into(),
        }
    }

    fn fterm(field: &str, value: &str) -> Query {
        Query::Term {
            field: Some(field.into()),
            value: value.into(),
        }
    }

    fn phrase(field: Option<&str>, text: &str) -> Query {
        Query::Phrase {
            field: field.map(Into::into),
            text: text.into(),
        }
    }

    fn prefix(field: Option<&str>, prefix: &str) -> Query {
        Query::Prefix {
            field: field.map(Into::into),
            prefix: prefix.into(),
        }
    }

    fn range(field: &str, lower: Bound, upper: Bound) -> Query {
        Query::Range {
            field: field.into(),
            lower,
            upper,
        }
    }

    fn inc(v: &str) -> Bound {
        Bound::Included(v.into())
    }

    fn exc(v: &str) -> Bound {
        Bound::Excluded(v.into())
    }

    fn not(q: Query) -> Query {
        Query::Not(Box::new(q))
    }

    fn and<const N: usize>(items: [Query; N]) -> Query {
        Query::And(items.into())
    }

    fn or<const N: usize>(items: [Query; N]) -> Query {
        Query::Or(items.into())
    }

    #[track_caller]
    fn check(input: &str, expected: Query) {
        assert_eq!(parse(input), Ok(expected), "input: {input:?}");
    }

    #[track_caller]
    fn check_err(input: &str, position: usize, expected: &str) {
        let err = parse(input).expect_err(input);
        assert_eq!(err.position, position, "input: {input:?}: {err}");
        assert!(err.expected.contains(expected), "input: {input:?}: {err}");
    }

    #[test]
    fn parses() {
        use Bound::Unbounded;
        let exists = |f: &str| Query::Exists { field: f.into() };
        for (input, expected) in [
            ("", Query::All),
            ("  \t\n", Query::All),
            ("*", Query::All),
            ("error", term("error")),
            ("service:payments", fterm("service", "payments")),
            (
                "attributes.http.status_code:500",
                fterm("attributes.http.status_code", "500"),
            ),
            (
                "resource.service.name:api",
                fterm("resource.service.name", "api"),
            ),
            ("k8s.pod.name:web-1", fterm("k8s.pod.name", "web-1")),
            ("@timestamp:x", fterm("@timestamp", "x")),
            ("order_id:1003", fterm("order_id", "1003")),
            ("\"connection refused\"", phrase(None, "connection refused")),
            (
                "msg:\"a \\\"b\\\" \\\\\"",
                phrase(Some("msg"), "a \"b\" \\"),
            ),
            ("\"\"", phrase(None, "")),
            ("a b", and([term("a"), term("b")])),
            ("a b OR c", or([and([term("a"), term("b")]), term("c")])),
            ("a OR b c", or([term("a"), and([term("b"), term("c")])])),
            ("a OR b OR c", or([term("a"), term("b"), term("c")])),
            ("a AND b AND c", and([term("a"), term("b"), term("c")])),
            ("a && b || c", or([and([term("a"), term("b")]), term("c")])),
            (
                "a (b c) d",
                and([term("a"), term("b"), term("c"), term("d")]),
            ),
            ("((a))", term("a")),
            ("NOT a", not(term("a"))),
            ("NOT NOT a", not(not(term("a")))),
            ("NOT a b", and([not(term("a")), term("b")])),
            ("-a b", and([not(term("a")), term("b")])),
            ("--a", not(not(term("a")))),
            ("-service:api", not(fterm("service", "api"))),
            ("-\"a b\"", not(phrase(None, "a b"))),
            ("-(a OR b)", not(or([term("a"), term("b")]))),
            ("a-b", term("a-b")),
            (
                "(a OR b) AND c",
                and([or([term("a"), term("b")]), term("c")]),
            ),
            (
                "NOT (a OR b) c",
                and([not(or([term("a"), term("b")])), term("c")]),
            ),
            ("and or not", and([term("and"), term("or"), term("not")])),
            ("severity:>=warn", range("severity", inc("warn"), Unbounded)),
            (
                "duration_ms:>300",
                range("duration_ms", exc("300"), Unbounded),
            ),
            ("x:<5", range("x", Unbounded, exc("5"))),
            ("x:<=5", range("x", Unbounded, inc("5"))),
            ("x:>-5", range("x", exc("-5"), Unbounded)),
            ("x:>\"a b\"", range("x", exc("a b"), Unbounded)),
            ("ts:[1 TO 5}", range("ts", inc("1"), exc("5"))),
            ("ts:{1 TO 5]", range("ts", exc("1"), inc("5"))),
            ("ts:[ 1  TO  5 ]", range("ts", inc("1"), inc("5"))),
            ("ts:[a TO *]", range("ts", inc("a"), Unbounded)),
            ("ts:[* TO *]", range("ts", Unbounded, Unbounded)),
            ("ts:[\"*\" TO \\*]", range("ts", inc("*"), inc("*"))),
            (
                "ts:[2024-01-01T00:00:00Z TO now]",
                range("ts", inc("2024-01-01T00:00:00Z"), inc("now")),
            ),
            ("pay*", prefix(None, "pay")),
            ("service:pay*", prefix(Some("service"), "pay")),
            ("service:*", exists("service")),
            ("a\\*", term("a*")),
            ("a\\**", prefix(None, "a*")),
            ("\\*", term("*")),
            (
                "field:(a OR \"b c\")",
                or([fterm("field", "a"), phrase(Some("field"), "b c")]),
            ),
            ("f:(a g:b)", and([fterm("f", "a"), fterm("g", "b")])),
            ("f:(NOT a*)", not(prefix(Some("f"), "a"))),
            ("f:(* OR x)", or([exists("f"), fterm("f", "x")])),
            (
                "status:(>=500 OR 404)",
                or([
                    range("status", inc("500"), Unbounded),
                    fterm("status", "404"),
                ]),
            ),
            ("url:http\\://x", fterm("url", "http://x")),
            ("url:http://x", fterm("url", "http://x")),
            ("http\\://x", term("http://x")),
            ("time:12:30:00", fterm("time", "12:30:00")),
            ("path:a\\ b", fterm("path", "a b")),
            ("f:-5", fterm("f", "-5")),
            ("f:AND", fterm("f", "AND")),
            ("\\AND", term("AND")),
            ("\\-a", term("-a")),
            ("\\>5", term(">5")),
            ("a>b", term("a>b")),
            ("AND:x", fterm("AND", "x")),
            ("12:30", fterm("12", "30")),
            ("foo(bar)", and([term("foo"), term("bar")])),
            ("\"a\"b", and([phrase(None, "a"), term("b")])),
            ("naïve:café", fterm("naïve", "café")),
        ] {
            check(input, expected);
        }
    }

    #[test]
    fn rejects() {
        for (input, position, expected) in [
            ("(a", 0, "a closing ')'"),
            ("a (b (c)", 2, "a closing ')'"),
            ("a)", 1, "end of query"),
            ("()", 1, "a clause inside '( )'"),
            ("(", 1, "a clause inside '( )'"),
            ("service:", 8, "a value after ':'"),
            ("service: x", 8, "a value after ':'"),
            ("(service:)", 9, "a value after ':'"),
            (":a", 0, "a field name before ':'"),
            ("a+b:c", 0, "a field name before ':'"),
            ("a\\ b:c", 0, "a field name before ':'"),
            ("\"abc", 0, "a closing '\"'"),
            ("a \"b\\\"", 2, "a closing '\"'"),
            ("a AND", 5, "a clause after 'AND'"),
            ("a AND OR b", 6, "a clause after 'AND'"),
            ("a OR", 4, "a clause after 'OR'"),
            ("OR b", 0, "a clause"),
            ("AND", 0, "a clause"),
            ("a &&", 4, "a clause after '&&'"),
            ("NOT", 3, "a clause after 'NOT'"),
            ("a -", 3, "a clause directly after '-'"),
            ("- a", 1, "a clause directly after '-'"),
            ("(-)", 2, "a clause after '-'"),
            ("x:[a b]", 5, "'TO'"),
            ("x:[a]", 4, "'TO'"),
            ("x:[a TO]", 7, "an upper bound"),
            ("x:[a TO b", 9, "']' or '}'"),
            ("x:[a TO b)", 9, "']' or '}'"),
            ("x:[]", 3, "a lower bound"),
            ("x:>", 3, "a value after '>'"),
            ("x:>= 5", 4, "a value after '>='"),
            ("[a TO b]", 0, "a field before the range"),
            ("a >5", 2, "a field before the range"),
            ("(a <=5)", 3, "a field before the range"),
            ("*foo", 0, "'*' only at the end"),
            ("fo*o", 2, "'*' only at the end"),
            ("f:a**", 3, "'*' only at the end"),
            ("a\\", 1, "a character after '\\'"),
            ("héllo:", 6, "a value after ':'"),
            ("\"é\" AND", 7, "a clause after 'AND'"),
        ] {
            check_err(input, position, expected);
        }
    }

    #[test]
    fn error_display() {
        let err = parse("service:payments AND status:").unwrap_err();
        assert_eq!(
            err.to_string(),
            "at position 28: expected a value after ':', found end of query"
        );
        let err = parse("a ) b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "at position 2: expected end of query, found unmatched ')'"
        );
        let err = parse(&format!("a [{} TO b]", "x".repeat(100))).unwrap_err();
        assert!(err.found.ends_with("…'"), "{err}");
    }

    #[test]
    fn caps_nesting() {
        for input in [
            "(".repeat(100_000),
            "NOT ".repeat(100_000),
            format!("{}a", "-".repeat(100_000)),
            "(a OR ".repeat(10_000),
            format!("f:{}", "(".repeat(100_000)),
        ] {
            let err = parse(&input).unwrap_err();
            assert!(err.expected.contains("nested"), "{err}");
        }
        let ok = format!("{}a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(parse(&ok), Ok(term("a")));
        assert!(parse(&format!("({ok})")).is_err());
    }

    #[test]
    fn wide_queries_do_not_recurse() {
        let input = "a ".repeat(100_000);
        assert!(matches!(parse(&input), Ok(Query::And(items)) if items.len() == 100_000));
    }
}
