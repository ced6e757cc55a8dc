//! Reaching a node from the host through its published loopback ports: RESP with the
//! `redis` crate, the admin API with `reqwest`. Every request is bounded.

use crate::contents::{self, Snapshot};
use anyhow::{anyhow, bail, Context, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The full contents of a cache as a client sees them: key → value.
pub type Contents = BTreeMap<Vec<u8>, Vec<u8>>;

/// Longest one RESP command or admin request may take, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two attempts of a retried command.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Longest a whole [`Resp::snapshot`] may take.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// A RESP client on one node that reconnects after any error.
pub struct Resp {
    url: String,
    conn: Option<MultiplexedConnection>,
}

impl Resp {
    pub fn new(port: u16) -> Resp {
        Resp::with_db(port, 0)
    }

    /// A client of the cache `SELECT`ed by `db` (every connection selects it).
    pub fn with_db(port: u16, db: u8) -> Resp {
        Resp { url: format!("redis://127.0.0.1:{port}/{db}"), conn: None }
    }

    async fn connection(&mut self) -> Result<&mut MultiplexedConnection> {
        if self.conn.is_none() {
            let client = redis::Client::open(self.url.as_str())?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(REQUEST_TIMEOUT)
                .set_response_timeout(REQUEST_TIMEOUT);
            let conn = client.get_multiplexed_async_connection_with_config(&config).await?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// One attempt; the connection is dropped after an error so the next call reconnects.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T> {
        let attempt = async {
            let conn = self.connection().await?;
            Ok::<T, anyhow::Error>(cmd.query_async::<T>(conn).await?)
        };
        let result = match tokio::time::timeout(REQUEST_TIMEOUT * 2, attempt).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("no answer within {:?}", REQUEST_TIMEOUT * 2)),
        };
        if result.is_err() {
            self.conn = None;
        }
        result.with_context(|| format!("{} on {}", command_name(cmd), self.url))
    }

    /// Retry until it succeeds or `budget` is spent; returns the value and the number
    /// of failed attempts before it. Only for idempotent commands.
    pub async fn query_retrying<T: FromRedisValue>(&mut self, cmd: &redis::Cmd, budget: Duration) -> Result<(T, u32)> {
        let deadline = Instant::now() + budget;
        let mut failures = 0;
        loop {
            match self.query(cmd).await {
                Ok(v) => return Ok((v, failures)),
                Err(e) if Instant::now() + RETRY_BACKOFF >= deadline => {
                    return Err(e.context(format!("still failing after {failures} retries within {budget:?}")))
                }
                Err(_) => {
                    failures += 1;
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
            }
        }
    }

    pub async fn set(&mut self, key: &str, value: &str) -> Result<()> {
        self.query::<()>(redis::cmd("SET").arg(key).arg(value)).await
    }

    pub async fn get(&mut self, key: &str) -> Result<Option<String>> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    pub async fn del(&mut self, key: &str) -> Result<i64> {
        self.query(redis::cmd("DEL").arg(key)).await
    }

    pub async fn incr(&mut self, key: &str) -> Result<i64> {
        self.query(redis::cmd("INCR").arg(key)).await
    }

    pub async fn ping(&mut self) -> Result<()> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong != "PONG" {
            bail!("PING answered {pong:?}");
        }
        Ok(())
    }

    /// Every live key with its value and absolute expiry (SCAN, then GET and
    /// PEXPIRETIME per key; a key deleted or expired in between is left out).
    pub async fn snapshot(&mut self) -> Result<Snapshot> {
        let attempt = async {
            let conn = self.connection().await?;
            Ok::<Snapshot, anyhow::Error>(contents::read(conn).await?)
        };
        let result = match tokio::time::timeout(SNAPSHOT_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("no complete snapshot within {SNAPSHOT_TIMEOUT:?}")),
        };
        if result.is_err() {
            self.conn = None;
        }
        result.with_context(|| format!("reading every key on {}", self.url))
    }

    /// Every live key and its value.
    pub async fn dump(&mut self) -> Result<Contents> {
        Ok(self.snapshot().await?.values())
    }
}

fn command_name(cmd: &redis::Cmd) -> String {
    cmd.args_iter()
        .next()
        .map(|a| match a {
            redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
            redis::Arg::Cursor => "cursor".into(),
        })
        .unwrap_or_default()
}

/// A cache's live key count and order-independent digest, from the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub keys: u64,
    pub digest: String,
}

/// The admin HTTP API of one node.
#[derive(Clone)]
pub struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    pub fn new(port: u16) -> Admin {
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("http client");
        Admin { base: format!("http://127.0.0.1:{port}"), http }
    }

    async fn json(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let resp = req.send().await.with_context(|| format!("{what} on {}", self.base))?;
        let status = resp.status();
        let body = resp.text().await.with_context(|| format!("{what}: reading the body"))?;
        if !status.is_success() {
            bail!("{what} on {}: {status}: {body}", self.base);
        }
        serde_json::from_str(&body).with_context(|| format!("{what}: not JSON: {body}"))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.json(self.http.get(format!("{}{path}", self.base)), &format!("GET {path}")).await
    }

    pub async fn post(&self, path: &str) -> Result<Value> {
        self.json(self.http.post(format!("{}{path}", self.base)), &format!("POST {path}")).await
    }

    pub async fn status(&self) -> Result<Value> {
        self.get("/status").await
    }

    pub async fn digest(&self, cache: &str) -> Result<Digest> {
        let v = self.get(&format!("/caches/{cache}/digest")).await?;
        let keys = v["keys"].as_u64().ok_or_else(|| anyhow!("digest without keys: {v}"))?;
        let digest = v["digest"].as_str().ok_or_else(|| anyhow!("digest without digest: {v}"))?.to_string();
        Ok(Digest { keys, digest })
    }

    /// Re-publish every record of `cache` to this site's topic; returns the entry count.
    pub async fn push_state(&self, cache: &str) -> Result<u64> {
        let v = self.post(&format!("/caches/{cache}/push-state")).await?;
        v["pushed"].as_u64().ok_or_else(|| anyhow!("push-state answered {v}"))
    }
}
