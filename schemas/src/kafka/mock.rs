//! An in-process Kafka cluster (librdkafka's mock broker) for the demo and tests.
//!
//! librdkafka's `MockCluster` is `!Send`, so it lives on a thread of its own that
//! takes commands over a bounded channel; [`MockKafka`] is the `Send` handle.

use rdkafka::mocking::MockCluster;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

enum Command {
    CreateTopic { name: String, partitions: i32, reply: SyncSender<Result<(), String>> },
    BrokerDown { id: i32, reply: SyncSender<Result<(), String>> },
    BrokerUp { id: i32, reply: SyncSender<Result<(), String>> },
    Stop,
}

/// Commands queued for the mock's thread at most.
const COMMAND_QUEUE_LEN_MAX: usize = 64;
/// How long a command waits for the mock's thread.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

pub struct MockKafka {
    bootstrap: String,
    brokers: i32,
    tx: SyncSender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl MockKafka {
    /// Start a mock cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Result<MockKafka, String> {
        let (tx, rx) = mpsc::sync_channel(COMMAND_QUEUE_LEN_MAX);
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("mock-kafka".into())
            .spawn(move || serve(brokers, rx, ready_tx))
            .map_err(|e| format!("spawning the mock kafka thread: {e}"))?;
        let bootstrap =
            ready_rx.recv_timeout(COMMAND_TIMEOUT).map_err(|e| format!("mock kafka did not start: {e}"))??;
        Ok(MockKafka { bootstrap, brokers, tx, thread: Some(thread) })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    pub fn brokers(&self) -> i32 {
        self.brokers
    }

    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), String> {
        self.call(|reply| Command::CreateTopic { name: name.to_string(), partitions, reply })
    }

    /// Take a broker down (ids start at 1).
    pub fn broker_down(&self, id: i32) -> Result<(), String> {
        self.call(|reply| Command::BrokerDown { id, reply })
    }

    pub fn broker_up(&self, id: i32) -> Result<(), String> {
        self.call(|reply| Command::BrokerUp { id, reply })
    }

    /// Take every broker down, or bring every broker back.
    pub fn set_all(&self, up: bool) -> Result<(), String> {
        for id in 1..=self.brokers {
            if up {
                self.broker_up(id)?
            } else {
                self.broker_down(id)?
            }
        }
        Ok(())
    }

    fn call(&self, make: impl FnOnce(SyncSender<Result<(), String>>) -> Command) -> Result<(), String> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx.send(make(reply)).map_err(|_| "mock kafka has stopped".to_string())?;
        rx.recv_timeout(COMMAND_TIMEOUT).map_err(|e| format!("mock kafka did not answer: {e}"))?
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(brokers: i32, rx: Receiver<Command>, ready: SyncSender<Result<String, String>>) {
    let cluster = match MockCluster::new(brokers) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("starting the mock cluster: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(cluster.bootstrap_servers()));
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Command::CreateTopic { name, partitions, reply } => {
                let _ = reply.send(cluster.create_topic(&name, partitions, brokers.min(3)).map_err(|e| e.to_string()));
            }
            Command::BrokerDown { id, reply } => {
                let _ = reply.send(cluster.broker_down(id).map_err(|e| e.to_string()));
            }
            Command::BrokerUp { id, reply } => {
                let _ = reply.send(cluster.broker_up(id).map_err(|e| e.to_string()));
            }
            Command::Stop => break,
        }
    }
}
