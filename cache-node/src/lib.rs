//! xsite cache node: the store, the write-ahead log, the RESP server, the admin API,
//! configuration, and the composition of the node with the log shipper and consumer.

pub mod resp;
pub mod wal;
