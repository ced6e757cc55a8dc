//! What the suites that compare a node with a real `redis-server` (7.0, Debian's
//! package) share: a server of their own, and a connection that sends commands as
//! raw RESP and returns each reply's bytes as received. Every wait is bounded by
//! [`super::WAIT`].

use super::WAIT;
use std::io::Cursor;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xsite_node::resp::Frame;

/// A connection that sends commands and returns each reply's bytes as received.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await.unwrap().unwrap();
        Raw { stream, buf: Vec::new() }
    }

    /// Sends every command in one write, then reads one reply per command.
    pub async fn pipeline(&mut self, commands: &[&str]) -> Vec<Vec<u8>> {
        self.send(commands).await;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.reply().await);
        }
        replies
    }

    /// Sends the commands in one write without reading anything.
    pub async fn send(&mut self, commands: &[&str]) {
        let mut out = Vec::new();
        for command in commands {
            out.extend_from_slice(&encode(command));
        }
        tokio::time::timeout(WAIT, self.stream.write_all(&out)).await.unwrap().unwrap();
    }

    pub async fn call(&mut self, command: &str) -> Vec<u8> {
        self.pipeline(&[command]).await.remove(0)
    }

    /// The bytes of the next whole frame (a reply or a push).
    pub async fn reply(&mut self) -> Vec<u8> {
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            if Frame::check(&mut cursor).is_ok() {
                let len = cursor.position() as usize;
                return self.buf.drain(..len).collect();
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await.expect("a reply").unwrap();
            let have = String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)]).into_owned();
            assert!(n > 0, "connection closed; have {} bytes: {have:?}…", self.buf.len());
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the server closed the connection (reads until EOF, bounded).
    pub async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// The stream itself (a test that must not read it).
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// A command line split at spaces, as a RESP array of bulk strings (`''` is the
/// empty argument).
pub fn encode(command: &str) -> Vec<u8> {
    let args = words(command);
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

/// The arguments of `command`: split at spaces, except inside double quotes (where
/// `\n` stands for a newline and `\"` for a quote); `''` is the empty argument.
pub fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = command.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('n') => word.push('\n'),
                        Some(other) => word.push(other),
                        None => {}
                    },
                    other => word.push(other),
                }
            }
        } else {
            while let Some(&c) = chars.peek().filter(|c| **c != ' ') {
                word.push(c);
                chars.next();
            }
            if word == "''" {
                word.clear();
            }
        }
        out.push(word);
    }
    out
}

pub fn show(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).replace("\r\n", "\\r\\n")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `redis-server` of its own, killed when dropped.
pub struct RedisServer {
    child: Child,
    pub addr: SocketAddr,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (Debian's redis-server package)");
        let server = RedisServer { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(stream) = TcpStream::connect(server.addr).await {
                if (Raw { stream, buf: Vec::new() }).call("PING").await == b"+PONG\r\n" {
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "redis-server never answered on {}", server.addr);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `commands` on one fresh connection; the reply to each (a command marked
/// `!` is sent without the mark, and its reply is not compared).
pub async fn replies(addr: SocketAddr, commands: &[String]) -> Vec<Vec<u8>> {
    let mut clean = Raw::connect(addr).await;
    assert_eq!(clean.call("FLUSHALL").await, b"+OK\r\n");
    let mut conn = Raw::connect(addr).await;
    let mut out = Vec::with_capacity(commands.len());
    for command in commands {
        out.push(conn.call(command.trim_start_matches('!')).await);
    }
    out
}

/// A flat RESP array of bulk strings with its elements sorted (for a SCAN's reply
/// of one whole cycle, the array after the cursor 0); anything else as it is: a
/// reply Redis gives in no fixed order, made comparable.
pub fn sorted_reply(reply: &[u8]) -> Vec<u8> {
    const CYCLE: &[u8] = b"*2\r\n$1\r\n0\r\n";
    if let Some(array) = reply.strip_prefix(CYCLE) {
        return [CYCLE, &sorted_reply(array)].concat();
    }
    let Some(rest) = reply.strip_prefix(b"*") else { return reply.to_vec() };
    let mut parts = rest.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let Some(n) = parts.next().and_then(|n| std::str::from_utf8(n).ok()).and_then(|n| n.parse::<usize>().ok()) else {
        return reply.to_vec();
    };
    let mut elements = Vec::with_capacity(n);
    for _ in 0..n {
        let (Some(len), Some(body)) = (parts.next(), parts.next()) else { return reply.to_vec() };
        elements.push([len, b"\r\n", body, b"\r\n"].concat());
    }
    elements.sort();
    [format!("*{n}\r\n").into_bytes(), elements.concat()].concat()
}

/// Fails a seeded random sequence compared with Redis if any reply differs: the
/// seed to replay it, the first differences, and the history of the key of the
/// first one as Redis answered it.
pub fn assert_same_replies(seed: u64, commands: &[String], want: &[Vec<u8>], got: &[Vec<u8>]) {
    let diffs = differences(commands, want, got);
    if diffs.is_empty() {
        return;
    }
    let first = commands.iter().zip(want).zip(got).position(|((_, w), g)| w != g).unwrap_or(0);
    let key = commands[first].split(' ').nth(1).unwrap_or_default().to_string();
    let mentions: Vec<String> = (0..=first)
        .filter(|&j| commands[j].split(' ').skip(1).any(|a| a == key))
        .map(|j| format!("  {} -> {}", commands[j], show(&want[j])))
        .collect();
    panic!(
        "XSITE_SIM_SEED={seed}: {} of {} replies differ from Redis's:\n{}\nthe key before the first one, as Redis answered:\n{}",
        diffs.len(),
        commands.len(),
        diffs.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
        mentions[mentions.len().saturating_sub(30)..].join("\n")
    );
}

pub fn differences(commands: &[String], want: &[Vec<u8>], got: &[Vec<u8>]) -> Vec<String> {
    let mut diffs = Vec::new();
    for ((command, want), got) in commands.iter().zip(want).zip(got) {
        if want != got && !command.starts_with('!') {
            diffs.push(format!("{command}: redis {} xsite {}", show(want), show(got)));
        }
    }
    diffs
}

/// The keyspace events of `commands` as a `PSUBSCRIBE __keyevent@*__:*` client
/// receives them, up to the `end` event that follows them.
pub async fn events(addr: SocketAddr, commands: &[&str]) -> Vec<String> {
    let mut clean = Raw::connect(addr).await;
    assert_eq!(clean.call("FLUSHALL").await, b"+OK\r\n");
    assert_eq!(clean.call("CONFIG SET notify-keyspace-events KEA").await, b"+OK\r\n");
    let mut subscriber = Raw::connect(addr).await;
    subscriber.call("PSUBSCRIBE __keyevent@*__:*").await;
    for command in commands {
        clean.call(command).await;
    }
    clean.call("SELECT 0").await;
    clean.call("SET end end").await;
    let mut seen = Vec::new();
    loop {
        let message = show(&subscriber.reply().await);
        if message.contains("__:set\\r\\n$3\\r\\nend") {
            return seen;
        }
        seen.push(message);
    }
}
