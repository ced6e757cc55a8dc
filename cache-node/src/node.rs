//! A node: the engine, the RESP server, the admin API, and — when `[kafka]` is
//! configured — the log shipper and one consumer per remote site.

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::engine::watermark::{self, LocalWatermark};
use crate::engine::Engine;
use crate::replication::failover::Failover;
use crate::replication::{self, Replication};
use crate::sentinel::view::Directory;
use crate::sentinel::{self, Sentinel};
use crate::server::{self, ServerSettings, ServerStats};
use crate::topology::Roles;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A started node. Dropping it does not stop it: cancel the token, then [`RunningNode::wait`].
pub struct RunningNode {
    pub resp_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// The Sentinel port, when `[sentinel] port` is set.
    pub sentinel_addr: Option<SocketAddr>,
    /// Which site each master name designates (see [`crate::sentinel::view`]).
    pub directory: Arc<Directory>,
    pub engine: Arc<Engine>,
    pub roles: Arc<Roles>,
    pub replication: Option<Arc<Replication>>,
    /// Automatic failover of the active-passive caches (with replication).
    pub failover: Option<Arc<Failover>>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<anyhow::Result<()>>,
}

/// Start a node and return once it serves clients.
pub async fn start(config: Config, cancel: CancellationToken) -> anyhow::Result<RunningNode> {
    let started = std::time::Instant::now();
    let db =
        sled::open(config.sled_dir()).with_context(|| format!("opening sled at {}", config.sled_dir().display()))?;
    // LSNs the shipper has named to Kafka must never be issued again.
    let shipped = xsite_log_shipper::ShipCheckpoint::open(&db).context("reading the shipper checkpoint")?.acked();
    let engine = Engine::open_after(&config, crate::wal::Lsn(shipped)).await.context("opening the store")?;
    engine.keep_promises(watermark::Promises::open(&db).context("opening the node's promises in sled")?);
    let roles = Arc::new(Roles::open(&config, &db, engine.clone())?);
    let replication = match &config.kafka {
        Some(_) => {
            replication::create_topics(&config).await?;
            Some(Replication::start(&config, engine.clone(), roles.clone(), &db, cancel.clone())?)
        }
        None => None,
    };
    if let Some(r) = &replication {
        engine.set_remotes(r.consumer_stats.clone());
    }
    let failover = match &replication {
        Some(r) => Some(Arc::new(
            Failover::new(&config, engine.clone(), roles.clone(), r.clone(), &db)
                .context("opening the failover votes in sled")?,
        )),
        None => None,
    };
    let mut tasks = vec![tokio::spawn({
        let (engine, cancel) = (engine.clone(), cancel.clone());
        async move { engine.run_maintenance(cancel).await }
    })];
    // With replication the watermark follows what Kafka acknowledged (Replication
    // tracks it); alone, what the WAL made durable.
    let local = replication.is_none().then(|| {
        let mark = Arc::new(LocalWatermark::default());
        let wal = engine.wal().clone();
        let covered = Box::new(move || wal.durable_lsn());
        tasks.push(tokio::spawn(watermark::track(engine.clone(), covered, mark.clone(), cancel.clone())));
        mark
    });
    if let Some(f) = &failover {
        tasks.push(tokio::spawn(f.clone().run(cancel.clone())));
    }
    tasks.push(tokio::spawn(collect_tombstones(
        config.clone(),
        engine.clone(),
        replication.clone(),
        local,
        cancel.clone(),
    )));
    let addr = format!("{}:{}", config.server.bind, config.server.port);
    let listener =
        tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding the RESP port {addr}"))?;
    let resp_addr = listener.local_addr()?;
    engine.set_announce(config.announce_host(), config.server.announce_port.unwrap_or(resp_addr.port()));
    // The Sentinel port's events: a hub of its own, not the data port's.
    let hub = crate::pubsub::Hub::default();
    let directory = Arc::new(Directory::new(engine.clone(), replication.clone(), hub.clone()));
    let sentinel_addr = match config.sentinel.port {
        Some(port) => {
            let addr = format!("{}:{port}", config.server.bind);
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("binding the Sentinel port {addr}"))?;
            let bound = listener.local_addr()?;
            directory.evaluate(std::time::Instant::now());
            tasks.push(tokio::spawn(directory.clone().run(cancel.clone())));
            let announced = config.sentinel.announce_port.unwrap_or(bound.port());
            let sentinel = Arc::new(Sentinel::new(directory.clone(), hub.clone(), &config, announced));
            tasks.push(tokio::spawn(sentinel::serve(
                listener,
                sentinel,
                config.sentinel.connections_max,
                cancel.clone(),
            )));
            Some(bound)
        }
        None => None,
    };
    let clients = crate::clients::Clients::default();
    engine.set_clients(clients.clone());
    let settings = ServerSettings {
        connections_max: config.server.connections_max,
        request_bytes_max: config.server.request_bytes_max,
        password: config.server.password.clone(),
        clients: clients.clone(),
        hub: engine.hub().clone(),
    };
    let server_stats = Arc::new(ServerStats::default());
    let server = tokio::spawn(server::run(listener, engine.clone(), settings, server_stats.clone(), cancel.clone()));
    let admin_addr = if config.server.admin_port.is_some() {
        let state = AdminState {
            config: config.clone(),
            engine: engine.clone(),
            roles: roles.clone(),
            replication: replication.clone(),
            server: server_stats,
            directory: directory.clone(),
            failover: failover.clone(),
        };
        let (addr, task) = admin::serve(state, cancel.clone()).await?;
        tasks.push(task);
        Some(addr)
    } else {
        None
    };
    tracing::info!(site = %config.site, resp = %resp_addr, admin = ?admin_addr, sentinel = ?sentinel_addr, replication = replication.is_some(), elapsed_ms = started.elapsed().as_millis() as u64, "node ready");
    Ok(RunningNode {
        resp_addr,
        admin_addr,
        sentinel_addr,
        directory,
        engine,
        roles,
        replication,
        failover,
        cancel,
        tasks,
        server,
    })
}

impl RunningNode {
    /// Wait until the token is cancelled, then stop everything cleanly: the server
    /// stops accepting and finishes commands in flight, consumers and the shipper
    /// stop and save their positions, a last snapshot is taken, the WAL is synced.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.cancel.cancelled().await;
        let served = self.server.await;
        if let Some(r) = &self.replication {
            r.join().await;
        }
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        match self.engine.snapshot().await {
            Ok(lsn) => tracing::info!(lsn = %lsn, "final snapshot taken"),
            Err(err) => tracing::warn!(error = %err, "final snapshot failed; the wal still has everything"),
        }
        if let Err(err) = self.engine.wal().sync().await {
            tracing::error!(error = %err, "final wal sync failed");
        }
        tracing::info!("node stopped");
        served?.map_err(|e| e.context("RESP server"))
    }
}

/// Forget tombstones (and expired records) below the floor every site has passed
/// (with no replication: this site's own watermark), every `tombstone_gc_interval_ms`.
async fn collect_tombstones(
    config: Config,
    engine: Arc<Engine>,
    replication: Option<Arc<Replication>>,
    local: Option<Arc<LocalWatermark>>,
    cancel: CancellationToken,
) {
    let interval = Duration::from_millis(config.store.tombstone_gc_interval_ms.max(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let floor = match (&replication, &local) {
            (Some(r), _) => r.gc_floor(),
            (None, Some(local)) => local.get(),
            (None, None) => None,
        };
        let Some(floor) = floor else { continue };
        // On disk before anything goes below it: after a restart an INCR still
        // counts from nothing after it, as it would have before.
        if let Some(promises) = engine.promises() {
            if let Err(err) = promises.raise_collection_floor(floor).await {
                tracing::warn!(error = %err, "cannot keep the collection floor on disk; not collecting");
                continue;
            }
        }
        let collected: usize = config.caches.iter().map(|c| engine.gc_tombstones(&c.name, floor)).sum();
        if collected > 0 {
            tracing::info!(collected, floor = %floor, "forgot tombstones every site has passed");
        }
    }
}

/// Run a node until `cancel`.
pub async fn run(config: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    start(config, cancel).await?.wait().await
}
