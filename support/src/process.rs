//! Process-wide resources: the open-files limit (`RLIMIT_NOFILE`), raised to what the system allows at start.

/// Raises the soft limit of open files to the hard limit and returns the soft limit in force afterwards (the
/// usual soft limit, 1024, is far below what a server with many connections and index files needs). Failing to
/// raise it is not an error: the limit stays and is returned.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// The soft limit of open files in force (1024 when it cannot be read).
pub fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_raised_to_the_hard_limit_or_kept() {
        let before = open_files_limit();
        let after = raise_open_files_limit();
        assert!(after >= before);
        assert_eq!(open_files_limit(), after);
    }
}
