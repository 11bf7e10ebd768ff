//! Property tests: the parser never panics, locates every leaf, and printing an AST then parsing it gives it back.

use gantry_query::{Bound, Query, parse, parse_located};
use proptest::prelude::*;

const FIELDS: &[&str] = &[
    "service",
    "attributes.http.status_code",
    "resource.service.name",
    "order_id",
    "k8s.pod.name",
    "@timestamp",
    "a-b/c_d",
];

/// Values that are easy to print wrongly.
const SPECIALS: &[&str] = &[
    "AND", "OR", "NOT", "&&", "||", "TO", "*", "-", "-a", "\\", ">=5", "[a", "a b",
];

/// Fragments of the grammar, glued together without separators.
const PIECES: &[&str] = &[
    "AND", "OR", "NOT", "and", "&&", "||", "-", "(", ")", "\"", "\\", ":", "*", "[", "]", "{", "}",
    "TO", ">", "<", ">=", "<=", "=", " ", "  ", "\t", "a", "b1", "é", "f:", "service:", "x:[",
];

fn field() -> impl Strategy<Value = String> {
    prop::sample::select(FIELDS).prop_map(str::to_owned)
}

fn opt_field() -> impl Strategy<Value = Option<String>> {
    prop::option::of(field())
}

fn text(min: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::string::string_regex(&format!(r#"[a-zA-Z0-9:" *()\\\-\[\]{{}}<>=&|é\t]{{{min},8}}"#))
            .expect("valid regex"),
        1 => prop::sample::select(SPECIALS).prop_map(str::to_owned),
    ]
}

fn bound() -> impl Strategy<Value = Bound> {
    prop_oneof![
        Just(Bound::Unbounded),
        text(0).prop_map(Bound::Included),
        text(0).prop_map(Bound::Excluded),
    ]
}

fn query() -> impl Strategy<Value = Query> {
    let leaf = prop_oneof![
        Just(Query::All),
        (opt_field(), text(1)).prop_map(|(field, value)| Query::Term { field, value }),
        (opt_field(), text(0)).prop_map(|(field, text)| Query::Phrase { field, text }),
        (opt_field(), text(1)).prop_map(|(field, prefix)| Query::Prefix { field, prefix }),
        field().prop_map(|field| Query::Exists { field }),
        (field(), bound(), bound()).prop_map(|(field, lower, upper)| Query::Range {
            field,
            lower,
            upper
        }),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Query::And),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Query::Or),
            inner.prop_map(|q| Query::Not(Box::new(q))),
        ]
    })
}

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..24).prop_map(|pieces| pieces.concat())
}

/// Errors point inside the input; successes print to text that parses back unchanged, and every leaf has a position
/// inside the input, in increasing order.
fn check_parse(input: &str) -> Result<(), TestCaseError> {
    match parse_located(input) {
        Ok((query, positions)) => {
            prop_assert_eq!(query.leaves().len(), positions.len());
            prop_assert!(
                positions.windows(2).all(|pair| pair[0] < pair[1]),
                "{:?}",
                positions
            );
            prop_assert!(
                positions.iter().all(|p| *p < input.chars().count()),
                "{:?}",
                positions
            );
            prop_assert_eq!(parse(&query.to_string()), Ok(query))
        }
        Err(err) => prop_assert!(err.position <= input.chars().count(), "{err}"),
    }
    Ok(())
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_text(input in any::<String>()) {
        check_parse(&input)?;
    }

    #[test]
    fn never_panics_on_grammar_soup(input in soup()) {
        check_parse(&input)?;
    }

    #[test]
    fn print_parse_round_trip(query in query()) {
        let text = query.to_string();
        prop_assert_eq!(parse(&text), Ok(query.normalized()), "printed as {}", text);
    }
}
