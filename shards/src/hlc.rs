//! Hybrid logical clock: 48 bits of Unix milliseconds, 16 bits of logical counter.
