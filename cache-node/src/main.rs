//! The `xsite` binary.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use xsite_node::config::{Config, Overrides};

#[derive(Parser)]
#[command(name = "xsite", version, about = "Cross-site replicated key/value cache speaking RESP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a cache node.
    Node(NodeArgs),
    /// Two or three sites in one process on an embedded Kafka mock: try replication with redis-cli.
    Demo(xsite_node::demo::DemoArgs),
    /// Rebuild a site's data directory (or a point in time) by replaying the Kafka log.
    Replay(xsite_node::replay::ReplayArgs),
    /// Compare the contents of several nodes through their admin APIs.
    Verify(xsite_node::ops::VerifyArgs),
    /// Print a node's status (admin API).
    Status(xsite_node::ops::StatusArgs),
}

#[derive(clap::Args)]
struct NodeArgs {
    /// TOML config file.
    #[arg(long, env = "XSITE_CONFIG")]
    config: Option<PathBuf>,
    /// This site's id (overrides the file).
    #[arg(long, env = "XSITE_SITE")]
    site: Option<String>,
    /// RESP port.
    #[arg(long, env = "XSITE_PORT")]
    port: Option<u16>,
    /// Address to bind (RESP and admin).
    #[arg(long, env = "XSITE_BIND")]
    bind: Option<String>,
    #[arg(long, env = "XSITE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// always | everysec | no
    #[arg(long, env = "XSITE_DURABILITY")]
    durability: Option<String>,
    /// Admin HTTP API port (0: any free port).
    #[arg(long, env = "XSITE_ADMIN_PORT")]
    admin_port: Option<u16>,
    /// Kafka bootstrap servers (overrides [kafka].bootstrap_servers).
    #[arg(long, env = "XSITE_KAFKA")]
    kafka: Option<String>,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("XSITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

/// A token cancelled on SIGINT or SIGTERM.
fn shutdown_token() -> CancellationToken {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        c.cancel();
    });
    cancel
}

async fn node(args: NodeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        site: args.site,
        port: args.port,
        bind: args.bind,
        data_dir: args.data_dir,
        durability: args.durability,
        admin_port: args.admin_port,
        kafka_bootstrap: args.kafka,
    };
    let config = Config::resolve(args.config.as_deref(), &overrides)?;
    xsite_node::node::run(config, shutdown_token()).await
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Node(a) => node(a).await,
            Command::Demo(a) => xsite_node::demo::run(a, shutdown_token()).await,
            Command::Replay(a) => xsite_node::replay::run(a).await,
            Command::Verify(a) => xsite_node::ops::verify(a).await,
            Command::Status(a) => xsite_node::ops::status(a).await,
        }
    })
}
