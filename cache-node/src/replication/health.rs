//! Site health: whether each remote site is reachable and progressing, and the
//! automatic take-offline and bring-online that follow from it (Infinispan's
//! `take-offline` with `after-failures` and `min-wait`).
//!
//! Every `sites.health_check_interval_ms` the node *checks* each remote site: a
//! metadata request for its topic and the offsets of every partition, on the cluster
//! the topic is read from, each request bounded by `sites.health_check_timeout_ms`
//! (the same answer refreshes the lag metrics, see [`super::lag`]). A check fails
//! when that probe fails, or when the site's consumer met Kafka errors since the
//! previous check and received nothing. The site *progresses* when its topic's end
//! offsets grow (a live site's shipper writes a heartbeat into every partition every
//! second) or heartbeats of it are applied here.
//!
//! - A site consumed is taken offline after `take_offline_after_failures`
//!   consecutive failed checks, or after `take_offline_after_ms` without progress
//!   (0 disables either): its consumer stops, its state turns `offline` with the
//!   reason, counted in `xsite_remote_taken_offline_total{remote,reason}`.
//! - While it is offline for that, it is checked with exponential backoff
//!   (`retry_backoff_initial_ms`, doubled after each failed check up to
//!   `retry_backoff_max_ms`) instead of retried hot; once a check succeeds and its
//!   topic progressed since the check before (only the first, when
//!   `take_offline_after_ms` is 0), it is brought back online if
//!   `auto_bring_online`, else it waits for `POST /sites/{site}/online`.
//! - A site an operator took offline stays offline until an operator brings it back;
//!   it is still checked (at the normal interval) so that its lag stays measured.
//!
//! [`Health`] is the decision alone, a pure function of the checks and the time it
//! is given; [`SiteHealth`] shares it with status and metrics; the loop that probes
//! and acts is [`super::Replication`]'s.

use crate::config::SitesConfig;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xsite_schemas::hlc::wall_clock_ms;

/// The settings of [`Health`], from `[sites]`.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub check_interval: Duration,
    pub check_timeout: Duration,
    /// 0: never for failures.
    pub take_offline_after_failures: u32,
    /// None: never for a lack of progress.
    pub take_offline_after: Option<Duration>,
    pub auto_bring_online: bool,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl From<&SitesConfig> for HealthSettings {
    fn from(s: &SitesConfig) -> Self {
        HealthSettings {
            check_interval: Duration::from_millis(s.health_check_interval_ms),
            check_timeout: Duration::from_millis(s.health_check_timeout_ms),
            take_offline_after_failures: s.take_offline_after_failures,
            take_offline_after: (s.take_offline_after_ms > 0).then(|| Duration::from_millis(s.take_offline_after_ms)),
            auto_bring_online: s.auto_bring_online,
            backoff_initial: Duration::from_millis(s.retry_backoff_initial_ms),
            backoff_max: Duration::from_millis(s.retry_backoff_max_ms),
        }
    }
}

/// Why a remote site was taken offline; the `reason` label of
/// `xsite_remote_taken_offline_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OfflineCause {
    /// Consecutive failed checks.
    Unreachable,
    /// No progress for `take_offline_after_ms`.
    NoProgress,
    /// `POST /sites/{site}/offline`.
    Operator,
}

impl OfflineCause {
    pub const ALL: [OfflineCause; 3] = [OfflineCause::Unreachable, OfflineCause::NoProgress, OfflineCause::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            OfflineCause::Unreachable => "unreachable",
            OfflineCause::NoProgress => "no-progress",
            OfflineCause::Operator => "operator",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What one check found.
#[derive(Debug, Clone)]
pub struct Check {
    /// The probe: the sum of the topic's end offsets, or why it failed.
    pub probe: Result<i64, String>,
    /// Heartbeats of the site applied here so far.
    pub heartbeats: u64,
    /// Kafka errors its consumer met so far, and the latest.
    pub consumer_errors: u64,
    pub consumer_error: Option<String>,
    /// Messages its consumer received so far.
    pub received: u64,
}

/// What to do after a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    TakeOffline {
        cause: OfflineCause,
        reason: String,
    },
    BringOnline {
        reason: String,
    },
    /// Healthy again, but `auto_bring_online` is off: say so in its status.
    WaitForOperator,
}

/// The health of one remote site: the decision to take it offline or bring it back.
#[derive(Debug)]
pub struct Health {
    settings: HealthSettings,
    failures: u32,
    last_error: Option<(u64, String)>,
    reachable: Option<bool>,
    last_progress: Instant,
    /// What the previous check saw, to tell progress and new errors.
    seen_ends: Option<i64>,
    seen_heartbeats: u64,
    seen_errors: u64,
    seen_received: u64,
    offline: Option<OfflineCause>,
    backoff: Duration,
    told_operator: bool,
}

/// What status shows of a site's health.
#[derive(Debug, Clone, Serialize)]
pub struct HealthStatus {
    /// Whether the last check succeeded (None before the first).
    pub reachable: Option<bool>,
    /// Consecutive failed checks.
    pub failures: u32,
    pub last_error: Option<String>,
    /// Unix ms of the last error.
    pub last_error_ms: Option<u64>,
    /// Milliseconds since the site last progressed.
    pub no_progress_ms: u64,
    /// Who or what took it offline, while it is.
    pub offline_cause: Option<OfflineCause>,
    /// Pause before the next check, in milliseconds.
    pub next_check_ms: u64,
}

impl Health {
    pub fn new(settings: HealthSettings, now: Instant) -> Health {
        let backoff = settings.backoff_initial;
        Health {
            settings,
            failures: 0,
            last_error: None,
            reachable: None,
            last_progress: now,
            seen_ends: None,
            seen_heartbeats: 0,
            seen_errors: 0,
            seen_received: 0,
            offline: None,
            backoff,
            told_operator: false,
        }
    }

    /// Pause before the next check: the backoff while offline because of the
    /// checks and not healthy again, else the interval.
    pub fn next_check_after(&self) -> Duration {
        match self.offline {
            Some(OfflineCause::Unreachable | OfflineCause::NoProgress) if !self.told_operator => self.backoff,
            _ => self.settings.check_interval,
        }
    }

    /// An operator took the site offline: only an operator brings it back.
    pub fn operator_offline(&mut self) {
        self.offline = Some(OfflineCause::Operator);
    }

    /// The site is consumed again (an operator, or [`Action::BringOnline`]): the
    /// wait for progress starts anew.
    pub fn brought_online(&mut self, now: Instant) {
        self.offline = None;
        self.failures = 0;
        self.last_progress = now;
        self.backoff = self.settings.backoff_initial;
        self.told_operator = false;
    }

    pub fn status(&self, now: Instant) -> HealthStatus {
        HealthStatus {
            reachable: self.reachable,
            failures: self.failures,
            last_error: self.last_error.as_ref().map(|(_, e)| e.clone()),
            last_error_ms: self.last_error.as_ref().map(|(at, _)| *at),
            no_progress_ms: now.saturating_duration_since(self.last_progress).as_millis() as u64,
            offline_cause: self.offline,
            next_check_ms: self.next_check_after().as_millis() as u64,
        }
    }

    /// Takes in one check made at `now`; what to do about it.
    pub fn observe(&mut self, now: Instant, check: Check) -> Option<Action> {
        let progressed = self.note_progress(now, &check);
        let consumer_failed = check.consumer_errors > self.seen_errors && check.received == self.seen_received;
        self.seen_errors = check.consumer_errors;
        self.seen_received = check.received;
        let failure = match check.probe {
            Err(e) => Some(e),
            Ok(_) if consumer_failed => Some(check.consumer_error.unwrap_or_else(|| "consumer error".into())),
            Ok(_) => None,
        };
        match failure {
            Some(e) => {
                self.failures = self.failures.saturating_add(1);
                self.last_error = Some((wall_clock_ms(), e));
                self.reachable = Some(false);
            }
            None => {
                self.failures = 0;
                self.reachable = Some(true);
            }
        }
        match self.offline {
            None => self.take_offline_if_due(now),
            Some(OfflineCause::Operator) => None,
            Some(_) => self.bring_online_if_healthy(now, progressed),
        }
    }

    /// Whether the site progressed since the previous check (moving the clock of
    /// the last progress if so).
    fn note_progress(&mut self, now: Instant, check: &Check) -> bool {
        let mut progressed = check.heartbeats > self.seen_heartbeats;
        self.seen_heartbeats = check.heartbeats;
        if let Ok(ends) = check.probe {
            progressed |= self.seen_ends.is_some_and(|seen| ends > seen);
            self.seen_ends = Some(ends);
        }
        if progressed {
            self.last_progress = now;
        }
        progressed
    }

    fn take_offline_if_due(&mut self, now: Instant) -> Option<Action> {
        let s = &self.settings;
        let idle = now.saturating_duration_since(self.last_progress);
        let (cause, reason) = if s.take_offline_after_failures > 0 && self.failures >= s.take_offline_after_failures {
            let last = self.last_error.as_ref().map_or("", |(_, e)| e.as_str());
            (
                OfflineCause::Unreachable,
                format!("taken offline automatically: {} consecutive failed checks (last: {last})", self.failures),
            )
        } else if s.take_offline_after.is_some_and(|limit| idle >= limit) {
            (
                OfflineCause::NoProgress,
                format!(
                    "taken offline automatically: no progress for {} ms (its topic's end offsets and heartbeats stood still)",
                    idle.as_millis()
                ),
            )
        } else {
            return None;
        };
        self.offline = Some(cause);
        self.backoff = s.backoff_initial;
        self.told_operator = false;
        Some(Action::TakeOffline { cause, reason })
    }

    fn bring_online_if_healthy(&mut self, now: Instant, progressed: bool) -> Option<Action> {
        let healthy = self.reachable == Some(true) && (progressed || self.settings.take_offline_after.is_none());
        if !healthy {
            self.backoff = (self.backoff * 2).min(self.settings.backoff_max);
            self.told_operator = false;
            return None;
        }
        if self.settings.auto_bring_online {
            self.brought_online(now);
            return Some(Action::BringOnline {
                reason: "brought online automatically: reachable and progressing again".into(),
            });
        }
        if self.told_operator {
            return None;
        }
        self.told_operator = true;
        Some(Action::WaitForOperator)
    }
}

/// The health of one remote site, shared by its checking loop, status and metrics.
#[derive(Debug)]
pub struct SiteHealth {
    health: Mutex<Health>,
    taken_offline: [AtomicU64; 3],
    checks_failed: AtomicU64,
}

impl SiteHealth {
    pub fn new(settings: HealthSettings) -> SiteHealth {
        SiteHealth {
            health: Mutex::new(Health::new(settings, Instant::now())),
            taken_offline: Default::default(),
            checks_failed: AtomicU64::new(0),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes in a check; what to do about it.
    pub fn observe(&self, check: Check) -> Option<Action> {
        if check.probe.is_err() {
            self.checks_failed.fetch_add(1, Ordering::Relaxed);
        }
        self.lock().observe(Instant::now(), check)
    }

    pub fn status(&self) -> HealthStatus {
        self.lock().status(Instant::now())
    }

    /// Counts a take-offline that stopped the consumer.
    pub fn count_taken_offline(&self, cause: OfflineCause) {
        self.taken_offline[cause.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Times the site was taken offline for `cause`.
    pub fn taken_offline(&self, cause: OfflineCause) -> u64 {
        self.taken_offline[cause.index()].load(Ordering::Relaxed)
    }

    /// Checks whose probe failed.
    pub fn checks_failed(&self) -> u64 {
        self.checks_failed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HealthSettings {
        HealthSettings {
            check_interval: Duration::from_millis(100),
            check_timeout: Duration::from_millis(100),
            take_offline_after_failures: 3,
            take_offline_after: Some(Duration::from_secs(10)),
            auto_bring_online: true,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_millis(1_000),
        }
    }

    fn ok(ends: i64) -> Check {
        Check { probe: Ok(ends), heartbeats: 0, consumer_errors: 0, consumer_error: None, received: 0 }
    }

    fn failed() -> Check {
        Check { probe: Err("all brokers down".into()), ..ok(0) }
    }

    #[test]
    fn consecutive_failures_take_a_site_offline_and_backoff_doubles_to_its_bound() {
        let t0 = Instant::now();
        let mut h = Health::new(settings(), t0);
        assert_eq!(h.observe(t0, ok(10)), None);
        assert_eq!(h.observe(t0, failed()), None);
        assert_eq!(h.observe(t0, ok(11)), None, "a success resets the count");
        assert_eq!(h.observe(t0, failed()), None);
        assert_eq!(h.observe(t0, failed()), None);
        let Some(Action::TakeOffline { cause, reason }) = h.observe(t0, failed()) else { panic!("not taken offline") };
        assert_eq!(cause, OfflineCause::Unreachable);
        assert!(reason.contains("3 consecutive failed checks (last: all brokers down)"), "{reason}");
        let pauses: Vec<u128> = (0..5)
            .map(|_| {
                let pause = h.next_check_after().as_millis();
                assert_eq!(h.observe(t0, failed()), None);
                pause
            })
            .collect();
        assert_eq!(pauses, [200, 400, 800, 1_000, 1_000], "exponential, bounded");
        assert_eq!(h.observe(t0, ok(11)), None, "reachable, but the topic did not move since the last success");
        let Some(Action::BringOnline { .. }) = h.observe(t0, ok(12)) else { panic!("not brought online") };
        assert_eq!(h.next_check_after(), Duration::from_millis(100));
        assert_eq!(h.status(t0).offline_cause, None);
    }

    #[test]
    fn a_site_without_progress_is_taken_offline_and_back_once_it_moves() {
        let t0 = Instant::now();
        let mut h = Health::new(settings(), t0);
        assert_eq!(h.observe(t0, ok(10)), None);
        assert_eq!(h.observe(t0 + Duration::from_secs(5), Check { heartbeats: 1, ..ok(10) }), None, "a heartbeat");
        assert_eq!(h.observe(t0 + Duration::from_secs(14), ok(10)), None, "10 s not over since the heartbeat");
        let Some(Action::TakeOffline { cause, reason }) = h.observe(t0 + Duration::from_secs(15), ok(10)) else {
            panic!("not taken offline")
        };
        assert_eq!(cause, OfflineCause::NoProgress);
        assert!(reason.contains("no progress for 10000 ms"), "{reason}");
        assert_eq!(h.observe(t0 + Duration::from_secs(16), ok(10)), None);
        let t = t0 + Duration::from_secs(17);
        assert!(matches!(h.observe(t, ok(13)), Some(Action::BringOnline { .. })));
        assert_eq!(h.observe(t + Duration::from_secs(9), ok(13)), None, "the wait starts anew once online");
    }

    #[test]
    fn consumer_errors_with_nothing_received_count_as_failures() {
        let t0 = Instant::now();
        let mut h = Health::new(settings(), t0);
        let erring = |n: u64, received: u64| Check {
            consumer_errors: n,
            consumer_error: Some("consuming xsite.site-b: broker transport failure".into()),
            received,
            ..ok(10)
        };
        assert_eq!(h.observe(t0, erring(1, 5)), None);
        assert_eq!(h.status(t0).failures, 0, "errors while messages arrive are not failures");
        assert_eq!(h.observe(t0, erring(2, 5)), None);
        assert_eq!(h.observe(t0, erring(3, 5)), None);
        let Some(Action::TakeOffline { reason, .. }) = h.observe(t0, erring(4, 5)) else { panic!("not offline") };
        assert!(reason.contains("broker transport failure"), "{reason}");
    }

    #[test]
    fn without_auto_bring_online_a_healthy_site_waits_for_an_operator() {
        let t0 = Instant::now();
        let mut h = Health::new(HealthSettings { auto_bring_online: false, ..settings() }, t0);
        for _ in 0..3 {
            h.observe(t0, failed());
        }
        assert_eq!(h.status(t0).offline_cause, Some(OfflineCause::Unreachable));
        h.observe(t0, ok(10));
        assert!(matches!(h.observe(t0, ok(11)), Some(Action::WaitForOperator)));
        assert_eq!(h.observe(t0, ok(12)), None, "said once");
        assert_eq!(h.next_check_after(), Duration::from_millis(100), "no backoff while it waits");
        h.brought_online(t0);
        assert_eq!(h.status(t0).offline_cause, None);
    }

    #[test]
    fn a_site_an_operator_took_offline_stays_offline() {
        let t0 = Instant::now();
        let mut h = Health::new(settings(), t0);
        h.operator_offline();
        for ends in 0..10 {
            assert_eq!(h.observe(t0 + Duration::from_secs(ends as u64 * 20), ok(ends)), None);
        }
        assert_eq!(h.status(t0).offline_cause, Some(OfflineCause::Operator));
    }

    #[test]
    fn zero_disables_each_trigger() {
        let t0 = Instant::now();
        let off = HealthSettings { take_offline_after_failures: 0, take_offline_after: None, ..settings() };
        let mut h = Health::new(off, t0);
        for i in 0..100 {
            assert_eq!(h.observe(t0 + Duration::from_secs(i * 60), failed()), None);
        }
    }
}
