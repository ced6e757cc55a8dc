//! Node configuration: a TOML file, overridden by environment variables and flags.
//!
//! Precedence, highest first: command-line flag, environment variable (`XSITE_*`),
//! config file, built-in default. Every error names the field it is about.
//!
//! ```toml
//! site = "site-a"
//! data_dir = "data/site-a"
//! durability = "everysec"      # always | everysec | no
//!
//! [server]
//! bind = "127.0.0.1"
//! port = 6379
//! admin_port = 9121            # leave out for no admin HTTP API
//! admin_token = "s3cret"       # admin POSTs then need `Authorization: Bearer s3cret` (GETs stay open)
//! announce_host = "10.0.0.5"   # what clients reach; named by Sentinel and ROLE (default: bind)
//! announce_port = 6379         # (default: the port bound)
//!
//! [[cache]]
//! name = "default"
//! db = 0
//! policy = "last-write-wins"   # prefer-site:<id> | prefer-non-null | always-remove
//! topology = "active-active"   # or active-passive, with primary = "<site>"
//!
//! [kafka]                      # leave out to run a single site without replication
//! bootstrap_servers = "127.0.0.1:9092"
//! max_entry_bytes = 983040     # largest Kafka message a write may become (entry + key)
//!
//! [[remote]]
//! site = "site-b"              # consumed from this site's topic
//! admin_url = "http://b:9121"  # its admin API, for state transfers (optional)
//! admin_token = "…"            # its server.admin_token, if it has one
//! announce = "b.example:6379"  # its RESP port as clients reach it (for Sentinel answers)
//! sentinel = "b.example:26379" # its Sentinel port (listed by SENTINEL sentinels)
//!
//! [sites]                      # health checks of every remote site (defaults shown)
//! health_check_interval_ms = 1000   # a metadata request and the partitions' offsets, per remote
//! health_check_timeout_ms = 2000    # bound on each request of a check
//! take_offline_after_failures = 8   # consecutive failed checks; 0: never for failures
//! take_offline_after_ms = 30000     # without progress (end offsets, heartbeats); 0: never
//! auto_bring_online = true          # back online once reachable and progressing; false: wait
//!                                   # for POST /sites/{site}/online
//! retry_backoff_initial_ms = 1000   # while offline for its checks: checked after this,
//! retry_backoff_max_ms = 60000      # doubled after each failed check, up to this
//!
//! [sentinel]                   # the Redis Sentinel protocol (leave out port: none)
//! port = 26379
//! order = ["site-a", "site-b"] # active-active: `<cache>` names the first site up and caught up
//! failback_lag_ms = 5000       # caught up: lagging every site that is up by at most this
//! failback_hold_down_ms = 5000 # a site back is named again after staying caught up this long
//! down_after_ms = 5000         # a remote site not heard from this long is down
//!
//! [pubsub]                     # pub/sub and keyspace notifications (defaults shown)
//! notify_keyspace_events = ""  # Redis's letters, e.g. "KEA"; CONFIG SET changes it until restart
//! subscriber_buffer_bytes_max = 33554432     # a subscriber this far behind is disconnected
//! subscriber_buffer_soft_bytes_max = 8388608 # …or this far behind for subscriber_buffer_soft_ms
//! subscriber_buffer_soft_ms = 60000
//!
//! [failover]                   # active-passive caches (defaults shown)
//! mode = "manual"              # or "lease": self-fencing primary, self-promoting successor
//! self_fence_after_ms = 5000   # primary: no write without a heartbeat acknowledged this recently
//! failover_after_ms = 9000     # successor: promote after the primary is silent this long
//! unfence_hold_down_ms = 3000  # a fenced primary whose lease came back waits this long
//! successors = ["site-a", "site-b"]  # who succeeds whom (default: sorted by id)
//! witness = "site-c"           # a third site whose acknowledgement also renews the
//!                              # lease, and without whose vote the successor never
//!                              # promotes (default: none, two-site rules)
//! ```
//!
//! A site an operator took offline (`POST /sites/{site}/offline`) stays offline until an
//! operator brings it back, whatever `auto_bring_online` says.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use xsite_consumer::merge::{parse_policy, MergePolicy, CONFLICT_WINDOW_MS_DEFAULT};
use xsite_schemas::{CacheName, SiteId};

use crate::wal::Durability;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into() }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub site: SiteId,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_durability")]
    pub durability: Durability,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub wal: WalSettings,
    #[serde(default)]
    pub hlc: HlcConfig,
    #[serde(default = "default_caches", rename = "cache")]
    pub caches: Vec<CacheConfig>,
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    #[serde(default, rename = "remote")]
    pub remotes: Vec<RemoteConfig>,
    #[serde(default)]
    pub sites: SitesConfig,
    #[serde(default)]
    pub sentinel: SentinelConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    #[serde(default)]
    pub pubsub: PubsubConfig,
}

/// Pub/sub on the data port and keyspace notifications (see `crate::pubsub` and
/// `crate::notify`). The buffer limits are Redis's `client-output-buffer-limit
/// pubsub 32mb 8mb 60`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PubsubConfig {
    /// Redis's `notify-keyspace-events` letters (`K E g $ l s h z x e t m n d A`);
    /// empty: no notifications.
    pub notify_keyspace_events: String,
    /// A subscriber with more than this many bytes of messages not yet written to
    /// it is disconnected.
    pub subscriber_buffer_bytes_max: usize,
    /// …and one above this many for `subscriber_buffer_soft_ms`.
    pub subscriber_buffer_soft_bytes_max: usize,
    pub subscriber_buffer_soft_ms: u64,
}

impl Default for PubsubConfig {
    fn default() -> Self {
        let limits = crate::pubsub::Limits::default();
        PubsubConfig {
            notify_keyspace_events: String::new(),
            subscriber_buffer_bytes_max: limits.buffer_bytes_max,
            subscriber_buffer_soft_bytes_max: limits.buffer_soft_bytes_max,
            subscriber_buffer_soft_ms: limits.buffer_soft_ms,
        }
    }
}

impl PubsubConfig {
    /// The hub's limits.
    pub fn limits(&self) -> crate::pubsub::Limits {
        crate::pubsub::Limits {
            buffer_bytes_max: self.subscriber_buffer_bytes_max,
            buffer_soft_bytes_max: self.subscriber_buffer_soft_bytes_max,
            buffer_soft_ms: self.subscriber_buffer_soft_ms,
        }
    }

    /// The notification flags (validated by [`Config::validate`]; none if invalid).
    pub fn notify_flags(&self) -> u32 {
        crate::notify::parse_flags(self.notify_keyspace_events.as_bytes()).unwrap_or(0)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub bind: String,
    pub port: u16,
    /// Connections beyond this wait in the accept queue.
    pub connections_max: usize,
    /// Admin HTTP API port (metrics, status, site operations); absent: no admin API;
    /// 0: any free port.
    pub admin_port: Option<u16>,
    /// When set, clients must `AUTH` (or `HELLO … AUTH`) first.
    pub password: Option<String>,
    /// Largest accepted request (one RESP frame), in bytes.
    pub request_bytes_max: usize,
    /// When set, the admin API's actions (every POST) need
    /// `Authorization: Bearer <token>`; without it they get 401. `GET /metrics`,
    /// `/status` and the digests stay open.
    pub admin_token: Option<String>,
    /// The host clients reach this node's RESP port at, named in every Sentinel
    /// answer, `ROLE` and the REST endpoints (behind Docker or NAT the bind address
    /// is not it). Default: `bind`, or 127.0.0.1 when `bind` is a wildcard.
    pub announce_host: Option<String>,
    /// The port clients reach the RESP port at. Default: the port bound.
    pub announce_port: Option<u16>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "127.0.0.1".into(),
            port: 6379,
            connections_max: 10_000,
            admin_port: None,
            password: None,
            request_bytes_max: 512 * 1024 * 1024,
            admin_token: None,
            announce_host: None,
            announce_port: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Memory limit for keys and values, in bytes; 0 means no limit. Writes beyond it
    /// get Redis's OOM error.
    pub memory_bytes_max: u64,
    /// How often the active expiry cycle runs, in milliseconds.
    pub expiry_interval_ms: u64,
    /// Keys examined per shard in one active expiry cycle.
    pub expiry_keys_per_cycle_max: usize,
    /// A snapshot is taken when this many bytes of WAL have been written since the last.
    pub snapshot_wal_bytes: u64,
    /// …or at least this often, in seconds, when anything changed.
    pub snapshot_interval_secs: u64,
    /// How often tombstones every site has passed are forgotten, in milliseconds.
    pub tombstone_gc_interval_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            memory_bytes_max: 0,
            expiry_interval_ms: 100,
            expiry_keys_per_cycle_max: 200,
            snapshot_wal_bytes: 256 * 1024 * 1024,
            snapshot_interval_secs: 300,
            tombstone_gc_interval_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalSettings {
    pub segment_bytes_max: u64,
    pub queue_len_max: usize,
    pub group_bytes_max: usize,
}

impl Default for WalSettings {
    fn default() -> Self {
        WalSettings { segment_bytes_max: 64 * 1024 * 1024, queue_len_max: 4096, group_bytes_max: 4 * 1024 * 1024 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HlcConfig {
    /// A remote timestamp further ahead of the local clock than this is still
    /// applied, but counted and logged, and does not drag the clock further.
    pub max_skew_ms: u64,
}

impl Default for HlcConfig {
    fn default() -> Self {
        HlcConfig { max_skew_ms: 60_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    ActiveActive,
    ActivePassive,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub name: CacheName,
    /// The `SELECT` index clients use for this cache.
    pub db: usize,
    #[serde(default = "default_policy")]
    pub policy: String,
    #[serde(default = "default_conflict_window_ms")]
    pub conflict_window_ms: u64,
    #[serde(default = "default_topology")]
    pub topology: Topology,
    /// Active-passive only: the site that takes writes until a `promote`.
    pub primary: Option<SiteId>,
}

impl CacheConfig {
    pub fn merge_policy(&self) -> Box<dyn MergePolicy> {
        parse_policy(&self.policy, self.conflict_window_ms).expect("validated at load")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// The local site's Kafka cluster: the shipper publishes here, and remote topics
    /// are consumed here unless a remote names its own cluster.
    pub bootstrap_servers: String,
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Create missing topics at start-up (brokers here do not auto-create).
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Replication factor of the topics created at start-up; `-1` (the default)
    /// takes the cluster's `default.replication.factor`. The shipper's `acks=all`
    /// waits for every in-sync copy, so with a factor of 1 an acknowledged entry
    /// has one copy only.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// A remote site silent (no heartbeat) longer than this stops holding back
    /// tombstone collection here and must rejoin by a state transfer: it is marked
    /// `needs-state-transfer`, and its entries older than the collection floor at
    /// that moment are dropped (counted) rather than resurrect keys whose tombstones
    /// are gone. 0: wait for it forever (tombstones and expired values are kept).
    #[serde(default = "default_offline_max_ms")]
    pub offline_max_ms: u64,
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// How long the producer retries a message before the shipper rewinds and
    /// sends again from its checkpoint.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// none | gzip | lz4 | zstd
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Bytes handed to the producer and not yet acknowledged.
    #[serde(default = "default_in_flight_bytes_max")]
    pub in_flight_bytes_max: u64,
    /// WAL records not yet shipped beyond which the backlog alarm is raised.
    #[serde(default = "default_backlog_records_alarm")]
    pub backlog_records_alarm: u64,
    #[serde(default = "default_fetch_wait_max_ms")]
    pub fetch_wait_max_ms: u64,
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Largest Kafka message a local write may become: its encoded entry (a value
    /// grows by about 4/3 in base64) plus its key. A write over it gets an error
    /// naming this limit and changes nothing. The default stays below the producer's
    /// and the brokers' default message limits (1,000,000 and 1,048,588 bytes); the
    /// shipper's producer is given `message.max.bytes` to match.
    #[serde(default = "default_max_entry_bytes")]
    pub max_entry_bytes: usize,
    /// Extra librdkafka properties for every client (e.g. security settings).
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

impl KafkaConfig {
    /// `message.max.bytes` for the shipper's producer: room for the largest entry,
    /// its key, headers and the record's framing.
    pub fn producer_message_bytes_max(&self) -> usize {
        match self.properties.get("message.max.bytes").and_then(|v| v.parse().ok()) {
            Some(set) => set,
            None => (self.max_entry_bytes + KAFKA_MESSAGE_OVERHEAD_BYTES).max(1_000_000),
        }
    }
}

/// Headers and record framing of a shipped message, beyond its entry and key.
pub const KAFKA_MESSAGE_OVERHEAD_BYTES: usize = 1024;
/// Default `kafka.max_entry_bytes`: 960 KiB.
pub const MAX_ENTRY_BYTES_DEFAULT: usize = 960 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    pub site: SiteId,
    /// Consume from this cluster instead of the local one (no mirror).
    pub bootstrap_servers: Option<String>,
    /// Topic to read; default `<topic_prefix><site>`.
    pub topic: Option<String>,
    /// The remote node's admin API (`http://host:port`), so that a state transfer
    /// from it is one call here (`POST /sites/{site}/state-transfer`).
    #[serde(default)]
    pub admin_url: Option<String>,
    /// The bearer token of the remote node's admin API (its `server.admin_token`),
    /// sent with the calls this site makes to `admin_url`.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Where clients reach the remote site's node (`host:port` of its RESP port, as
    /// it announces itself), named by this node's Sentinel when that site is the one
    /// to use.
    #[serde(default)]
    pub announce: Option<String>,
    /// The remote node's Sentinel port (`host:port`), listed by `SENTINEL sentinels`.
    #[serde(default)]
    pub sentinel: Option<String>,
}

/// How this node watches every remote site, and when it takes one offline or
/// brings it back by itself (see `replication::health`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SitesConfig {
    /// How often each remote site is checked: a metadata request for its topic and
    /// the offsets of its partitions (which also refresh the lag metrics).
    pub health_check_interval_ms: u64,
    /// Bound on each request of a check.
    pub health_check_timeout_ms: u64,
    /// Take a remote site offline after this many consecutive failed checks (its
    /// cluster unreachable, its topic's metadata unavailable, its consumer failing
    /// with nothing received); 0: never for failures.
    pub take_offline_after_failures: u32,
    /// Take a remote site offline after this long without progress: its topic's
    /// end offsets stood still and no heartbeat was applied (a live site writes a
    /// heartbeat into every partition every second); 0: never for that.
    pub take_offline_after_ms: u64,
    /// Bring a site taken offline by the checks back online once it is reachable
    /// and progressing again; false: it waits for `POST /sites/{site}/online`.
    /// A site an operator took offline always waits for an operator.
    pub auto_bring_online: bool,
    /// While a site is offline because of its checks, it is checked again after
    /// this pause, doubled after every failed check…
    pub retry_backoff_initial_ms: u64,
    /// …up to this.
    pub retry_backoff_max_ms: u64,
}

impl Default for SitesConfig {
    fn default() -> Self {
        SitesConfig {
            health_check_interval_ms: 1_000,
            health_check_timeout_ms: 2_000,
            take_offline_after_failures: 8,
            take_offline_after_ms: 30_000,
            auto_bring_online: true,
            retry_backoff_initial_ms: 1_000,
            retry_backoff_max_ms: 60_000,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_durability() -> Durability {
    Durability::Everysec
}
fn default_policy() -> String {
    "last-write-wins".into()
}
fn default_conflict_window_ms() -> u64 {
    CONFLICT_WINDOW_MS_DEFAULT
}
fn default_topology() -> Topology {
    Topology::ActiveActive
}
fn default_caches() -> Vec<CacheConfig> {
    vec![CacheConfig {
        name: CacheName::new("default").expect("valid name"),
        db: 0,
        policy: default_policy(),
        conflict_window_ms: CONFLICT_WINDOW_MS_DEFAULT,
        topology: Topology::ActiveActive,
        primary: None,
    }]
}
fn default_topic_prefix() -> String {
    "xsite.".into()
}
fn default_partitions() -> i32 {
    8
}
fn default_true() -> bool {
    true
}
fn default_linger_ms() -> u64 {
    2
}
fn default_message_timeout_ms() -> u64 {
    30_000
}
fn default_compression() -> String {
    "lz4".into()
}
fn default_in_flight_bytes_max() -> u64 {
    64 * 1024 * 1024
}
fn default_backlog_records_alarm() -> u64 {
    1_000_000
}
fn default_offline_max_ms() -> u64 {
    24 * 3600 * 1000
}

fn default_replication_factor() -> i32 {
    -1
}

fn default_max_entry_bytes() -> usize {
    MAX_ENTRY_BYTES_DEFAULT
}

fn default_fetch_wait_max_ms() -> u64 {
    10
}
fn default_session_timeout_ms() -> u64 {
    6000
}

/// The Redis Sentinel protocol this node serves (see `crate::sentinel`): which site
/// each master name designates, and when a site that came back is named again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SentinelConfig {
    /// The Sentinel port; absent: none; 0: any free port.
    pub port: Option<u16>,
    /// The host and port clients reach this Sentinel at (`SENTINEL sentinels` of
    /// the other sites). Default: the RESP port's announce host, and the port bound.
    pub announce_host: Option<String>,
    pub announce_port: Option<u16>,
    /// The global order of sites for active-active caches: `<cache>` names the first
    /// site of it that is online and caught up, `<cache>@<site>` that site while it
    /// is, else the next one after it. The same at every site. Default: every site
    /// (this one and the remotes) sorted by id.
    pub order: Vec<SiteId>,
    /// A site is caught up when it lags every site that is up by at most this
    /// much (watermarks from heartbeats, and offsets: never wall clock against an
    /// entry's timestamp).
    pub failback_lag_ms: u64,
    /// A site that became available again is named only after it stayed so this
    /// long (against flapping). Losing a site takes effect at once.
    pub failback_hold_down_ms: u64,
    /// A remote site not heard from (entries or heartbeats) for this long is down.
    pub down_after_ms: u64,
    /// How often the answers are computed (and events published).
    pub check_interval_ms: u64,
    /// Most connections to the Sentinel port at once.
    pub connections_max: usize,
}

impl Default for SentinelConfig {
    fn default() -> Self {
        SentinelConfig {
            port: None,
            announce_host: None,
            announce_port: None,
            order: Vec::new(),
            failback_lag_ms: 5_000,
            failback_hold_down_ms: 5_000,
            down_after_ms: 5_000,
            check_interval_ms: 100,
            connections_max: 1_024,
        }
    }
}

/// Whether active-passive caches fail over by themselves (see `replication::failover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverMode {
    /// Only an operator promotes a standby (`xsite site promote`).
    #[default]
    Manual,
    /// The primary takes writes only while its successor acknowledges its
    /// heartbeats (a lease); the successor promotes itself once the primary has been
    /// silent for `failover_after_ms`.
    Lease,
}

/// Automatic failover of the active-passive caches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    pub mode: FailoverMode,
    /// The primary stops taking writes once its successor's latest heartbeat
    /// acknowledges none of its own heartbeats sent less than this long ago (its
    /// monotonic clock).
    pub self_fence_after_ms: u64,
    /// The successor promotes itself this long after it last heard from the primary
    /// (its monotonic clock). Must exceed `self_fence_after_ms` by two heartbeat
    /// intervals at least.
    pub failover_after_ms: u64,
    /// A fenced primary whose lease comes back before any promotion takes writes
    /// again after holding it this long.
    pub unfence_hold_down_ms: u64,
    /// The order of succession: the successor of a primary is the next site after it
    /// (cyclic). Default: every site but the witness, sorted by id.
    pub successors: Vec<SiteId>,
    /// A site that takes part in the lease by majority (with the primary and its
    /// successor): its acknowledgements renew the primary's lease as the
    /// successor's do, and the successor promotes itself only with its vote. A WAN
    /// cut between the primary and its successor, or the loss of either, then stops
    /// no writes. Not applied to a cache whose primary or successor it is.
    pub witness: Option<SiteId>,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            mode: FailoverMode::Manual,
            self_fence_after_ms: 5_000,
            failover_after_ms: 9_000,
            unfence_hold_down_ms: 3_000,
            successors: Vec::new(),
            witness: None,
        }
    }
}

/// How often a caught-up shipper sends a heartbeat to every partition, in ms.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;

/// Values from flags or environment that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub site: Option<String>,
    pub port: Option<u16>,
    pub bind: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub durability: Option<String>,
    pub admin_port: Option<u16>,
    pub kafka_bootstrap: Option<String>,
    pub sentinel_port: Option<u16>,
}

impl Config {
    /// A config with every default, for `site`.
    pub fn for_site(site: SiteId) -> Config {
        Config {
            site,
            data_dir: default_data_dir(),
            durability: default_durability(),
            server: ServerConfig::default(),
            store: StoreConfig::default(),
            wal: WalSettings::default(),
            hlc: HlcConfig::default(),
            caches: default_caches(),
            kafka: None,
            remotes: Vec::new(),
            sites: SitesConfig::default(),
            sentinel: SentinelConfig::default(),
            failover: FailoverConfig::default(),
            pubsub: PubsubConfig::default(),
        }
    }

    /// Parse TOML text (`path` only names the source in errors).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(config)
    }

    /// Load a config file; `site` (`--site`'s value, when given) stands in for a
    /// `site` the file leaves out.
    pub fn load(path: &Path, site: Option<&str>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::from_toml_for(&text, path, site)
    }

    /// [`Config::from_toml`] of a file that may leave `site` to the command line.
    /// Only such a file is read through a table (its errors then name the field but
    /// not the line); every other one is parsed as written.
    fn from_toml_for(text: &str, path: &Path, site: Option<&str>) -> Result<Config, ConfigError> {
        if let (Some(site), Ok(mut table)) = (site, text.parse::<toml::Table>()) {
            if !table.contains_key("site") {
                table.insert("site".into(), toml::Value::String(site.into()));
                return toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                });
            }
        }
        Config::from_toml(text, path)
    }

    /// Largest Kafka message a local write may become (see
    /// [`KafkaConfig::max_entry_bytes`]); unlimited without replication.
    pub fn max_entry_bytes(&self) -> usize {
        self.kafka.as_ref().map_or(usize::MAX, |k| k.max_entry_bytes)
    }

    /// Load the file if given (else defaults, which need `site` from overrides), apply
    /// overrides, validate.
    pub fn resolve(path: Option<&Path>, o: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match (path, &o.site) {
            (Some(p), site) => Config::load(p, site.as_deref())?,
            (None, Some(site)) => Config::for_site(parse_site("site", site)?),
            (None, None) => return Err(invalid("site", "no config file and no --site (or XSITE_SITE) given")),
        };
        config.apply(o)?;
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(site) = &o.site {
            self.site = parse_site("site", site)?;
        }
        if let Some(port) = o.port {
            self.server.port = port;
        }
        if let Some(bind) = &o.bind {
            self.server.bind = bind.clone();
        }
        if let Some(dir) = &o.data_dir {
            self.data_dir = dir.clone();
        }
        if let Some(d) = &o.durability {
            self.durability =
                d.parse().map_err(|_| invalid("durability", format!("'{d}' is not one of always, everysec, no")))?;
        }
        if let Some(port) = o.admin_port {
            self.server.admin_port = Some(port);
        }
        if let Some(port) = o.sentinel_port {
            self.sentinel.port = Some(port);
        }
        if let Some(b) = &o.kafka_bootstrap {
            match &mut self.kafka {
                Some(k) => k.bootstrap_servers = b.clone(),
                None => {
                    return Err(invalid("kafka.bootstrap_servers", "overridden but the config has no [kafka] section"))
                }
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.caches.is_empty() {
            return Err(invalid("cache", "at least one [[cache]] is needed"));
        }
        let mut dbs = std::collections::BTreeMap::new();
        for (i, c) in self.caches.iter().enumerate() {
            if let Some(prev) = dbs.insert(c.db, &c.name) {
                return Err(invalid(
                    format!("cache[{i}].db"),
                    format!("database {} is already used by cache '{prev}'", c.db),
                ));
            }
            if c.db >= 1024 {
                return Err(invalid(format!("cache[{i}].db"), "must be below 1024"));
            }
            parse_policy(&c.policy, c.conflict_window_ms)
                .map_err(|e| invalid(format!("cache[{i}].policy"), e.to_string()))?;
            match (c.topology, &c.primary) {
                (Topology::ActivePassive, None) => {
                    return Err(invalid(format!("cache[{i}].primary"), "active-passive needs the primary site"))
                }
                (Topology::ActiveActive, Some(_)) => {
                    return Err(invalid(format!("cache[{i}].primary"), "only an active-passive cache has a primary"))
                }
                _ => {}
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in self.caches.iter().enumerate() {
            if !names.insert(&c.name) {
                return Err(invalid(format!("cache[{i}].name"), format!("cache '{}' is defined twice", c.name)));
            }
        }
        for (i, r) in self.remotes.iter().enumerate() {
            if r.site == self.site {
                return Err(invalid(format!("remote[{i}].site"), "a site does not consume its own topic"));
            }
        }
        if !self.remotes.is_empty() && self.kafka.is_none() {
            return Err(invalid("kafka", "remote sites are configured but there is no [kafka] section"));
        }
        if let Some(k) = &self.kafka {
            if !matches!(k.compression.as_str(), "none" | "gzip" | "lz4" | "zstd") {
                return Err(invalid(
                    "kafka.compression",
                    format!("'{}' is not one of none, gzip, lz4, zstd", k.compression),
                ));
            }
            if k.partitions < 1 {
                return Err(invalid("kafka.partitions", "must be at least 1"));
            }
            if k.replication_factor == 0 || k.replication_factor < -1 {
                return Err(invalid("kafka.replication_factor", "must be -1 (the cluster's default) or at least 1"));
            }
            if k.max_entry_bytes < 4096 {
                return Err(invalid("kafka.max_entry_bytes", "must be at least 4096"));
            }
            let producer = k.producer_message_bytes_max();
            if k.max_entry_bytes + KAFKA_MESSAGE_OVERHEAD_BYTES > producer {
                return Err(invalid(
                    "kafka.max_entry_bytes",
                    format!(
                        "{} does not fit in the producer's message.max.bytes ({producer}) with {KAFKA_MESSAGE_OVERHEAD_BYTES} bytes of headers and framing",
                        k.max_entry_bytes
                    ),
                ));
            }
        }
        let s = &self.sites;
        if s.health_check_interval_ms == 0 {
            return Err(invalid("sites.health_check_interval_ms", "must be at least 1"));
        }
        if s.health_check_timeout_ms == 0 {
            return Err(invalid("sites.health_check_timeout_ms", "must be at least 1"));
        }
        if s.retry_backoff_initial_ms == 0 || s.retry_backoff_initial_ms > s.retry_backoff_max_ms {
            return Err(invalid(
                "sites.retry_backoff_initial_ms",
                format!("must be at least 1 and at most sites.retry_backoff_max_ms ({})", s.retry_backoff_max_ms),
            ));
        }
        if self.server.admin_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(invalid("server.admin_token", "is empty: leave it out for an open admin API"));
        }
        if self.server.connections_max == 0 {
            return Err(invalid("server.connections_max", "must be at least 1"));
        }
        for (i, r) in self.remotes.iter().enumerate() {
            if let Some(a) = &r.announce {
                parse_host_port(a).map_err(|e| invalid(format!("remote[{i}].announce"), e))?;
            }
            if let Some(a) = &r.sentinel {
                parse_host_port(a).map_err(|e| invalid(format!("remote[{i}].sentinel"), e))?;
            }
        }
        let sn = &self.sentinel;
        let sites = self.all_sites();
        for (i, site) in sn.order.iter().enumerate() {
            if !sites.contains(site) {
                return Err(invalid(
                    format!("sentinel.order[{i}]"),
                    format!("'{site}' is neither this site nor a [[remote]]"),
                ));
            }
            if sn.order[..i].contains(site) {
                return Err(invalid(format!("sentinel.order[{i}]"), format!("'{site}' is listed twice")));
            }
        }
        if !sn.order.is_empty() && sn.order.len() != sites.len() {
            return Err(invalid(
                "sentinel.order",
                "must list every site (this one and every [[remote]]) or be left out",
            ));
        }
        let f = &self.failover;
        if f.mode == FailoverMode::Lease {
            if f.self_fence_after_ms < 3 * HEARTBEAT_INTERVAL_MS {
                return Err(invalid(
                    "failover.self_fence_after_ms",
                    format!(
                        "must be at least {} (three heartbeat intervals: a heartbeat's round trip)",
                        3 * HEARTBEAT_INTERVAL_MS
                    ),
                ));
            }
            if f.failover_after_ms < f.self_fence_after_ms + 2 * HEARTBEAT_INTERVAL_MS {
                return Err(invalid(
                    "failover.failover_after_ms",
                    format!(
                        "must be at least failover.self_fence_after_ms + {} (two heartbeat intervals), so that a primary fences itself before its successor promotes",
                        2 * HEARTBEAT_INTERVAL_MS
                    ),
                ));
            }
            if self.remotes.is_empty() {
                return Err(invalid("failover.mode", "lease needs a successor: at least one [[remote]]"));
            }
        }
        for (i, site) in f.successors.iter().enumerate() {
            if !sites.contains(site) || f.successors[..i].contains(site) {
                return Err(invalid(
                    format!("failover.successors[{i}]"),
                    format!("'{site}' is unknown or listed twice"),
                ));
            }
        }
        if let Some(w) = &f.witness {
            if !sites.contains(w) {
                return Err(invalid("failover.witness", format!("'{w}' is not a site of this deployment")));
            }
        }
        let without_witness = sites.iter().filter(|s| Some(*s) != f.witness.as_ref()).count();
        let listed = f.successors.len();
        if listed != 0 && listed != sites.len() && !(listed == without_witness && f.witness.is_some()) {
            return Err(invalid(
                "failover.successors",
                "must list every site (or every site but the witness) or be left out",
            ));
        }
        if sn.check_interval_ms == 0 {
            return Err(invalid("sentinel.check_interval_ms", "must be at least 1"));
        }
        if sn.connections_max == 0 {
            return Err(invalid("sentinel.connections_max", "must be at least 1"));
        }
        let ps = &self.pubsub;
        crate::notify::parse_flags(ps.notify_keyspace_events.as_bytes())
            .map_err(|e| invalid("pubsub.notify_keyspace_events", e))?;
        if ps.subscriber_buffer_bytes_max == 0 {
            return Err(invalid("pubsub.subscriber_buffer_bytes_max", "must be at least 1"));
        }
        Ok(())
    }

    /// This site and every remote site.
    pub fn all_sites(&self) -> Vec<SiteId> {
        std::iter::once(self.site.clone()).chain(self.remotes.iter().map(|r| r.site.clone())).collect()
    }

    /// The global order of sites of the Sentinel answers (`sentinel.order`, or every
    /// site sorted by id).
    pub fn site_order(&self) -> Vec<SiteId> {
        if !self.sentinel.order.is_empty() {
            return self.sentinel.order.clone();
        }
        let mut sites = self.all_sites();
        sites.sort();
        sites
    }

    /// The witness of the lease between `primary` and `successor`
    /// (`failover.witness`, unless it is one of them).
    pub fn witness_for(&self, primary: &SiteId, successor: Option<&SiteId>) -> Option<SiteId> {
        self.failover.witness.clone().filter(|w| w != primary && Some(w) != successor)
    }

    /// The site that succeeds `primary` (`failover.successors`, or every site sorted by
    /// id): the one that grants its lease and may promote itself.
    pub fn successor_of(&self, primary: &SiteId) -> Option<SiteId> {
        let order = if self.failover.successors.is_empty() {
            let mut s = self.all_sites();
            s.retain(|s| Some(s) != self.failover.witness.as_ref());
            s.sort();
            s
        } else {
            self.failover.successors.clone()
        };
        let i = order.iter().position(|s| s == primary)?;
        Some(order[(i + 1) % order.len()].clone()).filter(|s| s != primary)
    }

    /// The host this node announces for its RESP port (see `server.announce_host`).
    pub fn announce_host(&self) -> String {
        match &self.server.announce_host {
            Some(h) => h.clone(),
            None if matches!(self.server.bind.as_str(), "0.0.0.0" | "::" | "[::]" | "") => "127.0.0.1".into(),
            None => self.server.bind.clone(),
        }
    }

    /// The topic a site's entries are published to.
    pub fn topic_for(&self, site: &SiteId) -> Option<String> {
        let k = self.kafka.as_ref()?;
        let explicit = self.remotes.iter().find(|r| &r.site == site).and_then(|r| r.topic.clone());
        Some(explicit.unwrap_or_else(|| format!("{}{}", k.topic_prefix, site)))
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("wal")
    }
    pub fn snapshot_dir(&self) -> PathBuf {
        self.data_dir.join("snapshots")
    }
    pub fn sled_dir(&self) -> PathBuf {
        self.data_dir.join("state")
    }
}

/// `host:port` (a host name, an IPv4 address, or `[v6]`), as clients reach a node.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("'{s}' is not host:port"))?;
    let port: u16 = port.parse().map_err(|_| format!("'{s}': '{port}' is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!("'{s}' is not host:port"));
    }
    Ok((host.to_string(), port))
}

fn parse_site(field: &str, s: &str) -> Result<SiteId, ConfigError> {
    SiteId::new(s).map_err(|e| invalid(field, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let c = Config::from_toml(text, Path::new("test.toml"))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("site = \"a\"").unwrap();
        assert_eq!(c.caches.len(), 1);
        assert_eq!(c.server.port, 6379);
        assert_eq!(c.durability, Durability::Everysec);
    }

    #[test]
    fn a_file_may_leave_the_site_to_the_command_line() {
        let path = Path::new("test.toml");
        let text = "[store]\nsnapshot_interval_secs = 60\n";
        let c = Config::from_toml_for(text, path, Some("b")).unwrap();
        assert_eq!((c.site.as_str(), c.store.snapshot_interval_secs), ("b", 60));
        let named = Config::from_toml_for("site = \"a\"\n", path, Some("b")).unwrap();
        assert_eq!(named.site.as_str(), "a", "the file's site is read; the override applies later");
        let e = Config::from_toml_for(text, path, None).unwrap_err();
        assert!(e.to_string().contains("site"), "{e}");
        let e = Config::from_toml_for("[server]\nprot = 1\n", path, Some("b")).unwrap_err();
        assert!(e.to_string().contains("prot"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("site = \"a\"\n[[cache]]\nname=\"x\"\ndb=0\n[[cache]]\nname=\"y\"\ndb=0\n").unwrap_err();
        assert!(e.to_string().contains("cache[1].db"), "{e}");
        let e = parse("site = \"a\"\n[[cache]]\nname=\"x\"\ndb=0\npolicy=\"nope\"\n").unwrap_err();
        assert!(e.to_string().contains("cache[0].policy"), "{e}");
        let e = parse("site = \"a\"\n[server]\nprot = 1\n").unwrap_err();
        assert!(e.to_string().contains("prot"), "{e}");
        let e = parse("site = \"A!\"").unwrap_err();
        assert!(e.to_string().contains("site id 'A!'"), "{e}");
        let e = parse("site = \"a\"\n[pubsub]\nnotify_keyspace_events = \"KEQ\"\n").unwrap_err();
        assert!(
            e.to_string().contains("pubsub.notify_keyspace_events") && e.to_string().contains("Invalid event"),
            "{e}"
        );
        let e = parse("site = \"a\"\n[pubsub]\nsubscriber_buffer_bytes_max = 0\n").unwrap_err();
        assert!(e.to_string().contains("pubsub.subscriber_buffer_bytes_max"), "{e}");
        let c = parse("site = \"a\"\n[pubsub]\nnotify_keyspace_events = \"Kx\"\n").unwrap();
        assert_eq!(crate::notify::format_flags(c.pubsub.notify_flags()), "xK");
        let e = parse("site = \"a\"\n[failover]\nwitness = \"z\"\n").unwrap_err();
        assert!(e.to_string().contains("failover.witness") && e.to_string().contains("'z'"), "{e}");
    }

    #[test]
    fn a_witness_takes_no_part_in_succession() {
        let three = "site = \"a\"\n[kafka]\nbootstrap_servers = \"k:9092\"\n[[remote]]\nsite = \"b\"\n[[remote]]\nsite = \"c\"\n";
        let c = parse(&format!("{three}[failover]\nwitness = \"c\"\n")).unwrap();
        let s = |n: &str| SiteId::new(n).unwrap();
        assert_eq!(c.successor_of(&s("a")), Some(s("b")));
        assert_eq!(c.successor_of(&s("b")), Some(s("a")));
        assert_eq!(c.witness_for(&s("a"), Some(&s("b"))), Some(s("c")));
        assert_eq!(c.witness_for(&s("c"), Some(&s("a"))), None);
        parse(&format!("{three}[failover]\nwitness = \"c\"\nsuccessors = [\"b\", \"a\"]\n")).unwrap();
        let e = parse(&format!("{three}[failover]\nsuccessors = [\"b\", \"a\"]\n")).unwrap_err();
        assert!(e.to_string().contains("failover.successors"), "{e}");
    }

    #[test]
    fn overrides_beat_the_file() {
        let dir = std::env::temp_dir().join(format!("xsite-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("n.toml");
        std::fs::write(&path, "site = \"a\"\ndurability = \"no\"\n[server]\nport = 7000\n").unwrap();
        let o = Overrides { port: Some(7001), durability: Some("always".into()), ..Overrides::default() };
        let c = Config::resolve(Some(&path), &o).unwrap();
        assert_eq!((c.server.port, c.durability), (7001, Durability::Always));
        let bad = Overrides { durability: Some("sometimes".into()), ..Overrides::default() };
        assert!(Config::resolve(Some(&path), &bad).unwrap_err().to_string().contains("`durability`"));
    }
}
