//! `xsite demo`: two or three sites in one process, replicating through an embedded
//! Kafka mock (librdkafka's mock cluster). No setup: each site prints its RESP port.

use crate::config::{Config, KafkaConfig, RemoteConfig};
use crate::node::{self, RunningNode};
use crate::wal::Durability;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use xsite_log_shipper::mock::MockKafka;
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
            for r in &mut c.remotes {
                let j = SITE_NAMES.iter().position(|n| *n == r.site.as_str()).expect("a demo site");
                r.sentinel = Some(format!("127.0.0.1:{}", args.sentinel_base_port + j as u16));
            }
        }
    }
    create_mock_topics(&kafka, &configs)?;
    let mut nodes: Vec<RunningNode> = Vec::new();
    for c in configs {
        c.validate()?;
        nodes.push(node::start(c, cancel.clone()).await?);
    }
    // Print the ports once every site consumes every other site's topic.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let consuming =
        |n: &RunningNode| n.replication.as_ref().is_none_or(|r| r.consumer_stats.values().all(|s| s.is_assigned()));
    while !nodes.iter().all(consuming) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    println!("xsite demo: {sites} sites replicating through an embedded Kafka mock at {}", kafka.bootstrap_servers());
    for (i, n) in nodes.iter().enumerate() {
        let admin = n.admin_addr.map(|a| format!("http://{a}")).unwrap_or_default();
        let sentinel = n.sentinel_addr.map(|a| format!("   sentinel redis-cli -p {}", a.port())).unwrap_or_default();
        println!("  {}  redis-cli -p {}   admin {}{sentinel}", SITE_NAMES[i], n.resp_addr.port(), admin);
    }
    if let Some(s) = nodes[0].sentinel_addr {
        println!(
            "where to write: redis-cli -p {} sentinel get-master-addr-by-name default (the first site caught up; default@site-b: site-b while it is)",
            s.port()
        );
    }
    println!(
        "try: redis-cli -p {} set greeting hello; redis-cli -p {} get greeting",
        nodes[0].resp_addr.port(),
        nodes[1].resp_addr.port()
    );
    println!("data in {}; Ctrl-C stops", root.display());
    for n in nodes {
        n.wait().await?;
    }
    drop(kafka);
    Ok(())
}
