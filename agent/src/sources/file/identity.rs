//! File identity: whether the file found now is still the one a position was taken from, decided by one pure function ([`judge`]) over what was marked then and what is seen now.
//!
//! # The rule
//!
//! A position names a file by device and inode. Inodes are reused: a file deleted and created again at the same
//! path often gets the same number, and a file truncated and rewritten in place keeps it for sure. So a position
//! also carries a [`Mark`] of the file as it was read, and the file found now with that device and inode resumes
//! at the saved offset only if, in this order:
//!
//! 1. its birth time (`statx` `stx_btime`, through [`std::fs::Metadata::created`]) is the saved one, where the
//!    filesystem reports it both times; a re-created file is born later, whatever its bytes;
//! 2. it is at least as long as the saved offset;
//! 3. its first bytes (up to [`FINGERPRINT_BYTES`], fewer for a shorter file) have the saved checksum;
//! 4. the bytes just before the saved offset (up to [`TAIL_BYTES`]) have the saved checksum: a file re-created or
//!    rewritten with the same start-up banner differs here, where the lines read from the old file were.
//!
//! A file whose only change is growth passes all four and resumes exactly; any other file is new and is read from
//! its start (reading a line twice beats losing it). Positions written before the last two checks existed have no
//! birth time and no tail checksum: those checks are skipped for them, so an agent upgraded in place resumes as
//! before.
//!
//! What no rule here tells apart: a file rewritten in place (same inode, same birth time) or re-created on a
//! filesystem without birth times whose bytes are the same as the old file's in both checked ranges. Its lines
//! up to the offset are then the very bytes already shipped.

use std::os::unix::fs::FileExt;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

/// How many leading bytes identify a file's content (with its device and inode).
pub const FINGERPRINT_BYTES: usize = 256;
/// How many bytes just before an offset are checksummed to tell whether they are still the bytes read.
pub const TAIL_BYTES: usize = 1024;

/// A crc32 of `len` bytes of a file: its first bytes (`len` < [`FINGERPRINT_BYTES`] while the file is short), or
/// the bytes just before an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Fingerprint {
    /// Bytes covered.
    pub len: u32,
    /// crc32 of those bytes.
    pub crc: u32,
}

impl Fingerprint {
    /// Fingerprint of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Fingerprint {
        Fingerprint {
            len: bytes.len() as u32,
            crc: crc32fast::hash(bytes),
        }
    }

    /// Fingerprint of up to [`FINGERPRINT_BYTES`] leading bytes of `file`.
    pub fn of(file: &std::fs::File) -> std::io::Result<Fingerprint> {
        Self::of_len(file, FINGERPRINT_BYTES)
    }

    /// Fingerprint of up to `len` leading bytes (fewer if the file is shorter).
    pub fn of_len(file: &std::fs::File, len: usize) -> std::io::Result<Fingerprint> {
        let bytes = read_range(file, 0, len.min(FINGERPRINT_BYTES))?;
        Ok(Fingerprint::of_bytes(&bytes))
    }

    /// Fingerprint of the `len` bytes of `file` that end at `end`; `None` if the file ends before `end`.
    pub fn before(
        file: &std::fs::File,
        end: u64,
        len: u32,
    ) -> std::io::Result<Option<Fingerprint>> {
        let start = end.saturating_sub(u64::from(len));
        let bytes = read_range(file, start, (end - start) as usize)?;
        Ok((bytes.len() as u64 == end - start).then(|| Fingerprint::of_bytes(&bytes)))
    }

    /// Whether `file` still starts with the bytes this fingerprint covers.
    pub fn matches(&self, file: &std::fs::File) -> std::io::Result<bool> {
        let now = Self::of_len(file, self.len as usize)?;
        Ok(now == *self)
    }
}

/// Up to `len` bytes of `file` from `start` (fewer where the file ends).
fn read_range(file: &std::fs::File, start: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = file.read_at(&mut buf[filled..], start + filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

/// When `meta`'s file was created (nanoseconds since the Unix epoch): `statx`'s `stx_btime`. `None` where the
/// filesystem or kernel does not report it, or reports the epoch itself (an inode written without one).
pub fn birth_time(meta: &std::fs::Metadata) -> Option<u64> {
    let since = meta.created().ok()?.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_nanos())
        .ok()
        .filter(|nanos| *nanos > 0)
}

/// What a reader knew of a file at an offset: enough to tell later whether a file is still that one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    /// Every byte before it was read.
    pub offset: u64,
    /// The file's first bytes.
    pub head: Fingerprint,
    /// The bytes just before `offset` (`None`: not known, from an older checkpoint).
    pub tail: Option<Fingerprint>,
    /// Birth time, nanoseconds since the Unix epoch (`None`: not reported).
    pub born: Option<u64>,
}

/// The file found now, read over the ranges a [`Mark`] covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Size in bytes.
    pub size: u64,
    /// Birth time, nanoseconds since the Unix epoch (`None`: not reported).
    pub born: Option<u64>,
    /// Its first `mark.head.len` bytes (fewer if it is shorter).
    pub head: Fingerprint,
    /// The `mark.tail.len` bytes before `mark.offset` (`None`: the mark has no tail, or the file ends before).
    pub tail: Option<Fingerprint>,
}

impl Seen {
    /// Reads `file` (whose metadata is `meta`) over the ranges `mark` covers.
    pub fn read(
        file: &std::fs::File,
        meta: &std::fs::Metadata,
        mark: &Mark,
    ) -> std::io::Result<Seen> {
        let tail = match mark.tail {
            Some(tail) => Fingerprint::before(file, mark.offset, tail.len)?,
            None => None,
        };
        Ok(Seen {
            size: meta.len(),
            born: birth_time(meta),
            head: Fingerprint::of_len(file, mark.head.len as usize)?,
            tail,
        })
    }
}

/// Why a file is not the one a mark was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Born at another time: deleted and created again.
    Reborn,
    /// Shorter than the offset: truncated, or created again with less.
    Shorter,
    /// Its first bytes differ.
    Head,
    /// The bytes before the offset differ: rewritten, or created again with the same first bytes.
    Tail,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Change::Reborn => "born after the position was saved (deleted and created again)",
            Change::Shorter => "shorter than the saved offset (truncated or created again)",
            Change::Head => "its first bytes changed (rewritten or created again)",
            Change::Tail => {
                "the bytes before the saved offset changed (rewritten or created again with the same first bytes)"
            }
        })
    }
}

/// Whether the file `seen` now is still the one `mark` was taken from (`Ok`: resume at `mark.offset`); see the
/// module docs for the rule.
pub fn judge(mark: &Mark, seen: &Seen) -> Result<(), Change> {
    if let (Some(then), Some(now)) = (mark.born, seen.born)
        && then != now
    {
        return Err(Change::Reborn);
    }
    if seen.size < mark.offset {
        return Err(Change::Shorter);
    }
    if seen.head != mark.head {
        return Err(Change::Head);
    }
    if mark.tail.is_some() && seen.tail != mark.tail {
        return Err(Change::Tail);
    }
    Ok(())
}

/// The last bytes read from a file, kept so that the bytes before the offsets a reader may save or check (its
/// safe offset and its read offset) can be checksummed without reading the file again: the file may have changed
/// since.
#[derive(Debug, Default)]
pub struct Recent {
    /// File offset of `bytes[0]`.
    start: u64,
    bytes: Vec<u8>,
}

impl Recent {
    /// Bytes of the file that end at `end` (read from it when reading starts there).
    pub fn new(end: u64, bytes: Vec<u8>) -> Recent {
        Recent {
            start: end - bytes.len() as u64,
            bytes,
        }
    }

    /// Reads the up to [`TAIL_BYTES`] bytes of `file` before `offset`, where reading starts.
    /// If the file no longer reaches `offset`, nothing is kept (the bytes before `offset` are then unknown).
    pub fn read(file: &std::fs::File, offset: u64) -> std::io::Result<Recent> {
        let start = offset.saturating_sub(TAIL_BYTES as u64);
        let bytes = read_range(file, start, (offset - start) as usize)?;
        if bytes.len() as u64 != offset - start {
            return Ok(Recent::new(offset, Vec::new()));
        }
        Ok(Recent { start, bytes })
    }

    /// Offset just after the last byte kept.
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// Adds `chunk`, read at `at` (normally [`Recent::end`]; elsewhere, what was kept is dropped); keeps only what
    /// checking an offset at or after `keep_after` needs.
    pub fn push(&mut self, at: u64, chunk: &[u8], keep_after: u64) {
        if at != self.end() {
            *self = Recent::new(at, Vec::new());
        }
        let keep_from = keep_after.saturating_sub(TAIL_BYTES as u64);
        let chunk_start = at;
        if keep_from >= chunk_start {
            let skip = ((keep_from - chunk_start) as usize).min(chunk.len());
            self.bytes.clear();
            self.bytes.extend_from_slice(&chunk[skip..]);
            self.start = chunk_start + skip as u64;
        } else {
            if keep_from > self.start {
                self.bytes.drain(..(keep_from - self.start) as usize);
                self.start = keep_from;
            }
            self.bytes.extend_from_slice(chunk);
        }
    }

    /// The up to [`TAIL_BYTES`] bytes kept before `end`, if `end` is [`Recent::end`] (none otherwise).
    pub fn last(&self, end: u64) -> &[u8] {
        if end != self.end() {
            return &[];
        }
        &self.bytes[self.bytes.len().saturating_sub(TAIL_BYTES)..]
    }

    /// Fingerprint of the up to [`TAIL_BYTES`] bytes before `offset`; `None` if they are not all kept.
    pub fn before(&self, offset: u64) -> Option<Fingerprint> {
        let from = offset.saturating_sub(TAIL_BYTES as u64);
        (from >= self.start && offset <= self.end()).then(|| {
            Fingerprint::of_bytes(
                &self.bytes[(from - self.start) as usize..(offset - self.start) as usize],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A 300-byte start-up banner: three lines of 100 bytes.
    fn banner() -> String {
        (1..=3)
            .map(|i| {
                format!(
                    "{:-<99}\n",
                    format!("=== app 1.0 start-up banner line {i} ")
                )
            })
            .collect()
    }

    /// `n` numbered lines starting at `from`, tagged so that two runs of an app write different lines.
    fn lines(tag: &str, from: u32, n: u32) -> String {
        (from..from + n)
            .map(|i| format!("2024-05-01T10:00:{:02}Z {tag} request {i} served\n", i % 60))
            .collect()
    }

    /// Birth times (then, now).
    type Born = (Option<u64>, Option<u64>);
    /// (name, old content, new content, birth times, expected).
    type Case<'a> = (&'a str, &'a str, &'a str, Born, Result<(), Change>);

    /// The file was `old` with everything read (born at `born.0`), is now `new` (born at `born.1`): `expected`.
    fn check(old: &str, new: &str, born: Born, expected: Result<(), Change>) {
        let old = old.as_bytes();
        let offset = old.len();
        let mark = Mark {
            offset: offset as u64,
            head: Fingerprint::of_bytes(&old[..offset.min(FINGERPRINT_BYTES)]),
            tail: Some(Fingerprint::of_bytes(
                &old[offset.saturating_sub(TAIL_BYTES)..offset],
            )),
            born: born.0,
        };
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().write_all(new.as_bytes()).unwrap();
        let meta = tmp.as_file().metadata().unwrap();
        let seen = Seen {
            born: born.1,
            ..Seen::read(tmp.as_file(), &meta, &mark).unwrap()
        };
        assert_eq!(
            judge(&mark, &seen),
            expected,
            "old {} bytes, new {} bytes: {seen:?} against {mark:?}",
            old.len(),
            new.len()
        );
    }

    #[test]
    fn judge_tells_new_files_from_grown_ones() {
        let b = banner();
        // A 10-byte banner: the whole file is shorter than the fingerprint.
        let tiny = "BOOT v1.0\n";
        let file = |banner: &str, tag: &str, n: u32| format!("{banner}{}", lines(tag, 0, n));
        // The old file: the banner and lines tagged `a`; a new run of the app writes lines tagged `b`.
        let (a5, a20, a25, a100, a200) = (
            file(&b, "a", 5),
            file(&b, "a", 20),
            file(&b, "a", 25),
            file(&b, "a", 100),
            file(&b, "a", 200),
        );
        let (b1, b3, b5, b20) = (
            file(&b, "b", 1),
            file(&b, "b", 3),
            file(&b, "b", 5),
            file(&b, "b", 20),
        );
        let (ta2, ta9, ta40) = (file(tiny, "a", 2), file(tiny, "a", 9), file(tiny, "a", 40));
        let (tb1, tb20) = (file(tiny, "b", 1), file(tiny, "b", 20));
        let other = file("another banner\n", "b", 40);
        let unknown = (None, None);
        let same = (Some(7), Some(7));
        let reborn = (Some(7), Some(8));
        #[rustfmt::skip]
        let cases: [Case; 22] = [
            // Growth, from any length, resumes.
            ("grown", &a5, &a25, same, Ok(())),
            ("grown, no birth time", &a5, &a25, unknown, Ok(())),
            ("unchanged", &a5, &a5, same, Ok(())),
            ("grown past the tail window", &a100, &a200, unknown, Ok(())),
            ("short file grown", &ta2, &ta9, unknown, Ok(())),
            ("short file grown past the fingerprint", &ta2, &ta40, unknown, Ok(())),
            ("nothing read yet", "", &b, unknown, Ok(())),
            // Re-created with the same banner and more bytes than the offset (the case).
            ("re-created, same banner, longer", &a5, &b20, unknown, Err(Change::Tail)),
            ("re-created, same banner, longer, birth time", &a5, &b20, reborn, Err(Change::Reborn)),
            ("re-created, same banner, same length", &a5, &b5, unknown, Err(Change::Tail)),
            // Re-created shorter than the offset.
            ("re-created shorter", &a20, &b3, unknown, Err(Change::Shorter)),
            ("re-created empty", &a20, "", unknown, Err(Change::Shorter)),
            // Truncated and rewritten in place: same inode, same birth time.
            ("rewritten in place, same banner", &a5, &b20, same, Err(Change::Tail)),
            ("rewritten in place, same banner, shorter", &a20, &b1, same, Err(Change::Shorter)),
            ("rewritten in place, another banner", &a5, &other, same, Err(Change::Head)),
            // Files shorter than the fingerprint.
            ("short file re-created, same banner", &ta2, &tb20, unknown, Err(Change::Head)),
            ("short file rewritten, same banner, shorter", &ta2, &tb1, same, Err(Change::Shorter)),
            ("banner only, re-created with more", tiny, &tb20, reborn, Err(Change::Reborn)),
            ("long banner only, re-created with more", &b, &b20, reborn, Err(Change::Reborn)),
            // The one thing no check sees: identical bytes where checked, no birth time to tell (module docs).
            ("banner only, rewritten in place with more", tiny, &tb20, same, Ok(())),
            // A birth time known only once proves nothing; the bytes still decide.
            ("birth time unknown now", &a5, &b20, (Some(7), None), Err(Change::Tail)),
            ("birth time unknown then", &a5, &a20, (None, Some(8)), Ok(())),
        ];
        for (name, old, new, born, expected) in cases {
            eprintln!("case: {name}");
            check(old, new, born, expected);
        }
    }

    #[test]
    fn positions_from_before_tail_checksums_resume_as_before() {
        // An old checkpoint has no tail and no birth time: the first bytes and the length decide, as they did.
        let b = banner();
        let old = b.clone() + &lines("a", 0, 5);
        let mark = Mark {
            offset: old.len() as u64,
            head: Fingerprint::of_bytes(&old.as_bytes()[..FINGERPRINT_BYTES]),
            tail: None,
            born: None,
        };
        let cases = [
            (b.clone() + &lines("a", 0, 9), Ok(())),
            (b.clone() + &lines("b", 0, 1), Err(Change::Shorter)),
            ("x".repeat(2000), Err(Change::Head)),
        ];
        for (new, expected) in cases {
            let tmp = tempfile::NamedTempFile::new().unwrap();
            tmp.as_file().write_all(new.as_bytes()).unwrap();
            let meta = tmp.as_file().metadata().unwrap();
            let seen = Seen::read(tmp.as_file(), &meta, &mark).unwrap();
            assert_eq!(judge(&mark, &seen), expected, "{new:?}");
        }
    }

    #[test]
    fn recent_keeps_the_bytes_before_the_offsets_it_may_be_asked_for() {
        let text: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        // (chunk sizes, safe offset after all of them, offsets asked for and whether they are known)
        let check = |chunks: &[usize], start: u64, keep_after: u64, asked: &[(u64, bool)]| {
            let mut recent = Recent::new(
                start,
                text[start.saturating_sub(TAIL_BYTES as u64) as usize..start as usize].to_vec(),
            );
            let mut at = start as usize;
            for &n in chunks {
                recent.push(at as u64, &text[at..at + n], keep_after);
                at += n;
            }
            assert_eq!(recent.end(), at as u64);
            let last = &text[at
                .saturating_sub(TAIL_BYTES)
                .max(start.saturating_sub(TAIL_BYTES as u64) as usize)
                ..at];
            assert_eq!(recent.last(at as u64), last, "the last bytes before {at}");
            assert!(recent.last(at as u64 + 1).is_empty());
            for &(offset, known) in asked {
                let expected = known.then(|| {
                    Fingerprint::of_bytes(
                        &text[offset.saturating_sub(TAIL_BYTES as u64) as usize..offset as usize],
                    )
                });
                assert_eq!(
                    recent.before(offset),
                    expected,
                    "chunks {chunks:?} from {start}, offset {offset}"
                );
            }
        };
        check(&[], 0, 0, &[(0, true)]);
        check(&[10, 20], 0, 30, &[(30, true), (0, true), (31, false)]);
        check(
            &[3000],
            0,
            3000,
            &[(3000, true), (2000, false), (1976, false)],
        );
        check(
            &[3000],
            0,
            2000,
            &[(3000, true), (2000, true), (1975, false)],
        );
        check(
            &[3000, 100],
            0,
            2500,
            &[(3100, true), (2500, true), (1475, false)],
        );
        check(
            &[100, 100, 100],
            2000,
            2000,
            &[(2000, true), (2300, true), (2150, true)],
        );
        check(&[500], 100, 100, &[(100, true), (600, true)]);
    }

    #[test]
    fn fingerprint_tells_rewritten_files_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, "hello\n").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let fp = Fingerprint::of(&file).unwrap();
        assert_eq!(fp.len, 6);
        // Growing keeps the prefix.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[b'x'; 400])
            .unwrap();
        assert!(fp.matches(&file).unwrap());
        assert_eq!(
            Fingerprint::of(&file).unwrap().len,
            FINGERPRINT_BYTES as u32
        );
        // Truncated and rewritten: the prefix differs.
        std::fs::write(&path, "other\n").unwrap();
        assert!(!fp.matches(&file).unwrap());
    }

    #[test]
    fn birth_time_is_reported_or_cleanly_absent() {
        // Where the filesystem reports birth times (ext4, xfs, btrfs, tmpfs on recent kernels), a file created
        // again is born later; elsewhere both are `None` and the bytes decide.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, "a\n").unwrap();
        let first = birth_time(&std::fs::metadata(&path).unwrap());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"b\n")
            .unwrap();
        assert_eq!(
            birth_time(&std::fs::metadata(&path).unwrap()),
            first,
            "growth keeps the birth time"
        );
        // File times tick with the kernel's coarse clock: create the file again until a tick has passed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let second = loop {
            std::fs::remove_file(&path).unwrap();
            std::fs::write(&path, "a\n").unwrap();
            let second = birth_time(&std::fs::metadata(&path).unwrap());
            if first.is_none() || second != first || std::time::Instant::now() > deadline {
                break second;
            }
        };
        eprintln!("birth times on this filesystem: {first:?} then {second:?}");
        assert_eq!(first.is_some(), second.is_some());
        if let (Some(first), Some(second)) = (first, second) {
            assert!(
                second > first,
                "re-created file born at {second}, before or with the old one at {first}"
            );
        }
    }
}
