//! Sites as containers on private Docker networks, for the `containers` suites.
//!
//! A *site* is one tansu broker container and one `xsite node` container on the
//! site's own bridge network `<run>-<site>`. The path between sites: every broker is
//! also attached to every other site's network, so the node of site B consumes site
//! A's topic straight from A's broker, by its container name, on B's network.
//!
//! ```text
//!   host (tests, redis-cli) ── 127.0.0.1:<port> (published ports of the nodes)
//!
//!   ┌─ net <run>-site-a ───────────────┐   ┌─ net <run>-site-b ───────────────┐
//!   │ <run>-site-a-node  :6379 :9121   │   │ <run>-site-b-node  :6379 :9121   │
//!   │ <run>-site-a-broker :9092 ───────┼───┼─> (also attached here)           │
//!   │ (also attached here) <───────────┼───┼── <run>-site-b-broker :9092      │
//!   └──────────────────────────────────┘   └──────────────────────────────────┘
//! ```
//!
//! [`Deployment::cut_off`] detaches the site's broker from every other site's network
//! and every other broker from the site's network: the site keeps its own broker and
//! its clients, and loses every other site, both ways. [`Deployment::heal`]
//! re-attaches them. Only brokers ever change networks, and brokers make no
//! connections of their own: a node's networks never change under it. (An earlier
//! layout attached each starting node to a second network right after `docker
//! start`; in 4 runs of 6 the node's first broker request then timed out after 10 s
//! and the node exited. See docs/containers.md.)
//!
//! Images: `xsite:local` and `xsite-tansu:local`, built by `scripts/build-images.sh`
//! (nothing can be pulled). Host ports are fixed per container (chosen free at
//! deployment), so a restarted container answers on the same port.
//!
//! Cleanup: dropping a [`Deployment`] removes its containers (testcontainers), then
//! its volumes and networks. Everything carries the label
//! [`docker::RUN_LABEL`]` = <run id>`; after a crashed run:
//! `docker ps -aq --filter label=org.xsite.test-run | xargs -r docker rm -fv`.

pub mod client;
pub mod docker;

use crate::contents::{self, Snapshot};
use anyhow::{anyhow, bail, Context, Result};
use client::{Admin, Digest, Resp};
use docker::{NetworkGuard, VolumeGuard, RUN_LABEL};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::{IntoContainerPort, Mount};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

pub const XSITE_IMAGE: &str = "xsite";
pub const TANSU_IMAGE: &str = "xsite-tansu";
pub const IMAGE_TAG: &str = "local";

/// Ports inside the containers.
pub const BROKER_PORT: u16 = 9092;
pub const RESP_PORT: u16 = 6379;
pub const ADMIN_PORT: u16 = 9121;
/// The node's Sentinel port in its container (with [`Options::sentinel`]).
pub const SENTINEL_PORT: u16 = 26379;

/// Where the node's config file is copied in the container.
pub const NODE_CONFIG_PATH: &str = "/etc/xsite/node.toml";
/// The only cache the suites use.
pub const CACHE: &str = "default";

/// Longest a node may take to answer PING and `GET /status` after (re)start.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a replay container may run.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a graceful stop waits before Docker sends SIGKILL, in seconds.
pub const STOP_GRACE_SECS: i32 = 20;
/// A convergence slower than this is reported (how many polls found what).
pub const SLOW_CONVERGENCE: Duration = Duration::from_secs(5);
/// Pause between two polls of a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How the sites of a deployment are configured.
#[derive(Debug, Clone)]
pub struct Options {
    /// Partitions of each site's topic.
    pub partitions: i32,
    /// `always`, `everysec` or `no`.
    pub durability: &'static str,
    /// Every node serves Sentinel (published on 127.0.0.1 like its other ports), and
    /// announces its RESP port and every other site's as the host reaches them.
    pub sentinel: bool,
    /// Besides [`CACHE`], every node has the active-passive cache [`PASSIVE_CACHE`]
    /// (`SELECT` [`PASSIVE_DB`]), site-a its first primary, failing over by lease
    /// ([`SELF_FENCE_MS`], [`FAILOVER_MS`]).
    pub passive: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { partitions: 4, durability: "everysec", sentinel: false, passive: false }
    }
}

/// The active-passive cache of [`Options::passive`], and its `SELECT` index.
pub const PASSIVE_CACHE: &str = "sessions";
pub const PASSIVE_DB: u8 = 1;
/// With [`Options::passive`]: a primary whose lease was last renewed longer ago than
/// this stops taking writes; its successor promotes itself once it has not heard from
/// it for [`FAILOVER_MS`] (the margin between them is what a pause may take).
pub const SELF_FENCE_MS: u64 = 3_000;
pub const FAILOVER_MS: u64 = 6_000;
/// A fenced primary whose lease returns before any promotion takes writes again after
/// this long.
pub const UNFENCE_HOLD_DOWN_MS: u64 = 1_000;

/// The loopback ports a site's node is published on.
#[derive(Debug, Clone, Copy)]
pub struct SitePorts {
    pub resp: u16,
    pub admin: u16,
    pub sentinel: u16,
}

/// Container, network and volume names of one site in one run.
#[derive(Debug, Clone)]
pub struct SiteNames {
    pub network: String,
    pub broker: String,
    pub node: String,
    pub broker_volume: String,
    pub node_volume: String,
}

impl SiteNames {
    fn new(run: &str, site: &str) -> SiteNames {
        SiteNames {
            network: format!("{run}-{site}"),
            broker: format!("{run}-{site}-broker"),
            node: format!("{run}-{site}-node"),
            broker_volume: format!("{run}-{site}-broker-data"),
            node_volume: format!("{run}-{site}-node-data"),
        }
    }
}

/// One site: a broker and a node. Field order is drop order: containers first, then
/// the volumes and the network they use.
pub struct Site {
    pub id: String,
    pub names: SiteNames,
    /// Published on 127.0.0.1, fixed for the site's lifetime.
    pub resp_port: u16,
    pub admin_port: u16,
    /// Published only with [`Options::sentinel`].
    pub sentinel_port: Option<u16>,
    node: Option<ContainerAsync<GenericImage>>,
    broker: Option<ContainerAsync<GenericImage>>,
    node_volume: Option<VolumeGuard>,
    broker_volume: Option<VolumeGuard>,
    network: NetworkGuard,
    run: String,
    config_toml: String,
}

/// The topic prefix of a site's topic generation: `xsite.` at first, `xsite.g<n>.`
/// after the site was rebuilt with a new broker ([`Deployment::new_topic_generation`]).
pub fn topic_prefix(generation: u32) -> String {
    match generation {
        0 => "xsite.".to_string(),
        n => format!("xsite.g{n}."),
    }
}

/// Config of a site's node: its broker, and every other site's broker and topic as a
/// remote. `sites` lists every site with its topic generation; with
/// [`Options::sentinel`], `ports` (every site's published ports) give what each node
/// announces.
pub fn node_config(
    run: &str,
    site: &str,
    sites: &[(String, u32)],
    options: &Options,
    ports: &BTreeMap<String, SitePorts>,
) -> String {
    let names = SiteNames::new(run, site);
    let generation = sites.iter().find(|(s, _)| s == site).map_or(0, |(_, g)| *g);
    let announce = match (options.sentinel, ports.get(site)) {
        (true, Some(p)) => format!("announce_host = \"127.0.0.1\"\nannounce_port = {}\n", p.resp),
        _ => String::new(),
    };
    let mut toml = format!(
        "site = \"{site}\"\n\
         data_dir = \"/data\"\n\
         durability = \"{durability}\"\n\
         \n\
         [server]\n\
         bind = \"0.0.0.0\"\n\
         port = {RESP_PORT}\n\
         admin_port = {ADMIN_PORT}\n\
         {announce}\
         \n\
         [kafka]\n\
         bootstrap_servers = \"{broker}:{BROKER_PORT}\"\n\
         topic_prefix = \"{prefix}\"\n\
         partitions = {partitions}\n",
        durability = options.durability,
        broker = names.broker,
        prefix = topic_prefix(generation),
        partitions = options.partitions,
    );
    for (other, generation) in sites.iter().filter(|(s, _)| s != site) {
        let broker = SiteNames::new(run, other).broker;
        let topic = format!("{}{other}", topic_prefix(*generation));
        toml.push_str(&format!(
            "\n[[remote]]\nsite = \"{other}\"\nbootstrap_servers = \"{broker}:{BROKER_PORT}\"\ntopic = \"{topic}\"\n"
        ));
        if let (true, Some(p)) = (options.sentinel, ports.get(other)) {
            toml.push_str(&format!("announce = \"127.0.0.1:{}\"\nsentinel = \"127.0.0.1:{}\"\n", p.resp, p.sentinel));
        }
    }
    if options.passive {
        toml.push_str(&format!(
            "\n[[cache]]\nname = \"{CACHE}\"\ndb = 0\n\
             \n[[cache]]\nname = \"{PASSIVE_CACHE}\"\ndb = {PASSIVE_DB}\ntopology = \"active-passive\"\nprimary = \"site-a\"\n\
             \n[failover]\nmode = \"lease\"\nself_fence_after_ms = {SELF_FENCE_MS}\nfailover_after_ms = {FAILOVER_MS}\n\
             unfence_hold_down_ms = {UNFENCE_HOLD_DOWN_MS}\n"
        ));
    }
    if options.sentinel {
        toml.push_str(&format!(
            "\n[sentinel]\nport = {SENTINEL_PORT}\ndown_after_ms = 2000\nfailback_hold_down_ms = 1000\nfailback_lag_ms = 5000\n"
        ));
    }
    toml
}

/// Publish `ports` of the container on fixed loopback ports (`(container, host)`),
/// instead of testcontainers' default of every exposed port on every interface.
fn publish_on_loopback(ports: Vec<(u16, u16)>) -> impl Fn(&mut HostConfig) + Send + Sync + 'static {
    move |hc: &mut HostConfig| {
        hc.publish_all_ports = Some(false);
        let bindings = ports
            .iter()
            .map(|(container, host)| {
                let binding = PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some(host.to_string()) };
                (format!("{container}/tcp"), Some(vec![binding]))
            })
            .collect();
        hc.port_bindings = Some(bindings);
    }
}

impl Site {
    async fn create(run: &str, id: &str, config_toml: String, ports: SitePorts, sentinel: bool) -> Result<Site> {
        let names = SiteNames::new(run, id);
        let network = NetworkGuard::create(&names.network, run).await?;
        Ok(Site {
            id: id.to_string(),
            resp_port: ports.resp,
            admin_port: ports.admin,
            sentinel_port: sentinel.then_some(ports.sentinel),
            node: None,
            broker: None,
            node_volume: Some(VolumeGuard::create(&names.node_volume, run).await?),
            broker_volume: Some(VolumeGuard::create(&names.broker_volume, run).await?),
            network,
            names,
            run: run.to_string(),
            config_toml,
        })
    }

    pub fn resp(&self) -> Resp {
        Resp::new(self.resp_port)
    }

    pub fn admin(&self) -> Admin {
        Admin::new(self.admin_port)
    }

    /// The node's config file (TOML), as copied into its container.
    pub fn config_toml(&self) -> &str {
        &self.config_toml
    }

    fn labels(&self) -> [(String, String); 2] {
        [(RUN_LABEL.to_string(), self.run.clone()), ("org.xsite.site".to_string(), self.id.clone())]
    }

    fn volume(&self, which: &Option<VolumeGuard>) -> Result<String> {
        which.as_ref().map(|v| v.name.clone()).ok_or_else(|| anyhow!("site {}: volume removed", self.id))
    }

    /// Start the broker (fresh container on the site's volume) on the site's network,
    /// then attach it to the other sites' networks (`others`).
    async fn start_broker(&mut self, others: &[String]) -> Result<()> {
        let advertised = format!("tcp://{}:{BROKER_PORT}", self.names.broker);
        let container = GenericImage::new(TANSU_IMAGE, IMAGE_TAG)
            .with_container_name(&self.names.broker)
            .with_network(&self.network.name)
            .with_labels(self.labels())
            .with_mount(Mount::volume_mount(self.volume(&self.broker_volume)?, "/data"))
            .with_cmd(["broker", "--advertised-listener-url", advertised.as_str()])
            .with_host_config_modifier(publish_on_loopback(Vec::new()))
            .start()
            .await
            .with_context(|| format!("starting {}", self.names.broker))?;
        self.broker = Some(container);
        for network in others {
            docker::network_link(network, &self.names.broker, true).await?;
        }
        Ok(())
    }

    /// Start the node (fresh container on the site's volume) on the site's network,
    /// and wait until it serves.
    async fn start_node(&mut self) -> Result<()> {
        let mut published = vec![(RESP_PORT, self.resp_port), (ADMIN_PORT, self.admin_port)];
        published.extend(self.sentinel_port.map(|p| (SENTINEL_PORT, p)));
        let container = GenericImage::new(XSITE_IMAGE, IMAGE_TAG)
            .with_exposed_port(RESP_PORT.tcp())
            .with_exposed_port(ADMIN_PORT.tcp())
            .with_exposed_port(SENTINEL_PORT.tcp())
            .with_container_name(&self.names.node)
            .with_network(&self.network.name)
            .with_labels(self.labels())
            .with_mount(Mount::volume_mount(self.volume(&self.node_volume)?, "/data"))
            .with_copy_to(NODE_CONFIG_PATH, self.config_toml.clone().into_bytes())
            .with_cmd(["node", "--config", NODE_CONFIG_PATH])
            .with_host_config_modifier(publish_on_loopback(published))
            .start()
            .await
            .with_context(|| format!("starting {}", self.names.node))?;
        self.node = Some(container);
        self.wait_ready().await
    }

    /// Wait until the node answers PING and `GET /status`.
    pub async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        let (mut resp, admin) = (self.resp(), self.admin());
        loop {
            let last = match resp.ping().await {
                Ok(()) => match admin.status().await {
                    Ok(_) => return Ok(()),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(last.context(format!("node of {} not ready within {NODE_READY_TIMEOUT:?}", self.id)));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn node(&self) -> Result<&ContainerAsync<GenericImage>> {
        self.node.as_ref().ok_or_else(|| anyhow!("site {} has no node container", self.id))
    }

    fn broker(&self) -> Result<&ContainerAsync<GenericImage>> {
        self.broker.as_ref().ok_or_else(|| anyhow!("site {} has no broker container", self.id))
    }

    /// SIGKILL the node; its container and data stay.
    pub async fn kill_node(&self) -> Result<()> {
        self.node()?;
        docker::kill(&self.names.node).await
    }

    /// SIGKILL the broker; its container and data stay.
    pub async fn kill_broker(&self) -> Result<()> {
        self.broker()?;
        docker::kill(&self.names.broker).await
    }

    /// SIGTERM the node and wait for it to stop (SIGKILL after [`STOP_GRACE_SECS`]).
    pub async fn stop_node(&self) -> Result<()> {
        self.node()?
            .stop_with_timeout(Some(STOP_GRACE_SECS))
            .await
            .with_context(|| format!("stopping {}", self.names.node))
    }

    /// SIGSTOP the node's process: it keeps its sockets and state, and does nothing
    /// until [`Site::resume_node`].
    pub async fn pause_node(&self) -> Result<()> {
        self.node()?;
        docker::signal(&self.names.node, "STOP").await
    }

    /// SIGCONT a node stopped by [`Site::pause_node`].
    pub async fn resume_node(&self) -> Result<()> {
        self.node()?;
        docker::signal(&self.names.node, "CONT").await
    }

    /// Start the stopped or killed node container again and wait until it serves.
    pub async fn restart_node(&self) -> Result<()> {
        self.node()?.start().await.with_context(|| format!("restarting {}", self.names.node))?;
        self.wait_ready().await
    }

    /// Start the stopped or killed broker container again.
    pub async fn restart_broker(&self) -> Result<()> {
        self.broker()?.start().await.with_context(|| format!("restarting {}", self.names.broker)).map(drop)
    }

    /// Whether the node's main process still runs.
    pub async fn node_running(&self) -> Result<bool> {
        Ok(self.node()?.is_running().await?)
    }

    /// The site burns down: both containers and both volumes are removed. The site's
    /// network and ports stay for the rebuild.
    pub async fn destroy(&mut self) -> Result<()> {
        if let Some(node) = self.node.take() {
            node.rm().await.with_context(|| format!("removing {}", self.names.node))?;
        }
        if let Some(broker) = self.broker.take() {
            broker.rm().await.with_context(|| format!("removing {}", self.names.broker))?;
        }
        if let Some(v) = self.node_volume.take() {
            v.remove().await?;
        }
        if let Some(v) = self.broker_volume.take() {
            v.remove().await?;
        }
        Ok(())
    }

    /// Remove only the node container and its volume (the broker stays).
    pub async fn destroy_node(&mut self) -> Result<()> {
        if let Some(node) = self.node.take() {
            node.rm().await.with_context(|| format!("removing {}", self.names.node))?;
        }
        if let Some(v) = self.node_volume.take() {
            v.remove().await?;
        }
        Ok(())
    }

    /// Fresh, empty volumes after [`Site::destroy`].
    async fn recreate_volumes(&mut self) -> Result<()> {
        if self.node_volume.is_none() {
            self.node_volume = Some(VolumeGuard::create(&self.names.node_volume, &self.run).await?);
        }
        if self.broker_volume.is_none() {
            self.broker_volume = Some(VolumeGuard::create(&self.names.broker_volume, &self.run).await?);
        }
        Ok(())
    }

    /// `xsite replay --config …` into the site's (empty) node volume, in a one-shot
    /// container on the site's network (which reaches every broker). Returns the
    /// replay's output.
    async fn replay(&self) -> Result<String> {
        let name = format!("{}-replay", self.names.node);
        let container = GenericImage::new(XSITE_IMAGE, IMAGE_TAG)
            .with_container_name(&name)
            .with_network(&self.network.name)
            .with_labels(self.labels())
            .with_mount(Mount::volume_mount(self.volume(&self.node_volume)?, "/data"))
            .with_copy_to(NODE_CONFIG_PATH, self.config_toml.clone().into_bytes())
            .with_cmd(["replay", "--config", NODE_CONFIG_PATH])
            .with_host_config_modifier(publish_on_loopback(Vec::new()))
            .start()
            .await
            .with_context(|| format!("starting {name}"))?;
        let deadline = Instant::now() + REPLAY_TIMEOUT;
        let code = loop {
            if let Some(code) = container.exit_code().await? {
                break code;
            }
            if Instant::now() >= deadline {
                bail!("replay of {} still running after {REPLAY_TIMEOUT:?}:\n{}", self.id, docker::log_tail(&name));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        let output = docker::log_tail(&name);
        container.rm().await?;
        if code != 0 {
            bail!("replay of {} exited with {code}:\n{output}", self.id);
        }
        Ok(output)
    }

    fn container_names(&self) -> Vec<&str> {
        let mut names = Vec::new();
        if self.broker.is_some() {
            names.push(self.names.broker.as_str());
        }
        if self.node.is_some() {
            names.push(self.names.node.as_str());
        }
        names
    }
}

/// Several sites replicating to each other. Drop removes everything.
pub struct Deployment {
    pub run: String,
    sites: Vec<Site>,
    options: Options,
    /// Every site with its topic generation.
    generations: Vec<(String, u32)>,
    started: Instant,
    logs_printed: bool,
}

impl Deployment {
    /// Networks, brokers, then nodes; returns when every node serves.
    pub async fn start(site_ids: &[&str], options: Options) -> Result<Deployment> {
        docker::require_images(&[&format!("{XSITE_IMAGE}:{IMAGE_TAG}"), &format!("{TANSU_IMAGE}:{IMAGE_TAG}")]).await?;
        let run = format!("xst{:08x}", rand::random::<u32>());
        let mut dep = Deployment {
            run: run.clone(),
            sites: Vec::new(),
            options,
            generations: site_ids.iter().map(|s| (s.to_string(), 0)).collect(),
            started: Instant::now(),
            logs_printed: false,
        };
        if let Err(e) = dep.launch().await {
            dep.print_logs();
            return Err(e.context(format!("starting deployment {run}")));
        }
        Ok(dep)
    }

    async fn launch(&mut self) -> Result<()> {
        let mut ports = BTreeMap::new();
        for (id, _) in &self.generations {
            let p = docker::free_loopback_ports(3)?;
            ports.insert(id.clone(), SitePorts { resp: p[0], admin: p[1], sentinel: p[2] });
        }
        for (id, _) in &self.generations {
            let config = node_config(&self.run, id, &self.generations, &self.options, &ports);
            self.sites.push(Site::create(&self.run, id, config, ports[id], self.options.sentinel).await?);
        }
        for i in 0..self.sites.len() {
            let others = self.other_networks(&self.sites[i].id);
            self.sites[i].start_broker(&others).await?;
        }
        for site in &mut self.sites {
            site.start_node().await?;
        }
        Ok(())
    }

    /// The networks of every site but `id`.
    fn other_networks(&self, id: &str) -> Vec<String> {
        self.sites.iter().filter(|s| s.id != id).map(|s| s.network.name.clone()).collect()
    }

    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    pub fn site(&self, id: &str) -> &Site {
        self.sites.iter().find(|s| s.id == id).unwrap_or_else(|| panic!("no site {id}"))
    }

    pub fn site_mut(&mut self, id: &str) -> &mut Site {
        self.sites.iter_mut().find(|s| s.id == id).unwrap_or_else(|| panic!("no site {id}"))
    }

    /// Cut a site off from every other site, both ways; the host still reaches it.
    pub async fn cut_off(&self, id: &str) -> Result<()> {
        self.cut_links(id, false).await
    }

    /// Reconnect a cut-off site.
    pub async fn heal(&self, id: &str) -> Result<()> {
        self.cut_links(id, true).await
    }

    /// Cut one direction of the path between two sites: `to` no longer hears `from`
    /// (`from`'s broker leaves `to`'s network), while `from` still hears `to`.
    pub async fn cut_one_way(&self, from: &str, to: &str) -> Result<()> {
        docker::network_link(&self.site(to).network.name, &self.site(from).names.broker, false).await
    }

    /// Restore what [`Deployment::cut_one_way`] cut.
    pub async fn heal_one_way(&self, from: &str, to: &str) -> Result<()> {
        docker::network_link(&self.site(to).network.name, &self.site(from).names.broker, true).await
    }

    /// Detach (or attach) `id`'s broker from (to) the other sites' networks, and the
    /// other sites' brokers from (to) `id`'s network.
    async fn cut_links(&self, id: &str, attach: bool) -> Result<()> {
        let site = self.site(id);
        for other in self.sites.iter().filter(|s| s.id != id) {
            if site.broker.is_some() {
                docker::network_link(&other.network.name, &site.names.broker, attach).await?;
            }
            if other.broker.is_some() {
                docker::network_link(&site.network.name, &other.names.broker, attach).await?;
            }
        }
        Ok(())
    }

    /// Restart a killed or stopped broker; a restarted container keeps its networks.
    pub async fn restart_broker(&self, id: &str) -> Result<()> {
        self.site(id).restart_broker().await
    }

    /// Rebuild a destroyed site: a fresh broker, `xsite replay` into an empty data
    /// directory (every topic the site reads, from the beginning), then the node.
    /// Returns the replay's output.
    pub async fn rebuild_site(&mut self, id: &str) -> Result<String> {
        let others = self.other_networks(id);
        let site = self.sites.iter_mut().find(|s| s.id == id).ok_or_else(|| anyhow!("no site {id}"))?;
        site.recreate_volumes().await?;
        if site.broker.is_none() {
            site.start_broker(&others).await?;
        }
        let output = site.replay().await?;
        site.start_node().await?;
        Ok(output)
    }

    /// Give `id` a new topic generation (`xsite.g<n>.<site>`, see [`topic_prefix`]) and
    /// rewrite every site's config accordingly. Running nodes keep their old config
    /// until [`Deployment::recreate_node`] (or, for `id`, the rebuild).
    pub fn new_topic_generation(&mut self, id: &str) -> Result<String> {
        let entry = self.generations.iter_mut().find(|(s, _)| s == id).ok_or_else(|| anyhow!("no site {id}"))?;
        entry.1 += 1;
        let topic = format!("{}{id}", topic_prefix(entry.1));
        let ports: BTreeMap<String, SitePorts> = self
            .sites
            .iter()
            .map(|s| {
                let p = SitePorts { resp: s.resp_port, admin: s.admin_port, sentinel: s.sentinel_port.unwrap_or(0) };
                (s.id.clone(), p)
            })
            .collect();
        for site in &mut self.sites {
            site.config_toml = node_config(&self.run, &site.id, &self.generations, &self.options, &ports);
        }
        Ok(topic)
    }

    /// Replace a node's container by a new one with the site's current config, on the
    /// same data volume (a restart with a changed config file).
    pub async fn recreate_node(&mut self, id: &str) -> Result<()> {
        let site = self.sites.iter_mut().find(|s| s.id == id).ok_or_else(|| anyhow!("no site {id}"))?;
        if let Some(node) = site.node.take() {
            node.stop_with_timeout(Some(STOP_GRACE_SECS)).await?;
            node.rm().await.with_context(|| format!("removing {}", site.names.node))?;
        }
        site.start_node().await
    }

    /// Each site's digest of [`CACHE`].
    pub async fn digests(&self) -> Result<BTreeMap<String, Digest>> {
        let mut out = BTreeMap::new();
        for site in &self.sites {
            out.insert(site.id.clone(), site.admin().digest(CACHE).await?);
        }
        Ok(out)
    }

    /// Wait until every site holds identical contents: same key count and digest
    /// (admin API), then the same full contents (SCAN, GET, PEXPIRETIME: values and
    /// absolute expiry times; a key that expired between two sites' reads is no
    /// difference). With `expected_keys`, the count must also match. Returns the
    /// first site's contents.
    pub async fn wait_converged(&self, expected_keys: Option<usize>, timeout: Duration) -> Result<Snapshot> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut polls = BTreeMap::<&'static str, u32>::new();
        loop {
            let state = self.converged_contents(expected_keys).await;
            match state {
                Ok(Ok(contents)) => {
                    if started.elapsed() > SLOW_CONVERGENCE {
                        eprintln!("converged after {:?}; polls that found a difference: {polls:?}", started.elapsed());
                    }
                    return Ok(contents);
                }
                Ok(Err(why)) if Instant::now() < deadline => {
                    *polls.entry(why).or_default() += 1;
                    tokio::time::sleep(POLL_INTERVAL).await
                }
                Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL_INTERVAL).await,
                Ok(Err(_)) => return Err(self.divergence_report(expected_keys, timeout).await),
                Err(e) => return Err(e.context(format!("sites did not converge within {timeout:?}"))),
            }
        }
    }

    /// The common contents, or which check found a difference.
    async fn converged_contents(&self, expected_keys: Option<usize>) -> Result<Result<Snapshot, &'static str>> {
        let digests = self.digests().await?;
        let first = digests.values().next().expect("at least one site");
        if digests.values().any(|d| d != first) {
            return Ok(Err("digests"));
        }
        if expected_keys.is_some_and(|n| first.keys != n as u64) {
            return Ok(Err("key count"));
        }
        let mut snapshots = Vec::new();
        for site in &self.sites {
            snapshots.push(site.resp().snapshot().await?);
        }
        // Keys only disappear now (they expire): the count read after a snapshot
        // bounds it from below, the one read before from above.
        let after = self.digests().await?;
        for (site, snapshot) in self.sites.iter().zip(&snapshots) {
            let len = snapshot.len() as u64;
            if len > digests[&site.id].keys || len < after[&site.id].keys {
                return Ok(Err("scanned count"));
            }
        }
        if snapshots[1..].iter().any(|s| !contents::differences(&snapshots[0], s).is_empty()) {
            return Ok(Err("contents"));
        }
        Ok(Ok(snapshots.swap_remove(0)))
    }

    async fn divergence_report(&self, expected_keys: Option<usize>, timeout: Duration) -> anyhow::Error {
        let mut report = format!("sites did not converge within {timeout:?} (expected keys: {expected_keys:?})");
        if let Ok(digests) = self.digests().await {
            for (site, d) in digests {
                report.push_str(&format!("\n  {site}: {} keys, digest {}", d.keys, d.digest));
            }
        }
        let mut snapshots = Vec::new();
        for site in &self.sites {
            if let Ok(s) = site.resp().snapshot().await {
                snapshots.push((site.id.clone(), s));
            }
        }
        for pair in snapshots.windows(2) {
            report.push('\n');
            report.push_str(&contents::describe_differences(&pair[0].0, &pair[0].1, &pair[1].0, &pair[1].1));
        }
        for site in &self.sites {
            if let Ok(status) = site.admin().status().await {
                report.push_str(&format!("\n  status of {}: {}", site.id, status["replication"]));
            }
        }
        anyhow!(report)
    }

    /// Print the tail of every container's log (once).
    pub fn print_logs(&mut self) {
        if self.logs_printed {
            return;
        }
        self.logs_printed = true;
        for site in &self.sites {
            for name in site.container_names() {
                eprintln!(
                    "===== {name}: {}; last {} lines of its log =====",
                    docker::state(name),
                    docker::LOG_TAIL_LINES
                );
                eprintln!("{}", docker::log_tail(name));
            }
        }
    }

    /// End a scenario: on error print the containers' logs and panic with the error;
    /// either way remove everything.
    pub fn finish(mut self, result: Result<()>) {
        eprintln!(
            "deployment {} ({} sites): {:?} from start to finish",
            self.run,
            self.sites.len(),
            self.started.elapsed()
        );
        if let Err(e) = result {
            self.print_logs();
            panic!("{e:#}");
        }
    }
}

impl Drop for Deployment {
    /// Containers first, all of them: a site's network is also used by the other
    /// sites' brokers, so it can only go once every container is gone. Volumes and
    /// networks follow as the sites' fields drop.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for site in &mut self.sites {
            drop(site.node.take());
            drop(site.broker.take());
        }
    }
}
