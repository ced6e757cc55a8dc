//! An `xsite node` process, its configuration, and convergence checks across nodes.

use super::{free_port, keep_test_dirs, log_tail, open_log, send_signal, send_sigterm};
use crate::contents::{self, show, Snapshot};
use crate::lazyfs::LazyFs;
use anyhow::Context;
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take from spawn to answering PING and `/status`.
const NODE_READY_TIMEOUT_MS: u64 = 30_000;
/// How long a node may take to exit after SIGTERM.
const NODE_STOP_TIMEOUT_MS: u64 = 30_000;
/// How long every thread of a node may take to stop after SIGSTOP (a thread inside a
/// file system call stops when the call returns).
const NODE_SIGSTOP_TIMEOUT_MS: u64 = 10_000;
/// Bound on one RESP or admin request made by the harness.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Pause between two polls of a condition.
const POLL_INTERVAL_MS: u64 = 50;
/// Log lines shown when something fails.
const LOG_TAIL_LINES: usize = 60;
/// Environment variables the `xsite` CLI reads; removed so a developer's shell cannot
/// change what the harness configured.
const XSITE_ENV: [&str; 8] = [
    "XSITE_CONFIG",
    "XSITE_SITE",
    "XSITE_PORT",
    "XSITE_BIND",
    "XSITE_DATA_DIR",
    "XSITE_DURABILITY",
    "XSITE_ADMIN_PORT",
    "XSITE_KAFKA",
];

/// The `xsite` binary: `$XSITE_BIN`, else `<target dir>/debug/xsite` of this workspace.
pub fn xsite_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XSITE_BIN") {
        return PathBuf::from(p);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target"));
    target.join("debug").join("xsite")
}

/// What a node runs with. Ports and the data directory are chosen by [`NodeProc`] (the
/// data directory can be given with [`NodeSpec::data_dir`]) and passed as flags; the
/// rest is written to the node's TOML config file.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    site: String,
    durability: String,
    kafka_bootstrap: Option<String>,
    partitions: i32,
    kafka_settings: Vec<(String, String)>,
    remotes: Vec<(String, Option<String>)>,
    caches: Vec<(String, usize)>,
    extra_toml: String,
    raw: Option<String>,
    data_dir: Option<PathBuf>,
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl NodeSpec {
    /// A single-site node of `site` with durability `always` and one cache, `default`
    /// in database 0.
    pub fn new(site: &str) -> NodeSpec {
        NodeSpec {
            site: site.to_string(),
            durability: "always".into(),
            kafka_bootstrap: None,
            partitions: 4,
            kafka_settings: Vec::new(),
            remotes: Vec::new(),
            caches: vec![("default".into(), 0)],
            extra_toml: String::new(),
            raw: None,
            data_dir: None,
        }
    }

    /// A node configured by raw TOML text; `caches` maps the cache names it defines to
    /// their databases (what [`NodeProc::contents`] and [`wait_converged`] read).
    pub fn raw(site: &str, toml: &str, caches: &[(&str, usize)]) -> NodeSpec {
        let mut spec = NodeSpec::new(site);
        spec.raw = Some(toml.to_string());
        spec.caches = caches.iter().map(|(n, d)| (n.to_string(), *d)).collect();
        spec
    }

    /// `always`, `everysec` or `no`.
    pub fn durability(mut self, durability: &str) -> Self {
        self.durability = durability.to_string();
        self
    }

    /// Replicate through the Kafka cluster at `bootstrap` (this site's own cluster),
    /// with low-latency settings for tests: `fetch_wait_max_ms = 10`,
    /// `session_timeout_ms = 3000`, `linger_ms = 2`.
    pub fn kafka(mut self, bootstrap: &str) -> Self {
        self.kafka_bootstrap = Some(bootstrap.to_string());
        self
    }

    /// Partitions of the site's topic (default 4 in tests).
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Another `key = value` line in `[kafka]` (`value` is TOML, e.g. `"\"gzip\""`).
    pub fn kafka_setting(mut self, key: &str, value: &str) -> Self {
        self.kafka_settings.push((key.to_string(), value.to_string()));
        self
    }

    /// Consume `site`'s topic, from the cluster at `bootstrap` (None: the local one).
    pub fn remote(mut self, site: &str, bootstrap: Option<&str>) -> Self {
        self.remotes.push((site.to_string(), bootstrap.map(str::to_string)));
        self
    }

    /// Replace the default cache list with the given caches (call once per cache).
    pub fn cache(mut self, name: &str, db: usize) -> Self {
        if self.caches == [("default".to_string(), 0)] && name != "default" {
            self.caches.clear();
        }
        self.caches.retain(|(n, _)| n != name);
        self.caches.push((name.to_string(), db));
        self
    }

    /// Keep the data directory (WAL, snapshots, sled) at `path` instead of `data/` in
    /// the node's temp directory, e.g. on a [`LazyFs`] mount. The node creates it; the
    /// harness never deletes it.
    pub fn data_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(path.into());
        self
    }

    /// TOML appended as is (new sections such as `[store]`).
    pub fn extra_toml(mut self, text: &str) -> Self {
        self.extra_toml.push_str(text);
        self.extra_toml.push('\n');
        self
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    pub fn topic_partitions(&self) -> i32 {
        self.partitions
    }

    /// The database a cache is selected with.
    pub fn db_of(&self, cache: &str) -> usize {
        self.caches
            .iter()
            .find(|(n, _)| n == cache)
            .map(|(_, d)| *d)
            .unwrap_or_else(|| panic!("site {}: no cache named '{cache}' in the spec", self.site))
    }

    /// The config file's text.
    pub fn to_toml(&self) -> String {
        if let Some(raw) = &self.raw {
            return raw.clone();
        }
        let mut t = String::new();
        let _ = writeln!(t, "site = {}", toml_str(&self.site));
        let _ = writeln!(t, "durability = {}", toml_str(&self.durability));
        for (name, db) in &self.caches {
            let _ = writeln!(t, "\n[[cache]]\nname = {}\ndb = {db}", toml_str(name));
        }
        if let Some(bootstrap) = &self.kafka_bootstrap {
            let _ = writeln!(t, "\n[kafka]\nbootstrap_servers = {}", toml_str(bootstrap));
            let _ = writeln!(t, "partitions = {}", self.partitions);
            let defaults = [("fetch_wait_max_ms", "10"), ("session_timeout_ms", "3000"), ("linger_ms", "2")];
            for (k, v) in defaults {
                if !self.kafka_settings.iter().any(|(key, _)| key == k) {
                    let _ = writeln!(t, "{k} = {v}");
                }
            }
            for (k, v) in &self.kafka_settings {
                let _ = writeln!(t, "{k} = {v}");
            }
        }
        for (site, bootstrap) in &self.remotes {
            let _ = writeln!(t, "\n[[remote]]\nsite = {}", toml_str(site));
            if let Some(b) = bootstrap {
                let _ = writeln!(t, "bootstrap_servers = {}", toml_str(b));
            }
        }
        if !self.extra_toml.is_empty() {
            let _ = writeln!(t, "\n{}", self.extra_toml);
        }
        t
    }
}

/// A cache's digest from the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub keys: u64,
    pub digest: String,
}

/// One `xsite node` process in its own temp directory (config, data, log), on RESP and
/// admin ports chosen once, so restarts keep its address. Dropping it kills it.
pub struct NodeProc {
    spec: NodeSpec,
    bin: PathBuf,
    dir: tempfile::TempDir,
    resp_port: u16,
    admin_port: u16,
    child: Option<Child>,
    starts: u32,
    http: reqwest::Client,
}

impl NodeProc {
    /// Write the config, start the node, wait until it answers PING and `/status`.
    pub async fn start(spec: NodeSpec) -> NodeProc {
        let dir = tempfile::Builder::new()
            .prefix(&format!("xsite-node-{}-", spec.site))
            .tempdir()
            .expect("creating the node's temp dir");
        std::fs::write(dir.path().join("node.toml"), spec.to_toml()).expect("writing the node's config file");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .build()
            .expect("building an http client");
        let mut node = NodeProc {
            spec,
            bin: xsite_bin(),
            dir,
            resp_port: free_port(),
            admin_port: free_port(),
            child: None,
            starts: 0,
            http,
        };
        node.spawn().await;
        node
    }

    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }

    pub fn site(&self) -> &str {
        &self.spec.site
    }

    pub fn resp_port(&self) -> u16 {
        self.resp_port
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The data directory: [`NodeSpec::data_dir`], else `data/` in the temp directory.
    pub fn data_dir(&self) -> PathBuf {
        self.spec.data_dir.clone().unwrap_or_else(|| self.dir.path().join("data"))
    }

    /// The process id, while the node runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path(), LOG_TAIL_LINES)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Panic with `what`, the node's identity and its log tail.
    pub fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "site {} (resp {}, admin {}): {what}\n{}",
            self.spec.site,
            self.resp_port,
            self.admin_port,
            self.log_tail()
        )
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "site {}: node is already running", self.spec.site);
        if !self.bin.is_file() {
            panic!(
                "no xsite binary at {}: build it with `cargo build -p xsite-node --bin xsite` or set XSITE_BIN",
                self.bin.display()
            );
        }
        self.starts += 1;
        let (out, err) = open_log(&self.log_path(), &format!("xsite node start #{} ({})", self.starts, self.spec.site));
        let mut cmd = Command::new(&self.bin);
        cmd.arg("node")
            .arg("--config")
            .arg(self.dir.path().join("node.toml"))
            .arg("--port")
            .arg(self.resp_port.to_string())
            .arg("--admin-port")
            .arg(self.admin_port.to_string())
            .arg("--data-dir")
            .arg(self.data_dir())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for var in XSITE_ENV {
            cmd.env_remove(var);
        }
        if std::env::var_os("XSITE_LOG").is_none() {
            cmd.env("XSITE_LOG", "info,rdkafka=warn");
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(NODE_READY_TIMEOUT_MS);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                self.fail(format!("node exited while starting ({status})"));
            }
            if self.ping().await.is_ok() && self.try_status().await.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                self.fail(format!("node did not answer PING and /status within {NODE_READY_TIMEOUT_MS} ms"));
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.try_conn_db(0).await?;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
        anyhow::ensure!(pong == "PONG", "PING answered {pong:?}");
        Ok(())
    }

    /// SIGKILL the node and reap it. Nothing happens if it is not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Cut the power under the node, whose data directory is on `fs`: SIGSTOP it, wait
    /// (bounded) until every one of its threads is stopped (none is left inside a
    /// file system call), drop LazyFS's unsynced data, then SIGKILL and reap it. The
    /// process and its disk stop at the same instant, as in a real power cut. Returns
    /// the instant SIGSTOP was sent, the moment of the cut. Restart the node with
    /// [`NodeProc::restart`].
    pub async fn power_cut(&mut self, fs: &LazyFs) -> Instant {
        let Some(pid) = self.pid() else { self.fail("power_cut: the node is not running") };
        let data_dir = self.data_dir();
        if !data_dir.starts_with(fs.path()) {
            self.fail(format!(
                "power_cut: the data directory {} is not on the LazyFS mount {}",
                data_dir.display(),
                fs.path().display()
            ));
        }
        let cut = Instant::now();
        if let Err(e) = send_signal(pid, "STOP") {
            self.fail(format!("sending SIGSTOP: {e}"));
        }
        self.wait_all_threads_stopped(pid).await;
        fs.clear_cache().await;
        self.kill9();
        tracing::info!(site = %self.spec.site, pid, ms = cut.elapsed().as_millis() as u64, "power cut");
        cut
    }

    /// Wait until every thread of `pid` is in state `T` (stopped) in `/proc`.
    async fn wait_all_threads_stopped(&self, pid: u32) {
        let deadline = Instant::now() + Duration::from_millis(NODE_SIGSTOP_TIMEOUT_MS);
        loop {
            let running = match threads_not_stopped(pid) {
                Ok(running) if running.is_empty() => return,
                Ok(running) => running.join(", "),
                Err(e) => self.fail(format!("reading the threads of pid {pid} in /proc after SIGSTOP: {e}")),
            };
            if Instant::now() > deadline {
                self.fail(format!(
                    "waited {NODE_SIGSTOP_TIMEOUT_MS} ms for every thread of pid {pid} to stop after SIGSTOP; not stopped: {running}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM the node and wait for it to exit (bounded); returns its exit status.
    pub async fn sigterm(&mut self) -> ExitStatus {
        let Some(mut child) = self.child.take() else { self.fail("sigterm: the node is not running") };
        if let Err(e) = send_sigterm(child.id()) {
            self.fail(format!("sending SIGTERM: {e}"));
        }
        let deadline = Instant::now() + Duration::from_millis(NODE_STOP_TIMEOUT_MS);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.fail(format!("node did not exit within {NODE_STOP_TIMEOUT_MS} ms of SIGTERM (killed it)"));
                }
                Err(e) => self.fail(format!("waiting for the node to exit: {e}")),
            }
        }
    }

    /// Start the node again on the same ports, config and data directory (SIGKILLing it
    /// first if it still runs), and wait until it is ready.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    async fn try_conn_db(&self, db: usize) -> anyhow::Result<MultiplexedConnection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/{db}", self.resp_port))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .set_response_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS));
        let conn = tokio::time::timeout(
            Duration::from_millis(REQUEST_TIMEOUT_MS),
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .context("connecting timed out")??;
        Ok(conn)
    }

    /// A RESP connection to database 0 (the `default` cache).
    pub async fn conn(&self) -> MultiplexedConnection {
        self.conn_db(0).await
    }

    /// A RESP connection with database `db` selected. Requests time out after 10 s.
    pub async fn conn_db(&self, db: usize) -> MultiplexedConnection {
        match self.try_conn_db(db).await {
            Ok(c) => c,
            Err(e) => self.fail(format!("connecting to RESP (db {db}): {e:#}")),
        }
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.admin_url());
        let resp = self.http.get(&url).send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.with_context(|| format!("GET {url}: reading the JSON body"))?;
        anyhow::ensure!(status.is_success(), "GET {url}: {status} {body}");
        Ok(body)
    }

    /// POST to the admin API; returns the JSON reply.
    pub async fn admin_post(&self, path: &str) -> serde_json::Value {
        let url = format!("{}{path}", self.admin_url());
        let result: anyhow::Result<serde_json::Value> = async {
            let resp = self.http.post(&url).send().await?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await?;
            anyhow::ensure!(status.is_success(), "{status} {body}");
            Ok(body)
        }
        .await;
        result.unwrap_or_else(|e| self.fail(format!("POST {url}: {e:#}")))
    }

    async fn try_status(&self) -> anyhow::Result<serde_json::Value> {
        self.get_json("/status").await
    }

    /// `GET /metrics`: the Prometheus text (see [`prometheus_value`]).
    pub async fn metrics_text(&self) -> String {
        let url = format!("{}/metrics", self.admin_url());
        let result: anyhow::Result<String> = async {
            let resp = self.http.get(&url).send().await?;
            let status = resp.status();
            let body = resp.text().await?;
            anyhow::ensure!(status.is_success(), "{status} {body}");
            Ok(body)
        }
        .await;
        result.unwrap_or_else(|e| self.fail(format!("GET {url}: {e:#}")))
    }

    /// `GET /status`.
    pub async fn status(&self) -> serde_json::Value {
        self.try_status().await.unwrap_or_else(|e| self.fail(format!("{e:#}")))
    }

    /// Consumer offsets from `/status`: `(topic, partition) -> last applied offset`.
    pub async fn consumer_offsets(&self) -> BTreeMap<(String, i64), i64> {
        let status = self.status().await;
        let offsets = status["replication"]["offsets"].as_array().cloned().unwrap_or_default();
        offsets
            .iter()
            .map(|o| {
                let topic = o["topic"].as_str().unwrap_or_default().to_string();
                ((topic, o["partition"].as_i64().unwrap_or(-1)), o["offset"].as_i64().unwrap_or(-1))
            })
            .collect()
    }

    /// Consumer offsets on disk, per (topic, partition), as of the node's last flush.
    pub async fn flushed_offsets(&self) -> BTreeMap<(String, i64), i64> {
        let status = self.status().await;
        let offsets = status["replication"]["offsets"].as_array().cloned().unwrap_or_default();
        offsets
            .iter()
            .filter_map(|o| {
                let topic = o["topic"].as_str().unwrap_or_default().to_string();
                Some(((topic, o["partition"].as_i64().unwrap_or(-1)), o["flushed"].as_i64()?))
            })
            .collect()
    }

    /// Entries applied from `remote` since this process started (from `/status`).
    pub async fn remote_applied(&self, remote: &str) -> u64 {
        let status = self.status().await;
        let remotes = status["replication"]["remotes"].as_array().cloned().unwrap_or_default();
        remotes
            .iter()
            .find(|r| r["site"] == remote)
            .and_then(|r| r["applied"].as_u64())
            .unwrap_or_else(|| self.fail(format!("/status has no consumer of {remote}: {status}")))
    }

    async fn try_digest(&self, cache: &str) -> anyhow::Result<Digest> {
        let body = self.get_json(&format!("/caches/{cache}/digest")).await?;
        let keys = body["keys"].as_u64().with_context(|| format!("digest reply without keys: {body}"))?;
        let digest =
            body["digest"].as_str().with_context(|| format!("digest reply without digest: {body}"))?.to_string();
        Ok(Digest { keys, digest })
    }

    /// `GET /caches/{cache}/digest`.
    pub async fn digest(&self, cache: &str) -> Digest {
        self.try_digest(cache).await.unwrap_or_else(|e| self.fail(format!("{e:#}")))
    }

    async fn try_snapshot(&self, cache: &str) -> anyhow::Result<Snapshot> {
        let mut conn = self.try_conn_db(self.spec.db_of(cache)).await?;
        Ok(contents::read(&mut conn).await?)
    }

    /// Every live key of a cache with its value (counters as decimal text) and
    /// absolute expiry, read through RESP with SCAN, GET and PEXPIRETIME.
    pub async fn snapshot(&self, cache: &str) -> Snapshot {
        self.try_snapshot(cache).await.unwrap_or_else(|e| self.fail(format!("reading contents of {cache}: {e:#}")))
    }

    /// Every live key of a cache and its value (counters as decimal text).
    pub async fn contents(&self, cache: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.snapshot(cache).await.values()
    }

    /// Wait until `GET key` in database `db` answers `expected` (None: no such key).
    pub async fn wait_get(&self, db: usize, key: &[u8], expected: Option<&[u8]>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut conn = self.conn_db(db).await;
        loop {
            let got: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("GET").arg(key).query_async(&mut conn).await;
            if let Ok(v) = &got {
                if v.as_deref() == expected {
                    return;
                }
            }
            if Instant::now() > deadline {
                self.fail(format!(
                    "GET {} in db {db}: waited {timeout:?} for {}, last answer {}",
                    show(key),
                    expected.map_or("nil".to_string(), show),
                    match got {
                        Ok(v) => v.as_deref().map_or("nil".to_string(), show),
                        Err(e) => e.to_string(),
                    }
                ));
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
        if keep_test_dirs() {
            self.dir.disable_cleanup(true);
        }
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "site {} (test failed; kept {}):\n{}",
                self.spec.site,
                self.dir.path().display(),
                self.log_tail()
            );
        }
    }
}

/// The threads of `pid` whose state in `/proc/<pid>/task/<tid>/stat` is not stopped
/// (`T`, or `t` under a tracer), as `tid:state`.
fn threads_not_stopped(pid: u32) -> std::io::Result<Vec<String>> {
    let mut running = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread exited meanwhile
        };
        // "tid (comm) S …": comm may hold spaces and parentheses, the state follows the last ')'.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or("?");
        if state != "T" && state != "t" {
            running.push(format!("{}:{state}", task.file_name().to_string_lossy()));
        }
    }
    Ok(running)
}

/// The largest value of metric `name` (over all its label sets) in Prometheus or
/// OpenMetrics text; None when it is absent.
pub fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value_part = match rest.chars().next()? {
                ' ' => rest,
                '{' => &rest[rest.find('}')? + 1..],
                _ => return None, // a longer name with this prefix
            };
            value_part.split_whitespace().next()?.parse::<f64>().ok()
        })
        .reduce(f64::max)
}

/// Wait until every node holds the same contents of `cache`: equal admin digests and
/// key counts, then equal full contents read through RESP, values and absolute expiry
/// times (a key that expired between two sites' reads is no difference). Returns the
/// first node's contents. Call it once writes have stopped. Panics after `timeout`
/// with each node's digest, the first differing keys and every node's log tail.
pub async fn wait_converged(nodes: &[&NodeProc], cache: &str, timeout: Duration) -> Snapshot {
    assert!(!nodes.is_empty(), "wait_converged needs at least one node");
    let started = Instant::now();
    loop {
        let last_problem = match converged_once(nodes, cache).await {
            Ok(contents) => return contents,
            Err(problem) => problem,
        };
        if started.elapsed() > timeout {
            let mut msg = format!("cache {cache} did not converge within {timeout:?}: {last_problem}\n");
            if let Ok(first) = nodes[0].try_snapshot(cache).await {
                for n in &nodes[1..] {
                    if let Ok(other) = n.try_snapshot(cache).await {
                        let _ = writeln!(
                            msg,
                            "{}",
                            contents::describe_differences(nodes[0].site(), &first, n.site(), &other)
                        );
                    }
                }
            }
            for n in nodes {
                let _ = writeln!(msg, "{}", n.log_tail());
            }
            panic!("{msg}");
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS * 2)).await;
    }
}

async fn digests_of(nodes: &[&NodeProc], cache: &str) -> Result<Vec<Digest>, String> {
    let mut digests = Vec::new();
    for n in nodes {
        digests.push(n.try_digest(cache).await.map_err(|e| format!("site {}: digest: {e:#}", n.site()))?);
    }
    Ok(digests)
}

async fn converged_once(nodes: &[&NodeProc], cache: &str) -> Result<Snapshot, String> {
    let digests = digests_of(nodes, cache).await?;
    if digests.windows(2).any(|w| w[0] != w[1]) {
        let listed: Vec<String> = nodes
            .iter()
            .zip(&digests)
            .map(|(n, d)| format!("{}: {} keys, digest {}", n.site(), d.keys, d.digest))
            .collect();
        return Err(format!("digests differ ({})", listed.join("; ")));
    }
    let mut snapshots = Vec::new();
    for n in nodes {
        snapshots.push(n.try_snapshot(cache).await.map_err(|e| format!("site {}: contents: {e:#}", n.site()))?);
    }
    // Keys only disappear now (they expire): each node's count read after its
    // snapshot bounds it from below, the one read before from above.
    let after = digests_of(nodes, cache).await?;
    for ((n, snapshot), (before, after)) in nodes.iter().zip(&snapshots).zip(digests.iter().zip(&after)) {
        let len = snapshot.len() as u64;
        if len > before.keys || len < after.keys {
            return Err(format!(
                "site {}: SCAN found {len} keys, the digest counted {} before and {} after",
                n.site(),
                before.keys,
                after.keys
            ));
        }
    }
    for (n, other) in nodes[1..].iter().zip(&snapshots[1..]) {
        if !contents::differences(&snapshots[0], other).is_empty() {
            return Err(format!(
                "digests agree but contents differ: {}",
                contents::describe_differences(nodes[0].site(), &snapshots[0], n.site(), other)
            ));
        }
    }
    Ok(snapshots.swap_remove(0))
}

#[cfg(test)]
mod tests {
    use super::prometheus_value;

    #[test]
    fn prometheus_value_reads_plain_and_labelled_samples() {
        let text = "# HELP xsite_wal_fsync_max_ms Longest fsync\n# TYPE xsite_wal_fsync_max_ms gauge\n\
                    xsite_wal_fsync_max_ms 12\nxsite_wal_fsync_max_ms_total 99\n\
                    xsite_lag_ms{remote=\"site-b\"} 3\nxsite_lag_ms{remote=\"site-c\"} 7.5\n# EOF\n";
        assert_eq!(prometheus_value(text, "xsite_wal_fsync_max_ms"), Some(12.0));
        assert_eq!(prometheus_value(text, "xsite_lag_ms"), Some(7.5));
        assert_eq!(prometheus_value(text, "xsite_absent_ms"), None);
    }
}
