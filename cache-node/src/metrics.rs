//! Prometheus metrics, rendered at scrape time from the components' counters.
//! Names follow `xsite_<what>_<unit>`; counters end in `_total`. Every name is one
//! metric family (one `# TYPE` line), its series told apart by labels (`cache`,
//! `remote`, `origin`, `partition`, …), as the OpenMetrics text format requires.

use crate::engine::Engine;
use crate::replication::failover::{Failover, LeaseState};
use crate::replication::health::OfflineCause;
use crate::replication::Replication;
use crate::sentinel::view::Directory;
use crate::server::ServerStats;
use crate::topology::Roles;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family: its samples, each with its labels.
struct Series {
    name: String,
    help: String,
    kind: Kind,
    samples: Vec<(Labels, i64)>,
}

/// The samples of a scrape, grouped by name so that each name is one family.
#[derive(Default)]
struct Exposition {
    series: Vec<Series>,
}

impl Exposition {
    fn add(&mut self, kind: Kind, name: &str, help: &str, labels: &[(&str, &str)], v: i64) {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        match self.series.iter_mut().find(|s| s.name == name) {
            Some(s) => {
                debug_assert_eq!(s.kind, kind, "metric {name} registered as two kinds");
                s.samples.push((labels, v));
            }
            None => self.series.push(Series {
                name: name.to_string(),
                help: help.to_string(),
                kind,
                samples: vec![(labels, v)],
            }),
        }
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: u64) {
        self.add(Kind::Counter, name, help, labels, v.min(i64::MAX as u64) as i64);
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: i64) {
        self.add(Kind::Gauge, name, help, labels, v);
    }

    fn register(self, r: &mut Registry) {
        for s in self.series {
            match (s.kind, s.samples.as_slice()) {
                (Kind::Counter, [(labels, v)]) if labels.is_empty() => {
                    r.register(s.name, s.help, ConstCounter::new(*v as u64))
                }
                (Kind::Gauge, [(labels, v)]) if labels.is_empty() => r.register(s.name, s.help, ConstGauge::new(*v)),
                (Kind::Counter, samples) => {
                    let family = Family::<Labels, Counter>::default();
                    for (labels, v) in samples {
                        family.get_or_create(labels).inc_by(*v as u64);
                    }
                    r.register(s.name, s.help, family);
                }
                (Kind::Gauge, samples) => {
                    let family = Family::<Labels, Gauge>::default();
                    for (labels, v) in samples {
                        family.get_or_create(labels).set(*v);
                    }
                    r.register(s.name, s.help, family);
                }
            }
        }
    }
}

fn engine_metrics(x: &mut Exposition, e: &Engine) {
    for m in e.metrics() {
        let cache = m.cache.as_ref().map(|c| c.to_string());
        let labels: Vec<(&str, &str)> = cache.iter().map(|c| ("cache", c.as_str())).collect();
        if m.counter {
            x.counter(m.name, m.help, &labels, m.value.max(0) as u64);
        } else {
            x.gauge(m.name, m.help, &labels, m.value);
        }
    }
    let wal = e.wal();
    x.gauge("xsite_wal_last_lsn", "Position of the last record written to the WAL", &[], wal.last_lsn().0 as i64);
    x.gauge("xsite_wal_durable_lsn", "Position up to which the WAL is fsynced", &[], wal.durable_lsn().0 as i64);
    x.gauge(
        "xsite_wal_writable",
        "1 when the WAL accepts writes; 0 while it cannot write (writes get MISCONF)",
        &[],
        i64::from(wal.health().is_ok()),
    );
    let ws = wal.stats();
    x.counter("xsite_wal_fsyncs", "fsyncs of WAL segments", &[], load(&ws.fsyncs));
    x.gauge(
        "xsite_wal_fsync_max_ms",
        "Longest WAL fsync since start, in milliseconds",
        &[],
        load(&ws.fsync_us_max).div_ceil(1000) as i64,
    );
    x.counter(
        "xsite_wal_write_failures",
        "WAL writes or fsyncs that failed (each retry counts)",
        &[],
        load(&ws.write_failures),
    );
    x.counter(
        "xsite_wal_dropped_while_stalled",
        "Records refused while the WAL was stalled that could not be kept for the retry",
        &[],
        load(&ws.dropped_while_stalled),
    );
}

fn pubsub_metrics(x: &mut Exposition, e: &Engine) {
    let s = e.hub().snapshot();
    let g = |x: &mut Exposition, name, help, v: usize| x.gauge(name, help, &[], v as i64);
    g(x, "xsite_pubsub_subscribers", "Data-port connections subscribed to a channel or pattern", s.subscribers);
    g(x, "xsite_pubsub_channels", "Channels with a subscriber (PUBSUB CHANNELS)", s.channels);
    g(x, "xsite_pubsub_patterns", "Patterns with a subscriber (PUBSUB NUMPAT)", s.patterns);
    g(x, "xsite_pubsub_shard_channels", "Shard channels with a subscriber (PUBSUB SHARDCHANNELS)", s.shard_channels);
    x.counter(
        "xsite_pubsub_messages_published",
        "Messages published on the data port: PUBLISH, SPUBLISH and keyspace notifications",
        &[],
        s.published,
    );
    x.counter(
        "xsite_pubsub_messages_delivered",
        "Messages queued for subscribers, one per matching subscription",
        &[],
        s.delivered,
    );
    x.counter(
        "xsite_pubsub_slow_subscribers_disconnected",
        "Subscribers disconnected for not reading (pubsub.subscriber_buffer_bytes_max, subscriber_buffer_soft_*)",
        &[],
        s.disconnected,
    );
}

fn topology_metrics(x: &mut Exposition, roles: &Roles) {
    x.counter(
        "xsite_stale_epoch_entries",
        "Entries applied whose epoch was below the cache's (an old primary's writes after a promotion)",
        &[],
        roles.stale_entries(),
    );
}

fn server_metrics(x: &mut Exposition, server: &ServerStats) {
    let s = server.snapshot();
    x.counter("xsite_resp_connections_accepted", "Client connections accepted", &[], s.connections_accepted);
    x.gauge("xsite_resp_connections_current", "Client connections open now", &[], s.connections_current as i64);
    x.counter("xsite_resp_commands_processed", "Commands processed", &[], s.commands_processed);
    x.counter("xsite_resp_protocol_errors", "Connections closed for a protocol error", &[], s.protocol_errors);
}

fn shipper_metrics(x: &mut Exposition, repl: &Replication) {
    let s = &repl.shipper_stats;
    x.counter("xsite_shipper_entries", "Entries acknowledged by Kafka", &[], load(&s.shipped_entries));
    x.counter("xsite_shipper_bytes", "Entry bytes acknowledged by Kafka", &[], load(&s.shipped_bytes));
    x.counter(
        "xsite_shipper_units",
        "Transaction units acknowledged by Kafka (each one message, counted in xsite_shipper_entries too)",
        &[],
        load(&s.shipped_units),
    );
    x.counter(
        "xsite_shipper_delivery_errors",
        "Failed deliveries (each causes a resend)",
        &[],
        load(&s.delivery_errors),
    );
    x.counter(
        "xsite_consumer_stale_dropped",
        "Entries dropped: older than the collection floor, from a site left behind after offline_max_ms",
        &[],
        repl.stale_dropped(),
    );
    x.counter(
        "xsite_shipper_undeliverable_entries",
        "Entries Kafka refused for good (too large): skipped, other sites do not have them",
        &[],
        load(&s.undeliverable_entries),
    );
    x.gauge(
        "xsite_site_offline",
        "1 while an operator has taken this site offline at this node (no sentinel names it)",
        &[],
        i64::from(repl.own_site_offline()),
    );
    x.gauge("xsite_shipper_acked_lsn", "Highest WAL position acknowledged by Kafka", &[], load(&s.acked_lsn) as i64);
    x.gauge(
        "xsite_shipper_backlog_records",
        "WAL records not yet acknowledged by Kafka",
        &[],
        load(&s.backlog_records) as i64,
    );
    x.gauge(
        "xsite_shipper_backlog_alarm",
        "1 when the backlog is above its alarm level",
        &[],
        load(&s.backlog_alarm) as i64,
    );
    for (cache, c) in repl.applier_conflicts() {
        let help = "Remote entries resolved by the cache's merge policy: won changed the store, lost changed nothing (outranked here, or delivered again)";
        for (outcome, n) in [("won", &c.won), ("lost", &c.lost)] {
            let labels = [("cache", cache.as_str()), ("policy", c.policy.as_str()), ("outcome", outcome)];
            x.counter("xsite_conflicts", help, &labels, load(n));
        }
    }
}

fn consumer_metrics(x: &mut Exposition, repl: &Replication) {
    let now_ms = xsite_schemas::hlc::wall_clock_ms();
    let online = repl.online_sites();
    for (site, c) in &repl.consumer_stats {
        let l = [("remote", site.as_str())];
        x.counter("xsite_consumer_received", "Messages received", &l, load(&c.received));
        x.counter("xsite_consumer_applied", "Entries that changed the store", &l, load(&c.applied_changed));
        x.counter(
            "xsite_consumer_unchanged",
            "Entries already superseded or duplicated",
            &l,
            load(&c.applied_unchanged),
        );
        x.counter("xsite_consumer_dead_lettered", "Entries sent to the dead-letter topic", &l, load(&c.dead_lettered));
        x.counter(
            "xsite_consumer_dead_letter_failures",
            "Dead-letter writes that failed",
            &l,
            load(&c.dead_letter_failures),
        );
        x.counter(
            "xsite_consumer_transient_errors",
            "Apply attempts that failed and were retried",
            &l,
            load(&c.transient_errors),
        );
        x.counter(
            "xsite_consumer_errors",
            "Kafka errors the consumer met (metadata unavailable, broker unreachable)",
            &l,
            load(&c.errors),
        );
        x.gauge(
            "xsite_consumer_checkpoints_pending",
            "Applied batches whose offsets wait for the local WAL to be durable",
            &l,
            load(&c.checkpoints_pending) as i64,
        );
        let last = load(&c.last_applied_wall_ms);
        let age = if last == 0 { -1 } else { now_ms.saturating_sub(last) as i64 };
        x.gauge(
            "xsite_consumer_last_applied_age_ms",
            "Milliseconds since the newest applied entry was written, by this site's clock against the origin's (clock skew included; -1: none yet)",
            &l,
            age,
        );
        x.gauge("xsite_consumer_online", "1 while the remote site is consumed", &l, i64::from(online.contains(site)));
        x.gauge(
            "xsite_remote_offline_at_its_site",
            "1 while the remote site's heartbeats say an operator took it offline at its own node",
            &l,
            i64::from(c.offline_at_its_site()),
        );
        x.gauge(
            "xsite_remote_state",
            "The remote site's state: 0 online, 1 catching-up, 2 offline, 3 needs-state-transfer",
            &l,
            c.remote.state().code(),
        );
        x.counter(
            "xsite_consumer_gaps",
            "Gaps found: entries of the remote site this site can no longer read (retention, a re-created topic)",
            &l,
            load(&c.gaps),
        );
        x.counter("xsite_consumer_lag_samples", "Entries whose replication lag was measured", &l, c.lag.count());
        for q in ["0.5", "0.99", "1"] {
            let v = c.lag.quantile_ms(q.parse().expect("a number")).map_or(-1, |ms| ms as i64);
            x.gauge(
                "xsite_consumer_lag_ms",
                "Origin write to local apply, by this site's clock against the origin's (clock skew included), since start, by quantile; -1: none yet",
                &[("remote", site.as_str()), ("quantile", q)],
                v,
            );
        }
    }
}

fn failover_metrics(x: &mut Exposition, directory: &Directory, failover: Option<&Failover>) {
    for v in directory.sites() {
        let l = [("site", v.site.as_str())];
        x.gauge(
            "xsite_site_caught_up",
            "1 when the site is caught up as this node sees it (the one definition of the Sentinel answers and the REST check)",
            &l,
            i64::from(directory.caught_up(&v.site).is_ok()),
        );
        x.gauge(
            "xsite_sentinel_site_named",
            "1 when this node's Sentinel names the site (caught up, past its hold-down)",
            &l,
            i64::from(v.usable),
        );
    }
    let Some(f) = failover else { return };
    for (cache, lease) in f.status() {
        let l = [("cache", cache.as_str())];
        let code = match lease.state {
            LeaseState::Standby => 0,
            LeaseState::Starting => 1,
            LeaseState::Unleased => 2,
            LeaseState::Held => 3,
            LeaseState::Fenced => 4,
        };
        x.gauge(
            "xsite_failover_lease_state",
            "Lease of the active-passive cache here: 0 standby, 1 starting, 2 unleased (just promoted), 3 held, 4 fenced",
            &l,
            code,
        );
        x.gauge(
            "xsite_failover_lease_remaining_ms",
            "How long the primary's lease holds from now (0 unless held)",
            &l,
            lease.remaining_ms.unwrap_or(0) as i64,
        );
    }
}

fn site_health_metrics(x: &mut Exposition, repl: &Replication) {
    for (site, h) in &repl.health {
        let l = [("remote", site.as_str())];
        for cause in OfflineCause::ALL {
            x.counter(
                "xsite_remote_taken_offline",
                "Times the remote site was taken offline: by its health checks (unreachable, no-progress) or an operator",
                &[("remote", site.as_str()), ("reason", cause.as_str())],
                h.taken_offline(cause),
            );
        }
        x.counter(
            "xsite_remote_health_check_failures",
            "Health checks of the remote site whose metadata request failed",
            &l,
            h.checks_failed(),
        );
        let reachable = h.status().reachable.map_or(-1, i64::from);
        x.gauge(
            "xsite_remote_reachable",
            "1 when the last health check succeeded, 0 when it failed, -1 before the first",
            &l,
            reachable,
        );
    }
    for (site, book) in &repl.lag {
        for p in book.partitions() {
            let partition = p.partition.to_string();
            let l = [("origin", site.as_str()), ("partition", partition.as_str())];
            x.gauge(
                "xsite_replication_lag_ms",
                "How long ago the oldest entry not yet applied here reached the broker, by this node's clock (0: caught up), as of the last health check",
                &l,
                p.lag_ms.min(i64::MAX as u64) as i64,
            );
            x.gauge(
                "xsite_replication_lag_entries",
                "Entries in the partition not yet applied here: its end offset minus the next offset to apply, as of the last health check",
                &l,
                p.lag_entries.min(i64::MAX as u64) as i64,
            );
        }
    }
}

/// The text exposition of every metric of the node.
/// What a node exposes: its parts.
pub struct Parts<'a> {
    pub engine: &'a Engine,
    pub server: &'a ServerStats,
    pub roles: &'a Roles,
    pub replication: Option<&'a Replication>,
    pub directory: &'a Directory,
    pub failover: Option<&'a Failover>,
}

pub fn render(parts: Parts<'_>) -> String {
    let Parts { engine, server, roles, replication, directory, failover } = parts;
    let mut x = Exposition::default();
    engine_metrics(&mut x, engine);
    pubsub_metrics(&mut x, engine);
    server_metrics(&mut x, server);
    topology_metrics(&mut x, roles);
    failover_metrics(&mut x, directory, failover);
    if let Some(repl) = replication {
        shipper_metrics(&mut x, repl);
        consumer_metrics(&mut x, repl);
        site_health_metrics(&mut x, repl);
    }
    let mut r = Registry::default();
    x.register(&mut r);
    if let Some(repl) = replication {
        r.register(
            "xsite_replication_lag_seconds",
            "Replication lag of each partition, sampled at every health check (see xsite_replication_lag_ms)",
            repl.lag_histogram.clone(),
        );
    }
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a string");
    out
}
