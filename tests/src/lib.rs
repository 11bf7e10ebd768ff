//! End-to-end tests for Gantry live in `tests/tests/`; this crate has no library code.
