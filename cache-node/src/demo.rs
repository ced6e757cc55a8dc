//! `xsite demo`: two or three sites in one process, replicating through an embedded
//! Kafka mock (librdkafka's mock cluster). No setup: each site prints its RESP port
//! (and its Sentinel port); `stop <site>` / `start <site>` typed into it take a site
//! down and bring it back, to watch clients fail over and back.

use crate::config::{Config, KafkaConfig, RemoteConfig};
use crate::node::{self, RunningNode};
use crate::wal::Durability;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use xsite_schemas::kafka::mock::MockKafka;
use xsite_schemas::SiteId;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of sites (2 or 3).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=3))]
    pub sites: u8,
    /// RESP port of the first site; the others follow (0: any free ports).
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// Where the sites keep their data (default: a fresh temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// WAL durability of every site. Only durable writes are shipped, so `always`
    /// (fsync per group commit) replicates fastest; `everysec` ships once a second.
    #[arg(long, default_value = "always")]
    pub durability: Durability,
    /// Sentinel port of the first site; the others follow (0: no Sentinel). Needs a
    /// fixed --base-port: a Sentinel names the other sites by their ports.
    #[arg(long, default_value_t = 26379)]
    pub sentinel_base_port: u16,
}

/// Site ids of the demo and of in-process multi-site tests.
pub const SITE_NAMES: [&str; 5] = ["site-a", "site-b", "site-c", "site-d", "site-e"];
const DEMO_PARTITIONS: i32 = 4;

/// Configs of `n` sites (site-a, site-b, …) in a full mesh on one Kafka cluster:
/// each site publishes to its own topic and consumes every other site's topic.
/// RESP ports are `base_port + i` (0: any free port), which each site announces to
/// the others; admin APIs on free ports.
pub fn mesh_configs(
    n: usize,
    bootstrap: &str,
    root: &std::path::Path,
    durability: Durability,
    base_port: u16,
) -> Vec<Config> {
    (0..n)
        .map(|i| {
            let site = SiteId::new(SITE_NAMES[i]).expect("valid site id");
            let mut c = Config::for_site(site);
            c.data_dir = root.join(SITE_NAMES[i]);
            c.durability = durability;
            c.server.port = if base_port == 0 { 0 } else { base_port + i as u16 };
            c.server.admin_port = Some(0);
            let mut kafka: KafkaConfig =
                toml::from_str(&format!("bootstrap_servers = {bootstrap:?}")).expect("valid kafka section");
            kafka.create_topics = false;
            kafka.partitions = DEMO_PARTITIONS;
            c.kafka = Some(kafka);
            c.remotes = (0..n)
                .filter(|&j| j != i)
                .map(|j| RemoteConfig {
                    site: SiteId::new(SITE_NAMES[j]).expect("valid"),
                    bootstrap_servers: None,
                    topic: None,
                    admin_url: None,
                    admin_token: None,
                    announce: (base_port != 0).then(|| format!("127.0.0.1:{}", base_port + j as u16)),
                    sentinel: None,
                })
                .collect();
            c
        })
        .collect()
}

/// Lines typed on stdin, read on a thread of their own (a blocked read must not
/// hold up the runtime's shutdown); `None` once stdin closes.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Create each site's topic and dead-letter topic on the mock cluster.
pub fn create_mock_topics(kafka: &MockKafka, configs: &[Config]) -> anyhow::Result<()> {
    for c in configs {
        let k = c.kafka.as_ref().expect("kafka configured");
        kafka.create_topic(&c.topic_for(&c.site).expect("kafka set"), k.partitions).map_err(anyhow::Error::msg)?;
        kafka.create_topic(&crate::replication::dlq_topic(k, &c.site), 1).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Run the demo until `cancel` (Ctrl-C).
pub async fn run(args: DemoArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let kafka = MockKafka::start(1).map_err(anyhow::Error::msg)?;
    let tmp;
    let root = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("xsite-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let sites = usize::from(args.sites);
    let mut configs = mesh_configs(sites, kafka.bootstrap_servers(), &root, args.durability, args.base_port);
    let sentinels = args.base_port != 0 && args.sentinel_base_port != 0;
    if sentinels {
        for (i, c) in configs.iter_mut().enumerate() {
            c.sentinel.port = Some(args.sentinel_base_port + i as u16);
            // The demo's sites share one machine: notice a stopped one quickly.
            c.sentinel.down_after_ms = 2_000;
            c.sentinel.failback_hold_down_ms = 1_000;
            for r in &mut c.remotes {
                let j = SITE_NAMES.iter().position(|n| *n == r.site.as_str()).expect("a demo site");
                r.sentinel = Some(format!("127.0.0.1:{}", args.sentinel_base_port + j as u16));
            }
        }
    }
    create_mock_topics(&kafka, &configs)?;
    let mut nodes: Vec<Option<(RunningNode, CancellationToken)>> = Vec::new();
    for c in &configs {
        c.validate()?;
        let token = cancel.child_token();
        nodes.push(Some((node::start(c.clone(), token.clone()).await?, token)));
    }
    // Print the ports once every site consumes every other site's topic.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let consuming = |n: &Option<(RunningNode, CancellationToken)>| {
        n.as_ref().is_none_or(|(n, _)| {
            n.replication.as_ref().is_none_or(|r| r.consumer_stats.values().all(|s| s.is_assigned()))
        })
    };
    while !nodes.iter().all(consuming) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let running: Vec<&RunningNode> = nodes.iter().flatten().map(|(n, _)| n).collect();
    println!("xsite demo: {sites} sites replicating through an embedded Kafka mock at {}", kafka.bootstrap_servers());
    for (i, n) in running.iter().enumerate() {
        let admin = n.admin_addr.map(|a| format!("http://{a}")).unwrap_or_default();
        let sentinel = n.sentinel_addr.map(|a| format!("   sentinel redis-cli -p {}", a.port())).unwrap_or_default();
        println!("  {}  redis-cli -p {}   admin {}{sentinel}", SITE_NAMES[i], n.resp_addr.port(), admin);
    }
    if let Some(s) = running[0].sentinel_addr {
        println!(
            "where to write: redis-cli -p {} sentinel get-master-addr-by-name default (the first site caught up; default@site-b: site-b while it is)",
            s.port()
        );
    }
    println!(
        "try: redis-cli -p {} set greeting hello; redis-cli -p {} get greeting",
        running[0].resp_addr.port(),
        running[1].resp_addr.port()
    );
    println!("type `stop site-a` or `start site-a` here to take a site down and bring it back");
    println!("data in {}; Ctrl-C stops", root.display());
    let mut commands = stdin_lines();
    loop {
        let line = tokio::select! {
            _ = cancel.cancelled() => break,
            line = commands.recv() => line,
        };
        let Some(line) = line else {
            cancel.cancelled().await; // no terminal: run until Ctrl-C
            break;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let target = words.get(1).and_then(|w| SITE_NAMES[..sites].iter().position(|n| n == w));
        match (words.first().copied(), target) {
            (Some("stop"), Some(i)) => match nodes[i].take() {
                Some((n, token)) => {
                    token.cancel();
                    match n.wait().await {
                        Ok(()) => println!("{} stopped: Sentinel clients go to another site", SITE_NAMES[i]),
                        Err(e) => println!("{} stopped with an error: {e:#}", SITE_NAMES[i]),
                    }
                }
                None => println!("{} is not running", SITE_NAMES[i]),
            },
            (Some("start"), Some(i)) if nodes[i].is_none() => {
                let token = cancel.child_token();
                match node::start(configs[i].clone(), token.clone()).await {
                    Ok(n) => {
                        nodes[i] = Some((n, token));
                        println!("{} started: named again once it has caught up", SITE_NAMES[i]);
                    }
                    Err(e) => println!("{} did not start: {e:#}", SITE_NAMES[i]),
                }
            }
            (Some("start"), Some(i)) => println!("{} is running", SITE_NAMES[i]),
            (None, _) => {}
            _ => println!("commands: stop <site>, start <site> (sites: {})", SITE_NAMES[..sites].join(", ")),
        }
    }
    for (n, _) in nodes.into_iter().flatten() {
        n.wait().await?;
    }
    drop(kafka);
    Ok(())
}
