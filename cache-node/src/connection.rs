//! One client connection: reads pipelined requests off the socket, runs them in
//! order through [`crate::commands::dispatch`] (which holds the order of checks:
//! arity, authentication, what runs the command) on the connection's
//! [`Session`], and writes the replies.
//!
//! - It executes every whole request in its read buffer in order, encodes the
//!   replies into one write buffer and writes them together (earlier when
//!   [`REPLY_FLUSH_BYTES`] are buffered), then reads again. The replies of writes
//!   wait until the writes are durable; a pipeline's writes share one group commit.
//! - The read buffer is bounded: one partial request of at most `request_bytes_max`
//!   (see [`crate::resp`] for the limits) plus one read.
//! - A client with subscriptions gets its messages ([`crate::pubsub`]) whenever it
//!   waits for a request, and before each reply not waiting on durability (so its
//!   own command's keyspace notifications precede the reply, as in Redis; a
//!   subscription's reply precedes its messages). One the hub disconnected for
//!   falling behind is closed, even in the middle of a blocked write.
//! - Shutdown ([`CancellationToken`]): a connection waiting for a request closes at
//!   once; one executing a command finishes it, writes the replies it has (within
//!   [`SHUTDOWN_WRITE_GRACE_MS`]) and closes.
//!
//! The counters every connection keeps ([`ServerStats`]) are here too.

use bytes::BytesMut;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::commands::{dispatch, CommandHandler, Reply};
use crate::resp::{encode, Frame, RequestDecoder, INLINE_BYTES_MAX};
use crate::session::Session;

/// Bytes of free space made in the read buffer before each read.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Replies are written as soon as this many bytes are buffered, even mid-batch.
pub const REPLY_FLUSH_BYTES: usize = 64 * 1024;
/// Commands of one pipeline executed before their writes are waited for and their
/// replies sent.
pub const PIPELINE_PENDING_MAX: usize = 1024;
/// An idle connection gives back a buffer grown beyond this, in bytes.
pub const BUFFER_KEEP_BYTES: usize = 1024 * 1024;
/// Once shutdown has started, how long a connection may still take to write the
/// replies it has, in milliseconds.
pub const SHUTDOWN_WRITE_GRACE_MS: u64 = 5_000;

/// Counters of the RESP server, shared with whoever exports metrics.
#[derive(Debug, Default)]
pub struct ServerStats {
    connections_accepted: AtomicU64,
    connections_current: AtomicU64,
    commands_processed: AtomicU64,
    protocol_errors: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStatsSnapshot {
    /// Connections accepted since start (`xsite_resp_connections_accepted_total`).
    pub connections_accepted: u64,
    /// Connections open now (`xsite_resp_connections`).
    pub connections_current: u64,
    /// Commands executed, connection commands included
    /// (`xsite_resp_commands_processed_total`).
    pub commands_processed: u64,
    /// Connections closed for breaking the protocol (`xsite_resp_protocol_errors_total`).
    pub protocol_errors: u64,
}

impl ServerStats {
    pub fn snapshot(&self) -> ServerStatsSnapshot {
        ServerStatsSnapshot {
            connections_accepted: self.connections_accepted.load(Ordering::Relaxed),
            connections_current: self.connections_current.load(Ordering::Relaxed),
            commands_processed: self.commands_processed.load(Ordering::Relaxed),
            protocol_errors: self.protocol_errors.load(Ordering::Relaxed),
        }
    }

    fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_current.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }
}

/// Counts a connection as current while it lives.
struct OpenConnection(Arc<ServerStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_current.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One client connection.
pub(crate) struct Connection {
    stream: TcpStream,
    session: Session,
    /// Runs every command that is not a connection command.
    handler: Arc<dyn CommandHandler>,
    decoder: RequestDecoder,
    request_bytes_max: usize,
    stats: Arc<ServerStats>,
    cancel: CancellationToken,
    /// Replies of the pipeline being executed, waiting for their writes to be durable.
    pending: Vec<(Reply, u8)>,
}

/// Why a connection ends without an I/O error.
enum Close {
    /// The client closed, or sent `QUIT`, or broke the protocol.
    Client,
    Shutdown,
    /// The node closed it (a demotion, a self-fence: its pool re-resolves; a
    /// subscriber that fell behind).
    Closed,
}

/// Encodes a reply's frames.
fn encode_reply(frame: &Frame, more: &[Frame], proto: u8, buf: &mut BytesMut) {
    encode(frame, proto, buf);
    more.iter().for_each(|f| encode(f, proto, buf));
}

/// Whether a request is a subscription (its reply goes before the messages it
/// subscribed to, which the connection delivers after it).
fn subscribes(name: &[u8]) -> bool {
    [&b"subscribe"[..], b"psubscribe", b"ssubscribe"].iter().any(|s| name.eq_ignore_ascii_case(s))
}

impl Connection {
    /// A connection of `session` on `stream`, taking requests of at most
    /// `request_bytes_max` bytes.
    pub(crate) fn new(
        stream: TcpStream,
        session: Session,
        handler: Arc<dyn CommandHandler>,
        request_bytes_max: usize,
        stats: Arc<ServerStats>,
        cancel: CancellationToken,
    ) -> Connection {
        let decoder = RequestDecoder::new(request_bytes_max);
        Connection { stream, session, handler, decoder, request_bytes_max, stats, cancel, pending: Vec::new() }
    }

    /// Serves the client until it leaves or shutdown; `permit` is its place under
    /// the server's `connections_max`.
    pub(crate) async fn run(mut self, permit: OwnedSemaphorePermit) {
        let _permit = permit;
        let _open = self.stats.connection_opened();
        if let Err(error) = self.stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        tracing::debug!("client connected");
        let mut read_buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        let mut write_buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        match self.serve(&mut read_buf, &mut write_buf).await {
            Ok(close) => {
                // Replies are out; closing our side sends FIN rather than a reset.
                let _ = self.write(&mut write_buf).await;
                let cancel = self.cancel.clone();
                let _ = with_grace(&cancel, self.stream.shutdown()).await;
                match close {
                    Close::Client => tracing::debug!("client disconnected"),
                    Close::Shutdown => tracing::debug!("client closed for shutdown"),
                    Close::Closed => tracing::debug!("client closed by the node"),
                }
            }
            Err(error) => tracing::debug!(%error, "client connection failed"),
        }
    }

    /// Reads, executes and replies until the connection is to be closed. Replies
    /// still in `write_buf` when it returns `Ok` are to be written before closing.
    async fn serve(&mut self, read_buf: &mut BytesMut, write_buf: &mut BytesMut) -> io::Result<Close> {
        loop {
            if let Some(close) = self.execute_buffered(read_buf, write_buf).await? {
                return Ok(close);
            }
            if self.deliver(write_buf) {
                return Ok(Close::Closed);
            }
            debug_assert!(
                read_buf.len() <= self.request_bytes_max.max(INLINE_BYTES_MAX) + 2,
                "read buffer holds more than one partial request: {} bytes",
                read_buf.len()
            );
            self.write(write_buf).await?;
            if read_buf.is_empty() && read_buf.capacity() > BUFFER_KEEP_BYTES {
                *read_buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
            }
            read_buf.reserve(READ_CHUNK_BYTES);
            let closer = self.session.closer();
            let subscriptions = self.session.subscriptions();
            let messages = async {
                match subscriptions {
                    Some(s) => s.ready().await,
                    None => std::future::pending().await,
                }
            };
            let read = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Ok(Close::Shutdown),
                () = closer.cancelled() => return Ok(Close::Closed),
                () = messages => continue,
                read = self.stream.read_buf(read_buf) => read?,
            };
            if read == 0 {
                return Ok(Close::Client);
            }
        }
    }

    /// Executes every whole request in `read_buf`, in order, encoding the replies.
    /// `Some` when the connection is to be closed.
    async fn execute_buffered(
        &mut self,
        read_buf: &mut BytesMut,
        write_buf: &mut BytesMut,
    ) -> io::Result<Option<Close>> {
        loop {
            if self.cancel.is_cancelled() {
                self.settle(write_buf).await;
                return Ok(Some(Close::Shutdown));
            }
            if self.session.closer().is_cancelled() {
                self.settle(write_buf).await;
                return Ok(Some(Close::Closed));
            }
            self.decoder.set_authenticated(self.session.authenticated());
            let args = match self.decoder.decode(read_buf) {
                Ok(Some(args)) => args,
                Ok(None) => {
                    self.settle(write_buf).await;
                    return Ok(None);
                }
                Err(error) => {
                    self.settle(write_buf).await;
                    self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, "protocol error, closing connection");
                    if let Some(reply) = error.reply() {
                        encode(&reply, self.session.proto(), write_buf);
                    }
                    return Ok(Some(Close::Client));
                }
            };
            let reply = dispatch(&mut self.session, &*self.handler, &args).await;
            self.stats.commands_processed.fetch_add(1, Ordering::Relaxed);
            let close = reply.close;
            if self.pending.is_empty() && !subscribes(&args[0]) {
                // Messages go out as they were published: those published while the
                // command ran (its own keyspace notifications) before its reply.
                self.deliver(write_buf);
            }
            if self.pending.is_empty() && reply.durable.is_none() {
                encode_reply(&reply.frame, &reply.more, self.session.proto(), write_buf);
            } else {
                // Encoded later, with the protocol in force now (HELLO may change it).
                self.pending.push((reply, self.session.proto()));
            }
            if close {
                self.settle(write_buf).await;
                return Ok(Some(Close::Client));
            }
            if self.pending.len() >= PIPELINE_PENDING_MAX {
                self.settle(write_buf).await;
            }
            if write_buf.len() >= REPLY_FLUSH_BYTES {
                self.write(write_buf).await?;
            }
        }
    }

    /// Waits until the writes of every pending reply are durable, in order, and
    /// encodes the replies (a failed wait replaces its reply with the error).
    async fn settle(&mut self, write_buf: &mut BytesMut) {
        for (reply, proto) in self.pending.drain(..) {
            let (frame, more) = match reply.durable {
                None => (reply.frame, reply.more),
                Some(wait) => match wait.await {
                    Ok(()) => (reply.frame, reply.more),
                    Err(error) => (Frame::Error(error), Vec::new()),
                },
            };
            encode_reply(&frame, &more, proto, write_buf);
        }
    }

    /// Encodes the messages queued for this client's subscriptions. `true`: the
    /// hub disconnected it for falling behind (`pubsub.subscriber_buffer_*`).
    fn deliver(&mut self, write_buf: &mut BytesMut) -> bool {
        let Some(subscriptions) = self.session.subscriptions() else { return false };
        if subscriptions.is_killed() {
            return true;
        }
        let proto = self.session.proto();
        subscriptions.take().iter().for_each(|f| encode(f, proto, write_buf));
        false
    }

    /// Writes and empties `buf`.
    async fn write(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let cancel = self.cancel.clone();
        let stream = &mut self.stream;
        let subscriptions = self.session.subscriptions();
        // A subscriber that does not read is disconnected even while a write to
        // it is blocked.
        let killed = async {
            match subscriptions {
                Some(s) => s.killed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            written = with_grace(&cancel, stream.write_all(buf)) => written?,
            () = killed => return Err(io::Error::other("a subscriber that fell behind was disconnected")),
        }
        buf.clear();
        if buf.capacity() > BUFFER_KEEP_BYTES {
            *buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        }
        Ok(())
    }
}

/// Runs an I/O operation to completion, but gives up [`SHUTDOWN_WRITE_GRACE_MS`]
/// after shutdown starts, so that a client that does not read cannot hold it up.
async fn with_grace<T>(
    cancel: &CancellationToken,
    operation: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let grace_over = async {
        cancel.cancelled().await;
        tokio::time::sleep(Duration::from_millis(SHUTDOWN_WRITE_GRACE_MS)).await;
    };
    tokio::select! {
        result = operation => result,
        () = grace_over => Err(io::Error::new(io::ErrorKind::TimedOut, "shutdown grace period over")),
    }
}
