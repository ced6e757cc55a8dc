//! The RESP server as clients see it: the real `server::run` on port 0, a small
//! in-memory handler, and clients that are the `redis` crate or raw TCP.
//!
//! Every await is bounded by [`TIMEOUT`]; nothing sleeps to synchronise. The one
//! negative check (a client over `connections_max` gets no reply yet) waits
//! [`NO_REPLY_WAIT`] for a reply that must not come.

use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xsite_node::commands::{CommandHandler, Executed};
use xsite_node::resp::Frame;
use xsite_node::server::{self, ServerSettings, ServerStats};

const TIMEOUT: Duration = Duration::from_secs(10);
const NO_REPLY_WAIT: Duration = Duration::from_millis(300);

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future).await.expect("timed out")
}

/// GET and SET on a map per database, and SLOW, which waits until the test lets it go.
#[derive(Default)]
struct MemoryHandler {
    data: Mutex<HashMap<(usize, Bytes), Bytes>>,
    slow_started: Notify,
    slow_release: Notify,
}

impl CommandHandler for MemoryHandler {
    fn execute<'a>(
        &'a self,
        db: usize,
        args: &'a [Bytes],
    ) -> Pin<Box<dyn Future<Output = Option<Executed>> + Send + 'a>> {
        Box::pin(async move {
            let name = args[0].to_ascii_lowercase();
            let frame = match (&name[..], args.len()) {
                (b"get", 2) => {
                    let data = self.data.lock().unwrap();
                    data.get(&(db, args[1].clone())).cloned().map_or(Frame::Null, Frame::Bulk)
                }
                (b"set", 3) => {
                    self.data.lock().unwrap().insert((db, args[1].clone()), args[2].clone());
                    Frame::ok()
                }
                (b"slow", 1) => {
                    self.slow_started.notify_one();
                    self.slow_release.notified().await;
                    Frame::Simple("DONE".into())
                }
                (b"get" | b"set" | b"slow", _) => Frame::error(format!(
                    "ERR wrong number of arguments for '{}' command",
                    String::from_utf8_lossy(&name)
                )),
                _ => return None,
            };
            Some(frame.into())
        })
    }

    fn db_exists(&self, db: usize) -> bool {
        db < 16
    }
}

struct TestServer {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    stats: Arc<ServerStats>,
    handler: Arc<MemoryHandler>,
}

fn settings() -> ServerSettings {
    ServerSettings {
        connections_max: 64,
        request_bytes_max: 1024 * 1024,
        password: None,
        clients: Default::default(),
        hub: Default::default(),
    }
}

impl TestServer {
    async fn start(settings: ServerSettings) -> TestServer {
        let listener = within(TcpListener::bind("127.0.0.1:0")).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let stats = Arc::new(ServerStats::default());
        let handler = Arc::new(MemoryHandler::default());
        let task = tokio::spawn(server::run(listener, handler.clone(), settings, stats.clone(), cancel.clone()));
        TestServer { addr, cancel, task, stats, handler }
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        self.redis_at(&self.url()).await
    }

    async fn redis_at(&self, url: &str) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(url).unwrap();
        within(client.get_multiplexed_async_connection()).await.unwrap()
    }

    async fn raw(&self) -> Raw {
        Raw { stream: within(TcpStream::connect(self.addr)).await.unwrap(), buf: BytesMut::new() }
    }

    /// Cancels the server and waits for `run` to return.
    async fn stop(self) -> Arc<ServerStats> {
        self.cancel.cancel();
        within(self.task).await.unwrap().unwrap();
        self.stats
    }
}

/// A client speaking raw bytes, reading replies with the crate's own frame reader.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn send(&mut self, bytes: &[u8]) {
        within(self.stream.write_all(bytes)).await.unwrap();
    }

    async fn frame(&mut self) -> Frame {
        loop {
            if let Some(frame) = Frame::decode(&mut self.buf).unwrap() {
                return frame;
            }
            let read = within(self.stream.read_buf(&mut self.buf)).await.unwrap();
            assert!(read > 0, "connection closed before a whole reply; have {:?}", self.buf);
        }
    }

    /// Everything the server sends until it closes the connection.
    async fn read_to_end(&mut self) -> String {
        let mut rest = Vec::new();
        within(self.stream.read_to_end(&mut rest)).await.unwrap();
        let mut all = self.buf.split().to_vec();
        all.extend_from_slice(&rest);
        String::from_utf8_lossy(&all).into_owned()
    }

    /// Whether a reply arrives within [`NO_REPLY_WAIT`].
    async fn replies_soon(&mut self) -> bool {
        tokio::time::timeout(NO_REPLY_WAIT, self.stream.read_buf(&mut self.buf)).await.is_ok()
    }
}

fn request(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

#[tokio::test]
async fn redis_client_pings_sets_and_gets() {
    let server = TestServer::start(settings()).await;
    let mut con = server.redis().await;
    let pong: String = within(redis::cmd("PING").query_async(&mut con)).await.unwrap();
    assert_eq!(pong, "PONG");
    let echo: String = within(redis::cmd("ECHO").arg("hi there").query_async(&mut con)).await.unwrap();
    assert_eq!(echo, "hi there");
    let () = within(redis::cmd("SET").arg("k").arg(b"v\r\n\0".as_slice()).query_async(&mut con)).await.unwrap();
    let value: Vec<u8> = within(redis::cmd("GET").arg("k").query_async(&mut con)).await.unwrap();
    assert_eq!(value, b"v\r\n\0");
    let missing: Option<String> = within(redis::cmd("GET").arg("nope").query_async(&mut con)).await.unwrap();
    assert_eq!(missing, None);
    drop(con);
    let stats = server.stop().await.snapshot();
    assert_eq!(stats.connections_current, 0);
    assert_eq!(stats.connections_accepted, 1);
    assert!(stats.commands_processed >= 5, "{stats:?}");
}

#[tokio::test]
async fn pipeline_of_1000_commands_is_answered_in_order() {
    let server = TestServer::start(settings()).await;
    let mut con = server.redis().await;
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.cmd("SET").arg(format!("key{i}")).arg(format!("value{i}")).ignore();
    }
    for i in 0..500 {
        pipe.cmd("GET").arg(format!("key{i}"));
    }
    let values: Vec<String> = within(pipe.query_async(&mut con)).await.unwrap();
    let expected: Vec<String> = (0..500).map(|i| format!("value{i}")).collect();
    assert_eq!(values, expected);

    // The same over raw TCP, all 1000 requests in one write.
    let mut raw = server.raw().await;
    let batch: Vec<u8> = (0..1000).flat_map(|i| request(&["ECHO", &i.to_string()])).collect();
    raw.send(&batch).await;
    for i in 0..1000 {
        assert_eq!(raw.frame().await, Frame::bulk(i.to_string()));
    }
    server.stop().await;
}

#[tokio::test]
async fn select_switches_database() {
    let server = TestServer::start(settings()).await;
    let mut con = server.redis().await;
    let () = within(redis::cmd("SET").arg("k").arg("in-0").query_async(&mut con)).await.unwrap();
    let () = within(redis::cmd("SELECT").arg(1).query_async(&mut con)).await.unwrap();
    let missing: Option<String> = within(redis::cmd("GET").arg("k").query_async(&mut con)).await.unwrap();
    assert_eq!(missing, None);
    let err = within(redis::cmd("SELECT").arg(16).query_async::<()>(&mut con)).await.unwrap_err();
    assert_eq!((err.code(), err.detail()), (Some("ERR"), Some("DB index is out of range")));
    let err = within(redis::cmd("SELECT").arg("x").query_async::<()>(&mut con)).await.unwrap_err();
    assert_eq!(err.detail(), Some("value is not an integer or out of range"));

    // The database in the URL is selected on connect.
    let mut in_0 = server.redis_at(&format!("{}0", server.url())).await;
    let value: String = within(redis::cmd("GET").arg("k").query_async(&mut in_0)).await.unwrap();
    assert_eq!(value, "in-0");
    server.stop().await;
}

#[tokio::test]
async fn hello_3_switches_to_resp3() {
    let server = TestServer::start(settings()).await;
    let mut raw = server.raw().await;
    raw.send(b"CLIENT ID\r\n").await;
    let Frame::Integer(id) = raw.frame().await else { panic!("CLIENT ID is not an integer") };
    raw.send(b"GET missing\r\nHELLO 3\r\nGET missing\r\n").await;
    let expected = format!(
        "$-1\r\n%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n$5\r\nproto\r\n:3\r\n\
         $2\r\nid\r\n:{id}\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n\
         $7\r\nmodules\r\n*0\r\n_\r\n"
    );
    raw.send(b"QUIT\r\n").await;
    assert_eq!(raw.read_to_end().await, format!("{expected}+OK\r\n"));

    // The redis crate asking for RESP3 on connect.
    let mut con = server.redis_at(&format!("{}?protocol=resp3", server.url())).await;
    let hello: redis::Value = within(redis::cmd("HELLO").query_async(&mut con)).await.unwrap();
    let redis::Value::Map(fields) = hello else { panic!("HELLO reply is not a map: {hello:?}") };
    assert!(fields.contains(&(redis::Value::BulkString(b"proto".to_vec()), redis::Value::Int(3))), "{fields:?}");
    let missing: redis::Value = within(redis::cmd("GET").arg("missing").query_async(&mut con)).await.unwrap();
    assert_eq!(missing, redis::Value::Nil);
    let err = within(redis::cmd("HELLO").arg(4).query_async::<()>(&mut con)).await.unwrap_err();
    assert!(err.to_string().contains("NOPROTO"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn unknown_command_and_wrong_arity_have_redis_texts() {
    let server = TestServer::start(settings()).await;
    let mut raw = server.raw().await;
    raw.send(&request(&["foo", "a", "b"])).await;
    raw.send(&request(&["PING", "a", "b"])).await;
    raw.send(&request(&["get"])).await;
    raw.send(b"nosuch\r\nQUIT\r\n").await;
    assert_eq!(
        raw.read_to_end().await,
        "-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n\
         -ERR wrong number of arguments for 'ping' command\r\n\
         -ERR wrong number of arguments for 'get' command\r\n\
         -ERR unknown command 'nosuch', with args beginning with: \r\n\
         +OK\r\n"
    );

    let mut con = server.redis().await;
    let err = within(redis::cmd("FOO").arg("a").query_async::<()>(&mut con)).await.unwrap_err();
    assert_eq!(err.detail(), Some("unknown command 'FOO', with args beginning with: 'a' "));
    server.stop().await;
}

#[tokio::test]
async fn inline_commands_work_like_telnet() {
    let server = TestServer::start(settings()).await;
    let mut raw = server.raw().await;
    raw.send(b"PING\r\n").await;
    assert_eq!(raw.frame().await, Frame::Simple("PONG".into()));
    raw.send(b"SET k \"two words\"\nGET k\r\nping 'it''s'\r\n").await;
    assert_eq!(raw.frame().await, Frame::ok());
    assert_eq!(raw.frame().await, Frame::bulk("two words"));
    // A closing quote followed by more text is unbalanced: error, then close.
    assert_eq!(raw.read_to_end().await, "-ERR Protocol error: unbalanced quotes in request\r\n");
    server.stop().await;
}

#[tokio::test]
async fn protocol_error_is_answered_then_connection_closed() {
    let server = TestServer::start(settings()).await;
    let cases: &[(&[u8], &str)] = &[
        (b"*1\r\n$-5\r\n", "invalid bulk length"),
        (b"*1\r\n$1048577\r\n", "invalid bulk length"),
        (b"*abc\r\n", "invalid multibulk length"),
        (b"*2000000\r\n", "invalid multibulk length"),
        (b"*1\r\nx\r\n", "expected '$', got 'x'"),
    ];
    for (bad, text) in cases {
        let mut raw = server.raw().await;
        let mut bytes = b"PING\r\n".to_vec();
        bytes.extend_from_slice(bad);
        raw.send(&bytes).await;
        assert_eq!(raw.read_to_end().await, format!("+PONG\r\n-ERR Protocol error: {text}\r\n"));
    }
    let mut raw = server.raw().await;
    raw.send(&vec![b'a'; 64 * 1024 + 1]).await;
    assert_eq!(raw.read_to_end().await, "-ERR Protocol error: too big inline request\r\n");
    let stats = server.stop().await.snapshot();
    assert_eq!(stats.protocol_errors, cases.len() as u64 + 1);
}

#[tokio::test]
async fn request_over_request_bytes_max_is_refused() {
    let server = TestServer::start(ServerSettings { request_bytes_max: 1024, ..settings() }).await;
    // One argument over the limit: Redis's answer to a bulk over proto-max-bulk-len.
    let mut raw = server.raw().await;
    raw.send(&request(&["SET", "k", &"v".repeat(1025)])).await;
    assert_eq!(raw.read_to_end().await, "-ERR Protocol error: invalid bulk length\r\n");
    // Arguments within the limit that are over it together: closed without a reply,
    // as Redis closes a client over client-query-buffer-limit.
    let mut raw = server.raw().await;
    let args: Vec<String> = std::iter::once("ECHO".to_string()).chain((0..20).map(|_| "x".repeat(100))).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    raw.send(b"PING\r\n").await;
    raw.send(&request(&args)).await;
    assert_eq!(raw.read_to_end().await, "+PONG\r\n");
    server.stop().await;
}

#[tokio::test]
async fn quit_replies_ok_then_closes() {
    let server = TestServer::start(settings()).await;
    let mut raw = server.raw().await;
    raw.send(b"PING\r\nQUIT\r\nPING\r\n").await;
    assert_eq!(raw.read_to_end().await, "+PONG\r\n+OK\r\n");
    server.stop().await;
}

#[tokio::test]
async fn password_is_required_when_configured() {
    let server = TestServer::start(ServerSettings { password: Some("s3cret".into()), ..settings() }).await;
    let mut raw = server.raw().await;
    raw.send(b"PING\r\nAUTH wrong\r\nAUTH s3cret\r\nPING\r\nQUIT\r\n").await;
    assert_eq!(
        raw.read_to_end().await,
        "-NOAUTH Authentication required.\r\n\
         -WRONGPASS invalid username-password pair or user is disabled.\r\n\
         +OK\r\n+PONG\r\n+OK\r\n"
    );

    // Before AUTH, requests are held to Redis's smaller limits.
    let mut raw = server.raw().await;
    raw.send(b"*11\r\n").await;
    assert_eq!(raw.read_to_end().await, "-ERR Protocol error: unauthenticated multibulk length\r\n");

    let mut con = server.redis_at(&format!("redis://:s3cret@{}/", server.addr)).await;
    let pong: String = within(redis::cmd("PING").query_async(&mut con)).await.unwrap();
    assert_eq!(pong, "PONG");
    let mut con = server.redis_at(&format!("redis://default:s3cret@{}/?protocol=resp3", server.addr)).await;
    let pong: String = within(redis::cmd("PING").query_async(&mut con)).await.unwrap();
    assert_eq!(pong, "PONG");
    let client = redis::Client::open(format!("redis://:wrong@{}/", server.addr)).unwrap();
    assert!(within(client.get_multiplexed_async_connection()).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    let server = TestServer::start(ServerSettings { connections_max: 2, ..settings() }).await;
    let mut first = server.raw().await;
    let mut second = server.raw().await;
    for client in [&mut first, &mut second] {
        client.send(b"PING\r\n").await;
        assert_eq!(client.frame().await, Frame::Simple("PONG".into()));
    }
    // The third connects (the kernel's backlog takes it) but is not served.
    let mut third = server.raw().await;
    third.send(b"PING\r\n").await;
    assert!(!third.replies_soon().await, "a third connection was served with connections_max = 2");
    drop(first);
    assert_eq!(third.frame().await, Frame::Simple("PONG".into()));
    second.send(b"PING\r\n").await;
    assert_eq!(second.frame().await, Frame::Simple("PONG".into()));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_the_command_in_flight_then_closes() {
    let server = TestServer::start(settings()).await;
    let mut idle = server.raw().await;
    idle.send(b"PING\r\n").await;
    assert_eq!(idle.frame().await, Frame::Simple("PONG".into()));
    let mut busy = server.raw().await;
    busy.send(b"SLOW\r\nPING\r\n").await;
    within(server.handler.slow_started.notified()).await;

    server.cancel.cancel();
    // The idle connection is closed at once, while SLOW is still running.
    assert_eq!(idle.read_to_end().await, "");
    server.handler.slow_release.notify_one();
    // SLOW is answered; the PING behind it is not started.
    assert_eq!(busy.read_to_end().await, "+DONE\r\n");

    let addr = server.addr;
    let stats = server.stop().await.snapshot();
    assert_eq!(stats.connections_current, 0);
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}
