//! Glob patterns for file sources: `*`, `?` and `[...]` inside path components, expanded by listing directories.

use std::path::{Path, PathBuf};

/// A parsed absolute glob pattern such as `/var/log/app/*.log`.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// Components after the leading `/`; empty ones (from `//`) removed.
    components: Vec<String>,
}

impl Pattern {
    /// Parses a pattern; `**` and unclosed `[` are refused with a message saying so.
    pub fn new(text: &str) -> Result<Pattern, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("`{text}` must be an absolute path pattern"));
        };
        let components: Vec<String> = rest
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_owned)
            .collect();
        if components.is_empty() {
            return Err(format!("`{text}` names no file"));
        }
        for component in &components {
            if component.contains("**") {
                return Err(format!(
                    "`{text}`: `**` is not supported; use one `*` per directory level"
                ));
            }
            if component == ".." {
                return Err(format!("`{text}`: `..` is not allowed"));
            }
            let mut open = false;
            for c in component.chars() {
                match c {
                    '[' if !open => open = true,
                    ']' if open => open = false,
                    _ => {}
                }
            }
            if open {
                return Err(format!("`{text}`: unclosed `[`"));
            }
        }
        Ok(Pattern { components })
    }

    /// Whether `path` (absolute) matches, component by component.
    pub fn matches(&self, path: &Path) -> bool {
        let Ok(rest) = path.strip_prefix("/") else {
            return false;
        };
        let names: Vec<&str> = rest
            .components()
            .filter_map(|c| c.as_os_str().to_str())
            .collect();
        names.len() == self.components.len()
            && self
                .components
                .iter()
                .zip(&names)
                .all(|(p, n)| wildcard_match(p, n))
    }

    /// The directory to watch for the files this pattern matches: the longest prefix without a wildcard, and
    /// whether the files may lie deeper than directly in it (a wildcard in a directory component).
    pub fn watch_dir(&self) -> (PathBuf, bool) {
        let mut dir = PathBuf::from("/");
        let parents = &self.components[..self.components.len() - 1];
        for component in parents {
            if has_wildcard(component) {
                return (dir, true);
            }
            dir.push(component);
        }
        (dir, false)
    }

    /// The regular files that match now, sorted. Unreadable directories are skipped.
    pub fn expand(&self) -> Vec<PathBuf> {
        let mut current = vec![PathBuf::from("/")];
        for (i, component) in self.components.iter().enumerate() {
            let last = i + 1 == self.components.len();
            let mut next = Vec::new();
            for dir in &current {
                if !has_wildcard(component) {
                    next.push(dir.join(component));
                    continue;
                }
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    // Like shells, a wildcard does not match a leading dot.
                    if name.starts_with('.') && !component.starts_with('.') {
                        continue;
                    }
                    if wildcard_match(component, name) {
                        next.push(entry.path());
                    }
                }
            }
            if !last {
                next.retain(|p| p.is_dir());
            }
            current = next;
        }
        current.retain(|p| is_regular_file(p));
        current.sort();
        current.dedup();
        current
    }
}

fn is_regular_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

fn has_wildcard(component: &str) -> bool {
    component.contains(['*', '?', '['])
}

/// Whether `name` matches the single-component wildcard `pattern` (`*`, `?`, `[abc]`, `[a-z]`, `[!x]`).
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with backtracking to the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, len)) = class_match(&p[pi..], n[ni])
                        && matched
                    {
                        pi += len;
                        ni += 1;
                        continue;
                    }
                }
                c if c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `p[0] == '['`; returns (matched, class length).
fn class_match(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, name: &str, expected: bool) {
        assert_eq!(
            wildcard_match(pattern, name),
            expected,
            "{pattern:?} vs {name:?}"
        );
    }

    #[test]
    fn wildcards() {
        check("*.log", "app.log", true);
        check("*.log", "app.log.1", false);
        check("*.log*", "app.log.1", true);
        check("app-?.log", "app-1.log", true);
        check("app-?.log", "app-12.log", false);
        check("app-[0-9].log", "app-7.log", true);
        check("app-[!0-9].log", "app-7.log", false);
        check("app-[!0-9].log", "app-x.log", true);
        check("*", "", true);
        check("a*b*c", "aXbYbZc", true);
        check("a*b*c", "aXbYbZ", false);
        check("exact", "exact", true);
        check("exact", "exacT", false);
    }

    #[test]
    fn whole_paths_match() {
        let p = Pattern::new("/var/log/*/app-?.log").unwrap();
        assert!(p.matches(Path::new("/var/log/x/app-1.log")));
        assert!(!p.matches(Path::new("/var/log/app-1.log")));
        assert!(!p.matches(Path::new("/var/log/x/y/app-1.log")));
        assert!(!p.matches(Path::new("relative/app-1.log")));
    }

    #[test]
    fn patterns_are_validated() {
        assert!(Pattern::new("/var/log/*.log").is_ok());
        assert!(Pattern::new("var/log").is_err());
        assert!(Pattern::new("/var/**/x").is_err());
        assert!(Pattern::new("/var/[ab/x").is_err());
        assert!(Pattern::new("/").is_err());
    }

    #[test]
    fn expand_lists_matching_regular_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("a/sub")).unwrap();
        std::fs::create_dir_all(root.join("b")).unwrap();
        for f in ["a/x.log", "a/y.txt", "b/z.log", "a/.hidden.log"] {
            std::fs::write(root.join(f), "1").unwrap();
        }
        std::fs::create_dir_all(root.join("a/dir.log")).unwrap();
        let pattern = Pattern::new(&format!("{}/*/*.log", root.display())).unwrap();
        assert_eq!(
            pattern.expand(),
            vec![root.join("a/x.log"), root.join("b/z.log")]
        );
    }
}
