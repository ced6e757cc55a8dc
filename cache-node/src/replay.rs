//! `xsite replay`: rebuild a site's data directory from the Kafka log (disaster
//! recovery), optionally only up to a point in time.
//!
//! It reads every partition of the site's own topic and of each remote site's topic
//! from the beginning up to the end it sees when it starts, applies each entry (the
//! same join as live replication, so order and duplicates do not matter), then
//! records the positions so a node started on the directory ships nothing twice and
//! resumes consuming right after what was replayed. With `--until-ms T`, entries
//! whose timestamp is after `T` are left out — and, since the positions are recorded
//! past them, they stay out when the node starts: that is what a point-in-time
//! restore means. Kafka's retention bounds how far back a replay reaches.

use crate::config::{Config, Overrides};
use crate::engine::Engine;
use crate::replication::client_config;
use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use xsite_consumer::OffsetStore;
use xsite_log_shipper::ShipCheckpoint;
use xsite_schemas::{decode, LogEntry};

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The site's config file (its [kafka] and [[remote]] sections say what to read).
    #[arg(long)]
    pub config: PathBuf,
    /// Rebuild into this directory instead of the config's data_dir. Must be empty.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Leave out entries written after this time (Unix milliseconds).
    #[arg(long)]
    pub until_ms: Option<u64>,
}

/// Timeout of one metadata or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A poll that returns nothing this many times in a row while the end is not reached
/// means the broker stopped answering.
const EMPTY_POLLS_MAX: u32 = 300;
/// Entries queued between the reading thread and the applier.
const QUEUE_LEN_MAX: usize = 4096;

#[derive(Debug, Default)]
pub struct ReplayReport {
    pub read: u64,
    pub applied: u64,
    pub skipped_after_until: u64,
    pub undecodable: u64,
    /// `(topic, partition) → last offset read`.
    pub positions: BTreeMap<(String, i32), i64>,
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let o = Overrides { data_dir: args.data_dir.clone(), ..Overrides::default() };
    let config = Config::resolve(Some(&args.config), &o)?;
    let report = replay(&config, args.until_ms).await?;
    println!(
        "replayed into {}: read {} entries, applied {}, left out {} after --until-ms, {} undecodable",
        config.data_dir.display(),
        report.read,
        report.applied,
        report.skipped_after_until,
        report.undecodable
    );
    Ok(())
}

/// Replay into `config.data_dir`, which must be empty or absent.
pub async fn replay(config: &Config, until_ms: Option<u64>) -> anyhow::Result<ReplayReport> {
    let kafka = config.kafka.as_ref().context("replay needs a [kafka] section in the config")?;
    if config.data_dir.exists() && std::fs::read_dir(&config.data_dir)?.next().is_some() {
        anyhow::bail!("data dir {} is not empty; replay rebuilds into an empty directory", config.data_dir.display());
    }
    let engine = Engine::open(config).await?;
    let mut sources = vec![(config.topic_for(&config.site).expect("kafka"), kafka.bootstrap_servers.clone())];
    for r in &config.remotes {
        let bootstrap = r.bootstrap_servers.clone().unwrap_or_else(|| kafka.bootstrap_servers.clone());
        sources.push((config.topic_for(&r.site).expect("kafka"), bootstrap));
    }
    let mut report = ReplayReport::default();
    for (topic, bootstrap) in sources {
        let client = client_config(kafka, &bootstrap);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<LogEntry>(QUEUE_LEN_MAX);
        let t = topic.clone();
        let reader = tokio::task::spawn_blocking(move || read_topic(client, &t, tx));
        while let Some(entry) = rx.recv().await {
            if entry.message_key().is_none() {
                continue; // a heartbeat: nothing to rebuild from it (a unit is applied whole)
            }
            report.read += 1;
            if until_ms.is_some_and(|u| entry.hlc.wall_ms() > u) {
                report.skipped_after_until += 1;
                continue;
            }
            if engine.apply_remote(entry).await? {
                report.applied += 1;
            }
        }
        let (positions, undecodable) = reader.await??;
        report.undecodable += undecodable;
        report.positions.extend(positions.into_iter().map(|(p, o)| ((topic.clone(), p), o)));
    }
    save_positions(config, &engine, &report)?;
    engine.snapshot().await?;
    engine.wal().sync().await?;
    tracing::info!(applied = report.applied, read = report.read, "replay finished");
    Ok(report)
}

/// The shipper starts after everything replayed (nothing is shipped twice); the
/// consumers start after the last offset read.
fn save_positions(config: &Config, engine: &Engine, report: &ReplayReport) -> anyhow::Result<()> {
    let db = sled::open(config.sled_dir())?;
    ShipCheckpoint::open(&db)?.advance(engine.wal().last_lsn().0)?;
    let own = config.topic_for(&config.site).expect("kafka");
    let offsets = OffsetStore::open(&db)?;
    for ((topic, partition), offset) in &report.positions {
        if *topic != own {
            offsets.advance(topic, *partition, *offset)?;
        }
    }
    db.flush()?;
    Ok(())
}

/// Read a topic from the beginning to the end seen now. Returns the last offset read
/// per partition and how many messages were not entries.
fn read_topic(
    client: rdkafka::ClientConfig,
    topic: &str,
    tx: tokio::sync::mpsc::Sender<LogEntry>,
) -> anyhow::Result<(BTreeMap<i32, i64>, u64)> {
    let mut client = client;
    client.set("group.id", "xsite-replay").set("enable.auto.commit", "false");
    let consumer: BaseConsumer = client.create()?;
    let md = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let partitions = md.topics().first().map(|t| t.partitions().len() as i32).unwrap_or(0);
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, REQUEST_TIMEOUT)?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    tracing::info!(topic, partitions, non_empty = ends.len(), "replaying topic");
    let mut positions = BTreeMap::new();
    let mut undecodable = 0;
    if ends.is_empty() {
        return Ok((positions, 0));
    }
    consumer.assign(&tpl)?;
    let mut empty_polls = 0;
    while positions.len() < ends.len() || positions.iter().any(|(p, o)| *o + 1 < ends[p]) {
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
            empty_polls += 1;
            anyhow::ensure!(empty_polls < EMPTY_POLLS_MAX, "topic {topic}: no data for 30 s before reaching the end");
            continue;
        };
        empty_polls = 0;
        let msg = msg?;
        if msg.offset() >= *ends.get(&msg.partition()).unwrap_or(&0) {
            continue;
        }
        positions.insert(msg.partition(), msg.offset());
        match decode(msg.payload().unwrap_or_default()) {
            Ok(entry) => tx.blocking_send(entry).map_err(|_| anyhow::anyhow!("replay applier stopped"))?,
            Err(err) => {
                undecodable += 1;
                tracing::warn!(topic, partition = msg.partition(), offset = msg.offset(), error = %err, "not an entry; left out");
            }
        }
    }
    Ok((positions, undecodable))
}
