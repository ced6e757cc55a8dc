//! Operator commands that talk to running nodes through their admin APIs:
//! `xsite verify`, `xsite status` (a table, or `--json`), and `xsite site …`, which
//! wraps the admin API's actions (`offline`, `online`, `state-transfer` of a remote
//! site; `push-state`, `promote`, `demote`, `switchover` of a cache). Every error is one sentence
//! naming the request that failed and why.

use serde_json::Value;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Admin API base URL of a node (repeat for every site), e.g. http://127.0.0.1:9121
    #[arg(long = "admin", required = true, num_args = 1)]
    pub admins: Vec<String>,
    /// The cache to compare.
    #[arg(long, default_value = "default")]
    pub cache: String,
    /// Keep comparing until the digests agree or this many seconds pass.
    #[arg(long, default_value_t = 30)]
    pub wait_secs: u64,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Admin API base URL of the node.
    #[arg(long, env = "XSITE_ADMIN_URL", default_value = "http://127.0.0.1:9121")]
    pub admin: String,
    /// Print the node's status as JSON (everything it reports) instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct SiteArgs {
    #[command(subcommand)]
    pub action: SiteAction,
    /// Admin API base URL of the node to act on.
    #[arg(long, global = true, env = "XSITE_ADMIN_URL", default_value = "http://127.0.0.1:9121")]
    pub admin: String,
    /// The node's `server.admin_token`, sent as a bearer token.
    #[arg(long, global = true, env = "XSITE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum SiteAction {
    /// Stop consuming a remote site (it stays offline until brought back online);
    /// given the node's own site, drain it: no sentinel names it, its clients are
    /// disconnected once, it keeps replicating.
    Offline { site: String },
    /// Consume a remote site again, from where it stopped; given the node's own
    /// site, have it named again once caught up.
    Online { site: String },
    /// Close a gap in what this node has of a remote site: the remote pushes its state.
    StateTransfer {
        site: String,
        /// The remote already pushed its state (by hand): only wait for it here.
        #[arg(long)]
        pushed: bool,
    },
    /// Re-publish every record of a cache to this site's topic.
    PushState { cache: String },
    /// Make this site the primary of an active-passive cache.
    Promote { cache: String },
    /// Turn this site read-only for an active-passive cache.
    Demote { cache: String },
    /// Hand an active-passive cache over from this site (its primary) to its
    /// successor with nothing lost: stop writes, wait until it applied everything,
    /// promote it.
    Switchover {
        cache: String,
        /// The site to hand over to (default: the successor, `[failover] successors`).
        #[arg(long)]
        to: Option<String>,
        /// How long to wait for it to apply everything before giving up (and taking
        /// writes again here).
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
}

/// Timeout of one admin request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two comparisons.
const VERIFY_POLL: Duration = Duration::from_millis(250);

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?)
}

/// Sends the request; its JSON body, or an error naming the request and what its
/// answer said.
async fn send_json(request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
    let resp = request.send().await.map_err(|e| anyhow::anyhow!("{what}: no answer: {}", innermost(&e)))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| anyhow::Error::new(e).context(format!("{what}: reading the answer")))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let said = body["error"].as_str().map_or_else(|| text.trim().to_string(), str::to_string);
        anyhow::bail!("{what}: {status}: {said}");
    }
    if body.is_null() {
        anyhow::bail!("{what}: the answer is not JSON: {}", text.trim());
    }
    Ok(body)
}

/// The deepest cause of an error: for a request that got no answer, what the
/// network said ("Connection refused").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    send_json(client.get(url), &format!("GET {url}")).await
}

/// Digests of every node, in order.
async fn digests(client: &reqwest::Client, args: &VerifyArgs) -> anyhow::Result<Vec<(String, u64, String)>> {
    let mut out = Vec::new();
    for a in &args.admins {
        let v = get_json(client, &format!("{}/caches/{}/digest", a.trim_end_matches('/'), args.cache)).await?;
        out.push((a.clone(), v["keys"].as_u64().unwrap_or(0), v["digest"].as_str().unwrap_or("").to_string()));
    }
    Ok(out)
}

/// Compare the nodes' digests until they agree (exit 0) or time runs out (error).
pub async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let client = client()?;
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    loop {
        let d = digests(&client, &args).await?;
        let agree = d.windows(2).all(|w| w[0].2 == w[1].2);
        if agree || Instant::now() >= deadline {
            for (admin, keys, digest) in &d {
                println!("{admin}  keys={keys}  digest={digest}");
            }
            if agree {
                println!("converged: {} nodes agree on cache '{}'", d.len(), args.cache);
                return Ok(());
            }
            anyhow::bail!("diverged: the nodes still disagree on cache '{}' after {} s", args.cache, args.wait_secs);
        }
        tokio::time::sleep(VERIFY_POLL).await;
    }
}

/// `xsite status`: the node's status as a table of sites, or as JSON.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let v = get_json(&client()?, &format!("{}/status", args.admin.trim_end_matches('/'))).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", status_table(&v, xsite_schemas::hlc::wall_clock_ms()));
    }
    Ok(())
}

/// `12 s`, `5 min`, `3 h`: how long ago Unix ms `then` was.
fn age(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..120 => format!("{s} s"),
        120..7_200 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3_600),
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The status of a node (what `GET /status` answers) as a table: one row for this
/// site (its WAL's health, the shipper's backlog) and one per remote site (state,
/// lag in ms and entries, last error), then why each remote is in its state.
pub fn status_table(v: &Value, now_ms: u64) -> String {
    let repl = &v["replication"];
    let wal = &v["wal"]["health"];
    let local_error = match (wal["state"].as_str(), &repl["shipper"]["last_undeliverable"]) {
        (Some(state), _) if state != "ok" => format!("wal {state}: {}", cell(&wal["error"])),
        (_, Value::Null) => "-".to_string(),
        (_, undeliverable) => format!("undeliverable entry: {}", cell(undeliverable)),
    };
    let mut rows = vec![
        ["SITE", "STATE", "LAG MS", "LAG ENTRIES", "BACKLOG", "LAST ERROR"].map(String::from),
        [
            cell(&v["site"]),
            if v["offline"] == true { "this site, offline".into() } else { "this site".into() },
            "-".into(),
            "-".into(),
            cell(&repl["shipper"]["backlog_records"]),
            local_error,
        ],
    ];
    let mut reasons = Vec::new();
    for r in repl["remotes"].as_array().into_iter().flatten() {
        let state = &r["state"];
        let error = match (&r["health"]["last_error"], &r["health"]["last_error_ms"]) {
            (Value::String(e), Value::Number(at)) => format!("{} ago: {e}", age(now_ms, at.as_u64().unwrap_or(now_ms))),
            _ => "-".into(),
        };
        rows.push([
            cell(&r["site"]),
            cell(&state["state"]),
            cell(&r["lag"]["ms"]),
            cell(&r["lag"]["entries"]),
            "-".into(),
            error,
        ]);
        if r["offline_at_its_site"] == true {
            reasons.push(format!("{} was taken offline by an operator at its own node", cell(&r["site"])));
        }
        if let Some(reason) = state["reason"].as_str() {
            let since = state["since_ms"].as_u64().map_or_else(String::new, |s| format!(" for {}", age(now_ms, s)));
            reasons.push(format!("{} {}{since}: {reason}", cell(&r["site"]), cell(&state["state"])));
        }
    }
    let widths: Vec<usize> = (0..6).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, text)| match c {
                2..=4 => format!("{text:>w$}", w = widths[c]),
                5 => text.clone(),
                _ => format!("{text:<w$}", w = widths[c]),
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if repl.is_null() {
        out.push_str("replication is not configured on this node\n");
    }
    if v["offline"] == true {
        out.push_str(&format!(
            "{} was taken offline by an operator here: no sentinel names it until it is brought online\n",
            cell(&v["site"])
        ));
    }
    for reason in reasons {
        out.push_str(&reason);
        out.push('\n');
    }
    // What this node's Sentinel names, and each active-passive cache's lease.
    for m in v["sentinel"]["masters"].as_array().into_iter().flatten() {
        let down = if m["down"] == true { " (s_down)" } else { "" };
        out.push_str(&format!("sentinel {} -> {} {}{down}\n", cell(&m["name"]), cell(&m["site"]), cell(&m["address"])));
    }
    if let Some(caches) = v["failover"]["caches"].as_object() {
        for (cache, lease) in caches {
            let left = lease["remaining_ms"].as_u64().map_or_else(String::new, |ms| format!(", {ms} ms left"));
            let why = lease["reason"].as_str().map_or_else(String::new, |r| format!(": {r}"));
            let left = match lease["witness"].as_str() {
                Some(w) => format!(", witness {w}{left}"),
                None => left,
            };
            out.push_str(&format!(
                "failover {cache}: {} (successor {}{left}){why}\n",
                cell(&lease["state"]),
                cell(&lease["successor"])
            ));
        }
    }
    out
}

/// `xsite site …`: one action of the admin API; prints what it did.
pub async fn site(args: SiteArgs) -> anyhow::Result<()> {
    let base = args.admin.trim_end_matches('/');
    let path = match &args.action {
        SiteAction::Offline { site } => format!("/sites/{site}/offline"),
        SiteAction::Online { site } => format!("/sites/{site}/online"),
        SiteAction::StateTransfer { site, pushed } => format!("/sites/{site}/state-transfer?pushed={pushed}"),
        SiteAction::PushState { cache } => format!("/caches/{cache}/push-state"),
        SiteAction::Promote { cache } => format!("/caches/{cache}/promote"),
        SiteAction::Demote { cache } => format!("/caches/{cache}/demote"),
        SiteAction::Switchover { cache, to, timeout_ms } => {
            let to = to.as_ref().map_or_else(String::new, |t| format!("&to={t}"));
            format!("/caches/{cache}/switchover?timeout_ms={timeout_ms}{to}")
        }
    };
    let url = format!("{base}{path}");
    // Pushing a large cache, or a state transfer, takes as long as it takes.
    let http = reqwest::Client::builder().build()?;
    let mut request = http.post(&url);
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }
    let v = send_json(request, &format!("POST {url}")).await?;
    println!("{}", site_outcome(&args.action, &v));
    Ok(())
}

/// What an action did, as a sentence.
fn site_outcome(action: &SiteAction, v: &Value) -> String {
    let changed = v["changed"].as_bool().unwrap_or(true);
    match action {
        SiteAction::Offline { site } if changed && v["this_site"] == true => format!(
            "{site} (this site) taken offline: no sentinel names it and its clients were disconnected; it keeps replicating until brought back online"
        ),
        SiteAction::Offline { site } if changed => {
            format!("{site} taken offline: its entries wait in Kafka until it is brought back online")
        }
        SiteAction::Offline { site } => {
            format!("{site} was offline already; it stays offline until brought back online")
        }
        SiteAction::Online { site } if changed && v["this_site"] == true => {
            format!("{site} (this site) brought online: sentinels name it again once it has caught up")
        }
        SiteAction::Online { site } if changed => format!("{site} brought online: consuming from where it stopped"),
        SiteAction::Online { site } => format!("{site} was online already"),
        SiteAction::StateTransfer { site, .. } => format!(
            "state transfer from {site} under way ({} entries pushed); its state here: {}",
            cell(&v["pushed"]),
            cell(&v["remote"]["state"])
        ),
        SiteAction::PushState { cache } => {
            format!("pushed {} entries of cache '{cache}' to this site's topic", cell(&v["pushed"]))
        }
        SiteAction::Promote { cache } => {
            format!("{} is the primary of cache '{cache}' now (epoch {})", cell(&v["primary"]), cell(&v["epoch"]))
        }
        SiteAction::Switchover { cache, .. } => format!(
            "{} handed cache '{cache}' over to {} (epoch {}): writes paused {} ms, of which {} ms waiting for {} to apply everything",
            cell(&v["from"]),
            cell(&v["to"]),
            cell(&v["epoch"]),
            cell(&v["paused_ms"]),
            cell(&v["waited_ms"]),
            cell(&v["to"]),
        ),
        SiteAction::Demote { cache } => format!(
            "{} is read-only for cache '{cache}' now (epoch {}{})",
            cell(&v["site"]),
            cell(&v["epoch"]),
            if v["was_primary"] == true { "" } else { "; it was not the primary" }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_status_table_has_a_row_per_site_and_says_why_each_is_in_its_state() {
        let now = 1_700_000_100_000;
        let status = json!({
            "site": "site-a",
            "wal": { "health": { "state": "stalled", "error": "No space left on device" } },
            "replication": {
                "shipper": { "backlog_records": 1234, "last_undeliverable": null },
                "remotes": [
                    { "site": "site-b", "state": { "state": "online", "reason": null, "since_ms": now },
                      "lag": { "ms": 12, "entries": 3 }, "health": { "last_error": null } },
                    { "site": "site-c", "state": { "state": "offline", "since_ms": now - 90_000,
                        "reason": "taken offline automatically: 8 consecutive failed checks (last: all brokers down)" },
                      "lag": { "ms": 95000, "entries": 420 },
                      "health": { "last_error": "all brokers down", "last_error_ms": now - 1_000 } },
                ],
            },
        });
        assert_eq!(
            status_table(&status, now),
            "\
SITE    STATE      LAG MS  LAG ENTRIES  BACKLOG  LAST ERROR
site-a  this site       -            -     1234  wal stalled: No space left on device
site-b  online         12            3        -  -
site-c  offline     95000          420        -  1 s ago: all brokers down
site-c offline for 90 s: taken offline automatically: 8 consecutive failed checks (last: all brokers down)
"
        );
        let with_failover = json!({
            "site": "site-a", "wal": { "health": { "state": "ok" } },
            "replication": { "shipper": { "backlog_records": 0 }, "remotes": [] },
            "sentinel": { "masters": [
                { "name": "default", "site": "site-b", "address": "10.0.0.2:6379", "down": false },
                { "name": "sessions", "site": "site-a", "address": "10.0.0.1:6379", "down": true },
            ] },
            "failover": { "caches": { "sessions": {
                "state": "fenced", "successor": "site-b", "remaining_ms": null,
                "reason": "site-b has acknowledged no heartbeat sent in the last 5000 ms" } } },
        });
        assert!(
            status_table(&with_failover, now).ends_with(
                "\
sentinel default -> site-b 10.0.0.2:6379
sentinel sessions -> site-a 10.0.0.1:6379 (s_down)
failover sessions: fenced (successor site-b): site-b has acknowledged no heartbeat sent in the last 5000 ms
"
            ),
            "{}",
            status_table(&with_failover, now)
        );
        let alone = json!({ "site": "solo", "wal": { "health": { "state": "ok" } }, "replication": null });
        assert!(status_table(&alone, now).ends_with("replication is not configured on this node\n"));
    }
}
