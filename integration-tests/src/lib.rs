//! Harnesses for xsite's multi-site suites: real tansu brokers and `xsite node`
//! processes on loopback ports ([`procs`]), and sites as containers on private
//! Docker networks ([`containers`]).

pub mod containers;
pub mod procs;
