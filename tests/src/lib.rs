//! End-to-end tests for Gantry live in `tests/e2e/` (one test binary, `e2e`); this crate has no library code.
