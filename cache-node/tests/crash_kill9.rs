//! Crash test: `xsite node` is killed with SIGKILL at random moments while clients
//! write, and restarted on the same data directory; every write it acknowledged must
//! be there after the restart.
//!
//! Each client task owns its keys and writes them one command at a time, so at the
//! kill a key has exactly two possible values: the one after the last acknowledged
//! write, or — if the command in flight at the kill touched it — the one after that
//! command (written to the WAL, reply lost). Anything else is a lost or invented
//! write. The model then adopts what the node has, and the next round continues.
//!
//! Small WAL segments and a low snapshot threshold make rollovers and snapshots happen
//! during the rounds, so kills land in those too. No Kafka: this runs in the plain
//! `cargo test` tier.

use rand::Rng;
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Rounds (kill, restart, check) with `--durability always`.
const KILLS_ALWAYS: usize = 20;
/// Rounds with `--durability everysec`: a killed process (not an OS crash) loses
/// nothing acknowledged either, because the WAL is written before the reply.
const KILLS_EVERYSEC: usize = 6;
/// Client tasks, each with its own keys and connection.
const TASKS: usize = 4;
/// Keys per task written with SET, APPEND and DEL.
const STRING_KEYS_PER_TASK: usize = 6;
/// Keys per task written with INCR and (rarely) DEL.
const COUNTER_KEYS_PER_TASK: usize = 3;
/// The kill comes this long after the clients start, chosen at random.
const KILL_DELAY_MS: std::ops::Range<u64> = 50..400;
/// In about one round in four, the restarted node is killed again this soon, while it
/// recovers, before the restart that is checked.
const RECOVERY_KILL_DELAY_MS: std::ops::Range<u64> = 0..60;
/// How long a node may take to answer PING after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one request from the test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One `xsite node` process on a fixed port and data directory.
struct Node {
    dir: PathBuf,
    port: u16,
    durability: &'static str,
    child: Option<Child>,
}

impl Node {
    fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!("{what}\n--- node log tail ({}) ---\n{}", self.log_path().display(), self.log_tail())
    }

    async fn start(dir: &Path, durability: &'static str) -> Node {
        let config = "site = \"crash\"\n\n[store]\nsnapshot_wal_bytes = 65536\n\n[wal]\nsegment_bytes_max = 16384\n";
        std::fs::write(dir.join("node.toml"), config).expect("writing the config");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut node = Node { dir: dir.to_path_buf(), port, durability, child: None };
        node.spawn().await;
        node
    }

    async fn spawn(&mut self) {
        self.launch();
        self.wait_ready().await;
    }

    /// Start the process without waiting for it.
    fn launch(&mut self) {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let _ = writeln!(log, "===== start ({}) =====", self.durability);
        let err = log.try_clone().expect("log file handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xsite"));
        cmd.arg("node")
            .arg("--config")
            .arg(self.dir.join("node.toml"))
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--durability")
            .arg(self.durability)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        for var in ["XSITE_CONFIG", "XSITE_SITE", "XSITE_PORT", "XSITE_BIND", "XSITE_ADMIN_PORT", "XSITE_KAFKA"] {
            cmd.env_remove(var);
        }
        self.child = Some(cmd.spawn().expect("spawning xsite node"));
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                self.fail(format!("the node exited while starting ({status})"));
            }
            if let Ok(mut conn) = self.try_conn().await {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok_and(|p| p == "PONG") {
                    return;
                }
            }
            if Instant::now() > deadline {
                self.fail(format!("the node did not answer PING within {READY_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaping the node");
        }
    }

    async fn try_conn(&self) -> redis::RedisResult<MultiplexedConnection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(REQUEST_TIMEOUT)
            .set_response_timeout(REQUEST_TIMEOUT);
        client.get_multiplexed_async_connection_with_config(&config).await
    }

    async fn conn(&self) -> MultiplexedConnection {
        match self.try_conn().await {
            Ok(c) => c,
            Err(e) => self.fail(format!("connecting: {e}")),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- node log tail ({}) ---\n{}", self.log_path().display(), self.log_tail());
        }
    }
}

/// The data directory: kept when the test fails (or `XSITE_KEEP_TEST_DIRS` is set),
/// for the WAL, snapshots and log to be examined.
struct TestDir(tempfile::TempDir);

impl TestDir {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("XSITE_KEEP_TEST_DIRS").is_some() {
            self.0.disable_cleanup(true);
            eprintln!("kept {}", self.0.path().display());
        }
    }
}

/// A write, with everything needed to predict its effect.
#[derive(Debug, Clone)]
enum Write {
    Set { key: String, value: Vec<u8> },
    Append { key: String, suffix: Vec<u8> },
    Incr { key: String },
    Del { key: String },
}

impl Write {
    fn key(&self) -> &str {
        match self {
            Write::Set { key, .. } | Write::Append { key, .. } | Write::Incr { key } | Write::Del { key } => key,
        }
    }

    /// The key's value after this write, from its value before.
    fn after(&self, before: Option<&[u8]>) -> Option<Vec<u8>> {
        match self {
            Write::Set { value, .. } => Some(value.clone()),
            Write::Append { suffix, .. } => Some([before.unwrap_or_default(), suffix].concat()),
            Write::Incr { .. } => {
                let n: i64 = before.map_or(0, |b| std::str::from_utf8(b).unwrap().parse().unwrap());
                Some((n + 1).to_string().into_bytes())
            }
            Write::Del { .. } => None,
        }
    }

    /// The reply the node must give, as a `redis::Value` rendered for comparison.
    fn expected_reply(&self, before: Option<&[u8]>) -> String {
        match self {
            Write::Set { .. } => "OK".into(),
            Write::Append { .. } => self.after(before).unwrap().len().to_string(),
            Write::Incr { .. } => String::from_utf8(self.after(before).unwrap()).unwrap(),
            Write::Del { .. } => (before.is_some() as i64).to_string(),
        }
    }

    fn command(&self) -> redis::Cmd {
        match self {
            Write::Set { key, value } => redis::cmd("SET").arg(key).arg(value).clone(),
            Write::Append { key, suffix } => redis::cmd("APPEND").arg(key).arg(suffix).clone(),
            Write::Incr { key } => redis::cmd("INCR").arg(key).clone(),
            Write::Del { key } => redis::cmd("DEL").arg(key).clone(),
        }
    }
}

fn render(v: &redis::Value) -> String {
    match v {
        redis::Value::Okay => "OK".into(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// One task's keys: what the node acknowledged, and the write in flight if any.
#[derive(Debug, Clone, Default)]
struct Model {
    task: usize,
    values: BTreeMap<String, Option<Vec<u8>>>,
    in_flight: Option<Write>,
    acked: u64,
}

impl Model {
    fn new(task: usize, prefix: &str) -> Model {
        let mut values = BTreeMap::new();
        for j in 0..STRING_KEYS_PER_TASK {
            values.insert(format!("{prefix}:t{task}:s{j}"), None);
        }
        for j in 0..COUNTER_KEYS_PER_TASK {
            values.insert(format!("{prefix}:t{task}:c{j}"), None);
        }
        Model { task, values, in_flight: None, acked: 0 }
    }

    fn next_write(&self, round: usize, n: u64) -> Write {
        let mut rng = rand::thread_rng();
        let keys: Vec<&String> = self.values.keys().collect();
        let key = keys[rng.gen_range(0..keys.len())].clone();
        // Unique bytes per write, binary included, some of them large.
        let unique = format!("r{round}-t{}-n{n}-", self.task).into_bytes();
        let mut value = unique.clone();
        let extra = if rng.gen_range(0..10) == 0 { rng.gen_range(1000..20_000) } else { rng.gen_range(0..40) };
        value.extend((0..extra).map(|_| rng.gen::<u8>()));
        let roll = rng.gen_range(0..100);
        let is_counter = key.rsplit(':').next().is_some_and(|k| k.starts_with('c'));
        if is_counter {
            if roll < 95 {
                Write::Incr { key }
            } else {
                Write::Del { key }
            }
        } else if roll < 55 {
            Write::Set { key, value }
        } else if roll < 85 {
            Write::Append { key, suffix: unique }
        } else {
            Write::Del { key }
        }
    }
}

/// Write until the connection breaks (the kill); returns the model with the write
/// that was in flight, if any.
async fn client(mut conn: MultiplexedConnection, mut model: Model, round: usize) -> Model {
    let mut n = 0u64;
    loop {
        n += 1;
        let write = model.next_write(round, n);
        let before = model.values[write.key()].clone();
        model.in_flight = Some(write.clone());
        let reply: redis::RedisResult<redis::Value> = write.command().query_async(&mut conn).await;
        match reply {
            Ok(v) => {
                let expected = write.expected_reply(before.as_deref());
                assert_eq!(render(&v), expected, "task {}: reply to {write:?} (value before: {before:?})", model.task);
                model.values.insert(write.key().to_string(), write.after(before.as_deref()));
                model.in_flight = None;
                model.acked += 1;
            }
            Err(_) => return model, // the node is gone; the write may or may not be in
        }
    }
}

/// Check every key of the model against the restarted node; adopt the in-flight
/// write if it turns out to have been applied.
async fn check(node: &Node, model: &mut Model, round: usize) {
    let mut conn = node.conn().await;
    let keys: Vec<String> = model.values.keys().cloned().collect();
    for key in keys {
        let actual: Option<Vec<u8>> = match redis::cmd("GET").arg(&key).query_async(&mut conn).await {
            Ok(v) => v,
            Err(e) => node.fail(format!("round {round}: GET {key}: {e}")),
        };
        let acked = model.values[&key].clone();
        if actual == acked {
            continue;
        }
        let in_flight = model.in_flight.as_ref().filter(|w| w.key() == key);
        let after_in_flight = in_flight.map(|w| w.after(acked.as_deref()));
        if after_in_flight.as_ref() == Some(&actual) {
            model.values.insert(key, actual); // the unacknowledged write made it: fine
            continue;
        }
        let show =
            |v: &Option<Vec<u8>>| v.as_ref().map(|b| String::from_utf8_lossy(&b[..b.len().min(80)]).into_owned());
        node.fail(format!(
            "round {round} ({}): key {key} is {:?} after the restart; acknowledged value {:?}, in flight {:?}",
            node.durability,
            show(&actual),
            show(&acked),
            in_flight
        ));
    }
    model.in_flight = None;
}

/// `rounds` of: clients write, SIGKILL at a random moment, restart, check.
async fn kill_rounds(durability: &'static str, rounds: usize) {
    let dir = TestDir(tempfile::Builder::new().prefix("xsite-crash-").tempdir().expect("temp dir"));
    let started = Instant::now();
    let mut node = Node::start(dir.path(), durability).await;
    let mut models: Vec<Model> = (0..TASKS).map(|t| Model::new(t, durability)).collect();
    let mut acked_total = 0;
    let mut recovery_kills = 0;
    for round in 0..rounds {
        let mut tasks = Vec::new();
        for model in models.drain(..) {
            tasks.push(tokio::spawn(client(node.conn().await, model, round)));
        }
        let delay = rand::thread_rng().gen_range(KILL_DELAY_MS);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        node.kill9();
        for t in tasks {
            match tokio::time::timeout(REQUEST_TIMEOUT * 2, t).await {
                Ok(Ok(model)) => models.push(model),
                Ok(Err(e)) => node.fail(format!("round {round}: client task: {e}")),
                Err(_) => node.fail(format!("round {round}: a client did not notice the kill")),
            }
        }
        if rand::thread_rng().gen_range(0..4) == 0 {
            // Crash during recovery too: recovery must itself survive a kill.
            node.launch();
            tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(RECOVERY_KILL_DELAY_MS))).await;
            node.kill9();
            recovery_kills += 1;
        }
        node.spawn().await;
        for model in &mut models {
            check(&node, model, round).await;
        }
        acked_total = models.iter().map(|m| m.acked).sum::<u64>();
    }
    assert!(
        acked_total >= (rounds * TASKS) as u64,
        "only {acked_total} writes acknowledged in {rounds} rounds: the test proved little"
    );
    eprintln!(
        "{durability}: {rounds} kills (and {recovery_kills} during recovery), {acked_total} acknowledged writes, all there after restarts ({:?})",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_write_with_durability_always() {
    kill_rounds("always", KILLS_ALWAYS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_write_with_durability_everysec() {
    kill_rounds("everysec", KILLS_EVERYSEC).await;
}
