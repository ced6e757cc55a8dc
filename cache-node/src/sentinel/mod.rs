//! The Redis Sentinel protocol, served by every node on its own port
//! (`[sentinel] port`, `--sentinel-port`), so that stock Sentinel clients (redis-py
//! `Sentinel`, the `redis` crate's sentinel client, Jedis, Lettuce, go-redis,
//! ioredis, `redis-cli -p <port>`) find the node to use with no library of ours.
//!
//! The master names are the cache names; what each designates is [`view`]'s
//! business. Served (RESP2, and RESP3 after `HELLO 3`):
//!
//! | command | reply |
//! | --- | --- |
//! | `PING [msg]` | `PONG` |
//! | `HELLO [2\|3]` | the server's description; RESP3 from then on (redis-py 8 asks for it) |
//! | `SENTINEL get-master-addr-by-name <name>` | `[ip, port]`, or a null array for an unknown name |
//! | `SENTINEL masters` / `master <name>` | each master's fields, as Sentinel lists them |
//! | `SENTINEL replicas <name>` (`slaves`) | the standbys of an active-passive cache that are up |
//! | `SENTINEL sentinels <name>` | the other sites' sentinels (`[[remote]] sentinel`) that are up |
//! | `SENTINEL ckquorum <name>` | `OK <n> usable Sentinels…` |
//! | `SENTINEL myid` | this sentinel's run id |
//! | `INFO [section]` | `# Server` (`redis_mode:sentinel`) and `# Sentinel` (`master0:name=…,status=…`) |
//! | `ROLE` | `["sentinel", [names…]]` |
//! | `SUBSCRIBE`, `PSUBSCRIBE`, `UNSUBSCRIBE`, `PUNSUBSCRIBE` | events: `+switch-master <name> <old ip> <old port> <new ip> <new port>`, `+sdown`/`-sdown master <name> <ip> <port>` |
//! | `CLIENT SETNAME/SETINFO/GETNAME/ID`, `QUIT` | as Redis |
//!
//! What changes the masters (`SENTINEL monitor`, `remove`, `set`, `failover`,
//! `reset`) is refused with an error that says why: they follow this node's
//! configuration and what it sees of the sites. At most
//! `sentinel.connections_max` connections are served; a subscriber that falls
//! behind past the [`crate::pubsub::Limits`] is disconnected.

pub mod view;

use crate::commands::connection::REDIS_VERSION;
use crate::pubsub::{Hub, Kind, Subscriber};
use crate::resp::{encode, Frame, RequestDecoder, RESP2, RESP3};
use bytes::{Bytes, BytesMut};
use std::fmt::Write as _;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use view::{Directory, Master};

/// Largest request the Sentinel port takes, in bytes: its commands are small.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;

/// One node's Sentinel: its answers and its events.
pub struct Sentinel {
    pub directory: Arc<Directory>,
    hub: Hub,
    run_id: String,
    /// Where clients reach this sentinel (`INFO`'s `tcp_port`).
    port: u16,
    /// The other sites' sentinels: (site, host, port).
    others: Vec<(xsite_schemas::SiteId, String, u16)>,
    down_after_ms: u64,
    site: xsite_schemas::SiteId,
}

/// A Sentinel run id: 40 hex digits.
fn run_id() -> String {
    format!("{}{:08x}", uuid::Uuid::now_v7().simple(), std::process::id())
}

impl Sentinel {
    pub fn new(directory: Arc<Directory>, hub: Hub, config: &crate::config::Config, port: u16) -> Sentinel {
        let others = config
            .remotes
            .iter()
            .filter_map(|r| {
                let (host, port) = crate::config::parse_host_port(r.sentinel.as_deref()?).ok()?;
                Some((r.site.clone(), host, port))
            })
            .collect();
        Sentinel {
            directory,
            hub,
            run_id: run_id(),
            port,
            others,
            down_after_ms: config.sentinel.down_after_ms,
            site: config.site.clone(),
        }
    }

    /// The other sentinels whose site is up here.
    fn other_sentinels(&self) -> Vec<&(xsite_schemas::SiteId, String, u16)> {
        self.others.iter().filter(|(s, ..)| self.directory.is_up(s)).collect()
    }

    fn master_fields(&self, m: &Master) -> Frame {
        let (ip, port) = m.addr.clone().unwrap_or_default();
        let flags = if m.down || m.addr.is_none() { "master,s_down" } else { "master" };
        let fields: Vec<(&str, String)> = vec![
            ("name", m.name.clone()),
            ("ip", ip),
            ("port", port.to_string()),
            ("runid", m.site.to_string()),
            ("flags", flags.into()),
            ("link-pending-commands", "0".into()),
            ("link-refcount", "1".into()),
            ("last-ping-sent", "0".into()),
            ("last-ok-ping-reply", "0".into()),
            ("last-ping-reply", "0".into()),
            ("down-after-milliseconds", self.down_after_ms.to_string()),
            ("info-refresh", "0".into()),
            ("role-reported", "master".into()),
            ("role-reported-time", "0".into()),
            ("config-epoch", "0".into()),
            ("num-slaves", m.replicas.len().to_string()),
            ("num-other-sentinels", self.other_sentinels().len().to_string()),
            ("quorum", "1".into()),
            ("failover-timeout", "180000".into()),
            ("parallel-syncs", "1".into()),
            ("xsite-site", m.site.to_string()),
            ("xsite-cache", m.cache.clone()),
        ];
        flat(fields)
    }

    fn replica_fields(&self, m: &Master, site: &xsite_schemas::SiteId, addr: &(String, u16)) -> Frame {
        let (mip, mport) = m.addr.clone().unwrap_or_default();
        flat(vec![
            ("name", format!("{}:{}", addr.0, addr.1)),
            ("ip", addr.0.clone()),
            ("port", addr.1.to_string()),
            ("runid", site.to_string()),
            ("flags", "slave".into()),
            ("link-pending-commands", "0".into()),
            ("link-refcount", "1".into()),
            ("last-ping-sent", "0".into()),
            ("last-ok-ping-reply", "0".into()),
            ("last-ping-reply", "0".into()),
            ("down-after-milliseconds", self.down_after_ms.to_string()),
            ("role-reported", "slave".into()),
            ("master-link-down-time", "0".into()),
            ("master-link-status", "ok".into()),
            ("master-host", mip),
            ("master-port", mport.to_string()),
            ("slave-priority", "100".into()),
            ("slave-repl-offset", "0".into()),
            ("xsite-site", site.to_string()),
        ])
    }

    fn sentinel_fields(&self, site: &xsite_schemas::SiteId, host: &str, port: u16) -> Frame {
        flat(vec![
            ("name", site.to_string()),
            ("ip", host.to_string()),
            ("port", port.to_string()),
            ("runid", site.to_string()),
            ("flags", "sentinel".into()),
            ("link-pending-commands", "0".into()),
            ("link-refcount", "1".into()),
            ("last-hello-message", "0".into()),
            ("voted-leader", "?".into()),
            ("voted-leader-epoch", "0".into()),
        ])
    }

    fn known(&self, name: &[u8]) -> Result<Master, Frame> {
        self.directory.master(name).ok_or_else(|| Frame::error("ERR No such master with that name"))
    }

    fn sentinel_command(&self, args: &[Bytes]) -> Frame {
        let Some(sub) = args.get(1) else { return wrong_arity("sentinel") };
        let sub = String::from_utf8_lossy(sub).to_ascii_lowercase();
        let name = args.get(2);
        let needs_name = |f: &dyn Fn(&[u8]) -> Frame| match (name, args.len()) {
            (Some(n), 3) => f(n),
            _ => Frame::error(format!("ERR wrong number of arguments for 'sentinel|{sub}' command")),
        };
        match sub.as_str() {
            "get-master-addr-by-name" => needs_name(&|n| match self.directory.master(n).and_then(|m| m.addr) {
                Some((ip, port)) => Frame::Array(vec![Frame::bulk(ip), Frame::bulk(port.to_string())]),
                None => Frame::NullArray,
            }),
            "masters" => Frame::Array(self.directory.masters().iter().map(|m| self.master_fields(m)).collect()),
            "master" => needs_name(&|n| match self.known(n) {
                Ok(m) => self.master_fields(&m),
                Err(e) => e,
            }),
            "replicas" | "slaves" => needs_name(&|n| match self.known(n) {
                Ok(m) => Frame::Array(m.replicas.iter().map(|(s, a)| self.replica_fields(&m, s, a)).collect()),
                Err(e) => e,
            }),
            "sentinels" => needs_name(&|n| match self.known(n) {
                Ok(_) => Frame::Array(
                    self.other_sentinels().into_iter().map(|(s, h, p)| self.sentinel_fields(s, h, *p)).collect(),
                ),
                Err(e) => e,
            }),
            "ckquorum" => needs_name(&|n| match self.known(n) {
                Ok(_) => Frame::Simple(format!(
                    "OK {} usable Sentinels. Quorum and failover authorization can be reached",
                    1 + self.other_sentinels().len()
                )),
                Err(e) => e,
            }),
            "myid" => Frame::bulk(self.run_id.clone()),
            "monitor" | "remove" | "set" | "failover" | "reset" | "flushconfig" | "config" | "simulate-failure" => {
                Frame::error(format!(
                    "ERR SENTINEL {sub} is not supported: the masters follow this node's configuration and what it sees of the sites"
                ))
            }
            other => Frame::error(format!("ERR Unknown sentinel subcommand '{other}'")),
        }
    }

    fn info(&self, args: &[Bytes]) -> Frame {
        let wanted: Vec<String> = args[1..].iter().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase()).collect();
        let show = |s: &str| wanted.is_empty() || wanted.iter().any(|w| w == s || w == "all" || w == "default");
        let mut out = String::new();
        if show("server") {
            let _ = write!(
                out,
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:sentinel\r\nrun_id:{}\r\ntcp_port:{}\r\nxsite_site:{}\r\n",
                self.run_id, self.port, self.site
            );
        }
        if show("sentinel") {
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            let masters = self.directory.masters();
            let _ = write!(
                out,
                "# Sentinel\r\nsentinel_masters:{}\r\nsentinel_tilt:0\r\nsentinel_running_scripts:0\r\nsentinel_scripts_queue_length:0\r\nsentinel_simulate_failure_flags:0\r\n",
                masters.len()
            );
            let sentinels = 1 + self.other_sentinels().len();
            for (i, m) in masters.iter().enumerate() {
                let (ip, port) = m.addr.clone().unwrap_or_default();
                let status = if m.down { "sdown" } else { "ok" };
                let _ = write!(
                    out,
                    "master{i}:name={},status={status},address={ip}:{port},slaves={},sentinels={sentinels}\r\n",
                    m.name,
                    m.replicas.len()
                );
            }
        }
        Frame::Bulk(Bytes::from(out))
    }

    fn role(&self) -> Frame {
        let names = self.directory.masters().into_iter().map(|m| Frame::bulk(m.name)).collect();
        Frame::Array(vec![Frame::bulk("sentinel"), Frame::Array(names)])
    }
}

/// A map of fields (a flat array in RESP2, as Sentinel sends them).
fn flat(fields: Vec<(&str, String)>) -> Frame {
    Frame::Map(fields.into_iter().map(|(k, v)| (Frame::bulk(k.to_string()), Frame::bulk(v))).collect())
}

fn wrong_arity(name: &str) -> Frame {
    Frame::error(format!("ERR wrong number of arguments for '{name}' command"))
}

/// What one connection is doing.
#[derive(Default)]
struct Conn {
    subs: Option<Subscriber>,
    name: Option<Bytes>,
    id: i64,
    quit: bool,
    /// RESP2, or RESP3 after `HELLO 3`.
    proto: u8,
}

static CONNECTION_IDS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);

impl Sentinel {
    /// The replies to one request (several for a (un)subscription to several names).
    fn execute(&self, conn: &mut Conn, args: &[Bytes]) -> Vec<Frame> {
        let cmd = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let subscribed = conn.subs.as_ref().is_some_and(Subscriber::is_subscribed);
        if subscribed
            && !matches!(
                cmd.as_str(),
                "subscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" | "ping" | "quit" | "reset"
            )
        {
            return vec![Frame::error(format!(
                "ERR Can't execute '{cmd}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            ))];
        }
        let one = |f: Frame| vec![f];
        match cmd.as_str() {
            "ping" if subscribed && conn.proto == RESP2 => one(Frame::Array(vec![
                Frame::bulk("pong"),
                Frame::Bulk(args.get(1).cloned().unwrap_or_default()),
            ])),
            "ping" => match args.len() {
                1 => one(Frame::Simple("PONG".into())),
                2 => one(Frame::Bulk(args[1].clone())),
                _ => one(wrong_arity("ping")),
            },
            "sentinel" => one(self.sentinel_command(args)),
            "info" => one(self.info(args)),
            "role" => one(self.role()),
            "subscribe" | "psubscribe" if args.len() < 2 => one(wrong_arity(&cmd)),
            "subscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" => {
                let kind = if cmd.starts_with('p') { Kind::Pattern } else { Kind::Channel };
                let id = conn.id as u64;
                let subs = conn.subs.get_or_insert_with(|| self.hub.subscriber(id));
                if cmd.ends_with("unsubscribe") {
                    subs.unsubscribe(kind, &args[1..])
                } else {
                    subs.subscribe(kind, &args[1..])
                }
            }
            "reset" => {
                conn.subs = None;
                one(Frame::Simple("RESET".into()))
            }
            "client" => one(self.client(conn, args)),
            "quit" => {
                conn.quit = true;
                one(Frame::ok())
            }
            "auth" => one(Frame::error(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            )),
            "hello" => one(self.hello(conn, args)),
            "command" => one(Frame::Array(Vec::new())),
            _ => {
                let shown: Vec<String> =
                    args[1..].iter().take(8).map(|a| format!("'{}'", String::from_utf8_lossy(a))).collect();
                one(Frame::error(format!(
                    "ERR unknown command '{}', with args beginning with: {}",
                    String::from_utf8_lossy(&args[0]),
                    shown.join(" ")
                )))
            }
        }
    }

    /// `HELLO [2|3 [SETNAME name]]`: switches the protocol and describes the server.
    fn hello(&self, conn: &mut Conn, args: &[Bytes]) -> Frame {
        if let Some(v) = args.get(1) {
            match v.as_ref() {
                b"2" => conn.proto = RESP2,
                b"3" => conn.proto = RESP3,
                _ => return Frame::error("NOPROTO sorry, this protocol version is not supported"),
            }
        }
        let mut rest = args.iter().skip(2);
        while let Some(opt) = rest.next() {
            match (opt.to_ascii_lowercase().as_slice(), rest.next()) {
                (b"setname", Some(name)) => conn.name = Some(name.clone()),
                (b"auth", Some(_)) => {
                    rest.next();
                }
                _ => return Frame::error("ERR Syntax error in HELLO option"),
            }
        }
        let field = |k: &str, v: Frame| (Frame::bulk(k.to_string()), v);
        Frame::Map(vec![
            field("server", Frame::bulk("redis")),
            field("version", Frame::bulk(REDIS_VERSION)),
            field("proto", Frame::Integer(i64::from(conn.proto))),
            field("id", Frame::Integer(conn.id)),
            field("mode", Frame::bulk("sentinel")),
            field("role", Frame::bulk("sentinel")),
            field("modules", Frame::Array(Vec::new())),
        ])
    }

    fn client(&self, conn: &mut Conn, args: &[Bytes]) -> Frame {
        let Some(sub) = args.get(1) else { return wrong_arity("client") };
        match String::from_utf8_lossy(sub).to_ascii_lowercase().as_str() {
            "setname" if args.len() == 3 => {
                conn.name = Some(args[2].clone());
                Frame::ok()
            }
            "setinfo" if args.len() == 4 => Frame::ok(),
            "getname" => conn.name.clone().map_or(Frame::Null, Frame::Bulk),
            "id" => Frame::Integer(conn.id),
            other => Frame::error(format!("ERR unknown subcommand or wrong number of arguments for 'client|{other}'")),
        }
    }

    async fn serve_connection(self: Arc<Self>, mut stream: TcpStream, cancel: CancellationToken) {
        let mut decoder = RequestDecoder::new(REQUEST_BYTES_MAX);
        decoder.set_authenticated(true);
        let mut input = BytesMut::with_capacity(4096);
        let mut out = BytesMut::new();
        let mut conn = Conn {
            id: CONNECTION_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            proto: RESP2,
            ..Conn::default()
        };
        loop {
            loop {
                match decoder.decode(&mut input) {
                    Ok(Some(args)) => {
                        for f in self.execute(&mut conn, &args) {
                            encode(&f, conn.proto, &mut out);
                        }
                        if conn.quit {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        encode(&Frame::error(format!("ERR {e}")), conn.proto, &mut out);
                        conn.quit = true;
                        break;
                    }
                }
            }
            if let Some(subs) = &conn.subs {
                if subs.is_killed() {
                    return; // the hub logged it
                }
                subs.take().iter().for_each(|f| encode(f, conn.proto, &mut out));
            }
            if !out.is_empty() {
                let killed = async {
                    match &conn.subs {
                        Some(s) => s.killed().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    written = stream.write_all(&out) => if written.is_err() { return },
                    () = killed => return,
                }
                out.clear();
            }
            if conn.quit {
                return;
            }
            let messages = async {
                match &conn.subs {
                    Some(s) => s.ready().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                read = stream.read_buf(&mut input) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = messages => {}
            }
        }
    }
}

/// Serves the Sentinel protocol on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, sentinel: Arc<Sentinel>, connections_max: usize, cancel: CancellationToken) {
    let permits = Arc::new(Semaphore::new(connections_max));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let (s, c) = (sentinel.clone(), cancel.clone());
                tracker.spawn(async move {
                    s.serve_connection(stream, c).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "sentinel: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(crate::server::ACCEPT_BACKOFF_MS_MIN)).await;
            }
        }
    }
    tracker.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait()).await;
}
