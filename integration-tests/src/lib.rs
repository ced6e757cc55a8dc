//! Harnesses for xsite's multi-site suites: real tansu brokers and `xsite node`
//! processes on loopback ports ([`procs`]).

pub mod procs;
