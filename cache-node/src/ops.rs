//! Operator commands that talk to running nodes: `xsite verify`, `xsite status`.

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
    #[arg(long, default_value = "http://127.0.0.1:9121")]
    pub admin: String,
}

/// Timeout of one admin request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two comparisons.
const VERIFY_POLL: Duration = Duration::from_millis(250);

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?)
}

async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let resp = client.get(url).send().await.map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| anyhow::anyhow!("GET {url}: bad JSON: {e}"))?;
    if !status.is_success() {
        anyhow::bail!("GET {url}: {status}: {}", body["error"]);
    }
    Ok(body)
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

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let v = get_json(&client()?, &format!("{}/status", args.admin.trim_end_matches('/'))).await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
