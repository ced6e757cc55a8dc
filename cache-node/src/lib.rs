//! xsite cache node: the store, the write-ahead log, the RESP server, the admin API,
//! configuration, and the composition of the node with the log shipper and consumer.

pub mod admin;
pub mod clients;
pub mod commands;
pub mod config;
pub mod connection;
pub mod demo;
pub mod engine;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod ops;
pub mod pubsub;
pub mod replay;
pub mod replication;
pub mod resp;
pub mod sentinel;
pub mod server;
pub mod session;
pub mod store;
pub mod topology;
pub mod wal;
