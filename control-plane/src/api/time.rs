//! Time parameters of the API: RFC 3339 instants, relative times (`-15m`, `-2h`, `-7d`, `now`) and Unix milliseconds.

use super::ApiError;
use gantry_store::TimeRange;

/// 2200-01-01T00:00:00Z.
const LATEST_NS: i64 = 7_258_118_400 * 1_000_000_000;

/// Default width of a range when `from` is not given.
const DEFAULT_LOOKBACK_NS: i64 = 3600 * 1_000_000_000;
/// Slack after `now` when `to` is not given, so a sender's clock a little ahead is still seen.
const DEFAULT_AHEAD_NS: i64 = 60 * 1_000_000_000;

/// Parses one time parameter into ns since the epoch.
pub fn parse_time(name: &str, text: &str, now_ns: i64) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "`{name}={text}` is not a time: use RFC 3339 (2026-01-02T15:04:05Z), a relative time (-15m, -2h, -7d, now) or Unix milliseconds"
        ))
    };
    let text = text.trim();
    if text == "now" {
        return Ok(now_ns);
    }
    if let Some(relative) = text
        .strip_prefix("now")
        .filter(|rest| !rest.is_empty())
        .or_else(|| text.starts_with('-').then_some(text))
    {
        let (sign, body) = match relative.as_bytes().first() {
            Some(b'-') => (-1, &relative[1..]),
            Some(b'+') => (1, &relative[1..]),
            _ => return Err(bad()),
        };
        let split = body.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let amount: i64 = body[..split].parse().map_err(|_| bad())?;
        let unit: i64 = match &body[split..] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return Err(bad()),
        };
        return amount
            .checked_mul(unit * 1_000_000_000)
            .and_then(|delta| now_ns.checked_add(sign * delta))
            .ok_or_else(bad);
    }
    if let Ok(ms) = text.parse::<i64>() {
        return ms.checked_mul(1_000_000).ok_or_else(bad);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|time| time.timestamp_nanos_opt())
        .ok_or_else(bad)
}

/// The range of `from` and `to`, defaulting to the last hour.
pub fn parse_range(from: Option<&str>, to: Option<&str>) -> Result<TimeRange, ApiError> {
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let to_ns = match to {
        Some(text) if !text.is_empty() => parse_time("to", text, now_ns)?,
        _ => now_ns + DEFAULT_AHEAD_NS,
    };
    let from_ns = match from {
        Some(text) if !text.is_empty() => parse_time("from", text, now_ns)?,
        _ => to_ns.min(now_ns) - DEFAULT_LOOKBACK_NS,
    };
    // Times before 1970 or after 2200 are not telemetry; bounding them keeps `to - from` far from overflow.
    let (from_ns, to_ns) = (from_ns.clamp(0, LATEST_NS), to_ns.clamp(0, LATEST_NS));
    if from_ns >= to_ns {
        return Err(ApiError::BadRequest(
            "`from` must be before `to`".to_owned(),
        ));
    }
    Ok(TimeRange { from_ns, to_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000_000_000;

    #[test]
    fn times() {
        let check = |text: &str, expected: Option<i64>| {
            assert_eq!(parse_time("from", text, NOW).ok(), expected, "{text}");
        };
        check("now", Some(NOW));
        check("-15m", Some(NOW - 900 * 1_000_000_000));
        check("now-2h", Some(NOW - 7200 * 1_000_000_000));
        check("-7d", Some(NOW - 7 * 86_400 * 1_000_000_000));
        check("1700000000000", Some(1_700_000_000_000_000_000));
        check("2026-01-02T15:04:05Z", Some(1_767_366_245_000_000_000));
        check("-15x", None);
        check("yesterday", None);
        check("-99999999999999d", None);
        check("now+100000d", None);
    }

    #[test]
    fn ranges() {
        assert!(parse_range(Some("-1h"), Some("-2h")).is_err());
        let range = parse_range(None, None).unwrap();
        assert!(range.to_ns - range.from_ns > DEFAULT_LOOKBACK_NS);
    }
}
