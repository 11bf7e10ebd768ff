//! The OTLP/JSON decoder, one table: each form a sender may write is read as its canonical form would be by
//! `opentelemetry-proto`'s own serde code (the oracle), and each bad value is an error naming its field.

use super::*;
use Want::{Error, Same, Shows};

/// A request body of one signal.
struct Body(Signal, String);

enum Want {
    /// Decodes to what this canonical body (JSON numbers, camelCase keys, enum numbers) decodes to through
    /// `opentelemetry-proto`'s serde.
    Same(Body),
    /// The decoded request's `Debug` shows this: for what the oracle cannot read (`NaN`, infinities).
    Shows(&'static str),
    /// Refused: the message names this path (empty: the whole body) and contains this.
    Error(&'static str, &'static str),
}

fn check(input: Body, want: Want) {
    let Body(signal, json) = input;
    let got = decode(signal, json.as_bytes());
    match want {
        Same(Body(_, canonical)) => {
            let canonical = oracle(signal, &canonical);
            let got = got.unwrap_or_else(|error| panic!("{json}: {error}"));
            assert_eq!(format!("{got:?}"), format!("{canonical:?}"), "{json}");
        }
        Shows(fragment) => {
            let got = got.unwrap_or_else(|error| panic!("{json}: {error}"));
            let got = format!("{got:?}");
            assert!(got.contains(fragment), "{json}: {got} lacks {fragment}");
        }
        Error(path, fragment) => {
            let Err(DecodeError::Malformed(message)) = got else {
                panic!("{json}: expected an error at {path}, got {got:?}");
            };
            let prefix = match path {
                "" => "invalid OTLP JSON: ".to_owned(),
                path => format!("invalid OTLP JSON at {path}: "),
            };
            assert!(
                message.starts_with(&prefix) && message.contains(fragment),
                "{json}: expected `{prefix}...{fragment}...`, got `{message}`"
            );
        }
    }
}

/// The canonical body read by `opentelemetry-proto`'s generated serde code.
fn oracle(signal: Signal, json: &str) -> ExportRequest {
    fn read<T: serde::de::DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json)
            .unwrap_or_else(|error| panic!("the oracle cannot read {json}: {error}"))
    }
    match signal {
        Signal::Logs => ExportRequest::Logs(read(json)),
        Signal::Traces => ExportRequest::Traces(read(json)),
        Signal::Metrics => ExportRequest::Metrics(read(json)),
    }
}

fn metric(metric: &str) -> Body {
    Body(
        Signal::Metrics,
        format!(r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{metric}]}}]}}]}}"#),
    )
}

fn gauge(point: &str) -> Body {
    metric(&format!(
        r#"{{"name":"m","gauge":{{"dataPoints":[{point}]}}}}"#
    ))
}

fn log(record: &str) -> Body {
    Body(
        Signal::Logs,
        format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{record}]}}]}}]}}"#),
    )
}

fn span(span: &str) -> Body {
    Body(
        Signal::Traces,
        format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{span}]}}]}}]}}"#),
    )
}

const POINT: &str = "resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0]";
const METRIC: &str = "resourceMetrics[0].scopeMetrics[0].metrics[0]";
const RECORD: &str = "resourceLogs[0].scopeLogs[0].logRecords[0]";
const SPAN: &str = "resourceSpans[0].scopeSpans[0].spans[0]";

#[test]
fn number_data_points() {
    let p = |path: &str| format!("{POINT}.{path}").leak() as &str;
    let t = r#""timeUnixNano":"1772445512345678901""#;
    let g = |rest: &str| gauge(&format!("{{{t},{rest}}}"));
    // Doubles: JSON numbers, or strings holding one.
    check(g(r#""asDouble":"1.5""#), Same(g(r#""asDouble":1.5"#)));
    check(g(r#""asDouble":"-2.5e3""#), Same(g(r#""asDouble":-2500"#)));
    check(g(r#""asDouble":3"#), Same(g(r#""asDouble":3.0"#)));
    check(g(r#""asDouble":"0""#), Same(g(r#""asDouble":0"#)));
    check(g(r#""asDouble":0"#), Shows("value: Some(AsDouble(0.0))"));
    check(
        g(r#""asDouble":"NaN""#),
        Shows("value: Some(AsDouble(NaN))"),
    );
    check(
        g(r#""asDouble":"Infinity""#),
        Shows("value: Some(AsDouble(inf))"),
    );
    check(
        g(r#""asDouble":"-Infinity""#),
        Shows("value: Some(AsDouble(-inf))"),
    );
    check(g(r#""asDouble":null"#), Same(g(r#""flags":0"#)));
    check(
        g(r#""asDouble":"abc""#),
        Error(p("asDouble"), r#""abc" is not a number"#),
    );
    check(
        g(r#""asDouble":"nan""#),
        Error(p("asDouble"), r#""nan" is not a number"#),
    );
    check(
        g(r#""asDouble":"1e999""#),
        Error(p("asDouble"), r#""1e999" is not a number"#),
    );
    check(
        g(r#""asDouble":"""#),
        Error(p("asDouble"), r#""" is not a number"#),
    );
    check(
        g(r#""asDouble":1e999"#),
        Error(p("asDouble"), "number out of range"),
    );
    check(
        g(r#""asDouble":NaN"#),
        Error(p("asDouble"), "expected value"),
    );
    check(
        g(r#""asDouble":true"#),
        Error(p("asDouble"), "true is not a number"),
    );
    check(
        g(r#""asDouble":{}"#),
        Error(p("asDouble"), "an object is not a number"),
    );
    check(
        g(r#""asDouble":[1]"#),
        Error(p("asDouble"), "an array is not a number"),
    );
    // 64-bit integers: JSON numbers, or decimal strings; integral and in range.
    check(g(r#""asInt":"42""#), Same(g(r#""asInt":42"#)));
    check(g(r#""asInt":"-7""#), Same(g(r#""asInt":-7"#)));
    check(g(r#""asInt":"1e3""#), Same(g(r#""asInt":1000"#)));
    check(g(r#""asInt":5.0"#), Same(g(r#""asInt":5"#)));
    check(
        g(r#""asInt":"abc""#),
        Error(p("asInt"), r#""abc" is not a 64-bit integer"#),
    );
    check(
        g(r#""asInt":1.5"#),
        Error(p("asInt"), "1.5 is not a 64-bit integer"),
    );
    check(
        g(r#""asInt":"1.5""#),
        Error(p("asInt"), r#""1.5" is not a 64-bit integer"#),
    );
    check(
        g(r#""asInt":"9223372036854775808""#),
        Error(p("asInt"), "out of range"),
    );
    check(
        g(r#""asInt":false"#),
        Error(p("asInt"), "false is not a 64-bit integer"),
    );
    // One member of a oneof.
    check(
        g(r#""asInt":1,"asDouble":2"#),
        Error(POINT, "`asDouble` and `asInt` are both set"),
    );
    // Timestamps (fixed64): strings, numbers, and the floats JavaScript senders write.
    let at = |time: &str| gauge(&format!(r#"{{"timeUnixNano":{time},"asInt":"1"}}"#));
    check(
        at("1772445512345678901"),
        Same(at(r#""1772445512345678901""#)),
    );
    check(
        at("1.7724455123456788e18"),
        Same(at(r#""1772445512345678848""#)),
    );
    check(
        at(r#""-1""#),
        Error(
            p("timeUnixNano"),
            "out of range for an unsigned 64-bit integer",
        ),
    );
    check(
        at(r#""soon""#),
        Error(p("timeUnixNano"), r#""soon" is not an unsigned 64-bit"#),
    );
    check(at("-5"), Error(p("timeUnixNano"), "-5 is out of range"));
    check(
        at("1e300"),
        Error(
            p("timeUnixNano"),
            "1e300 is out of range for an unsigned 64-bit",
        ),
    );
    // Flags (uint32), attributes, exemplars.
    check(
        g(r#""asInt":1,"flags":"1""#),
        Same(g(r#""asInt":1,"flags":1"#)),
    );
    check(
        g(r#""asInt":1,"flags":"4294967296""#),
        Error(p("flags"), "out of range"),
    );
    check(
        g(r#""asInt":1,"flags":-1"#),
        Error(p("flags"), "out of range"),
    );
    let exemplar = |e: &str| g(&format!(r#""asInt":1,"exemplars":[{e}]"#));
    check(
        exemplar(r#"{"asDouble":"2.5","timeUnixNano":"5","spanId":"00F067AA0BA902B7"}"#),
        Same(exemplar(
            r#"{"asDouble":2.5,"timeUnixNano":"5","spanId":"00f067aa0ba902b7"}"#,
        )),
    );
    check(
        exemplar(r#"{"asInt":"x"}"#),
        Error(p("exemplars[0].asInt"), r#""x" is not"#),
    );
    check(
        exemplar(r#"{"asInt":1,"asDouble":1}"#),
        Error(p("exemplars[0]"), "are both set"),
    );
    check(
        exemplar(r#"{"traceId":"xyz"}"#),
        Error(p("exemplars[0].traceId"), "not a hex id"),
    );
}

#[test]
fn metric_kinds_and_enums() {
    let sum = |fields: &str| {
        metric(&format!(
            r#"{{"name":"s","sum":{{{fields},"dataPoints":[{{"asInt":"1"}}]}}}}"#
        ))
    };
    let at = |path: &str| format!("{METRIC}.{path}").leak() as &str;
    // Enums: names or numbers.
    let delta = r#""aggregationTemporality":1"#;
    check(
        sum(r#""aggregationTemporality":"AGGREGATION_TEMPORALITY_DELTA""#),
        Same(sum(delta)),
    );
    check(
        sum(r#""aggregationTemporality":"AGGREGATION_TEMPORALITY_CUMULATIVE","isMonotonic":true"#),
        Same(sum(r#""aggregationTemporality":2,"isMonotonic":true"#)),
    );
    check(sum(r#""aggregationTemporality":1.0"#), Same(sum(delta)));
    check(
        sum(r#""aggregationTemporality":"DELTA""#),
        Error(
            at("sum.aggregationTemporality"),
            r#""DELTA" is not a value of AggregationTemporality"#,
        ),
    );
    check(
        sum(r#""aggregationTemporality":"1""#),
        Error(
            at("sum.aggregationTemporality"),
            "send one of AGGREGATION_TEMPORALITY_UNSPECIFIED, AGGREGATION_TEMPORALITY_DELTA or AGGREGATION_TEMPORALITY_CUMULATIVE, or its number",
        ),
    );
    check(
        sum(r#""aggregationTemporality":1.5"#),
        Error(
            at("sum.aggregationTemporality"),
            "1.5 is not a value of AggregationTemporality",
        ),
    );
    check(
        sum(r#""isMonotonic":"true""#),
        Error(at("sum.isMonotonic"), "is not a JSON boolean"),
    );
    check(
        metric(r#"{"name":"x","sum":{"dataPoints":[{"asInt":"x"}]}}"#),
        Error(
            at("sum.dataPoints[0].asInt"),
            r#""x" is not a 64-bit integer"#,
        ),
    );
    // One kind per metric.
    check(
        metric(r#"{"name":"x","gauge":{},"sum":{}}"#),
        Error(
            METRIC,
            "`sum` and `gauge` are both set, but they are alternatives: send one of gauge, sum",
        ),
    );
    // Histograms: counts (uint64) and bounds (double) as strings, NaN sums, and the wrong things.
    let histogram = |point: &str| {
        metric(&format!(
            r#"{{"name":"h","histogram":{{"aggregationTemporality":"AGGREGATION_TEMPORALITY_CUMULATIVE","dataPoints":[{point}]}}}}"#
        ))
    };
    check(
        histogram(
            r#"{"count":"3","sum":"4.5","bucketCounts":["1","2"],"explicitBounds":["1.5",2],"min":"0","max":"3"}"#,
        ),
        Same(metric(
            r#"{"name":"h","histogram":{"aggregationTemporality":2,"dataPoints":[{"count":3,"sum":4.5,"bucketCounts":[1,2],"explicitBounds":[1.5,2.0],"min":0,"max":3}]}}"#,
        )),
    );
    check(
        histogram(r#"{"count":"1","sum":"NaN"}"#),
        Shows("sum: Some(NaN)"),
    );
    check(histogram(r#"{"sum":0}"#), Shows("sum: Some(0.0)"));
    check(
        histogram(r#"{"explicitBounds":["Infinity"]}"#),
        Shows("explicit_bounds: [inf]"),
    );
    check(
        histogram(r#"{"bucketCounts":["1","x"]}"#),
        Error(
            at("histogram.dataPoints[0].bucketCounts[1]"),
            r#""x" is not an unsigned 64-bit integer"#,
        ),
    );
    check(
        histogram(r#"{"min":"low"}"#),
        Error(
            at("histogram.dataPoints[0].min"),
            r#""low" is not a number"#,
        ),
    );
    check(
        histogram(r#"{"bucketCounts":"1"}"#),
        Error(at("histogram.dataPoints[0].bucketCounts"), "a JSON array"),
    );
    // Exponential histograms: sint32 scale and offsets as strings.
    check(
        metric(
            r#"{"name":"e","exponentialHistogram":{"dataPoints":[{"scale":"-2","zeroCount":"1","zeroThreshold":"0.5","positive":{"offset":"-1","bucketCounts":["4"]}}]}}"#,
        ),
        Same(metric(
            r#"{"name":"e","exponentialHistogram":{"dataPoints":[{"scale":-2,"zeroCount":1,"zeroThreshold":0.5,"positive":{"offset":-1,"bucketCounts":[4]}}]}}"#,
        )),
    );
    check(
        metric(r#"{"name":"e","exponentialHistogram":{"dataPoints":[{"scale":"3000000000"}]}}"#),
        Error(
            at("exponentialHistogram.dataPoints[0].scale"),
            "out of range for a 32-bit integer",
        ),
    );
    // Summaries.
    check(
        metric(
            r#"{"name":"q","summary":{"dataPoints":[{"count":"2","sum":"3.5","quantileValues":[{"quantile":"0.5","value":"1.5"}]}]}}"#,
        ),
        Same(metric(
            r#"{"name":"q","summary":{"dataPoints":[{"count":2,"sum":3.5,"quantileValues":[{"quantile":0.5,"value":1.5}]}]}}"#,
        )),
    );
    check(
        metric(r#"{"name":"q","summary":{"dataPoints":[{"sum":"-Infinity"}]}}"#),
        Shows("sum: -inf"),
    );
    check(
        metric(r#"{"name":"q","summary":{"dataPoints":[{"quantileValues":[{"value":"many"}]}]}}"#),
        Error(
            at("summary.dataPoints[0].quantileValues[0].value"),
            r#""many" is not a number"#,
        ),
    );
}

#[test]
fn log_records() {
    let t = r#""timeUnixNano":"1772445512345678901""#;
    let l = |rest: &str| log(&format!("{{{t},{rest}}}"));
    let at = |path: &str| format!("{RECORD}.{path}").leak() as &str;
    check(
        l(r#""severityNumber":"SEVERITY_NUMBER_WARN""#),
        Same(l(r#""severityNumber":13"#)),
    );
    check(
        l(r#""severityNumber":"13""#),
        Error(
            at("severityNumber"),
            r#""13" is not a value of SeverityNumber"#,
        ),
    );
    check(
        l(r#""severityNumber":"WARN""#),
        Error(
            at("severityNumber"),
            "send one of SEVERITY_NUMBER_UNSPECIFIED ... SEVERITY_NUMBER_FATAL4, or its number",
        ),
    );
    check(
        l(r#""severityNumber":9.5"#),
        Error(at("severityNumber"), "9.5 is not a value of SeverityNumber"),
    );
    check(
        l(r#""severityNumber":4294967297"#),
        Error(at("severityNumber"), "4294967297 is not"),
    );
    check(
        l(r#""flags":"1","droppedAttributesCount":"2""#),
        Same(l(r#""flags":1,"droppedAttributesCount":2"#)),
    );
    check(
        l(r#""observedTimeUnixNano":"yesterday""#),
        Error(at("observedTimeUnixNano"), r#""yesterday" is not"#),
    );
    check(
        l(r#""severityText":5"#),
        Error(at("severityText"), "5 is not a string"),
    );
    // Bodies and attributes: every AnyValue form, at any depth.
    let body = |value: &str| l(&format!(r#""body":{value}"#));
    check(
        body(r#"{"doubleValue":"1.5"}"#),
        Same(body(r#"{"doubleValue":1.5}"#)),
    );
    check(
        body(r#"{"intValue":42}"#),
        Same(body(r#"{"intValue":"42"}"#)),
    );
    check(
        body(r#"{"bytesValue":"aGVsbG8"}"#),
        Same(body(r#"{"bytesValue":"aGVsbG8="}"#)),
    );
    check(body(r#"{"doubleValue":"NaN"}"#), Shows("DoubleValue(NaN)"));
    check(
        body(r#"{"intValue":"abc"}"#),
        Error(at("body.intValue"), r#""abc" is not a 64-bit integer"#),
    );
    check(
        body(r#"{"boolValue":"yes"}"#),
        Error(at("body.boolValue"), "is not a JSON boolean"),
    );
    check(
        body(r#"{"bytesValue":"%%"}"#),
        Error(at("body.bytesValue"), r#""%%" is not a base64 string"#),
    );
    check(
        body(r#"{"stringValue":"a","intValue":1}"#),
        Error(at("body"), "are both set"),
    );
    check(
        body(
            r#"{"kvlistValue":{"values":[{"key":"k","value":{"arrayValue":{"values":[{"intValue":"1"},{"doubleValue":"x"}]}}}]}}"#,
        ),
        Error(
            at("body.kvlistValue.values[0].value.arrayValue.values[1].doubleValue"),
            r#""x" is not a number"#,
        ),
    );
    check(
        l(r#""attributes":[{"key":"n","value":{"intValue":"1.5"}}]"#),
        Error(
            at("attributes[0].value.intValue"),
            r#""1.5" is not a 64-bit integer"#,
        ),
    );
    check(l(r#""attributes":null"#), Same(l(r#""attributes":[]"#)));
    // Ids: hex, either case.
    check(
        l(r#""traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174""#),
        Same(l(
            r#""traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174""#,
        )),
    );
    check(
        l(r#""traceId":"not hex""#),
        Error(
            at("traceId"),
            r#""not hex" is not a hex id (OTLP/JSON writes ids in hex, not base64"#,
        ),
    );
    check(l(r#""spanId":"abc""#), Error(at("spanId"), "not a hex id"));
    // Keys: camelCase or snake_case; unknown keys ignored; a key once.
    check(
        Body(
            Signal::Logs,
            r#"{"resource_logs":[{"scope_logs":[{"log_records":[{"time_unix_nano":"1","severity_number":"SEVERITY_NUMBER_INFO","severity_text":"INFO"}]}]}]}"#.into(),
        ),
        Same(log(r#"{"timeUnixNano":"1","severityNumber":9,"severityText":"INFO"}"#)),
    );
    check(
        l(r#""futureField":{"x":[1,2]},"severityNumber":9"#),
        Same(l(r#""severityNumber":9"#)),
    );
    check(
        l(r#""time_unix_nano":"2""#),
        Error(RECORD, "`time_unix_nano` is given twice"),
    );
}

#[test]
fn spans() {
    let ids = r#""traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","startTimeUnixNano":"1""#;
    let s = |rest: &str| span(&format!("{{{ids},{rest}}}"));
    let at = |path: &str| format!("{SPAN}.{path}").leak() as &str;
    check(
        s(r#""kind":"SPAN_KIND_SERVER","status":{"code":"STATUS_CODE_ERROR","message":"boom"}"#),
        Same(s(r#""kind":2,"status":{"code":2,"message":"boom"}"#)),
    );
    check(
        s(r#""kind":"server""#),
        Error(
            at("kind"),
            r#""server" is not a value of SpanKind: send one of SPAN_KIND_UNSPECIFIED"#,
        ),
    );
    check(
        s(r#""status":{"code":"ERROR"}"#),
        Error(at("status.code"), r#""ERROR" is not a value of StatusCode"#),
    );
    check(
        s(r#""endTimeUnixNano":1772445512345678901,"flags":"256""#),
        Same(s(r#""endTimeUnixNano":"1772445512345678901","flags":256"#)),
    );
    check(s(r#""parentSpanId":"""#), Same(s(r#""name":"""#)));
    check(
        s(r#""parentSpanId":"12345""#),
        Error(at("parentSpanId"), "not a hex id"),
    );
    check(
        s(r#""events":[{"timeUnixNano":"x"}]"#),
        Error(at("events[0].timeUnixNano"), r#""x" is not"#),
    );
    check(
        s(r#""links":[{"traceId":"zz"}]"#),
        Error(at("links[0].traceId"), "not a hex id"),
    );
    check(
        s(
            r#""droppedEventsCount":"3","links":[{"spanId":"00f067aa0ba902b7","droppedAttributesCount":"1"}]"#,
        ),
        Same(s(
            r#""droppedEventsCount":3,"links":[{"spanId":"00f067aa0ba902b7","droppedAttributesCount":1}]"#,
        )),
    );
    check(
        s(r#""attributes":[{"key":"a","value":{"intValue":1.25}}]"#),
        Error(at("attributes[0].value.intValue"), "1.25 is not"),
    );
}

#[test]
fn whole_bodies() {
    let body = |json: &str| Body(Signal::Traces, json.to_owned());
    check(body("{}"), Same(body("{}")));
    check(body(r#"{"resourceSpans":null}"#), Same(body("{}")));
    check(
        body("[]"),
        Error("", "expected a JSON object (ExportTraceServiceRequest)"),
    );
    check(body("{} x"), Error("", "trailing characters"));
    check(
        body(r#"{"resourceSpans": [ {"#),
        Error("resourceSpans[0]", "EOF while parsing"),
    );
    check(
        body(r#"{"resourceSpans":{}}"#),
        Error(
            "resourceSpans",
            "a JSON array, each item a JSON object (ResourceSpans)",
        ),
    );
    check(
        body(r#"{"resourceSpans":[null]}"#),
        Error("resourceSpans[0]", "expected a JSON object"),
    );
    check(
        body(
            r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":7}}]}}]}"#,
        ),
        Error(
            "resourceSpans[0].resource.attributes[0].value.stringValue",
            "7 is not a string",
        ),
    );
    // Nesting: as deep as JSON allows is read; deeper is refused, never a stack overflow.
    let nested = |levels: usize| {
        let mut value = r#"{"intValue":"1"}"#.to_owned();
        for _ in 0..levels {
            value = format!(r#"{{"kvlistValue":{{"values":[{{"key":"k","value":{value}}}]}}}}"#);
        }
        log(&format!(r#"{{"body":{value}}}"#))
    };
    check(nested(25), Shows("IntValue(1)"));
    let deepest = format!("{RECORD}.body{}", ".kvlistValue.values[0].value".repeat(30));
    check(
        nested(200),
        Error(deepest.leak(), "recursion limit exceeded"),
    );
    check(
        Body(
            Signal::Metrics,
            r#"{"resourceMetrics":[{"scopeMetrics":[{"scope":{"name":"s","version":1}}]}]}"#.into(),
        ),
        Error(
            "resourceMetrics[0].scopeMetrics[0].scope.version",
            "1 is not a string",
        ),
    );
}
