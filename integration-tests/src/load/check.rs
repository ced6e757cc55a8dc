//! The model of a key (the states it may hold after each prefix of its commands) and
//! the check of a site's contents against the loads' histories; see [`super`].

use super::{Op, Sent, KEY_PREFIX, SHARED_PREFIX};
use crate::contents::{self, wall_ms, Entry, Snapshot};
use redis::aio::MultiplexedConnection;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Allowance when an expiry the node computed is compared with the test's clock
/// readings (the same wall clock; this covers scheduling between them).
pub const CLOCK_SLACK_MS: u64 = 250;
/// Possible states of one key after a prefix of its commands: past this, the load
/// left too many outcomes unknown to check anything.
const STATES_PER_KEY_MAX: usize = 4096;
/// Commands of a key's history shown when it is reported.
const SHOWN_HISTORY_MAX: usize = 8;
/// Keys read per pipeline by [`observe_keys`].
const READ_CHUNK_KEYS: usize = 500;

/// When the node may have put a key's expiry (wall-clock ms): its TTL counted from
/// some instant between the command's send and its reply.
type Window = (u64, u64);

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Absent,
    Value { value: String, expiry: Option<Window> },
    Counter(i64),
}

impl State {
    /// The state after `s`, had the node applied it.
    fn after(&self, s: &Sent) -> State {
        let window = |ms: u64| (s.sent_ms + ms, s.done_ms + ms);
        // A reply of 0 to DEL, PERSIST or PEXPIRE: nothing changed.
        let unchanged = matches!(s.reply, Ok(redis::Value::Int(0)));
        match &s.op {
            Op::Set { value, ttl } => State::Value { value: value.clone(), expiry: ttl.map(|t| window(t.ms())) },
            Op::Del if unchanged => self.clone(),
            Op::Del => State::Absent,
            Op::Persist | Op::Expire(_) if unchanged => self.clone(),
            Op::Persist => match self {
                State::Value { value, .. } => State::Value { value: value.clone(), expiry: None },
                other => other.clone(),
            },
            Op::Expire(ms) => match self {
                State::Value { value, .. } => State::Value { value: value.clone(), expiry: Some(window(*ms)) },
                other => other.clone(),
            },
            Op::IncrBy(delta) => match self {
                State::Counter(n) => State::Counter(n + delta),
                _ => State::Counter(*delta),
            },
        }
    }

    fn show(&self) -> String {
        match self {
            State::Absent => "absent".into(),
            State::Counter(n) => format!("counter {n}"),
            State::Value { value, expiry: None } => format!("{value:?} without TTL"),
            State::Value { value, expiry: Some((lo, hi)) } => format!("{value:?} expiring in {lo}..={hi}"),
        }
    }
}

/// What a site answered for one key, and when it was read (wall-clock ms).
#[derive(Debug, Clone)]
pub struct Observed {
    pub entry: Option<Entry>,
    pub from_ms: u64,
    pub to_ms: u64,
}

impl Observed {
    fn show(&self) -> String {
        match &self.entry {
            None => "absent".into(),
            Some(e) => e.show(),
        }
    }
}

/// Whether the site's answer is what `state` looks like when read at `obs`'s time.
fn matches(state: &State, obs: &Observed) -> bool {
    let s = CLOCK_SLACK_MS;
    match (state, &obs.entry) {
        (State::Absent, None) => true,
        (State::Counter(n), Some(e)) => e.value == n.to_string().as_bytes() && e.expire_at_ms.is_none(),
        (State::Value { expiry: Some((lo, _)), .. }, None) => *lo <= obs.to_ms + s, // expired
        (State::Value { value, expiry }, Some(e)) if e.value == value.as_bytes() => match (expiry, e.expire_at_ms) {
            (None, None) => true,
            // The expiry the node computed lies in the window, and had not passed
            // when the key was read.
            (Some((lo, hi)), Some(at)) => at + s >= *lo && at <= hi + s && at + s >= obs.from_ms,
            _ => false,
        },
        _ => false,
    }
}

/// An acknowledged command whose effect is missing.
#[derive(Debug, Clone)]
pub struct Lost {
    pub what: String,
    /// Its acknowledgement, this long before the reference instant given to [`check`].
    pub age: Duration,
}

/// "what, acknowledged … before `reference`" of the first `max` lost commands
/// (`reference` names the instant given to [`check`]: "the cut", "the check").
pub fn show_lost<'a>(lost: impl IntoIterator<Item = &'a Lost>, max: usize, reference: &str) -> String {
    let shown: Vec<String> = lost
        .into_iter()
        .take(max)
        .map(|l| format!("  {}\n    (acknowledged {:?} before {reference})", l.what, l.age))
        .collect();
    shown.join("\n")
}

/// A counter every client increments.
#[derive(Debug, Clone)]
pub struct SharedCounter {
    pub key: String,
    /// Sum of the increments acknowledged, and of every increment sent.
    pub acked: i64,
    pub attempted: i64,
    pub observed: Option<i64>,
}

/// What the check found over every key.
#[derive(Debug, Default)]
pub struct Verdict {
    pub keys: usize,
    pub counters: usize,
    /// Keys whose last attempt's outcome is unknown, found applied / not applied /
    /// either (the states agree).
    pub in_flight_applied: usize,
    pub in_flight_absent: usize,
    pub in_flight_either: usize,
    /// Keys read with a TTL that matched one in the model; keys found expired.
    pub ttls_live: usize,
    pub expired: usize,
    /// Oldest first.
    pub lost: Vec<Lost>,
    /// Keys whose answer matches no prefix of their history.
    pub impossible: Vec<String>,
    pub shared: Vec<SharedCounter>,
    /// Shared counters outside their bounds.
    pub shared_out_of_bounds: Vec<String>,
    /// Keys of the load's namespace that no client wrote (full snapshots only).
    pub unexpected: Vec<String>,
}

impl Verdict {
    /// One line: what was checked.
    pub fn summary(&self) -> String {
        let shared: Vec<String> = self
            .shared
            .iter()
            .map(|c| {
                let got = c.observed.map_or("absent".to_string(), |v| v.to_string());
                format!("{}={got} in [{}, {}]", c.key.trim_start_matches(SHARED_PREFIX), c.acked, c.attempted)
            })
            .collect();
        format!(
            "{} keys checked ({} counters, {} live TTLs, {} expired; in flight: {} applied, {} not, {} either); shared counters: {}",
            self.keys,
            self.counters,
            self.ttls_live,
            self.expired,
            self.in_flight_applied,
            self.in_flight_absent,
            self.in_flight_either,
            if shared.is_empty() { "none".to_string() } else { shared.join(", ") }
        )
    }

    /// Err with every problem (lost, impossible, shared counters out of bounds,
    /// unexpected keys) when there is one.
    pub fn nothing_lost(&self, site: &str) -> Result<(), String> {
        if self.lost.is_empty()
            && self.impossible.is_empty()
            && self.shared_out_of_bounds.is_empty()
            && self.unexpected.is_empty()
        {
            return Ok(());
        }
        let mut msg = format!("at {site}: {}", self.summary());
        if !self.lost.is_empty() {
            let _ = write!(
                msg,
                "\n{} acknowledged commands lost, oldest first:\n{}",
                self.lost.len(),
                show_lost(&self.lost, 10, "the check")
            );
        }
        if !self.impossible.is_empty() {
            let _ = write!(msg, "\n{} keys in a state no history gives:", self.impossible.len());
            for k in self.impossible.iter().take(5) {
                let _ = write!(msg, "\n  {k}");
            }
        }
        for c in &self.shared_out_of_bounds {
            let _ = write!(msg, "\nshared counter {c}");
        }
        if !self.unexpected.is_empty() {
            let _ = write!(
                msg,
                "\n{} keys no client wrote: {:?}",
                self.unexpected.len(),
                &self.unexpected[..self.unexpected.len().min(10)]
            );
        }
        Err(msg)
    }
}

/// Every attempt on keys owned by one client, by key, in the order the client sent them.
pub fn by_key(sent: &[Sent]) -> BTreeMap<&str, Vec<&Sent>> {
    let mut keys: BTreeMap<&str, Vec<&Sent>> = BTreeMap::new();
    for s in sent.iter().filter(|s| !s.is_shared()) {
        keys.entry(s.key.as_str()).or_default().push(s);
    }
    for (key, history) in keys.iter_mut() {
        history.sort_by_key(|s| (s.seq, s.attempt));
        assert!(history.iter().all(|s| s.client == history[0].client), "{key} written by two clients");
    }
    keys
}

/// Every key the attempts touched, shared counters included.
pub fn keys_of(sent: &[Sent]) -> BTreeSet<String> {
    sent.iter().map(|s| s.key.clone()).collect()
}

/// Check `sent` (every load of the test, every site's) against a site's full
/// snapshot. `reference` is the instant lost commands' ages are measured from.
pub fn check(sent: &[Sent], snapshot: &Snapshot, reference: Instant) -> Verdict {
    let touched = keys_of(sent);
    let mut verdict = check_observed(sent, &observed_in(snapshot, &touched), reference);
    verdict.unexpected = snapshot
        .entries
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .filter(|k| k.starts_with(KEY_PREFIX) && !touched.contains(k))
        .collect();
    verdict
}

/// Check only the keys `sent`'s clients own (no shared counters, no unexpected keys)
/// against a site's full snapshot: what that site must hold of its own clients'
/// writes before it has caught up with the other sites.
pub fn check_own(sent: &[Sent], snapshot: &Snapshot, reference: Instant) -> Verdict {
    let own: Vec<Sent> = sent.iter().filter(|s| !s.is_shared()).cloned().collect();
    check_observed(&own, &observed_in(snapshot, &keys_of(&own)), reference)
}

/// What `snapshot` shows of each of `keys` (absent ones included).
fn observed_in(snapshot: &Snapshot, keys: &BTreeSet<String>) -> BTreeMap<String, Observed> {
    keys.iter()
        .map(|k| {
            let entry = snapshot.get(k.as_bytes()).cloned();
            (k.clone(), Observed { entry, from_ms: snapshot.read_from_ms, to_ms: snapshot.read_to_ms })
        })
        .collect()
}

/// Check `sent` against what a site answered for each key it touched (every key of
/// `sent` must be in `observed`; absent keys as `entry: None`).
pub fn check_observed(sent: &[Sent], observed: &BTreeMap<String, Observed>, reference: Instant) -> Verdict {
    let mut verdict = Verdict::default();
    let now = Instant::now();
    for (key, history) in by_key(sent) {
        let obs = observed.get(key).unwrap_or_else(|| panic!("no observation of {key}"));
        check_key(key, &history, obs, reference, now, &mut verdict);
    }
    verdict.lost.sort_by_key(|l| std::cmp::Reverse(l.age));
    check_shared(sent, observed, &mut verdict);
    verdict
}

fn check_key(key: &str, history: &[&Sent], obs: &Observed, reference: Instant, now: Instant, verdict: &mut Verdict) {
    // prefixes[k]: the states the key may hold after its first k attempts.
    let mut prefixes: Vec<Vec<State>> = vec![vec![State::Absent]];
    for s in history {
        let before = prefixes.last().expect("at least the empty prefix");
        let mut next: Vec<State> = before.iter().map(|st| st.after(s)).collect();
        if !s.acked() {
            next.extend(before.iter().cloned()); // maybe not applied
        }
        let mut deduped: Vec<State> = Vec::with_capacity(next.len());
        for st in next {
            if !deduped.contains(&st) {
                deduped.push(st);
            }
        }
        assert!(
            deduped.len() <= STATES_PER_KEY_MAX,
            "{key}: more than {STATES_PER_KEY_MAX} possible states (too many commands with an unknown outcome)"
        );
        prefixes.push(deduped);
    }
    verdict.keys += 1;
    if key.contains(":ctr") {
        verdict.counters += 1;
    }
    let found =
        (0..prefixes.len()).rev().find_map(|k| prefixes[k].iter().find(|st| matches(st, obs)).map(|st| (k, st)));
    let Some((prefix, state)) = found else {
        let tried: Vec<String> = prefixes.last().into_iter().flatten().take(4).map(State::show).collect();
        verdict.impossible.push(format!(
            "{key}: the site has {}, which no prefix of its {} attempts gives (final states: {}); its last commands:\n{}",
            obs.show(),
            history.len(),
            tried.join(", "),
            show_history(history, now)
        ));
        return;
    };
    if let State::Value { expiry: Some(_), .. } = state {
        if obs.entry.is_some() {
            verdict.ttls_live += 1;
        } else {
            verdict.expired += 1;
        }
    }
    let last = history.last().expect("a key has a command");
    if !last.acked() {
        let n = history.len();
        let applied = prefix == n && prefixes[n - 1].iter().any(|st| matches(&st.after(last), obs));
        let not_applied = prefixes[n - 1].iter().any(|st| matches(st, obs));
        match (applied, not_applied) {
            (true, true) => verdict.in_flight_either += 1,
            (true, false) => verdict.in_flight_applied += 1,
            _ => verdict.in_flight_absent += 1,
        }
    }
    let lost: Vec<&&Sent> = history[prefix..].iter().filter(|s| s.acked()).collect();
    for (i, s) in lost.iter().enumerate() {
        let mut what = format!("{} (the site has {})", s.describe(), obs.show());
        if i == 0 {
            let _ = write!(what, "; the key's last commands:\n{}", show_history(history, now));
        }
        verdict.lost.push(Lost { what, age: reference.saturating_duration_since(s.done) });
    }
}

fn show_history(history: &[&Sent], now: Instant) -> String {
    let start = history.len().saturating_sub(SHOWN_HISTORY_MAX);
    let lines: Vec<String> = history[start..].iter().map(|s| format!("      {}", s.show(now))).collect();
    lines.join("\n")
}

fn check_shared(sent: &[Sent], observed: &BTreeMap<String, Observed>, verdict: &mut Verdict) {
    let mut sums: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for s in sent.iter().filter(|s| s.is_shared()) {
        let Op::IncrBy(delta) = s.op else { panic!("{}: only INCRBY goes to shared counters", s.describe()) };
        let sum = sums.entry(s.key.as_str()).or_default();
        if s.acked() {
            sum.0 += delta;
        }
        sum.1 += delta;
    }
    for (key, (acked, attempted)) in sums {
        let obs = observed.get(key).unwrap_or_else(|| panic!("no observation of {key}"));
        let value = obs.entry.as_ref().map(|e| String::from_utf8_lossy(&e.value).parse::<i64>());
        let counter = SharedCounter {
            key: key.to_string(),
            acked,
            attempted,
            observed: value.as_ref().and_then(|v| v.as_ref().ok().copied()),
        };
        let got = counter.observed.unwrap_or(0);
        let problem = match (&value, obs.entry.as_ref().and_then(|e| e.expire_at_ms)) {
            (Some(Err(_)), _) => Some(format!("{key} is not an integer: {}", obs.show())),
            (_, Some(at)) => Some(format!("{key} has an expiry ({at}) nobody set")),
            _ if got < acked || got > attempted => Some(format!(
                "{key} = {} is outside [{acked} acknowledged, {attempted} attempted]",
                counter.observed.map_or("absent".to_string(), |v| v.to_string())
            )),
            _ => None,
        };
        verdict.shared_out_of_bounds.extend(problem);
        verdict.shared.push(counter);
    }
}

/// GET and PEXPIRETIME of `keys`, in pipelines; each key with the interval it was
/// read in.
pub async fn observe_keys(
    conn: &mut MultiplexedConnection,
    keys: &BTreeSet<String>,
) -> redis::RedisResult<BTreeMap<String, Observed>> {
    let keys: Vec<&String> = keys.iter().collect();
    let mut observed = BTreeMap::new();
    for chunk in keys.chunks(READ_CHUNK_KEYS) {
        let raw: Vec<Vec<u8>> = chunk.iter().map(|k| k.as_bytes().to_vec()).collect();
        let from_ms = wall_ms();
        let entries = contents::read_entries(conn, &raw).await?;
        let to_ms = wall_ms();
        for (key, entry) in chunk.iter().zip(entries) {
            observed.insert((*key).clone(), Observed { entry, from_ms, to_ms });
        }
    }
    Ok(observed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Ttl;

    const T0: u64 = 1_000_000;

    /// Attempts of client c0 built by hand: (key, op, reply), 10 ms apart from `T0`.
    fn history(cmds: &[(&str, Op, Result<redis::Value, &str>)]) -> Vec<Sent> {
        let now = Instant::now();
        cmds.iter()
            .enumerate()
            .map(|(i, (key, op, reply))| Sent {
                client: "c0".into(),
                seq: i as u64 + 1,
                attempt: 0,
                key: key.to_string(),
                op: op.clone(),
                sent: now,
                done: now,
                sent_ms: T0 + 10 * i as u64,
                done_ms: T0 + 10 * i as u64 + 2,
                reply: reply.clone().map_err(str::to_string),
            })
            .collect()
    }

    fn set(v: &str) -> Op {
        Op::Set { value: v.into(), ttl: None }
    }

    fn ok() -> Result<redis::Value, &'static str> {
        Ok(redis::Value::Okay)
    }

    fn int(n: i64) -> Result<redis::Value, &'static str> {
        Ok(redis::Value::Int(n))
    }

    /// A snapshot read at `at_ms` holding `entries`.
    fn snapshot(at_ms: u64, entries: &[(&str, &str, Option<u64>)]) -> Snapshot {
        Snapshot {
            entries: entries
                .iter()
                .map(|(k, v, e)| (k.as_bytes().to_vec(), Entry { value: v.as_bytes().to_vec(), expire_at_ms: *e }))
                .collect(),
            read_from_ms: at_ms,
            read_to_ms: at_ms + 5,
        }
    }

    const K: &str = "ld:c0:k000000";

    #[test]
    fn the_last_acknowledged_write_present_is_nothing_lost_and_an_older_one_is_a_loss() {
        let sent = history(&[(K, set("v1"), ok()), (K, set("v2"), ok())]);
        let v = check(&sent, &snapshot(T0 + 100, &[(K, "v2", None)]), Instant::now());
        assert!(v.nothing_lost("here").is_ok(), "{:?}", v.nothing_lost("here"));
        let v = check(&sent, &snapshot(T0 + 100, &[(K, "v1", None)]), Instant::now());
        assert_eq!(v.lost.len(), 1, "{v:?}");
        assert!(v.lost[0].what.contains("#2 SET"), "{}", v.lost[0].what);
        let v = check(&sent, &snapshot(T0 + 100, &[]), Instant::now());
        assert_eq!(v.lost.len(), 2);
        let v = check(&sent, &snapshot(T0 + 100, &[(K, "other", None)]), Instant::now());
        assert_eq!(v.impossible.len(), 1);
        assert!(v.nothing_lost("site-x").unwrap_err().contains("site-x"));
    }

    #[test]
    fn a_command_with_an_unknown_outcome_may_or_may_not_have_been_applied() {
        let sent = history(&[(K, set("v1"), ok()), (K, set("v2"), Err("connection reset")), (K, Op::Del, int(1))]);
        // Whatever happened to v2, the DEL after it was acknowledged.
        assert!(check(&sent, &snapshot(T0 + 100, &[]), Instant::now()).nothing_lost("s").is_ok());
        assert_eq!(check(&sent, &snapshot(T0 + 100, &[(K, "v2", None)]), Instant::now()).lost.len(), 1);
        let ctr = "ld:c0:ctr0";
        let sent = history(&[
            (ctr, Op::IncrBy(2), int(2)),
            (ctr, Op::IncrBy(3), Err("timeout")),
            (ctr, Op::IncrBy(4), int(9)),
        ]);
        for (value, fine) in [("6", true), ("9", true), ("2", false), ("5", false)] {
            let v = check(&sent, &snapshot(T0 + 100, &[(ctr, value, None)]), Instant::now());
            assert_eq!(v.nothing_lost("s").is_ok(), fine, "counter at {value}: {v:?}");
        }
    }

    #[test]
    fn expiry_times_must_lie_in_the_window_and_a_key_may_be_gone_once_its_ttl_can_have_ended() {
        let ttl = Op::Set { value: "v".into(), ttl: Some(Ttl::Px(1000)) };
        let sent = history(&[(K, ttl, ok())]);
        let lo = T0 + 1000;
        let at = |when: u64, e: Option<u64>| check(&sent, &snapshot(when, &[(K, "v", e)]), Instant::now());
        assert!(at(T0 + 100, Some(lo + 1)).nothing_lost("s").is_ok());
        assert!(at(T0 + 100, None).nothing_lost("s").is_err(), "a lost TTL");
        assert!(at(T0 + 100, Some(lo + 5_000)).nothing_lost("s").is_err(), "a TTL counted from elsewhere");
        assert!(at(lo + 2 * CLOCK_SLACK_MS, Some(lo)).nothing_lost("s").is_err(), "served after its expiry");
        let gone = check(&sent, &snapshot(T0 + 100, &[]), Instant::now());
        assert_eq!(gone.lost.len(), 1, "gone before its TTL could end");
        let gone = check(&sent, &snapshot(lo + 1, &[]), Instant::now());
        assert!(gone.nothing_lost("s").is_ok(), "expired");
        // PERSIST answered 1 takes it away; PEXPIRE answered 0 changed nothing.
        let sent = history(&[
            (K, Op::Set { value: "v".into(), ttl: Some(Ttl::Ex(60)) }, ok()),
            (K, Op::Persist, int(1)),
            (K, Op::Expire(500), int(0)),
        ]);
        assert!(check(&sent, &snapshot(T0 + 100, &[(K, "v", None)]), Instant::now()).nothing_lost("s").is_ok());
        let with_ttl = snapshot(T0 + 100, &[(K, "v", Some(T0 + 60_000))]);
        assert_eq!(check(&sent, &with_ttl, Instant::now()).lost.len(), 2);
    }

    #[test]
    fn shared_counters_lie_between_acknowledged_and_attempted_sums_and_strangers_are_reported() {
        let shared = format!("{SHARED_PREFIX}ctr0");
        let mut sent = history(&[(&shared, Op::IncrBy(5), int(5)), (&shared, Op::IncrBy(7), Err("reset"))]);
        sent[1].client = "c1".into(); // several clients may increment a shared counter
        for (value, fine) in
            [(Some("5"), true), (Some("12"), true), (Some("4"), false), (Some("13"), false), (None, false)]
        {
            let entries: Vec<(&str, &str, Option<u64>)> =
                value.into_iter().map(|v| (shared.as_str(), v, None)).collect();
            let v = check(&sent, &snapshot(T0, &entries), Instant::now());
            assert_eq!(v.shared_out_of_bounds.is_empty(), fine, "{value:?}: {v:?}");
        }
        let v = check(
            &sent,
            &snapshot(T0, &[(&shared, "5", None), ("ld:zz0:k000001", "x", None), ("other", "y", None)]),
            Instant::now(),
        );
        assert_eq!(v.unexpected, ["ld:zz0:k000001"]);
    }

    #[test]
    fn a_power_cut_loses_a_suffix_whose_age_is_reported() {
        let sent = history(&[(K, set("v1"), ok()), (K, set("v2"), ok()), (K, set("v3"), ok())]);
        let v = check_observed(
            &sent,
            &[(
                K.to_string(),
                Observed { entry: Some(Entry { value: b"v1".to_vec(), expire_at_ms: None }), from_ms: T0, to_ms: T0 },
            )]
            .into_iter()
            .collect(),
            Instant::now() + Duration::from_millis(100),
        );
        assert_eq!(v.lost.len(), 2);
        assert!(v.lost.iter().all(|l| l.age >= Duration::from_millis(100)));
    }
}
