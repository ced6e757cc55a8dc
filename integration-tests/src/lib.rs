//! Harnesses for xsite's multi-site suites: real tansu brokers and `xsite node`
//! processes on loopback ports ([`procs`]), sites as containers on private Docker
//! networks ([`containers`]), and LazyFS mounts for power-loss tests ([`lazyfs`]);
//! a mixed client load and the checker of what survives it ([`load`]), on what a
//! client observes of a cache ([`contents`]).

pub mod containers;
pub mod contents;
pub mod lazyfs;
pub mod load;
pub mod procs;
