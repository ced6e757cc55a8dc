//! The sites of one case together: topics, true time, the collection floor, the final
//! round and the checks.
//!
//! **The honest floor** ([`World::true_floor`]) is the highest timestamp below which
//! every entry that will ever reach a site has reached every site and is durable
//! there: the lowest of
//! - every shipped entry (with a key) some other site has not durably applied;
//! - every local entry a site has not made durable yet (it may still ship);
//! - every site's next local write, which is above both its highest durable local
//!   timestamp (a restart's clock starts above it) and its lowest possible wall clock
//!   (true time minus the case's largest offset; a local timestamp is at least the wall
//!   clock).
//!
//! It never decreases (asserted, unless `incr-base-floor` is left out: an increment
//! made now may carry an old base). A lagging floor is an older one, and no higher
//! than the current one.

use super::case::MAX_SKEW_MS;
use super::case::{key_name, Case, Policy, Step, Ttl, KEYS};
use super::model::expected_record;
use super::site::{EntryRef, Observed, Site, BASE_MS};
use super::{Known, Rng};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use xsite_consumer::merge::{parse_policy, Record, Value};
use xsite_node::resp::Frame;
use xsite_schemas::{Hlc, LogEntry, Op, Version};

/// What a case exercised (for the coverage test).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Local writes refused read-only.
    pub read_only: u64,
    /// Power cuts that lost local entries.
    pub lost_writes: u64,
    /// Collections before the final round that removed a record.
    pub collections: u64,
    /// Entries applied (before the final round) after the site collected a record
    /// of their key.
    pub after_collection: u64,
    /// Entries applied (before the final round) whose epoch was below the site's.
    pub stale_epoch: u64,
}

pub struct World<'c> {
    case: &'c Case,
    known: Known,
    sites: Vec<Site>,
    /// Per origin, what it shipped, in order.
    topics: Vec<Vec<LogEntry>>,
    true_ms: u64,
    offsets: Vec<i64>,
    /// The highest wall clock any site had.
    max_wall: u64,
    /// Every honest floor computed so far.
    floors: Vec<Hlc>,
    /// Keys some site collected a record of.
    collected: BTreeSet<Vec<u8>>,
    rng: Rng,
    trace: Option<Vec<String>>,
    /// Per site, keys it collected a record of.
    collected_at: Vec<BTreeSet<Vec<u8>>>,
    stats: Stats,
}

/// Runs a case to the end and checks it; `Err` describes the divergence (with a
/// step-by-step trace when `trace`).
pub fn run(case: &Case, known: Known, trace: bool) -> Result<Stats, String> {
    let mut world = World::new(case, known, trace);
    for (i, step) in case.steps.iter().enumerate() {
        world.step(i, step);
    }
    world.finish()
}

impl<'c> World<'c> {
    fn new(case: &'c Case, known: Known, trace: bool) -> World<'c> {
        let policy = case.policy.name(case.sites);
        let primary = case.primary.map(|p| usize::from(p) % case.sites);
        let sites = (0..case.sites)
            .map(|i| Site::new(i, policy.clone(), case.always & (1 << i) != 0, primary, BASE_MS))
            .collect();
        World {
            case,
            known,
            sites,
            topics: vec![Vec::new(); case.sites],
            true_ms: BASE_MS,
            offsets: vec![0; case.sites],
            max_wall: BASE_MS,
            floors: Vec::new(),
            collected: BTreeSet::new(),
            rng: Rng::new(case.seed),
            trace: trace.then(Vec::new),
            collected_at: vec![BTreeSet::new(); case.sites],
            stats: Stats::default(),
        }
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(line());
        }
    }

    fn site_of(&self, site: u8) -> usize {
        usize::from(site) % self.case.sites
    }

    fn set_wall(&mut self, s: usize) {
        let wall = self.true_ms.saturating_add_signed(self.offsets[s]);
        self.sites[s].wall = wall;
        self.max_wall = self.max_wall.max(wall);
    }

    fn step(&mut self, i: usize, step: &Step) {
        match *step {
            Step::Set { site, key, value, ttl } => {
                let v = if value >= 200 { format!("x{value}") } else { (value % 20).to_string() };
                let mut args = vec![b"set".to_vec(), key_name(key), v.into_bytes()];
                match ttl {
                    Ttl::None => {}
                    Ttl::Px(ms) => args.extend([b"px".to_vec(), ms.to_string().into_bytes()]),
                    Ttl::Keep => args.push(b"keepttl".to_vec()),
                }
                self.command(i, site, args);
            }
            Step::Del { site, key } => self.command(i, site, vec![b"del".to_vec(), key_name(key)]),
            Step::Incr { site, key, delta } => {
                let s = self.site_of(site);
                let k = key_name(key);
                let live = self.sites[s].is_live(&k);
                let tombstone = self.sites[s].store.read(&k, |r| r.is_some_and(Record::is_tombstone));
                let skip = if self.known.counter_base && self.collected.contains(&k) && !live {
                    Some("counter-base")
                } else if self.known.always_remove_counter && self.case.policy == Policy::AlwaysRemove && tombstone {
                    Some("always-remove-counter")
                } else {
                    None
                };
                if let Some(known) = skip {
                    self.note(|| format!("#{i} s{s} INCRBY {} {delta}: skipped (known {known})", show(&k)));
                } else {
                    self.command(i, site, vec![b"incrby".to_vec(), k, delta.to_string().into_bytes()]);
                }
            }
            Step::PexpireAt { site, key, in_ms } => {
                let at = self.sites[self.site_of(site)].wall as i64 + i64::from(in_ms);
                self.command(i, site, vec![b"pexpireat".to_vec(), key_name(key), at.to_string().into_bytes()]);
            }
            Step::Persist { site, key } => self.command(i, site, vec![b"persist".to_vec(), key_name(key)]),
            Step::Advance { ms } => {
                self.true_ms += u64::from(ms);
                for s in 0..self.case.sites {
                    self.set_wall(s);
                }
                self.note(|| format!("#{i} time +{ms} ms"));
            }
            Step::Skew { site, offset } => {
                let s = self.site_of(site);
                // Half the jumps land at either end of the range.
                let offset = (i64::from(offset) * 2).clamp(-128, 128);
                self.offsets[s] = offset * self.case.offset_max_ms() as i64 / 128;
                self.set_wall(s);
                let wall = self.sites[s].wall;
                self.note(|| format!("#{i} s{s} wall clock jumps to {}", ms(wall)));
            }
            Step::Deliver { to, pick, dup } => self.deliver_one(i, to, pick, dup),
            Step::CatchUp { to, from } => {
                let (to, from) = (self.site_of(to), self.site_of(from));
                if to != from {
                    self.note(|| format!("#{i} s{to} catches up on s{from}'s topic"));
                    self.catch_up(Some(i), to, from);
                    self.sites[to].sync();
                }
            }
            Step::Quiesce { seed } => {
                self.note(|| format!("#{i} every site catches up"));
                for site in &mut self.sites {
                    site.sync();
                }
                self.ship();
                let mut rng = Rng::new(u64::from(seed));
                for to in 0..self.case.sites {
                    let mut from: Vec<usize> = (0..self.case.sites).filter(|o| *o != to).collect();
                    rng.shuffle(&mut from);
                    for o in from {
                        self.catch_up(Some(i), to, o);
                    }
                    self.sites[to].sync();
                }
            }
            Step::Sync { site } => {
                let s = self.site_of(site);
                self.sites[s].sync();
                self.note(|| format!("#{i} s{s} fsync"));
            }
            Step::Restart { site, power_cut, seed } => {
                let s = self.site_of(site);
                let lost = self.sites[s].undurable_local().count();
                if power_cut && lost > 0 {
                    self.stats.lost_writes += 1;
                }
                self.sites[s].restart(power_cut, u64::from(seed));
                let kind = if power_cut { "power cut" } else { "kill -9" };
                self.note(|| format!("#{i} s{s} restarts after a {kind}"));
            }
            Step::Snapshot { site } => {
                let s = self.site_of(site);
                self.sites[s].snapshot();
                self.note(|| format!("#{i} s{s} snapshot"));
            }
            Step::ExpireCycle { site, keys_max } => {
                let s = self.site_of(site);
                let wall = self.sites[s].wall;
                let n = self.sites[s].store.expire_cycle(wall, usize::from(keys_max), false);
                self.note(|| format!("#{i} s{s} expiry cycle: {n} expired"));
            }
            Step::Collect { site, lag } => self.collect(i, site, lag),
            Step::CollectAll => {
                for s in 0..self.case.sites {
                    self.collect(i, s as u8, 0);
                }
            }
            Step::Promote { site } => {
                let s = self.site_of(site);
                if self.sites[s].promote() {
                    let epoch = self.sites[s].epoch;
                    self.note(|| format!("#{i} s{s} promoted: epoch {epoch}"));
                }
            }
            Step::Heartbeat { site } => {
                let s = self.site_of(site);
                let entry = self.sites[s].heartbeat_entry(0);
                self.note(|| format!("#{i} s{s} ships a heartbeat: {}", show_entry(&entry)));
                self.topics[s].push(entry);
            }
        }
        self.ship();
    }

    /// Durable local entries go to their origin's topic.
    fn ship(&mut self) {
        for (s, site) in self.sites.iter_mut().enumerate() {
            self.topics[s].append(&mut site.outbox);
        }
    }

    fn command(&mut self, i: usize, site: u8, args: Vec<Vec<u8>>) {
        let s = self.site_of(site);
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let done = self.sites[s].command(&refs);
        self.stats.read_only += u64::from(done.is_none());
        let wall = ms(self.sites[s].wall);
        self.note(|| {
            let cmd = args.iter().map(|a| show(a)).collect::<Vec<_>>().join(" ");
            match &done {
                None => format!("#{i} s{s} @{wall} {cmd} → READONLY"),
                Some((reply, entries)) => {
                    let written: Vec<String> = entries.iter().map(show_entry).collect();
                    format!("#{i} s{s} @{wall} {cmd} → {} [{}]", show_reply(reply), written.join("; "))
                }
            }
        });
    }

    /// Every entry of another site's topic, for `to`.
    fn refs_for(&self, to: usize) -> Vec<EntryRef> {
        (0..self.case.sites).filter(|o| *o != to).flat_map(|o| (0..self.topics[o].len()).map(move |i| (o, i))).collect()
    }

    fn deliver_one(&mut self, i: usize, to: u8, pick: u16, dup: bool) {
        let to = self.site_of(to);
        let mut refs = self.refs_for(to);
        if dup {
            // Kafka delivers again only what is after the saved offset, which never
            // passes what is durable here (and only that counts for the floor).
            refs.retain(|r| !self.sites[to].durably_applied(*r));
        } else {
            refs.retain(|r| !self.sites[to].has_applied(*r));
        }
        if refs.is_empty() {
            return;
        }
        let at = refs[usize::from(pick) % refs.len()];
        self.deliver(Some(i), to, at);
    }

    /// `to` consumes every entry of `from`'s topic it has not applied, in order.
    fn catch_up(&mut self, i: Option<usize>, to: usize, from: usize) {
        for n in 0..self.topics[from].len() {
            if !self.sites[to].has_applied((from, n)) {
                self.deliver(i, to, (from, n));
            }
        }
    }

    fn deliver(&mut self, i: Option<usize>, to: usize, at: EntryRef) {
        let entry = self.topics[at.0][at.1].clone();
        let stale = self.sites[to].epoch > entry.epoch;
        let changed = self.sites[to].deliver(at, &entry);
        if i.is_some() {
            self.stats.stale_epoch += u64::from(stale);
            if entry.op.key().is_some_and(|k| self.collected_at[to].contains(k)) {
                self.stats.after_collection += 1;
            }
        }
        self.note(|| {
            let step = i.map_or("final".to_string(), |i| format!("#{i}"));
            format!("{step} s{to} ← {}{}", show_entry(&entry), if changed { "" } else { " (unchanged)" })
        });
    }

    fn collect(&mut self, i: usize, site: u8, lag: u8) {
        if !self.case.collect {
            return;
        }
        let floor = self.true_floor();
        if let Some(last) = self.floors.last().filter(|_| !self.known.incr_base_floor) {
            assert!(floor >= *last, "the honest floor went back from {last:?} to {floor:?}");
        }
        self.floors.push(floor);
        let used = self.floors[self.floors.len() - 1 - usize::from(lag).min(self.floors.len() - 1)].min(floor);
        let s = self.site_of(site);
        let used = match self.left_out_collection(s, used) {
            Ok(used) => used,
            Err(why) => {
                self.note(|| format!("#{i} s{s} collection skipped (known collection-rank: {why})"));
                return;
            }
        };
        let skew_ms = self.skew_ms();
        let gone = self.sites[s].collect(used, skew_ms);
        self.stats.collections += u64::from(!gone.is_empty());
        self.collected_at[s].extend(gone.iter().cloned());
        self.note(|| {
            let gone: Vec<String> = gone.iter().map(|k| show(k)).collect();
            format!("#{i} s{s} collects below {} (honest {}): removed [{}]", hlc(used), hlc(floor), gone.join(" "))
        });
        self.collected.extend(gone);
    }

    /// The floor site `s` may collect below, or why it may not (only with
    /// `collection-rank` left out; see [`Known`]).
    fn left_out_collection(&self, s: usize, floor: Hlc) -> Result<Hlc, &'static str> {
        if !self.known.collection_rank {
            return Ok(floor);
        }
        if self.case.primary.is_some() {
            let highest = self.sites.iter().map(|x| x.epoch).max().unwrap_or(0);
            let lowest_site = self.sites.iter().map(|x| x.epoch).min().unwrap_or(0);
            let lowest_entry = self.unsettled().map(|e| e.epoch).min().unwrap_or(highest);
            if lowest_site.min(lowest_entry) < highest {
                return Err("an entry of a lower epoch can still arrive");
            }
        }
        match self.case.policy {
            Policy::PreferSite(p) => {
                let preferred = super::case::site_name(usize::from(p) % self.case.sites);
                let held = self.sites[s]
                    .records()
                    .into_values()
                    .any(|r| r.version.site.as_str() == preferred && (r.is_tombstone() || r.expire_at_ms.is_some()));
                if held {
                    return Err("a record of the preferred site could go");
                }
                Ok(floor)
            }
            Policy::AlwaysRemove => {
                let w = super::case::WINDOW_MS;
                Ok(floor.min(Hlc::new(floor.wall_ms() / w * w, 0)))
            }
            _ => Ok(floor),
        }
    }

    /// Entries (with a key) some site may still receive: shipped and not durably
    /// applied everywhere, or not durable at their origin yet.
    fn unsettled(&self) -> impl Iterator<Item = &LogEntry> {
        let shipped = self.topics.iter().enumerate().flat_map(move |(o, topic)| {
            topic
                .iter()
                .enumerate()
                .filter(move |(i, _)| self.sites.iter().any(|s| s.index != o && !s.durably_applied((o, *i))))
        });
        let local = self.sites.iter().flat_map(Site::undurable_local);
        shipped.map(|(_, e)| e).chain(local).filter(|e| e.op.key().is_some())
    }

    /// The skew collection assumes: the clock's bound, or (with `expiry-beyond-skew`
    /// left out) the most a site's timestamps can run ahead of its wall clock.
    fn skew_ms(&self) -> u64 {
        if self.known.expiry_beyond_skew && self.case.clocks == super::case::Clocks::BeyondSkew {
            MAX_SKEW_MS + 2 * self.case.offset_max_ms()
        } else {
            MAX_SKEW_MS
        }
    }

    /// See the module docs.
    fn true_floor(&self) -> Hlc {
        let lowest_wall = Hlc::new(self.true_ms - self.case.offset_max_ms(), 0);
        let next_writes = self.sites.iter().map(|s| s.max_local_durable.next().max(lowest_wall));
        let pending = self.unsettled().map(|e| self.floor_of(e));
        next_writes.chain(pending).min().unwrap_or(lowest_wall)
    }

    /// The floor an entry not applied everywhere holds: its timestamp; with
    /// `incr-base-floor` left out, an increment's base too.
    fn floor_of(&self, e: &LogEntry) -> Hlc {
        match &e.op {
            Op::Incr { base, .. } if self.known.incr_base_floor => e.hlc.min(base.hlc),
            _ => e.hlc,
        }
    }

    /// Every site makes its WAL durable and consumes every entry it lacks (shuffled,
    /// with duplicates); a last collection round with the honest floor; then every
    /// site must show the same, and (nothing collected) hold the same records, which
    /// are the sequential model's.
    fn finish(mut self) -> Result<Stats, String> {
        for site in &mut self.sites {
            site.sync();
        }
        self.ship();
        let mut order: Vec<usize> = (0..self.case.sites).collect();
        self.rng.shuffle(&mut order);
        for to in order {
            let undurable: Vec<EntryRef> =
                self.refs_for(to).into_iter().filter(|r| !self.sites[to].durably_applied(*r)).collect();
            let mut missing: Vec<EntryRef> =
                undurable.iter().copied().filter(|r| !self.sites[to].has_applied(*r)).collect();
            self.rng.shuffle(&mut missing);
            for at in missing {
                self.deliver(None, to, at);
                if self.rng.below(4) == 0 {
                    let again = undurable[self.rng.below(undurable.len())];
                    self.deliver(None, to, again);
                }
            }
            self.sites[to].sync();
        }
        self.ship();
        for site in &self.sites {
            for at in self.refs_for(site.index) {
                assert!(site.durably_applied(at), "s{} lacks {at:?} after the final round", site.index);
            }
        }
        if self.case.collect {
            let floor = self.true_floor();
            for s in 0..self.case.sites {
                let Ok(floor) = self.left_out_collection(s, floor) else {
                    continue;
                };
                let skew_ms = self.skew_ms();
                let gone = self.sites[s].collect(floor, skew_ms);
                self.note(|| format!("final s{s} collects below {}: removed {}", hlc(floor), gone.len()));
            }
        }
        let now = self.common_now();
        self.check(now).map_err(|e| self.report(now, e))?;
        Ok(self.stats)
    }

    /// A time every site's clock has reached (collection only drops expired records
    /// whose expiry is behind some site's clock), or one past every expiry.
    fn common_now(&self) -> u64 {
        let entries = self.topics.iter().flatten();
        let max_hlc = entries.clone().map(|e| e.hlc.wall_ms()).max().unwrap_or(0);
        let now = self.max_wall.max(max_hlc);
        if !self.case.past_expiry {
            return now;
        }
        let expiries = entries.filter_map(|e| match &e.op {
            Op::Put { expire_at_ms, .. } | Op::Expire { expire_at_ms, .. } => *expire_at_ms,
            _ => None,
        });
        expiries.map(|at| at + 1).fold(now, u64::max)
    }

    fn check(&self, now: u64) -> Result<(), String> {
        for k in (0..KEYS).map(key_name) {
            let seen: Vec<Observed> = self.sites.iter().map(|s| s.observe(&k, now)).collect();
            if seen.iter().any(|o| *o != seen[0]) {
                let shown: Vec<String> =
                    seen.iter().enumerate().map(|(s, o)| format!("s{s}: {}", show_seen(o))).collect();
                return Err(format!("sites show key {} differently: {}", show(&k), shown.join(", ")));
            }
        }
        if self.case.collect {
            return Ok(());
        }
        let records: Vec<_> = self.sites.iter().map(Site::records).collect();
        for (s, r) in records.iter().enumerate().skip(1) {
            if *r != records[0] {
                return Err(format!("nothing was collected, yet s{s}'s records differ from s0's"));
            }
        }
        let policy = parse_policy(&self.case.policy.name(self.case.sites), super::case::WINDOW_MS).expect("policy");
        let entries: Vec<&LogEntry> = self.topics.iter().flatten().collect();
        for k in (0..KEYS).map(key_name) {
            let expected = expected_record(policy.as_ref(), &k, &entries);
            if records[0].get(&k) != expected.as_ref() {
                let shown = expected.as_ref().map_or("none".to_string(), show_record);
                return Err(format!("key {}: the sequential model expects {shown}", show(&k)));
            }
        }
        Ok(())
    }

    fn report(&self, now: u64, error: String) -> String {
        let mut out = format!("{error}\n  at now = {}; policy {}", ms(now), self.case.policy.name(self.case.sites));
        if let Some(p) = self.case.primary {
            let _ = write!(out, ", active-passive (primary s{})", usize::from(p) % self.case.sites);
        }
        out.push('\n');
        for site in &self.sites {
            let _ = writeln!(out, "  s{} (epoch {}, wall {}):", site.index, site.epoch, ms(site.wall));
            for (k, r) in site.records() {
                let _ = writeln!(out, "    {} = {}", show(&k), show_record(&r));
            }
        }
        if let Some(trace) = &self.trace {
            out.push_str("  steps:\n");
            for line in trace {
                let _ = writeln!(out, "    {line}");
            }
        }
        out
    }
}

/// Simulated milliseconds, relative to the start.
fn ms(at: u64) -> String {
    format!("{}", at as i64 - BASE_MS as i64)
}

fn hlc(h: Hlc) -> String {
    if h.as_u64() == u64::MAX {
        return "∞".into();
    }
    if h == Hlc::ZERO {
        return "0".into();
    }
    format!("{}.{}", ms(h.wall_ms()), h.logical())
}

fn version(v: &Version) -> String {
    if *v == Version::zero() {
        return "zero".into();
    }
    let epoch = if v.epoch > 0 { format!("#{}", v.epoch) } else { String::new() };
    format!("{}@{}{epoch}", hlc(v.hlc), v.site)
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show_reply(f: &Frame) -> String {
    match f {
        Frame::Simple(s) => s.clone(),
        Frame::Error(e) => format!("-{e}"),
        Frame::Integer(n) => n.to_string(),
        Frame::Bulk(b) => format!("{:?}", show(b)),
        other => format!("{other:?}"),
    }
}

fn show_seen(o: &Observed) -> String {
    match o {
        None => "(nil)".into(),
        Some((v, None)) => format!("{:?}", show(v)),
        Some((v, Some(at))) => format!("{:?} expiring at {}", show(v), ms(*at)),
    }
}

fn show_expiry(at: Option<u64>) -> String {
    at.map_or("none".into(), ms)
}

fn show_entry(e: &LogEntry) -> String {
    let v = version(&e.version());
    match &e.op {
        Op::Put { key, value, expire_at_ms, keep_ttl } => {
            let ttl = if *keep_ttl { "keepttl".into() } else { format!("expire {}", show_expiry(*expire_at_ms)) };
            format!("put {}={:?} {ttl} v={v}", show(key), show(value))
        }
        Op::Delete { key } => format!("del {} v={v}", show(key)),
        Op::Expire { key, expire_at_ms } => format!("expire {} at {} v={v}", show(key), show_expiry(*expire_at_ms)),
        Op::Incr { key, delta, total, base } => {
            format!("incr {} Δ{delta} total {total} base {}={} v={v}", show(key), version(&base.version()), base.value)
        }
        Op::Heartbeat { .. } => format!("heartbeat v={v}"),
    }
}

fn show_record(r: &Record) -> String {
    let value = match &r.value {
        Value::Bytes(b) => format!("{:?}", show(b)),
        Value::Tombstone => "tombstone".into(),
        Value::Counter(c) => {
            let totals: Vec<String> = c.totals.iter().map(|(s, t)| format!("{s}:{}@{}", t.total, hlc(t.hlc))).collect();
            format!("counter {} + [{}]", c.base, totals.join(" "))
        }
    };
    format!("{value} v={} | expire {} v={}", version(&r.version), show_expiry(r.expire_at_ms), version(&r.ttl_version))
}
