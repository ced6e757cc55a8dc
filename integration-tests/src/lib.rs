//! Harnesses for xsite's multi-site suites: real tansu brokers and `xsite node`
//! processes on loopback ports ([`procs`]), sites as containers on private Docker
//! networks ([`containers`]), and LazyFS mounts for power-loss tests ([`lazyfs`]).

pub mod containers;
pub mod lazyfs;
pub mod procs;
