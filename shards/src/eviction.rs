//! Eviction policies: S3-FIFO (used) and LRU (baseline for benchmarks).
