//! Turns the bytes of one file into records: splits lines on `\n`, joins multi-line records, and tracks the offset up to which every byte is in an emitted record.

use std::time::{Duration, Instant};

use crate::config::Multiline;

/// Longest line kept whole; a longer run of bytes without `\n` is cut into lines of this size.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Largest multi-line record; further continuation lines start a new record.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// A complete record and the file offset just after its last byte (including the `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The record's text, lines joined with `\n`, without the final newline.
    pub text: String,
    /// Offset just after the record's last line.
    pub end: u64,
    /// Number of lines in the record.
    pub lines: u64,
    /// Wall-clock time its first line was read (nanoseconds since the Unix epoch).
    pub read_unix_nanos: u64,
}

#[derive(Debug)]
struct Pending {
    text: String,
    end: u64,
    lines: u64,
    last_at: Instant,
    read_unix_nanos: u64,
}

/// Line splitter plus multi-line joiner for one file.
///
/// Invariant: every byte before [`Framer::safe_offset`] belongs to a record already returned
/// (or to a blank line); bytes after it (a pending record, a partial line) are returned later, so
/// a checkpoint at `safe_offset` loses and repeats nothing.
#[derive(Debug)]
pub struct Framer {
    multiline: Multiline,
    partial: Vec<u8>,
    /// Offset after the last byte fed in.
    read_to: u64,
    safe: u64,
    pending: Option<Pending>,
    /// Lines cut because they exceeded [`MAX_LINE_BYTES`].
    pub cut_lines: u64,
}

impl Framer {
    /// A framer for a file read from `offset` on.
    pub fn new(offset: u64, multiline: Multiline) -> Framer {
        Framer {
            multiline,
            partial: Vec::new(),
            read_to: offset,
            safe: offset,
            pending: None,
            cut_lines: 0,
        }
    }

    /// Offset up to which everything was returned in frames; where a restart resumes.
    pub fn safe_offset(&self) -> u64 {
        self.safe
    }

    /// Offset after the last byte fed in; where the next read starts.
    pub fn read_offset(&self) -> u64 {
        self.read_to
    }

    /// Whether nothing is held back (no pending record, no partial line).
    pub fn is_idle(&self) -> bool {
        self.pending.is_none() && self.partial.is_empty()
    }

    /// Feeds bytes read at [`Framer::read_offset`]; completed records go to `out`.
    pub fn push(&mut self, bytes: &[u8], now: Instant, out: &mut Vec<Frame>) {
        let mut rest = bytes;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(pos + 1);
            self.read_to += line.len() as u64;
            if self.partial.is_empty() {
                self.line(&line[..line.len() - 1], now, out);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(&line[..line.len() - 1]);
                self.line(&whole, now, out);
            }
            rest = tail;
            while self.partial.len() >= MAX_LINE_BYTES {
                self.cut_partial(now, out);
            }
        }
        self.read_to += rest.len() as u64;
        self.partial.extend_from_slice(rest);
        while self.partial.len() >= MAX_LINE_BYTES {
            self.cut_partial(now, out);
        }
    }

    /// Emits the pending record if no line arrived for `idle`.
    pub fn flush_idle(&mut self, now: Instant, idle: Duration, out: &mut Vec<Frame>) {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| now.saturating_duration_since(p.last_at) >= idle)
        {
            self.emit_pending(out);
        }
    }

    /// Emits the pending record now (shutdown).
    pub fn flush_pending(&mut self, out: &mut Vec<Frame>) {
        self.emit_pending(out);
    }

    /// Treats an unterminated last line as complete and emits everything (the file will not grow
    /// any more: it was rotated away, deleted or truncated).
    pub fn finish(&mut self, now: Instant, out: &mut Vec<Frame>) {
        if !self.partial.is_empty() {
            let whole = std::mem::take(&mut self.partial);
            self.line(&whole, now, out);
        }
        self.emit_pending(out);
    }

    /// Starts over at `offset` (after a truncation), dropping anything held back.
    pub fn reset(&mut self, offset: u64) {
        self.partial.clear();
        self.pending = None;
        self.read_to = offset;
        self.safe = offset;
    }

    fn cut_partial(&mut self, now: Instant, out: &mut Vec<Frame>) {
        let rest = self.partial.split_off(MAX_LINE_BYTES);
        let line = std::mem::replace(&mut self.partial, rest);
        self.cut_lines += 1;
        // `line` ends `partial.len()` bytes before read_to; `line` must see that end offset.
        let saved = self.read_to;
        self.read_to -= self.partial.len() as u64;
        self.line(&line, now, out);
        self.read_to = saved;
    }

    /// One complete line ending at `self.read_to`.
    fn line(&mut self, raw: &[u8], now: Instant, out: &mut Vec<Frame>) {
        let end = self.read_to;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        // Valid UTF-8 (nearly every line) is checked by the fast validator and borrowed.
        let text = match std::str::from_utf8(raw) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(raw),
        };
        if text.trim().is_empty() {
            match &mut self.pending {
                Some(p) => p.end = end,
                None => self.safe = end,
            }
            return;
        }
        let continues = !is_start(&self.multiline, &text);
        if let Some(p) = &mut self.pending
            && continues
            && p.text.len() + 1 + text.len() <= MAX_RECORD_BYTES
        {
            p.text.push('\n');
            p.text.push_str(&text);
            p.end = end;
            p.lines += 1;
            p.last_at = now;
            return;
        }
        self.emit_pending(out);
        self.pending = Some(Pending {
            text: text.into_owned(),
            end,
            lines: 1,
            last_at: now,
            read_unix_nanos: crate::telemetry::now_unix_nanos(),
        });
    }

    fn emit_pending(&mut self, out: &mut Vec<Frame>) {
        if let Some(p) = self.pending.take() {
            self.safe = p.end;
            out.push(Frame {
                text: p.text,
                end: p.end,
                lines: p.lines,
                read_unix_nanos: p.read_unix_nanos,
            });
        }
    }
}

/// Whether `line` starts a new record.
pub fn is_start(multiline: &Multiline, line: &str) -> bool {
    match multiline {
        Multiline::Default => {
            !(line.starts_with(char::is_whitespace) || line.starts_with("Caused by:"))
        }
        Multiline::StartPattern(regex) => regex.is_match(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one by one, then flushes as on idle; compares (text, end) of all frames.
    fn check(multiline: Multiline, chunks: &[&str], expected: &[(&str, u64)], safe: u64) {
        let now = Instant::now();
        let mut framer = Framer::new(0, multiline);
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk.as_bytes(), now, &mut out);
        }
        framer.flush_idle(
            now + Duration::from_secs(2),
            Duration::from_secs(1),
            &mut out,
        );
        let got: Vec<(&str, u64)> = out.iter().map(|f| (f.text.as_str(), f.end)).collect();
        assert_eq!(got, expected, "chunks {chunks:?}");
        assert_eq!(framer.safe_offset(), safe, "safe offset for {chunks:?}");
    }

    #[test]
    fn splits_lines_and_keeps_partial_tail() {
        check(Multiline::Default, &["a\nb\n"], &[("a", 2), ("b", 4)], 4);
        check(Multiline::Default, &["a\nb"], &[("a", 2)], 2);
        check(
            Multiline::Default,
            &["a", "b\n", "c\r\n"],
            &[("ab", 3), ("c", 6)],
            6,
        );
        check(Multiline::Default, &["\n\na\n\n"], &[("a", 5)], 5);
        check(Multiline::Default, &[""], &[], 0);
        check(Multiline::Default, &["é\n"], &[("é", 3)], 3);
    }

    #[test]
    fn joins_multiline_records() {
        let trace = "Exception in thread main\n\tat a.b(C.java:1)\n\tat d.e(F.java:2)\nCaused by: x\n  ... 3 more\nnext\n";
        check(
            Multiline::Default,
            &[trace],
            &[
                (
                    "Exception in thread main\n\tat a.b(C.java:1)\n\tat d.e(F.java:2)\nCaused by: x\n  ... 3 more",
                    87,
                ),
                ("next", 92),
            ],
            92,
        );
        // Split across reads, byte by byte.
        let bytes: Vec<String> = trace.chars().map(String::from).collect();
        let chunks: Vec<&str> = bytes.iter().map(String::as_str).collect();
        check(
            Multiline::Default,
            &chunks,
            &[
                (
                    "Exception in thread main\n\tat a.b(C.java:1)\n\tat d.e(F.java:2)\nCaused by: x\n  ... 3 more",
                    87,
                ),
                ("next", 92),
            ],
            92,
        );
        let dated = Multiline::StartPattern(regex::Regex::new(r"^\d{4}-").unwrap());
        check(
            dated,
            &["2024-01-01 a\nmore\n2024-01-02 b\n"],
            &[("2024-01-01 a\nmore", 18), ("2024-01-02 b", 31)],
            31,
        );
        // An orphan continuation line is a record of its own.
        check(
            Multiline::Default,
            &["  orphan\nx\n"],
            &[("  orphan", 9), ("x", 11)],
            11,
        );
    }

    #[test]
    fn pending_record_holds_the_safe_offset_back() {
        let now = Instant::now();
        let mut framer = Framer::new(10, Multiline::Default);
        let mut out = Vec::new();
        framer.push(b"first\nsecond\n  cont", now, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end, 16);
        assert_eq!(framer.safe_offset(), 16);
        assert_eq!(framer.read_offset(), 29);
        framer.flush_idle(
            now + Duration::from_millis(500),
            Duration::from_secs(1),
            &mut out,
        );
        assert_eq!(out.len(), 1, "not idle long enough");
        framer.finish(now, &mut out);
        assert_eq!(out[1].text, "second\n  cont");
        assert_eq!(out[1].lines, 2);
        assert_eq!(framer.safe_offset(), 29);
        assert!(framer.is_idle());
    }

    #[test]
    fn overlong_lines_are_cut() {
        let now = Instant::now();
        let mut framer = Framer::new(0, Multiline::Default);
        let mut out = Vec::new();
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        framer.push(&long, now, &mut out);
        framer.push(b"\n", now, &mut out);
        framer.finish(now, &mut out);
        assert_eq!(framer.cut_lines, 1);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].text.len(), MAX_LINE_BYTES);
        assert_eq!(out[0].end, MAX_LINE_BYTES as u64);
        assert_eq!(out[1].text.len(), 10);
        assert_eq!(out[1].end, MAX_LINE_BYTES as u64 + 11);
    }
}
