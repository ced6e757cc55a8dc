//! The `xsite` binary. An error ends it with one line on stderr, `error: ` and the
//! error with its causes as one sentence (never a backtrace, whatever
//! `RUST_BACKTRACE` says), and exit status 1.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use xsite_node::config::{Config, Overrides};

/// jemalloc, as Redis uses: a write allocates and frees a few dozen small blocks
/// (the command's arguments, its log entry and encoding, the reply), and glibc's
/// malloc spent over a quarter of a SET's instructions on them
/// (`scripts/profile-write.sh`, docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Print a node's status (admin API): a table of its sites, or --json.
    Status(xsite_node::ops::StatusArgs),
    /// Act on a node through its admin API: a remote site offline, online or
    /// state-transfer; a cache push-state, promote or demote.
    Site(xsite_node::ops::SiteArgs),
}

/// The site of a node started with neither `--site` (`XSITE_SITE`) nor a config
/// file: such a node has no `[kafka]`, so it replicates with no one.
const DEFAULT_SITE: &str = "local";

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
    /// Redis Sentinel port (overrides [sentinel].port; 0: any free port).
    #[arg(long, env = "XSITE_SENTINEL_PORT")]
    sentinel_port: Option<u16>,
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
    let site = match (&args.site, &args.config) {
        (None, None) => {
            tracing::warn!(
                site = DEFAULT_SITE,
                "no site given (--site, XSITE_SITE or a config file): running alone as site '{DEFAULT_SITE}'; give each site its own id before it replicates"
            );
            Some(DEFAULT_SITE.to_string())
        }
        _ => args.site,
    };
    let overrides = Overrides {
        site,
        port: args.port,
        bind: args.bind,
        data_dir: args.data_dir,
        durability: args.durability,
        admin_port: args.admin_port,
        kafka_bootstrap: args.kafka,
        sentinel_port: args.sentinel_port,
    };
    let config = Config::resolve(args.config.as_deref(), &overrides)?;
    xsite_node::node::run(config, shutdown_token()).await
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Node(a) => node(a).await,
            Command::Demo(a) => xsite_node::demo::run(a, shutdown_token()).await,
            Command::Replay(a) => xsite_node::replay::run(a).await,
            Command::Verify(a) => xsite_node::ops::verify(a).await,
            Command::Status(a) => xsite_node::ops::status(a).await,
            Command::Site(a) => xsite_node::ops::site(a).await,
        }
    })
}

/// The error and its causes on one line, each said once (a cause whose text its
/// error already includes is left out).
fn sentence(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Not `{:?}` (what returning the error from main prints): it adds a
            // backtrace under RUST_BACKTRACE.
            eprintln!("error: {}", sentence(&err));
            ExitCode::FAILURE
        }
    }
}
