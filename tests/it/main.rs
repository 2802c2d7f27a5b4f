//! Integration tests: the built binary, run for real.
