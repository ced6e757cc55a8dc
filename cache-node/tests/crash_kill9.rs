//! Crash test: `xsite node` is killed with SIGKILL at random moments while clients
//! write, and restarted on the same data directory; every write it acknowledged must
//! be there after the restart.
//!
//! Each client task owns its keys and sends one command, or one pipeline of a few
//! commands, at a time, and checks every reply against its model. At the kill, the
//! commands in flight (sent, no reply) may or may not have reached the WAL; since the
//! WAL is one ordered log, what survives of them is a prefix. So after the restart
//! the task's keys must hold exactly the state after its acknowledged writes plus
//! some prefix of the writes in flight. Anything else is a lost, reordered or invented
//! write. The model then adopts what the node has, and the next round continues.
//!
//! Small WAL segments and a low snapshot threshold make rollovers and snapshots happen
//! during the rounds, so kills land in those too; about one restart in four is itself
//! killed while it recovers. No Kafka: this runs in the plain `cargo test` tier (about
//! 10 s). Set `XSITE_KEEP_TEST_DIRS=1` to keep the data directories; a failing run
//! always keeps its own.

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
/// Commands in one pipeline at most (one batch in three is a pipeline).
const PIPELINE_LEN_MAX: usize = 8;
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
    fn kind(&self) -> &'static str {
        match self {
            Write::Set { .. } => "SET",
            Write::Append { .. } => "APPEND",
            Write::Incr { .. } => "INCR",
            Write::Del { .. } => "DEL",
        }
    }

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
    /// Sent and not acknowledged, in order: one command or a pipeline.
    in_flight: Vec<Write>,
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
        Model { task, values, in_flight: Vec::new(), acked: 0 }
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

/// Write until the connection breaks (the kill); returns the model with the writes
/// that were in flight.
async fn client(mut conn: MultiplexedConnection, mut model: Model, round: usize) -> Model {
    let mut n = 0u64;
    loop {
        let len = {
            let mut rng = rand::thread_rng();
            if rng.gen_range(0..3) == 0 {
                rng.gen_range(2..=PIPELINE_LEN_MAX)
            } else {
                1
            }
        };
        let writes: Vec<Write> = (0..len)
            .map(|_| {
                n += 1;
                model.next_write(round, n)
            })
            .collect();
        model.in_flight = writes.clone();
        let replies: redis::RedisResult<Vec<redis::Value>> = if len == 1 {
            writes[0].command().query_async(&mut conn).await.map(|v| vec![v])
        } else {
            let mut pipe = redis::pipe();
            for w in &writes {
                pipe.add_command(w.command());
            }
            pipe.query_async(&mut conn).await
        };
        let replies = match replies {
            Ok(r) => r,
            Err(e) if e.code().is_some() => panic!("task {}: error reply to {writes:?}: {e}", model.task),
            Err(_) => return model, // the node is gone; the writes may or may not be in
        };
        assert_eq!(replies.len(), writes.len(), "task {}: replies to {writes:?}", model.task);
        for (w, reply) in writes.iter().zip(replies) {
            let before = model.values[w.key()].clone();
            let expected = w.expected_reply(before.as_deref());
            assert_eq!(render(&reply), expected, "task {}: reply to {w:?} (value before: {before:?})", model.task);
            model.values.insert(w.key().to_string(), w.after(before.as_deref()));
            model.acked += 1;
        }
        model.in_flight.clear();
    }
}

/// Check the task's keys on the restarted node: they must be the acknowledged state
/// plus a prefix of the writes in flight. The model adopts that state.
async fn check(node: &Node, model: &mut Model, round: usize) {
    let mut conn = node.conn().await;
    let mut actual = BTreeMap::new();
    for key in model.values.keys() {
        let value: Option<Vec<u8>> = match redis::cmd("GET").arg(key).query_async(&mut conn).await {
            Ok(v) => v,
            Err(e) => node.fail(format!("round {round}: GET {key}: {e}")),
        };
        actual.insert(key.clone(), value);
    }
    let mut state = model.values.clone();
    let mut allowed = vec![state.clone()];
    for w in &model.in_flight {
        let before = state[w.key()].clone();
        state.insert(w.key().to_string(), w.after(before.as_deref()));
        allowed.push(state.clone());
    }
    if let Some(prefix) = allowed.iter().position(|a| *a == actual) {
        model.values = allowed.swap_remove(prefix);
        model.in_flight.clear();
        return;
    }
    let show = |v: &Option<Vec<u8>>| v.as_ref().map(|b| String::from_utf8_lossy(&b[..b.len().min(60)]).into_owned());
    let differing: Vec<String> = actual
        .iter()
        .filter(|(k, v)| model.values.get(*k) != Some(v))
        .map(|(k, v)| format!("  {k}: {:?} after the restart, acknowledged {:?}", show(v), show(&model.values[k])))
        .collect();
    node.fail(format!(
        "round {round} ({}), task {}: the keys match no prefix of the writes in flight {:?}\n{}",
        node.durability,
        model.task,
        model.in_flight.iter().map(|w| format!("{} {}", w.kind(), w.key())).collect::<Vec<_>>(),
        differing.join("\n")
    ));
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
