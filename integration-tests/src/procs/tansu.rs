//! A tansu broker process.

use super::{free_port, keep_test_dirs, log_tail, open_log, port_accepts};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a broker may take to accept connections after it is spawned.
const BROKER_READY_TIMEOUT_MS: u64 = 15_000;
/// Bound on one admin or metadata request to the broker.
const BROKER_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Log lines shown when something fails.
const LOG_TAIL_LINES: usize = 40;

/// One tansu broker (sqlite storage) in its own temp directory, on a fixed free port
/// for its whole life, so it can be killed and restarted with the same address and
/// data. Dropping it kills the process.
pub struct Tansu {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    starts: u32,
}

/// The broker binary: `$XSITE_TANSU_BIN`, else `~/.cache/xsite/bin/tansu` if present,
/// else `tansu` on `PATH`.
pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XSITE_TANSU_BIN") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let cached = PathBuf::from(home).join(".cache/xsite/bin/tansu");
        if cached.is_file() {
            return cached;
        }
    }
    PathBuf::from("tansu")
}

impl Tansu {
    /// Start a broker on a free loopback port and wait until it accepts connections.
    pub async fn start() -> Tansu {
        let dir = tempfile::Builder::new().prefix("xsite-tansu-").tempdir().expect("creating the broker's temp dir");
        let mut broker = Tansu { bin: tansu_bin(), dir, port: free_port(), child: None, starts: 0 };
        broker.spawn().await;
        broker
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path(), LOG_TAIL_LINES)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "broker on port {} is already running", self.port);
        self.starts += 1;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let (out, err) = open_log(&self.log_path(), &format!("tansu start #{} on {url}", self.starts));
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting tansu ({}): {e}; set XSITE_TANSU_BIN or run scripts/setup.sh to install it",
                    self.bin.display()
                )
            });
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(BROKER_READY_TIMEOUT_MS);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                panic!("tansu on port {} exited while starting ({status})\n{}", self.port, self.log_tail());
            }
            if port_accepts(self.port).await {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "tansu did not accept connections on port {} within {BROKER_READY_TIMEOUT_MS} ms\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL the broker and reap it. Nothing happens if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the broker again (killing it first if it runs) on the same port and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Create a topic; one that exists already is fine.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .unwrap_or_else(|e| panic!("creating an admin client for {}: {e}", self.bootstrap()));
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let timeout = Duration::from_millis(BROKER_REQUEST_TIMEOUT_MS);
        let opts = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
        let results = tokio::time::timeout(timeout * 2, admin.create_topics([&topic], &opts))
            .await
            .unwrap_or_else(|_| panic!("creating topic {name} on {} timed out\n{}", self.bootstrap(), self.log_tail()))
            .unwrap_or_else(|e| panic!("creating topic {name} on {}: {e}\n{}", self.bootstrap(), self.log_tail()));
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => panic!("creating topic {t} on {}: {code}\n{}", self.bootstrap(), self.log_tail()),
            }
        }
    }

    /// Create a site's topic (`partitions`) and its dead-letter topic (one partition),
    /// as the node does at start-up.
    pub async fn create_site_topics(&self, site: &str, partitions: i32) {
        self.create_topic(&super::site_topic(site), partitions).await;
        self.create_topic(&super::dlq_topic(site), 1).await;
    }

    /// The high watermark (offset of the next record) of every partition of a topic.
    pub async fn end_offsets(&self, topic: &str) -> Vec<i64> {
        let config = self.client_config();
        let (topic, bootstrap) = (topic.to_string(), self.bootstrap());
        let result = tokio::task::spawn_blocking(move || -> Result<Vec<i64>, String> {
            let timeout = Duration::from_millis(BROKER_REQUEST_TIMEOUT_MS);
            let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
            let md = consumer.fetch_metadata(Some(&topic), timeout).map_err(|e| e.to_string())?;
            let partitions = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
            (0..partitions)
                .map(|p| consumer.fetch_watermarks(&topic, p, timeout).map(|(_, high)| high).map_err(|e| e.to_string()))
                .collect()
        })
        .await
        .expect("watermark task panicked");
        result.unwrap_or_else(|e| panic!("reading end offsets from {bootstrap}: {e}\n{}", self.log_tail()))
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap())
            .set("group.id", "xsite-test-harness")
            .set("reconnect.backoff.max.ms", "500");
        c
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
        if keep_test_dirs() {
            self.dir.disable_cleanup(true);
        }
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "tansu on port {} (test failed; kept {}):\n{}",
                self.port,
                self.dir.path().display(),
                self.log_tail()
            );
        }
    }
}
