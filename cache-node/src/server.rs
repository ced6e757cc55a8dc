//! The RESP server: accepts connections and bounds how many are served.
//!
//! - At most `connections_max` connections are served: a permit is taken before
//!   `accept`, so further clients wait in the listen backlog until one closes.
//! - Each connection is one task ([`crate::connection`] reads its requests and
//!   writes its replies) with a session of its own ([`crate::session`]); every
//!   session of the server shares the password and the client registry.
//! - Shutdown ([`CancellationToken`]): the server stops accepting and drops the
//!   listener; each connection finishes what it is executing and closes (see
//!   [`crate::connection`]). [`run`] returns when all have closed.

use bytes::Bytes;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::commands::CommandHandler;
use crate::connection::Connection;
pub use crate::connection::{ServerStats, ServerStatsSnapshot};
use crate::session::{Session, Shared};

/// First and longest wait after a failed `accept` (e.g. out of file descriptors), in
/// milliseconds.
pub const ACCEPT_BACKOFF_MS_MIN: u64 = 10;
pub const ACCEPT_BACKOFF_MS_MAX: u64 = 1_000;

/// What the RESP server is configured with.
#[derive(Clone)]
pub struct ServerSettings {
    /// Connections served at once; more wait in the listen backlog.
    pub connections_max: usize,
    /// Largest request (one command with its arguments), in bytes.
    pub request_bytes_max: usize,
    /// When set, clients must `AUTH` (or `HELLO … AUTH`) as `default` first.
    pub password: Option<String>,
    /// The server's connections, for the parts of the node that close them.
    pub clients: crate::clients::Clients,
    /// The pub/sub hub of the port (the engine's: keyspace notifications go there).
    pub hub: crate::pubsub::Hub,
}

impl fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSettings")
            .field("connections_max", &self.connections_max)
            .field("request_bytes_max", &self.request_bytes_max)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Serves RESP on `listener` until `cancel` fires and every connection has closed.
pub async fn run(
    listener: TcpListener,
    handler: Arc<dyn CommandHandler>,
    settings: ServerSettings,
    stats: Arc<ServerStats>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(settings.connections_max > 0, "connections_max must be at least 1");
    anyhow::ensure!(settings.request_bytes_max > 0, "request_bytes_max must be at least 1");
    let listen_addr = listener.local_addr()?;
    let permits = Arc::new(Semaphore::new(settings.connections_max.min(Semaphore::MAX_PERMITS)));
    let shared = Arc::new(Shared {
        password: settings.password.map(Bytes::from),
        clients: settings.clients.0.clone(),
        hub: settings.hub.clone(),
    });
    let tasks = TaskTracker::new();
    tracing::info!(addr = %listen_addr, connections_max = settings.connections_max, "resp server listening");

    loop {
        let permit = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit?,
        };
        let Some((stream, peer)) = accept(&listener, &cancel).await else {
            break;
        };
        let local = stream.local_addr().unwrap_or(listen_addr);
        let session = Session::new(shared.clone(), peer, local);
        let span = tracing::debug_span!("resp_client", client = session.id(), %peer);
        let connection = Connection::new(
            stream,
            session,
            handler.clone(),
            settings.request_bytes_max,
            stats.clone(),
            cancel.clone(),
        );
        tasks.spawn(connection.run(permit).instrument(span));
    }

    drop(listener);
    tasks.close();
    tracing::info!(connections = tasks.len(), "resp server stopping, waiting for connections");
    tasks.wait().await;
    tracing::info!("resp server stopped");
    Ok(())
}

/// Accepts the next connection, waiting out errors; `None` once cancelled.
async fn accept(listener: &TcpListener, cancel: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
    let mut backoff_ms = ACCEPT_BACKOFF_MS_MIN;
    loop {
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            result = listener.accept() => result,
        };
        match result {
            Ok(accepted) => return Some(accepted),
            Err(error) => {
                tracing::warn!(%error, backoff_ms, "accept failed");
                tokio::select! {
                    () = cancel.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                }
                backoff_ms = (backoff_ms * 2).min(ACCEPT_BACKOFF_MS_MAX);
            }
        }
    }
}
