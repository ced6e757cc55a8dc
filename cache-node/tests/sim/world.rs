//! The sites of one case together: topics, true time, the collection floor, the final
//! round and the checks.
//!
//! **Topics.** Each site's topic holds what it shipped, in order: its durable local
//! entries and its heartbeats. Data entries reach a site in any order (partitions,
//! and a batch is applied concurrently); a heartbeat is in every partition, so it is
//! applied only after every entry shipped before it.
//!
//! **The floor** is the one the node computes (`Replication::gc_floor`), from the
//! heartbeats a site counted (see `sim::site`): the lowest, over every site's view
//! (its own watermarks, and each other site's latest counted report) and every
//! origin, of the watermark for that origin; none while one is missing. So a site
//! whose floor is above `h` has applied every entry any site issued before that site
//! had durably applied everything below `h`. A lagging floor is one the site computed
//! earlier (since its last restart), no higher than the current one.
//!
//! **The floor's promise** is checked too: no entry below a floor a site collected
//! with may reach it afterwards, nor be written there.

use super::case::{field_name, key_name, Case, Step, Ttl, KEYS};
use super::model::{expected_hash, expected_list, expected_members, expected_record, expected_scores};
use super::site::{EntryRef, Observed, Site, BASE_MS};
use super::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use xsite_consumer::hash::FieldState;
use xsite_consumer::merge::{parse_policy, Record, Value};
use xsite_node::resp::Frame;
use xsite_schemas::{Hlc, LogEntry, Op, SiteId, Version};

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
    /// Transaction units applied (before the final round) that changed something.
    pub units_applied: u64,
    /// Hash ops applied from another site (before the final round) to a key that
    /// was a string there, or that a whole-hash delete had reached: the type and
    /// observed-remove rules at work.
    pub hash_conflicts: u64,
    /// What the final check compared with the model of the documented semantics.
    pub modeled: Modeled,
}

/// Hash fields and sorted set scores the final check compared with the model
/// (`expected_hash`, `expected_scores`): shown ones, by what the register held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Modeled {
    /// Fields holding a plain value.
    pub fields: u64,
    /// Fields holding a counter (`HINCRBY` or `HINCRBYFLOAT`).
    pub field_counters: u64,
    /// Scores holding a plain score (`ZADD`).
    pub scores: u64,
    /// Scores holding a counter (`ZINCRBY`).
    pub score_counters: u64,
}

pub struct World<'c> {
    case: &'c Case,
    sites: Vec<Site>,
    /// Per origin, what it shipped, in order.
    topics: Vec<Vec<LogEntry>>,
    true_ms: u64,
    offsets: Vec<i64>,
    /// The highest wall clock any site had.
    max_wall: u64,
    /// Per site, the floors it computed since its last restart.
    floors: Vec<Vec<Hlc>>,
    /// Per site, the highest floor it collected with (a restart keeps it).
    floor_used: Vec<Hlc>,
    /// The first entry that broke a floor's promise.
    broken: Option<String>,
    ids: Vec<SiteId>,
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
pub fn run(case: &Case, trace: bool) -> Result<Stats, String> {
    let mut world = World::new(case, trace);
    for (i, step) in case.steps.iter().enumerate() {
        world.step(i, step);
    }
    world.finish()
}

impl<'c> World<'c> {
    fn new(case: &'c Case, trace: bool) -> World<'c> {
        let policy = case.policy.name(case.sites);
        let primary = case.primary.map(|p| usize::from(p) % case.sites);
        let sites = (0..case.sites)
            .map(|i| Site::new(i, case.sites, policy.clone(), case.always & (1 << i) != 0, primary, BASE_MS))
            .collect();
        World {
            case,
            sites,
            topics: vec![Vec::new(); case.sites],
            true_ms: BASE_MS,
            offsets: vec![0; case.sites],
            max_wall: BASE_MS,
            floors: vec![Vec::new(); case.sites],
            floor_used: vec![Hlc::ZERO; case.sites],
            broken: None,
            ids: (0..case.sites).map(|i| SiteId::new(super::case::site_name(i)).expect("valid site id")).collect(),
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
                self.command(i, site, vec![b"incrby".to_vec(), key_name(key), delta.to_string().into_bytes()]);
            }
            Step::PexpireAt { site, key, in_ms } => {
                let at = self.sites[self.site_of(site)].wall as i64 + i64::from(in_ms);
                self.command(i, site, vec![b"pexpireat".to_vec(), key_name(key), at.to_string().into_bytes()]);
            }
            Step::Persist { site, key } => self.command(i, site, vec![b"persist".to_vec(), key_name(key)]),
            Step::HSet { site, key, field, value } => {
                let v = if value >= 200 { format!("x{value}") } else { (value % 20).to_string() };
                self.command(i, site, vec![b"hset".to_vec(), key_name(key), field_name(field), v.into_bytes()]);
            }
            Step::HDel { site, key, field } => {
                self.command(i, site, vec![b"hdel".to_vec(), key_name(key), field_name(field)])
            }
            Step::HIncr { site, key, field, delta, float } => {
                let (command, delta) = match float {
                    false => (b"hincrby".to_vec(), delta.to_string()),
                    true => (b"hincrbyfloat".to_vec(), (f64::from(delta) / 4.0).to_string()),
                };
                self.command(i, site, vec![command, key_name(key), field_name(field), delta.into_bytes()]);
            }
            Step::SAdd { site, key, member } => {
                self.command(i, site, vec![b"sadd".to_vec(), key_name(key), format!("m{member}").into_bytes()])
            }
            Step::SRem { site, key, member, pop } => {
                let args = match pop {
                    true => vec![b"spop".to_vec(), key_name(key)],
                    false => vec![b"srem".to_vec(), key_name(key), format!("m{member}").into_bytes()],
                };
                self.command(i, site, args)
            }
            Step::ZAdd { site, key, member, score, incr } => {
                let member = format!("m{member}").into_bytes();
                let args = match incr {
                    true => vec![
                        b"zincrby".to_vec(),
                        key_name(key),
                        (f64::from(score) / 10.0).to_string().into_bytes(),
                        member,
                    ],
                    false => vec![b"zadd".to_vec(), key_name(key), score.to_string().into_bytes(), member],
                };
                self.command(i, site, args)
            }
            Step::ZRem { site, key, member, pop } => {
                let args = match pop {
                    true => vec![b"zpopmin".to_vec(), key_name(key)],
                    false => vec![b"zrem".to_vec(), key_name(key), format!("m{member}").into_bytes()],
                };
                self.command(i, site, args)
            }
            Step::LPush { site, key, value, right } => {
                let command = if right { b"rpush".to_vec() } else { b"lpush".to_vec() };
                self.command(i, site, vec![command, key_name(key), format!("v{value}").into_bytes()])
            }
            Step::LPop { site, key, how } => {
                let args: Vec<&[u8]> = match how % 4 {
                    0 => vec![b"lpop"],
                    1 => vec![b"rpop"],
                    2 => vec![b"lset", b"-1", b"set"],
                    _ => vec![b"ltrim", b"1", b"-1"],
                };
                let mut args: Vec<Vec<u8>> = args.into_iter().map(<[u8]>::to_vec).collect();
                args.insert(1, key_name(key));
                self.command(i, site, args)
            }
            Step::Multi { site, a, b, value, incr } => {
                let set = vec![b"set".to_vec(), key_name(a), (value % 20).to_string().into_bytes()];
                let second = if incr {
                    vec![b"incrby".to_vec(), key_name(b), b"1".to_vec()]
                } else {
                    vec![b"del".to_vec(), key_name(b)]
                };
                self.transaction(i, site, vec![set, second]);
            }
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
            Step::Quiesce { seed, twice } => {
                let mut rng = Rng::new(u64::from(seed));
                for _ in 0..1 + usize::from(twice) {
                    self.note(|| format!("#{i} every site ships a heartbeat and catches up"));
                    for site in &mut self.sites {
                        site.sync();
                    }
                    self.ship();
                    for s in 0..self.case.sites {
                        self.heartbeat(Some(i), s);
                    }
                    for to in 0..self.case.sites {
                        let mut from: Vec<usize> = (0..self.case.sites).filter(|o| *o != to).collect();
                        rng.shuffle(&mut from);
                        for o in from {
                            self.catch_up(Some(i), to, o);
                        }
                        self.sites[to].sync();
                    }
                }
            }
            Step::Sync { site } => {
                let s = self.site_of(site);
                self.sites[s].sync();
                self.note(|| format!("#{i} s{s} fsync"));
            }
            Step::Restart { site, power_cut } => {
                let s = self.site_of(site);
                let lost = self.sites[s].undurable_local().count();
                if power_cut && lost > 0 {
                    self.stats.lost_writes += 1;
                }
                self.sites[s].restart(power_cut);
                self.floors[s].clear();
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
                self.heartbeat(Some(i), s);
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

    /// The shipper's heartbeat: the watermark tracker ticks, then the site's
    /// watermarks go into its topic, after everything it shipped.
    fn heartbeat(&mut self, i: Option<usize>, s: usize) {
        self.ship();
        self.sites[s].tick_watermark();
        let marks = self.sites[s].watermarks(&self.ids);
        let entry = self.sites[s].heartbeat_entry(0, marks);
        self.note(|| format!("{} s{s} ships {}", step_name(i), show_entry(&entry)));
        self.topics[s].push(entry);
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
        for e in done.iter().flat_map(|(_, entries)| entries) {
            self.keep_promise(s, e, "written");
        }
    }

    fn transaction(&mut self, i: usize, site: u8, commands: Vec<Vec<Vec<u8>>>) {
        let s = self.site_of(site);
        let done = self.sites[s].transaction(&commands);
        self.stats.read_only += u64::from(done.is_none());
        let wall = ms(self.sites[s].wall);
        self.note(|| {
            let cmds: Vec<String> =
                commands.iter().map(|c| c.iter().map(|a| show(a)).collect::<Vec<_>>().join(" ")).collect();
            match &done {
                None => format!("#{i} s{s} @{wall} MULTI {} EXEC → READONLY", cmds.join("; ")),
                Some((replies, entries)) => {
                    let replies: Vec<String> = replies.iter().map(show_reply).collect();
                    let written: Vec<String> = entries.iter().map(show_entry).collect();
                    format!(
                        "#{i} s{s} @{wall} MULTI {} EXEC → {} [unit: {}]",
                        cmds.join("; "),
                        replies.join(", "),
                        written.join("; ")
                    )
                }
            }
        });
        for e in done.iter().flat_map(|(_, entries)| entries) {
            self.keep_promise(s, e, "written");
        }
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
            let site = &self.sites[to];
            refs.retain(|r| !site.durably_applied(*r) && (site.has_applied(*r) || self.deliverable(to, *r)));
        } else {
            refs.retain(|r| self.deliverable(to, *r));
        }
        if refs.is_empty() {
            return;
        }
        let at = refs[usize::from(pick) % refs.len()];
        self.deliver(Some(i), to, at);
    }

    /// Whether `to` may consume the entry now: not applied yet and, for a heartbeat,
    /// every entry before it in its topic applied.
    fn deliverable(&self, to: usize, at: EntryRef) -> bool {
        let site = &self.sites[to];
        let beat = matches!(self.topics[at.0][at.1].op, Op::Heartbeat { .. });
        !site.has_applied(at) && (!beat || (0..at.1).all(|n| site.has_applied((at.0, n))))
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
        let conflict = entry.op.is_collection()
            && entry.op.key().is_some_and(|k| {
                self.sites[to].records().get(k).is_some_and(|r| {
                    r.hash().is_some_and(|h| !h.cleared.is_empty())
                        || r.set().is_some_and(|s| {
                            !s.cleared.is_empty() || s.members.values().any(|e| !e.removed().is_empty())
                        })
                        || !matches!(r.value, Value::Tombstone)
                })
            });
        let (changed, first) = self.sites[to].deliver(at, &entry);
        if i.is_some() {
            self.stats.hash_conflicts += u64::from(changed && conflict);
            self.stats.stale_epoch += u64::from(stale);
            self.stats.units_applied += u64::from(changed && matches!(entry.op, Op::Multi { .. }));
            let members = entry.members();
            let collected = |k: &[u8]| self.collected_at[to].contains(k);
            self.stats.after_collection += members.iter().filter(|m| m.op.key().is_some_and(collected)).count() as u64;
        }
        self.note(|| {
            format!("{} s{to} ← {}{}", step_name(i), show_entry(&entry), if changed { "" } else { " (unchanged)" })
        });
        if first {
            for m in entry.members() {
                self.keep_promise(to, &m, "delivered");
            }
        }
    }

    /// The floor's promise: an entry (with a key) new to site `s` is not below a
    /// floor `s` collected with.
    fn keep_promise(&mut self, s: usize, e: &LogEntry, how: &str) {
        let floor = self.floor_used[s];
        if self.broken.is_none() && e.op.key().is_some() && e.hlc < floor {
            let what = format!("{} {how} at s{s} after it collected below {}", show_entry(e), hlc(floor));
            self.note(|| format!("  ^ the floor's promise is broken: {what}"));
            self.broken = Some(what);
        }
    }

    fn collect(&mut self, i: usize, site: u8, lag: u8) {
        if !self.case.collect {
            return;
        }
        let s = self.site_of(site);
        let floor = self.floor(s);
        self.floors[s].extend(floor);
        let seen = &self.floors[s];
        let n = seen.len();
        let used = if lag == 0 { floor } else { (n > 0).then(|| seen[n - 1 - usize::from(lag).min(n - 1)]) };
        let Some(used) = used.map(|u| floor.map_or(u, |f| f.min(u))) else {
            self.note(|| format!("#{i} s{s} has no floor yet"));
            return;
        };
        let gone = self.sites[s].collect(used);
        self.floor_used[s] = self.floor_used[s].max(used);
        self.stats.collections += u64::from(!gone.is_empty());
        self.collected_at[s].extend(gone.iter().cloned());
        self.note(|| {
            let gone: Vec<String> = gone.iter().map(|k| show(k)).collect();
            let current = floor.map_or("none".into(), hlc);
            format!("#{i} s{s} collects below {} (its floor {current}): removed [{}]", hlc(used), gone.join(" "))
        });
        self.collected.extend(gone);
    }

    /// Site `x`'s floor (`Replication::floor_without`): the lowest watermark over its
    /// own view and every other site's latest report it counted, of every origin;
    /// `None` while one is missing.
    fn floor(&self, x: usize) -> Option<Hlc> {
        let site = &self.sites[x];
        let reports = (0..self.case.sites).filter(|o| *o != x).map(|o| site.reported(o));
        let mut floor: Option<Hlc> = None;
        for view in std::iter::once(site.watermarks(&self.ids)).chain(reports) {
            for id in &self.ids {
                let h = *view.get(id)?;
                floor = Some(floor.map_or(h, |f| f.min(h)));
            }
        }
        floor
    }

    /// Every site makes its WAL durable and consumes every entry it lacks (shuffled,
    /// with duplicates; heartbeats once what precedes them is applied); with
    /// collection, two rounds of heartbeats (every site ships one, every site
    /// catches up) and every site collects below its floor; then every site must
    /// show the same, and (nothing collected) hold the same records, which are the
    /// sequential model's.
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
                if !self.deliverable(to, at) {
                    continue; // a heartbeat: in order below
                }
                self.deliver(None, to, at);
                if self.rng.below(4) == 0 {
                    let again = undurable[self.rng.below(undurable.len())];
                    if self.sites[to].has_applied(again) || self.deliverable(to, again) {
                        self.deliver(None, to, again);
                    }
                }
            }
            for from in (0..self.case.sites).filter(|o| *o != to) {
                self.catch_up(None, to, from);
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
            for _ in 0..2 {
                for s in 0..self.case.sites {
                    self.heartbeat(None, s);
                }
                for to in 0..self.case.sites {
                    for from in (0..self.case.sites).filter(|o| *o != to) {
                        self.catch_up(None, to, from);
                    }
                    self.sites[to].sync();
                }
            }
            for s in 0..self.case.sites {
                let floor = self.floor(s).expect("a floor after two rounds of heartbeats");
                let gone = self.sites[s].collect(floor);
                self.floor_used[s] = self.floor_used[s].max(floor);
                self.note(|| format!("final s{s} collects below {}: removed {}", hlc(floor), gone.len()));
            }
        }
        let now = self.common_now();
        if let Some(broken) = self.broken.take() {
            let error = format!("the floor's promise is broken: {broken}");
            return Err(self.report(now, error));
        }
        self.stats.modeled = self.check(now).map_err(|e| self.report(now, e))?;
        Ok(self.stats)
    }

    /// A time every site's clock has reached (collection only drops expired records
    /// whose expiry is behind some site's clock), or one past every expiry.
    fn common_now(&self) -> u64 {
        let entries: Vec<LogEntry> = self.topics.iter().flatten().flat_map(LogEntry::members).collect();
        let entries = entries.iter();
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

    fn check(&self, now: u64) -> Result<Modeled, String> {
        for k in (0..KEYS).map(key_name) {
            let seen: Vec<Observed> = self.sites.iter().map(|s| s.observe(&k, now)).collect();
            if seen.iter().any(|o| *o != seen[0]) {
                let shown: Vec<String> =
                    seen.iter().enumerate().map(|(s, o)| format!("s{s}: {}", show_seen(o))).collect();
                return Err(format!("sites show key {} differently: {}", show(&k), shown.join(", ")));
            }
        }
        let members: Vec<LogEntry> = self.topics.iter().flatten().flat_map(LogEntry::members).collect();
        let entries: Vec<&LogEntry> = members.iter().collect();
        let records: Vec<_> = self.sites.iter().map(Site::records).collect();
        let touched = |k: &[u8]| entries.iter().any(|e| e.op.key() == Some(k) && e.op.is_collection());
        // A record a collection op touched is never collected, and one collected
        // before that was below the floor, where no op of it can come from: so
        // every site's hash fields and sorted set scores are the semantics',
        // collection or not.
        let mut modeled = Modeled::default();
        for k in (0..KEYS).map(key_name).filter(|k| touched(k)) {
            for (s, held) in records.iter().enumerate() {
                let (empty, mut other) = (Record::empty(), Modeled::default());
                let rec = held.get(&k).unwrap_or(&empty);
                let counted = if s == 0 { &mut modeled } else { &mut other };
                check_hash(&entries, &k, rec, counted).map_err(|e| format!("s{s}: {e}"))?;
                check_scores(&entries, &k, rec, counted).map_err(|e| format!("s{s}: {e}"))?;
            }
        }
        if self.case.collect {
            return Ok(modeled);
        }
        for (s, r) in records.iter().enumerate().skip(1) {
            if *r != records[0] {
                return Err(format!("nothing was collected, yet s{s}'s records differ from s0's"));
            }
        }
        let policy = parse_policy(&self.case.policy.name(self.case.sites), super::case::WINDOW_MS).expect("policy");
        for k in (0..KEYS).map(key_name) {
            // The string model knows strings: a key a collection op touched is checked
            // by the sites' records being identical (above) and showing alike, its
            // hash fields and sorted set scores (above), and its set's or sorted set's
            // members and its list against the semantics stated directly.
            if touched(&k) {
                let Some(rec) = records[0].get(&k) else { continue };
                let held = [
                    (false, rec.set_members().map(|m| m.map(<[u8]>::to_vec).collect::<BTreeSet<_>>())),
                    (true, rec.zset_ranked().map(|m| m.into_iter().map(|(m, _)| m.to_vec()).collect())),
                ];
                for (zset, held) in held {
                    let want = expected_members(&entries, &k, &rec.register_rank(), zset);
                    if held.as_ref().filter(|h| !h.is_empty()) != want.as_ref().filter(|w| !w.is_empty()) {
                        return Err(format!(
                            "key {}: the {} members are {held:?}, the semantics say {want:?}",
                            show(&k),
                            if zset { "sorted set's" } else { "set's" }
                        ));
                    }
                }
                let held: Option<Vec<Vec<u8>>> = rec.list_items().map(|i| i.map(|(_, i)| i.value.clone()).collect());
                let want = expected_list(&entries, &k, &rec.register_rank());
                if held.as_ref().filter(|h| !h.is_empty()) != want.as_ref().filter(|w| !w.is_empty()) {
                    return Err(format!("key {}: the list holds {held:?}, the semantics say {want:?}", show(&k)));
                }
                continue;
            }
            let expected = expected_record(policy.as_ref(), &k, &entries);
            if records[0].get(&k) != expected.as_ref() {
                let shown = expected.as_ref().map_or("none".to_string(), show_record);
                return Err(format!("key {}: the sequential model expects {shown}", show(&k)));
            }
        }
        Ok(modeled)
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

/// The fields `rec` shows as a hash (with their values) against `expected_hash`;
/// an empty hash is no hash.
fn check_hash(entries: &[&LogEntry], k: &[u8], rec: &Record, modeled: &mut Modeled) -> Result<(), String> {
    let held: Option<BTreeMap<Vec<u8>, Vec<u8>>> = rec.hash_fields().map(|fields| {
        fields.map(|(f, v)| (f.to_vec(), v.value().expect("a shown field has a value").into_owned())).collect()
    });
    let want = expected_hash(entries, k, &rec.register_rank());
    let (held, want) = (held.filter(|h| !h.is_empty()), want.filter(|w| !w.is_empty()));
    if held != want {
        let fields = |m: &Option<BTreeMap<Vec<u8>, Vec<u8>>>| {
            m.as_ref().map_or("no hash".into(), |m| {
                let pairs: Vec<String> = m.iter().map(|(f, v)| format!("{}={}", show(f), show(v))).collect();
                format!("{{{}}}", pairs.join(", "))
            })
        };
        return Err(format!("key {}: the hash shows {}, the semantics say {}", show(k), fields(&held), fields(&want)));
    }
    for (_, f) in rec.hash_fields().into_iter().flatten() {
        match f.state {
            FieldState::Counter(_) | FieldState::Float(_) => modeled.field_counters += 1,
            _ => modeled.fields += 1,
        }
    }
    Ok(())
}

/// The scores of the members `rec` shows as a sorted set against
/// `expected_scores`, bit for bit; an empty sorted set is none.
fn check_scores(entries: &[&LogEntry], k: &[u8], rec: &Record, modeled: &mut Modeled) -> Result<(), String> {
    let bits = |m: BTreeMap<Vec<u8>, f64>| m.into_iter().map(|(m, s)| (m, s.to_bits())).collect::<BTreeMap<_, _>>();
    let held = rec.zset_ranked().map(|r| bits(r.into_iter().map(|(m, s)| (m.to_vec(), s)).collect()));
    let want = expected_scores(entries, k, &rec.register_rank()).map(bits);
    let (held, want) = (held.filter(|h| !h.is_empty()), want.filter(|w| !w.is_empty()));
    if held != want {
        let scores = |m: &Option<BTreeMap<Vec<u8>, u64>>| {
            m.as_ref().map_or("no sorted set".into(), |m| {
                let pairs: Vec<String> = m.iter().map(|(m, s)| format!("{}={}", show(m), f64::from_bits(*s))).collect();
                format!("{{{}}}", pairs.join(", "))
            })
        };
        return Err(format!(
            "key {}: the sorted set's scores are {}, the semantics say {}",
            show(k),
            scores(&held),
            scores(&want)
        ));
    }
    let z = rec.zset().filter(|_| held.is_some());
    for m in held.iter().flat_map(BTreeMap::keys) {
        match z.and_then(|z| z.scores.fields.get(m.as_slice())).map(|f| &f.state) {
            Some(FieldState::Float(_)) => modeled.score_counters += 1,
            _ => modeled.scores += 1,
        }
    }
    Ok(())
}

fn step_name(i: Option<usize>) -> String {
    i.map_or("final".to_string(), |i| format!("#{i}"))
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
            let on = match base.floor {
                Some(f) => format!("nothing after {}", hlc(f)),
                None => format!("{}{}={}", if base.dead { "del " } else { "" }, version(&base.version()), base.value),
            };
            format!("incr {} Δ{delta} total {total} base {on} v={v}", show(key))
        }
        Op::HSet { key, fields, seen } => {
            let fields: Vec<String> =
                fields.iter().map(|f| format!("{}={:?}", show(&f.field), show(&f.value))).collect();
            format!("hset {} [{}]{} v={v}", show(key), fields.join(" "), show_seen_of(seen))
        }
        Op::HDel { key, fields } => {
            let fields: Vec<String> = fields.iter().map(|f| show(f)).collect();
            format!("hdel {} [{}] v={v}", show(key), fields.join(" "))
        }
        Op::HIncr { key, field, delta, total, base, seen } => {
            let reset = if base.reset { "reset " } else { "" };
            let on = format!("{reset}{}={}", version(&base.version()), base.value);
            format!("hincr {} {} Δ{delta} total {total} base {on}{} v={v}", show(key), show(field), show_seen_of(seen))
        }
        Op::HIncrFloat { key, field, delta, total, base, seen } => {
            let reset = if base.reset { "reset " } else { "" };
            let on = format!("{reset}{}={}", version(&base.version()), base.value.0);
            let (delta, total) = (delta.0, total.0);
            format!(
                "hincrfloat {} {} Δ{delta} total {total} base {on}{} v={v}",
                show(key),
                show(field),
                show_seen_of(seen)
            )
        }
        Op::HClear { key, seen } | Op::SClear { key, seen } | Op::ZClear { key, seen } | Op::LClear { key, seen } => {
            format!("{} {} seen {} v={v}", e.op.name(), show(key), show_stamps(seen))
        }
        Op::ZAdd { key, members, seen } => {
            let members: Vec<String> = members.iter().map(|m| format!("{}={}", show(&m.member), m.score.0)).collect();
            format!("zadd {} [{}]{} v={v}", show(key), members.join(" "), show_seen_of(seen))
        }
        Op::ZIncr { key, member, delta, total, base, seen } => {
            let reset = if base.reset { "reset " } else { "" };
            let on = format!("{reset}{}={}", version(&base.version()), base.value.0);
            let (delta, total) = (delta.0, total.0);
            format!("zincr {} {} Δ{delta} total {total} base {on}{} v={v}", show(key), show(member), show_seen_of(seen))
        }
        Op::ZRem { key, members } => {
            let members: Vec<String> =
                members.iter().map(|m| format!("{} seen {}", show(&m.member), show_stamps(&m.seen))).collect();
            format!("zrem {} [{}] v={v}", show(key), members.join(", "))
        }
        op @ (Op::LPut { key, .. } | Op::LRem { key, .. }) => {
            format!("{} {} v={v}", op.name(), show(key))
        }
        Op::SAdd { key, members, seen } => {
            let members: Vec<String> = members.iter().map(|m| show(m)).collect();
            format!("sadd {} [{}]{} v={v}", show(key), members.join(" "), show_seen_of(seen))
        }
        Op::SRem { key, members } => {
            let members: Vec<String> =
                members.iter().map(|m| format!("{} seen {}", show(&m.member), show_stamps(&m.seen))).collect();
            format!("srem {} [{}] v={v}", show(key), members.join(", "))
        }
        Op::Heartbeat { applied } if applied.is_empty() => format!("heartbeat (epoch) v={v}"),
        Op::Heartbeat { applied } => {
            let marks: Vec<String> = applied.iter().map(|(s, h)| format!("{s}:{}", hlc(*h))).collect();
            format!("heartbeat [{}] v={v}", marks.join(" "))
        }
        Op::Multi { .. } => {
            let members: Vec<String> = e.members().iter().map(show_entry).collect();
            format!("unit {{{}}}", members.join("; "))
        }
    }
}

/// The `seen` of a write to a key that was not a live part of its kind.
fn show_seen_of(seen: &Option<BTreeMap<SiteId, Hlc>>) -> String {
    seen.as_ref().map_or(String::new(), |s| format!(" seen {}", show_stamps(s)))
}

fn show_stamps(s: &BTreeMap<SiteId, Hlc>) -> String {
    let stamps: Vec<String> = s.iter().map(|(s, h)| format!("{s}:{}", hlc(*h))).collect();
    format!("[{}]", stamps.join(" "))
}

fn show_record(r: &Record) -> String {
    let value = match &r.value {
        Value::Bytes(b) => format!("{:?}", show(b)),
        Value::Tombstone => "tombstone".into(),
        Value::Counter(c) => {
            let totals: Vec<String> = c.totals.iter().map(|(s, t)| format!("{s}:{}@{}", t.total, hlc(t.hlc))).collect();
            let dead = if c.base_dead { " (on a delete)" } else { "" };
            let floor = if c.floor > Hlc::ZERO { format!(" after {}", hlc(c.floor)) } else { String::new() };
            format!("counter {} + [{}]{dead}{floor}", c.base, totals.join(" "))
        }
    };
    let mut out = format!(
        "{value} v={} | expire {} v={}",
        version(&r.version),
        show_expiry(r.expire_at_ms()),
        version(&r.ttl_version)
    );
    if let Some(h) = r.hash() {
        let cleared: Vec<String> = h.cleared.iter().map(|(s, c)| format!("{s}:{}", hlc(*c))).collect();
        let fields: Vec<String> =
            h.fields.iter().map(|(k, f)| format!("{}={:?} v={}", show(k), f.state, version(&f.version))).collect();
        let _ =
            write!(out, " | hash top={} cleared [{}] {{{}}}", version(&h.top), cleared.join(" "), fields.join(", "));
    }
    if let Some(z) = r.zset() {
        let members: Vec<String> = z
            .members
            .members
            .iter()
            .map(|(k, e)| {
                let adds: Vec<String> = e.adds().iter().map(version).collect();
                let score = z
                    .scores
                    .fields
                    .get(&**k)
                    .map_or("none".into(), |f| format!("{:?} v={}", f.state, version(&f.version)));
                format!("{} adds [{}] score {score}", show(k), adds.join(" "))
            })
            .collect();
        let _ = write!(
            out,
            " | zset top={} cleared {} {{{}}}",
            version(&z.members.top),
            show_stamps(&z.members.cleared),
            members.join(", ")
        );
    }
    if let Some(set) = r.set() {
        let members: Vec<String> = set
            .members
            .iter()
            .map(|(k, e)| {
                let adds: Vec<String> = e.adds().iter().map(version).collect();
                let removed: Vec<String> = e.removed().iter().map(|(s, h)| format!("{s}:{}", hlc(*h))).collect();
                format!("{} adds [{}] removed [{}]", show(k), adds.join(" "), removed.join(" "))
            })
            .collect();
        let _ = write!(
            out,
            " | set top={} cleared {} {{{}}}",
            version(&set.top),
            show_stamps(&set.cleared),
            members.join(", ")
        );
    }
    out
}
