//! What the MockCluster multi-site suites share: a mesh of in-process nodes
//! replicating through librdkafka's mock cluster, stopped, restarted and compared.
#![allow(dead_code)] // each suite uses its own part of it

pub mod redis_server;
pub mod tmpfs;

use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use xsite_node::config::Config;
use xsite_node::demo::{create_mock_topics, mesh_configs};
use xsite_node::node::{self, RunningNode};
use xsite_node::wal::Durability;
use xsite_schemas::kafka::mock::MockKafka;
use xsite_schemas::CacheName;

pub const WAIT: Duration = Duration::from_secs(30);

pub struct Site {
    pub node: RunningNode,
    pub cancel: CancellationToken,
}

pub struct Mesh {
    pub kafka: MockKafka,
    pub root: tempfile::TempDir,
    pub configs: Vec<Config>,
    pub sites: Vec<Option<Site>>,
}

pub fn default_cache() -> CacheName {
    CacheName::new("default").unwrap()
}

/// An active-passive cache `name` on database `db`, `primary` its primary site.
pub fn passive_cache(name: &str, db: usize, primary: &str) -> xsite_node::config::CacheConfig {
    xsite_node::config::CacheConfig {
        name: CacheName::new(name).unwrap(),
        db,
        policy: "last-write-wins".into(),
        conflict_window_ms: xsite_consumer::merge::CONFLICT_WINDOW_MS_DEFAULT,
        topology: xsite_node::config::Topology::ActivePassive,
        primary: Some(xsite_schemas::SiteId::new(primary).unwrap()),
    }
}

/// The lines a child process prints on `stdout`, read on a thread of their own.
pub fn lines_of(stdout: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

impl Mesh {
    pub async fn start(n: usize) -> Mesh {
        Mesh::start_with(n, |_| {}).await
    }

    pub async fn start_with(n: usize, tweak: impl Fn(&mut Config)) -> Mesh {
        let kafka = MockKafka::start(1).unwrap();
        let root = tempfile::tempdir().unwrap();
        let mut configs = mesh_configs(n, kafka.bootstrap_servers(), root.path(), Durability::Always, 0);
        for c in &mut configs {
            tweak(c);
            c.validate().unwrap();
        }
        create_mock_topics(&kafka, &configs).unwrap();
        let mut mesh = Mesh { kafka, root, configs, sites: Vec::new() };
        for i in 0..n {
            let site = mesh.launch(i).await;
            mesh.sites.push(Some(site));
        }
        mesh
    }

    pub async fn launch(&self, i: usize) -> Site {
        let cancel = CancellationToken::new();
        let node = node::start(self.configs[i].clone(), cancel.clone()).await.unwrap();
        Site { node, cancel }
    }

    pub fn node(&self, i: usize) -> &RunningNode {
        &self.sites[i].as_ref().expect("site is running").node
    }

    pub async fn conn(&self, i: usize) -> MultiplexedConnection {
        let url = format!("redis://{}/", self.node(i).resp_addr);
        let client = redis::Client::open(url).unwrap();
        tokio::time::timeout(WAIT, client.get_multiplexed_async_connection()).await.unwrap().unwrap()
    }

    pub async fn stop(&mut self, i: usize) {
        let site = self.sites[i].take().expect("site is running");
        site.cancel.cancel();
        tokio::time::timeout(WAIT, site.node.wait()).await.unwrap().unwrap();
    }

    pub async fn restart(&mut self, i: usize) {
        let site = self.launch(i).await;
        self.sites[i] = Some(site);
    }

    /// Wait until every running site holds the same live contents.
    /// Wait until every running site shows the same thing: the same live keys with
    /// the same values and absolute expiry times (what a client can observe; their
    /// tombstones may differ). Returns the contents (values).
    pub async fn converged(&self) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = xsite_schemas::hlc::wall_clock_ms();
            let shown: Vec<_> = self
                .sites
                .iter()
                .flatten()
                .map(|s| s.node.engine.cache(&default_cache()).expect("default cache").store.observable(now))
                .collect();
            if shown.windows(2).all(|w| w[0] == w[1]) {
                let digests: Vec<_> =
                    self.sites.iter().flatten().map(|s| s.node.engine.digest(&default_cache())).collect();
                if digests.windows(2).all(|w| w[0] == w[1]) {
                    let first = shown.into_iter().next().unwrap();
                    return first.into_iter().map(|(k, (v, _))| (k, v)).collect();
                }
            }
            assert!(
                Instant::now() < deadline,
                "sites did not converge: {:?}",
                shown.iter().map(|c| c.len()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until site `i` knows `epoch` of the default cache (a promotion
    /// elsewhere), then connects to it anew: a node that stopped taking writes
    /// closed its clients' connections.
    pub async fn conn_after_epoch(&self, i: usize, epoch: u64) -> MultiplexedConnection {
        let deadline = Instant::now() + WAIT;
        while self.node(i).engine.epoch(&default_cache()) < epoch {
            assert!(Instant::now() < deadline, "site {i} never learned epoch {epoch}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.conn(i).await
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.sites.len() {
            if self.sites[i].is_some() {
                self.stop(i).await;
            }
        }
    }
}

/// One node alone (no replication), its data in `dir`, durability `always`, its
/// RESP port chosen by the system; `tweak` adjusts the config before it starts.
pub async fn start_single(
    dir: &std::path::Path,
    site: &str,
    tweak: impl FnOnce(&mut Config),
) -> (RunningNode, CancellationToken) {
    let mut c = Config::for_site(xsite_schemas::SiteId::new(site).unwrap());
    c.data_dir = dir.to_path_buf();
    c.durability = Durability::Always;
    c.server.port = 0;
    tweak(&mut c);
    c.validate().unwrap();
    let cancel = CancellationToken::new();
    let node = node::start(c, cancel.clone()).await.unwrap();
    (node, cancel)
}

/// Stops a node [`start_single`] started, waiting (bounded) for it to finish.
pub async fn stop_single(node: RunningNode, cancel: CancellationToken) {
    cancel.cancel();
    tokio::time::timeout(WAIT, node.wait()).await.unwrap().unwrap();
}

/// Waits until `node` has heard every remote site say it reads log format
/// `version` (their heartbeats advertise it): from then on it writes what needs it.
pub async fn wait_reading(node: &RunningNode, version: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let old = node.engine.sites_not_reading(version);
        if old.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "remote sites never advertised that they read format {version}: {old:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `commands` sent to a fresh redis-server and to a fresh node (site `site`): the
/// replies of each, those `unordered` says Redis gives in no fixed order sorted
/// ([`redis_server::sorted_reply`]).
pub async fn replies_of_both(
    site: &str,
    commands: &[String],
    unordered: impl Fn(&str) -> bool,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let redis = redis_server::RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = start_single(dir.path(), site, |_| {}).await;
    let want = redis_server::replies(redis.addr, commands).await;
    let got = redis_server::replies(node.resp_addr, commands).await;
    stop_single(node, cancel).await;
    let normal = |replies: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        commands
            .iter()
            .zip(replies)
            .map(|(c, r)| if unordered(c) { redis_server::sorted_reply(&r) } else { r })
            .collect()
    };
    (normal(want), normal(got))
}

/// Runs the redis-py script `cache-node/tests/clients/<script>` (its arguments: the
/// port of site a, of site b, and `count`) first against one redis-server as both
/// sites, the reference, then across two MockCluster sites once each reads log
/// format `version`; each run must exit 0 and print `ok resp2` and `ok resp3`.
/// The two sites must end identical.
pub async fn redis_py_across_two_sites(script: &str, count: u32, version: u32) {
    let script = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let run = |a: u16, b: u16| {
        let script = script.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3")
                .arg(&script)
                .arg(a.to_string())
                .arg(b.to_string())
                .arg(count.to_string())
                .output()
                .expect("python3 is installed")
        })
    };
    let redis = redis_server::RedisServer::start().await;
    let port = redis.addr.port();
    let mesh = Mesh::start(2).await;
    wait_reading(mesh.node(0), version).await;
    wait_reading(mesh.node(1), version).await;
    let (a, b) = (mesh.node(0).resp_addr.port(), mesh.node(1).resp_addr.port());
    for (what, out) in [("redis-server", run(port, port).await.unwrap()), ("two xsite sites", run(a, b).await.unwrap())]
    {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{what}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 2, "{what}: {stdout}");
    }
    mesh.converged().await;
    mesh.shutdown().await;
}

/// Waits until `node` has heard from every remote site that it reads transaction
/// units (their heartbeats advertise it): from then on its transactions ship as one.
pub async fn wait_units_readable(node: &RunningNode) {
    let deadline = Instant::now() + WAIT;
    loop {
        let without = node.engine.sites_without_units();
        if without.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "remote sites never advertised that they read units: {without:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of engine metric `name` at `node` (0 if it has none).
pub fn engine_metric(node: &RunningNode, name: &str) -> i64 {
    node.engine.metrics().iter().find(|m| m.name == name).map_or(0, |m| m.value)
}

pub async fn wait_get(conn: &mut MultiplexedConnection, key: &[u8], expected: Option<&[u8]>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got: Option<Vec<u8>> = conn.get(key).await.unwrap();
        if got.as_deref() == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "key {:?}: got {:?}, want {:?}",
            String::from_utf8_lossy(key),
            got,
            expected
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes keys `left` and `right` to the same number `rounds` times at site 0 of
/// `mesh`, each round one command `write(i)` makes, while a reader at site 1 polls
/// both with MGET: it must never see them differ (the command's writes arrive as
/// one unit), and must see the last round.
pub async fn never_seen_half(mesh: &Mesh, rounds: i64, write: impl Fn(i64) -> redis::Cmd + Send + 'static) {
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let writer = tokio::spawn(async move {
        for i in 1..=rounds {
            let _: redis::Value = write(i).query_async(&mut a).await.unwrap();
        }
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let (left, right): (Option<i64>, Option<i64>) =
            redis::cmd("MGET").arg("left").arg("right").query_async(&mut b).await.unwrap();
        assert_eq!(left, right, "site b saw half of one command's writes");
        if left == Some(rounds) {
            break;
        }
        assert!(Instant::now() < deadline, "site b never saw the last round: {left:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    writer.await.unwrap();
}
