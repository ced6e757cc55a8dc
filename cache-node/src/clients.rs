//! The client registry: every connection open now, as `CLIENT LIST` shows it, and
//! the source of client ids. Each session registers itself when it starts,
//! publishes what changes (`SELECT`, `HELLO`, `CLIENT SETNAME`…), and is removed
//! when it ends.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::resp::RESP2;

/// What `CLIENT LIST` shows of a connection.
#[derive(Clone, Debug)]
pub(crate) struct ClientInfo {
    pub(crate) id: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) laddr: SocketAddr,
    pub(crate) name: Bytes,
    pub(crate) db: usize,
    pub(crate) proto: u8,
    pub(crate) lib_name: Bytes,
    pub(crate) lib_ver: Bytes,
    pub(crate) created: Instant,
}

impl ClientInfo {
    /// One line of `CLIENT LIST` (without the newline), fields as Redis names them.
    pub(crate) fn line(&self) -> String {
        format!(
            "id={} addr={} laddr={} name={} age={} flags=N db={} user=default resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            String::from_utf8_lossy(&self.name),
            self.created.elapsed().as_secs(),
            self.db,
            self.proto,
            String::from_utf8_lossy(&self.lib_name),
            String::from_utf8_lossy(&self.lib_ver),
        )
    }
}

/// The connections open now, for `CLIENT LIST`, and the source of client ids.
#[derive(Default)]
pub(crate) struct ClientRegistry {
    id_last: AtomicU64,
    clients: Mutex<BTreeMap<u64, ClientInfo>>,
    /// Per client: cancelled to close its connection ([`ClientRegistry::close_db`]).
    closers: Mutex<BTreeMap<u64, CancellationToken>>,
}

impl ClientRegistry {
    /// A new client with the next id: database 0, RESP2, no name.
    pub(crate) fn register(&self, addr: SocketAddr, laddr: SocketAddr) -> ClientInfo {
        let info = ClientInfo {
            id: self.id_last.fetch_add(1, Ordering::Relaxed) + 1,
            addr,
            laddr,
            name: Bytes::new(),
            db: 0,
            proto: RESP2,
            lib_name: Bytes::new(),
            lib_ver: Bytes::new(),
            created: Instant::now(),
        };
        self.lock().insert(info.id, info.clone());
        info
    }

    /// What closes client `id`'s connection when cancelled.
    pub(crate) fn closer(&self, id: u64) -> CancellationToken {
        let token = CancellationToken::new();
        self.closers.lock().unwrap_or_else(|p| p.into_inner()).insert(id, token.clone());
        token
    }

    /// Closes every client connection whose selected database is `db` (as Sentinel's
    /// `CLIENT KILL TYPE normal` does to a demoted master, so that pools re-resolve);
    /// returns how many.
    pub(crate) fn close_db(&self, db: usize) -> usize {
        let ids: Vec<u64> = self.lock().values().filter(|c| c.db == db).map(|c| c.id).collect();
        let closers = self.closers.lock().unwrap_or_else(|p| p.into_inner());
        ids.iter().filter_map(|id| closers.get(id)).inspect(|t| t.cancel()).count()
    }

    /// Closes every client connection; returns how many.
    pub(crate) fn close_all(&self) -> usize {
        let closers = self.closers.lock().unwrap_or_else(|p| p.into_inner());
        closers.values().inspect(|t| t.cancel()).count()
    }

    pub(crate) fn update(&self, info: &ClientInfo) {
        self.lock().insert(info.id, info.clone());
    }

    pub(crate) fn remove(&self, id: u64) {
        self.lock().remove(&id);
        self.closers.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// The `CLIENT LIST` lines of every client, or of those in `ids`.
    pub(crate) fn lines(&self, ids: Option<&[u64]>) -> String {
        let clients = self.lock();
        let mut out = String::new();
        for info in clients.values() {
            if ids.is_some_and(|ids| !ids.contains(&info.id)) {
                continue;
            }
            out.push_str(&info.line());
            out.push('\n');
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClientInfo>> {
        // The map stays consistent even if a holder panicked: every update is one insert.
        self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The connections of a RESP server, for the parts of the node that must close them
/// (a demotion, a self-fence: see `Engine::close_clients`).
#[derive(Clone, Default)]
pub struct Clients(pub(crate) Arc<ClientRegistry>);

impl Clients {
    /// Closes every connection whose selected database is `db`; returns how many.
    pub fn close_db(&self, db: usize) -> usize {
        self.0.close_db(db)
    }

    /// Closes every connection; returns how many.
    pub fn close_all(&self) -> usize {
        self.0.close_all()
    }
}
