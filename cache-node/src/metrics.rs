//! Prometheus metrics, rendered at scrape time from the components' counters.
//! Names follow `xsite_<what>_<unit>`; counters end in `_total`.

use crate::engine::Engine;
use crate::replication::Replication;
use crate::server::ServerStats;
use crate::topology::Roles;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    r.register(name, help, ConstCounter::new(v));
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: i64) {
    r.register(name, help, ConstGauge::new(v));
}

fn engine_metrics(r: &mut Registry, e: &Engine) {
    for m in e.metrics() {
        let sub = match &m.cache {
            Some(c) => r.sub_registry_with_label((Cow::Borrowed("cache"), Cow::Owned(c.to_string()))),
            None => &mut *r,
        };
        if m.counter {
            counter(sub, m.name, m.help, m.value.max(0) as u64);
        } else {
            gauge(sub, m.name, m.help, m.value);
        }
    }
    let wal = e.wal();
    gauge(r, "xsite_wal_last_lsn", "Position of the last record written to the WAL", wal.last_lsn().0 as i64);
    gauge(r, "xsite_wal_durable_lsn", "Position up to which the WAL is fsynced", wal.durable_lsn().0 as i64);
    let health = wal.health();
    gauge(
        r,
        "xsite_wal_writable",
        "1 when the WAL accepts writes; 0 while it cannot write (writes get MISCONF)",
        i64::from(health.is_ok()),
    );
    let ws = wal.stats();
    counter(r, "xsite_wal_fsyncs", "fsyncs of WAL segments", load(&ws.fsyncs));
    gauge(
        r,
        "xsite_wal_fsync_max_ms",
        "Longest WAL fsync since start, in milliseconds",
        load(&ws.fsync_us_max).div_ceil(1000) as i64,
    );
    counter(
        r,
        "xsite_wal_write_failures",
        "WAL writes or fsyncs that failed (each retry counts)",
        load(&ws.write_failures),
    );
    counter(
        r,
        "xsite_wal_dropped_while_stalled",
        "Records refused while the WAL was stalled that could not be kept for the retry",
        load(&ws.dropped_while_stalled),
    );
}

fn topology_metrics(r: &mut Registry, roles: &Roles) {
    counter(
        r,
        "xsite_stale_epoch_entries",
        "Entries applied whose epoch was below the cache's (an old primary's writes after a promotion)",
        roles.stale_entries(),
    );
}

fn server_metrics(r: &mut Registry, server: &ServerStats) {
    let s = server.snapshot();
    counter(r, "xsite_resp_connections_accepted", "Client connections accepted", s.connections_accepted);
    gauge(r, "xsite_resp_connections_current", "Client connections open now", s.connections_current as i64);
    counter(r, "xsite_resp_commands_processed", "Commands processed", s.commands_processed);
    counter(r, "xsite_resp_protocol_errors", "Connections closed for a protocol error", s.protocol_errors);
}

fn replication_metrics(r: &mut Registry, repl: &Replication) {
    let s = &repl.shipper_stats;
    counter(r, "xsite_shipper_entries", "Entries acknowledged by Kafka", load(&s.shipped_entries));
    counter(r, "xsite_shipper_bytes", "Entry bytes acknowledged by Kafka", load(&s.shipped_bytes));
    counter(r, "xsite_shipper_delivery_errors", "Failed deliveries (each causes a resend)", load(&s.delivery_errors));
    counter(
        r,
        "xsite_consumer_stale_dropped",
        "Entries dropped: older than the collection floor, from a site left behind after offline_max_ms",
        repl.stale_dropped(),
    );
    counter(
        r,
        "xsite_shipper_undeliverable_entries",
        "Entries Kafka refused for good (too large): skipped, other sites do not have them",
        load(&s.undeliverable_entries),
    );
    gauge(r, "xsite_shipper_acked_lsn", "Highest WAL position acknowledged by Kafka", load(&s.acked_lsn) as i64);
    gauge(
        r,
        "xsite_shipper_backlog_records",
        "WAL records not yet acknowledged by Kafka",
        load(&s.backlog_records) as i64,
    );
    gauge(
        r,
        "xsite_shipper_backlog_alarm",
        "1 when the backlog is above its alarm level",
        load(&s.backlog_alarm) as i64,
    );
    let now_ms = xsite_schemas::hlc::wall_clock_ms();
    let online = repl.online_sites();
    for (site, c) in &repl.consumer_stats {
        let sub = r.sub_registry_with_label((Cow::Borrowed("remote"), Cow::Owned(site.to_string())));
        counter(sub, "xsite_consumer_received", "Messages received", load(&c.received));
        counter(sub, "xsite_consumer_applied", "Entries that changed the store", load(&c.applied_changed));
        counter(
            sub,
            "xsite_consumer_unchanged",
            "Entries already superseded or duplicated",
            load(&c.applied_unchanged),
        );
        counter(sub, "xsite_consumer_dead_lettered", "Entries sent to the dead-letter topic", load(&c.dead_lettered));
        counter(
            sub,
            "xsite_consumer_dead_letter_failures",
            "Dead-letter writes that failed",
            load(&c.dead_letter_failures),
        );
        counter(
            sub,
            "xsite_consumer_transient_errors",
            "Apply attempts that failed and were retried",
            load(&c.transient_errors),
        );
        gauge(
            sub,
            "xsite_consumer_checkpoints_pending",
            "Applied batches whose offsets wait for the local WAL to be durable",
            load(&c.checkpoints_pending) as i64,
        );
        let last = load(&c.last_applied_wall_ms);
        let age = if last == 0 { -1 } else { now_ms.saturating_sub(last) as i64 };
        gauge(
            sub,
            "xsite_consumer_last_applied_age_ms",
            "Milliseconds since the newest applied entry was written (-1: none yet)",
            age,
        );
        gauge(sub, "xsite_consumer_online", "1 while the remote site is consumed", i64::from(online.contains(site)));
        gauge(
            sub,
            "xsite_remote_state",
            "The remote site's state: 0 online, 1 catching-up, 2 offline, 3 needs-state-transfer",
            c.remote.state().code(),
        );
        counter(
            sub,
            "xsite_consumer_gaps",
            "Gaps found: entries of the remote site this site can no longer read (retention, a re-created topic)",
            load(&c.gaps),
        );
        counter(sub, "xsite_consumer_lag_samples", "Entries whose replication lag was measured", c.lag.count());
        for (q, label) in [(0.5, "0.5"), (0.99, "0.99"), (1.0, "1")] {
            let v = c.lag.quantile_ms(q).map_or(-1, |ms| ms as i64);
            let qsub = sub.sub_registry_with_label((Cow::Borrowed("quantile"), Cow::Borrowed(label)));
            gauge(
                qsub,
                "xsite_consumer_lag_ms",
                "Replication lag (origin write to local apply) since start, by quantile; -1: none yet",
                v,
            );
        }
    }
}

/// The text exposition of every metric of the node.
pub fn render(engine: &Engine, server: &ServerStats, roles: &Roles, replication: Option<&Replication>) -> String {
    let mut r = Registry::default();
    engine_metrics(&mut r, engine);
    server_metrics(&mut r, server);
    topology_metrics(&mut r, roles);
    if let Some(replication) = replication {
        replication_metrics(&mut r, replication);
    }
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a string");
    out
}
