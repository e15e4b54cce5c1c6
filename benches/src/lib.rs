//! Benchmarks for refuge (see BENCHMARKS.md).
