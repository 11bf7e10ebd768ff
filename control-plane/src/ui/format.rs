//! How numbers, durations and times read on the dashboard. Times are UTC, and say so.

/// A number with at most 3 significant digits past the point, and k/M suffixes past ten thousand.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return "-".to_owned();
    }
    let abs = value.abs();
    if abs >= 10_000_000.0 {
        format!("{:.1}M", value / 1e6)
    } else if abs >= 10_000.0 {
        format!("{:.1}k", value / 1e3)
    } else if abs >= 100.0 || value == value.trunc() {
        format!("{value:.0}")
    } else if abs >= 1.0 {
        trim(format!("{value:.2}"))
    } else {
        // Three significant digits, however small.
        let decimals = (2 - abs.log10().floor() as i32).clamp(3, 12) as usize;
        trim(format!("{value:.decimals$}"))
    }
}

fn trim(text: String) -> String {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// A duration in milliseconds: `850 µs`, `12.5 ms`, `1.2 s`, `3.0 min`.
pub fn millis(ms: f64) -> String {
    if !ms.is_finite() {
        "-".to_owned()
    } else if ms == 0.0 {
        "0".to_owned()
    } else if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{} ms", number(ms))
    } else if ms < 120_000.0 {
        format!("{} s", trim(format!("{:.2}", ms / 1000.0)))
    } else {
        format!("{:.1} min", ms / 60_000.0)
    }
}

/// A ratio 0-1 in percent.
pub fn percent(ratio: f64) -> String {
    format!("{}%", number(ratio * 100.0))
}

/// A time of day, UTC, to the second.
pub fn clock_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// A time in ns since the epoch, UTC, to the millisecond.
pub fn clock_ns(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%d %H:%M:%S%.3f")
        .to_string()
}

/// How long ago an RFC 3339 time was: `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`.
pub fn ago(rfc3339: &str) -> String {
    let Ok(time) = chrono::DateTime::parse_from_rfc3339(rfc3339) else {
        return rfc3339.to_owned();
    };
    let seconds = (chrono::Utc::now() - time.with_timezone(&chrono::Utc)).num_seconds();
    match seconds {
        s if s < 0 => "just now".to_owned(),
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} d ago", s / 86_400),
    }
}

/// Bytes: `512 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Terminal escapes (ANSI CSI and OSC sequences, and other control characters but tab and newline) made visible:
/// a log line's colours must not reach the page as raw control bytes.
pub fn visible(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\n' => c.to_string(),
            '\u{1b}' => "␛".to_owned(),
            c if c.is_control() || invisible(c) => format!("\\u{{{:04x}}}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

/// Format characters that change how text around them reads without showing themselves: bidirectional overrides
/// and isolates, zero-width characters, the byte-order mark (Unicode category Cf, the ones used for spoofing).
fn invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(4.56789), "4.57");
        assert_eq!(number(0.01234), "0.0123");
        assert_eq!(number(0.00025), "0.00025");
        assert_eq!(number(12_345.0), "12.3k");
        assert_eq!(millis(0.25), "250 µs");
        assert_eq!(millis(12.5), "12.5 ms");
        assert_eq!(millis(1500.0), "1.5 s");
        assert_eq!(percent(0.0123), "1.23%");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(visible("\u{1b}[31mred\u{7}"), "␛[31mred\\u{0007}");
        assert_eq!(visible("evil\u{202e}gpj.exe"), "evil\\u{202e}gpj.exe");
    }
}
