//! The operator's commands, as docs/operations.md shows them, run by the real
//! `xsite` binary against nodes on librdkafka's mock cluster: `xsite status` (the
//! table and `--json`), `xsite site offline|online|state-transfer|push-state|
//! promote|demote`, the admin API's bearer token (401 without it, the GETs open),
//! errors that read as one sentence even under `RUST_BACKTRACE`, and the site a
//! node takes when none is given.

mod support;

use redis::AsyncCommands;
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::{wait_get, Mesh, WAIT};
use tokio::io::AsyncBufReadExt;

const TOKEN: &str = "t0ken-for-tests";

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn xsite(args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_xsite"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("XSITE_LOG", "warn")
        .env_remove("XSITE_ADMIN_TOKEN")
        .env_remove("XSITE_ADMIN_URL")
        .output()
        .await
        .unwrap();
    let run = Run {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    assert!(!run.stderr.to_lowercase().contains("backtrace"), "xsite {args:?}: {}", run.stderr);
    run
}

/// Runs `xsite site …` (with the token) and returns what it printed.
async fn site(admin: &str, args: &[&str]) -> String {
    let mut all = vec!["site"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--admin", admin, "--token", TOKEN]);
    let run = xsite(&all).await;
    assert!(run.ok, "xsite {all:?}: {}", run.stderr);
    run.stdout.trim_end().to_string()
}

async fn status_json(admin: &str) -> Value {
    let run = xsite(&["status", "--admin", admin, "--json"]).await;
    assert!(run.ok, "{}", run.stderr);
    serde_json::from_str(&run.stdout).expect("status --json prints JSON")
}

async fn wait_remote_state(admin: &str, state: &str) {
    let deadline = Instant::now() + WAIT;
    while status_json(admin).await["replication"]["remotes"][0]["state"]["state"] != state {
        assert!(Instant::now() < deadline, "never {state}: {:#}", status_json(admin).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_act_through_the_admin_api_with_its_token() {
    let mesh = Mesh::start_with(2, |c| {
        c.server.admin_token = Some(TOKEN.into());
        c.caches.push(support::passive_cache("sessions", 1, "site-a"));
    })
    .await;
    let (admin_a, admin_b) = (
        format!("http://{}", mesh.node(0).admin_addr.unwrap()),
        format!("http://{}", mesh.node(1).admin_addr.unwrap()),
    );

    // Actions need the token; reading does not.
    let http = reqwest::Client::new();
    let offline = format!("{admin_a}/sites/site-b/offline");
    let resp = http.post(&offline).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("bearer token"), "{body}");
    assert_eq!(http.post(&offline).bearer_auth("wrong").send().await.unwrap().status(), 401);
    for open in ["/metrics", "/status", "/caches/default/digest"] {
        assert_eq!(http.get(format!("{admin_a}{open}")).send().await.unwrap().status(), 200, "{open}");
    }
    let refused = xsite(&["site", "offline", "site-b", "--admin", &admin_a]).await;
    assert!(!refused.ok);
    assert_eq!(
        refused.stderr.trim_end(),
        format!("error: POST {offline}: 401 Unauthorized: this admin API needs a bearer token for its actions: Authorization: Bearer <server.admin_token>")
    );
    wait_remote_state(&admin_a, "online").await;

    // xsite site offline / online, and what xsite status shows meanwhile.
    assert_eq!(
        site(&admin_a, &["offline", "site-b"]).await,
        "site-b taken offline: its entries wait in Kafka until it is brought back online"
    );
    let table = xsite(&["status", "--admin", &admin_a]).await;
    assert!(table.ok, "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    let words = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
    assert_eq!(
        words(0),
        ["SITE", "STATE", "LAG", "MS", "LAG", "ENTRIES", "BACKLOG", "LAST", "ERROR"],
        "{}",
        table.stdout
    );
    assert_eq!(words(1)[..3], ["site-a", "this", "site"], "{}", table.stdout);
    assert_eq!(words(2)[..2], ["site-b", "offline"], "{}", table.stdout);
    assert!(
        lines[3].starts_with("site-b offline for ")
            && lines[3].ends_with(": taken offline by an operator (POST /sites/site-b/offline)"),
        "{}",
        table.stdout
    );
    let json = status_json(&admin_a).await;
    assert_eq!(json["site"], "site-a");
    assert_eq!(json["replication"]["remotes"][0]["health"]["offline_cause"], "operator");
    assert_eq!(
        site(&admin_a, &["offline", "site-b"]).await,
        "site-b was offline already; it stays offline until brought back online"
    );
    assert_eq!(site(&admin_a, &["online", "site-b"]).await, "site-b brought online: consuming from where it stopped");
    wait_remote_state(&admin_a, "online").await;

    // xsite site demote / promote: an active-passive cache changes hands.
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    for c in [&mut a, &mut b] {
        let _: () = redis::cmd("SELECT").arg(1).query_async(c).await.unwrap();
    }
    let _: () = a.set("s", "from-a").await.unwrap();
    assert_eq!(site(&admin_a, &["demote", "sessions"]).await, "site-a is read-only for cache 'sessions' now (epoch 0)");
    // Demoted, it closed its `sessions` clients' connections (their pools ask
    // Sentinel again); a new one is refused writes.
    let gone = redis::cmd("PING").query_async::<String>(&mut a).await.unwrap_err();
    assert!(gone.is_connection_dropped() || gone.is_io_error(), "{gone}");
    let mut a = mesh.conn(0).await;
    let _: () = redis::cmd("SELECT").arg(1).query_async(&mut a).await.unwrap();
    let err = a.set::<_, _, ()>("s", "refused").await.unwrap_err();
    assert_eq!(err.kind(), redis::ErrorKind::ReadOnly, "{err}");
    assert_eq!(
        site(&admin_b, &["promote", "sessions"]).await,
        "site-b is the primary of cache 'sessions' now (epoch 1)"
    );
    let _: () = b.set("s", "from-b").await.unwrap();
    wait_get(&mut a, b"s", Some(b"from-b")).await;
    let demote_again = site(&admin_a, &["demote", "sessions"]).await;
    assert_eq!(demote_again, "site-a is read-only for cache 'sessions' now (epoch 1; it was not the primary)");
    let refused = xsite(&["site", "demote", "default", "--admin", &admin_a, "--token", TOKEN]).await;
    assert!(refused.stderr.contains("400 Bad Request: cache 'default' is active-active"), "{}", refused.stderr);

    // xsite site push-state / state-transfer.
    let pushed = site(&admin_a, &["push-state", "default"]).await;
    assert_eq!(pushed, "pushed 0 entries of cache 'default' to this site's topic");
    let transfer = site(&admin_b, &["state-transfer", "site-a", "--pushed"]).await;
    assert_eq!(transfer, "state transfer from site-a under way (0 entries pushed); its state here: catching-up");
    wait_remote_state(&admin_b, "online").await;
    mesh.converged().await;
    mesh.shutdown().await;
}

#[tokio::test]
async fn errors_read_as_one_sentence_and_a_node_without_a_site_says_which_it_took() {
    let missing = xsite(&["node", "--config", "/nonexistent/site-a.toml"]).await;
    assert!(!missing.ok);
    assert_eq!(
        missing.stderr,
        "error: cannot read config file /nonexistent/site-a.toml: No such file or directory (os error 2)\n"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let unreachable = xsite(&["status", "--admin", &format!("http://127.0.0.1:{port}")]).await;
    assert!(!unreachable.ok);
    assert!(
        unreachable.stderr.starts_with(&format!("error: GET http://127.0.0.1:{port}/status: no answer: ")),
        "{}",
        unreachable.stderr
    );
    assert_eq!(unreachable.stderr.lines().count(), 1);

    let dir = tempfile::tempdir().unwrap();
    let mut node = tokio::process::Command::new(env!("CARGO_BIN_EXE_xsite"))
        .args(["node", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .env("XSITE_LOG", "info")
        .env_remove("XSITE_SITE")
        .env_remove("XSITE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(node.stderr.take().unwrap()).lines();
    let (mut defaulted, mut ready) = (false, false);
    let deadline = Instant::now() + WAIT;
    while !(defaulted && ready) {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line()).await.unwrap().unwrap().unwrap();
        defaulted |=
            line.contains("WARN") && line.contains("no site given") && line.contains("running alone as site 'local'");
        ready |= line.contains("node ready") && line.contains("site=local");
    }
    node.kill().await.unwrap();
}
