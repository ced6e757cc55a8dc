//! One client connection's state, and the commands that act on the connection
//! rather than on data: `PING`, `ECHO`, `QUIT`, `HELLO`, `AUTH`, `SELECT`, `CLIENT`,
//! `COMMAND`, `RESET`. Every other command goes to the [`CommandHandler`].
//!
//! Replies and their order of checks follow Redis 7.2: an unknown subcommand or a
//! wrong number of arguments is reported before `NOAUTH`, and `AUTH`, `HELLO`, `QUIT`
//! and `RESET` work before authentication. A command the handler does not know gets
//! Redis's unknown-command error.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::resp::{parse_integer, Frame, RESP2, RESP3};

/// Resolves when a command's writes are durable; `Err` carries the error reply
/// that replaces the command's reply.
pub type DurableWait = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;

/// A command's reply, and what must complete before the reply may be sent.
pub struct Executed {
    pub frame: Frame,
    /// `None`: the reply can go at once (a read, or nothing was written).
    pub durable: Option<DurableWait>,
}

impl From<Frame> for Executed {
    fn from(frame: Frame) -> Executed {
        Executed { frame, durable: None }
    }
}

/// Executes data commands; the engine implements it.
pub trait CommandHandler: Send + Sync + 'static {
    /// Execute a data command (args[0] is the command name, as sent). `db` is the
    /// connection's selected database. Returns None when the command is unknown.
    /// The future resolves once the command took effect; its `durable` part once its
    /// writes are durable. The connection runs a pipeline's commands in order, then
    /// waits for their durability and sends the replies, so a pipeline shares one
    /// group commit and a later command still sees an earlier one's effect.
    fn execute<'a>(
        &'a self,
        db: usize,
        args: &'a [Bytes],
    ) -> Pin<Box<dyn Future<Output = Option<Executed>> + Send + 'a>>;
    /// Whether `SELECT db` is allowed.
    fn db_exists(&self, db: usize) -> bool;
}

/// The version `HELLO` reports: clients see a Redis 7.2 server.
const REDIS_VERSION: &str = "7.2.0";
/// The only user there is (no ACL).
const DEFAULT_USER: &[u8] = b"default";
/// Bytes of the command name, and of the arguments together, quoted in the
/// unknown-command error (as Redis does).
const UNKNOWN_COMMAND_QUOTE_BYTES_MAX: usize = 128;

/// What all connections of one server share.
pub(crate) struct ServerContext {
    pub(crate) handler: Arc<dyn CommandHandler>,
    /// When set, a connection must authenticate as `default` with it first.
    pub(crate) password: Option<Bytes>,
    pub(crate) clients: ClientRegistry,
}

/// A reply, whether the connection closes after sending it, and what it waits for.
pub(crate) struct Reply {
    pub(crate) frame: Frame,
    pub(crate) close: bool,
    pub(crate) durable: Option<DurableWait>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply").field("frame", &self.frame).field("close", &self.close).finish_non_exhaustive()
    }
}

impl PartialEq for Reply {
    fn eq(&self, other: &Reply) -> bool {
        self.frame == other.frame && self.close == other.close
    }
}

impl From<Frame> for Reply {
    fn from(frame: Frame) -> Reply {
        Reply { frame, close: false, durable: None }
    }
}

/// What `CLIENT LIST` shows of a connection.
#[derive(Clone, Debug)]
pub(crate) struct ClientInfo {
    pub(crate) id: u64,
    addr: SocketAddr,
    laddr: SocketAddr,
    name: Bytes,
    db: usize,
    proto: u8,
    lib_name: Bytes,
    lib_ver: Bytes,
    created: Instant,
}

impl ClientInfo {
    /// One line of `CLIENT LIST` (without the newline), fields as Redis names them.
    fn line(&self) -> String {
        format!(
            "id={} addr={} laddr={} name={} age={} flags=N db={} user=default resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            String::from_utf8_lossy(&self.name),
            self.created.elapsed().as_secs(),
            self.db,
            self.proto,
            String::from_utf8_lossy(&self.lib_name),
            String::from_utf8_lossy(&self.lib_ver),
        )
    }
}

/// The connections open now, for `CLIENT LIST`, and the source of client ids.
#[derive(Default)]
pub(crate) struct ClientRegistry {
    id_last: AtomicU64,
    clients: Mutex<BTreeMap<u64, ClientInfo>>,
}

impl ClientRegistry {
    fn register(&self, addr: SocketAddr, laddr: SocketAddr) -> ClientInfo {
        let info = ClientInfo {
            id: self.id_last.fetch_add(1, Ordering::Relaxed) + 1,
            addr,
            laddr,
            name: Bytes::new(),
            db: 0,
            proto: RESP2,
            lib_name: Bytes::new(),
            lib_ver: Bytes::new(),
            created: Instant::now(),
        };
        self.lock().insert(info.id, info.clone());
        info
    }

    fn update(&self, info: &ClientInfo) {
        self.lock().insert(info.id, info.clone());
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lines(&self, ids: Option<&[u64]>) -> String {
        let clients = self.lock();
        let mut out = String::new();
        for info in clients.values() {
            if ids.is_some_and(|ids| !ids.contains(&info.id)) {
                continue;
            }
            out.push_str(&info.line());
            out.push('\n');
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClientInfo>> {
        // The map stays consistent even if a holder panicked: every update is one insert.
        self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One connection's state: protocol version, database, name, authentication.
pub(crate) struct Session {
    ctx: Arc<ServerContext>,
    info: ClientInfo,
    authenticated: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.ctx.clients.remove(self.info.id);
    }
}

impl Session {
    pub(crate) fn new(ctx: Arc<ServerContext>, addr: SocketAddr, laddr: SocketAddr) -> Session {
        let info = ctx.clients.register(addr, laddr);
        let authenticated = ctx.password.is_none();
        Session { ctx, info, authenticated }
    }

    pub(crate) fn id(&self) -> u64 {
        self.info.id
    }

    /// Whether commands other than `AUTH`, `HELLO`, `QUIT` and `RESET` may run.
    pub(crate) fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// The protocol version replies are encoded with.
    pub(crate) fn proto(&self) -> u8 {
        self.info.proto
    }

    /// Executes one command. `args` is never empty.
    pub(crate) async fn apply(&mut self, args: &[Bytes]) -> Reply {
        debug_assert!(!args.is_empty(), "empty requests are skipped by the decoder");
        let builtin = match Builtin::resolve(args) {
            Ok(builtin) => builtin,
            Err(error) => return error.into(),
        };
        if !self.authenticated && !builtin.is_some_and(Builtin::allowed_before_auth) {
            return Frame::error("NOAUTH Authentication required.").into();
        }
        match builtin {
            Some(builtin) => self.apply_builtin(builtin, args),
            None => match self.ctx.handler.execute(self.info.db, args).await {
                Some(Executed { frame, durable }) => Reply { frame, close: false, durable },
                None => unknown_command(args).into(),
            },
        }
    }

    fn apply_builtin(&mut self, builtin: Builtin, args: &[Bytes]) -> Reply {
        let frame = match builtin {
            Builtin::Ping => match args.get(1) {
                None => Frame::Simple("PONG".into()),
                Some(message) => Frame::Bulk(message.clone()),
            },
            Builtin::Echo => Frame::Bulk(args[1].clone()),
            Builtin::Quit => return Reply { frame: Frame::ok(), close: true, durable: None },
            Builtin::Hello => self.hello(args),
            Builtin::Auth => self.auth(args),
            Builtin::Select => self.select(&args[1]),
            Builtin::Reset => self.reset(),
            Builtin::Client(sub) => self.client(sub, args),
            Builtin::Command(sub) => command(sub, args),
        };
        frame.into()
    }

    fn publish(&self) {
        self.ctx.clients.update(&self.info);
    }

    /// `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
    fn hello(&mut self, args: &[Bytes]) -> Frame {
        let mut proto = None;
        if let Some(version) = args.get(1) {
            match parse_integer(version) {
                Some(v) if v == i64::from(RESP2) || v == i64::from(RESP3) => proto = Some(v as u8),
                Some(_) => return Frame::error("NOPROTO unsupported protocol version"),
                None => return Frame::error("ERR Protocol version is not an integer or out of range"),
            }
        }
        let mut credentials = None;
        let mut name = None;
        let mut i = 2;
        while i < args.len() {
            let more = args.len() - 1 - i;
            if args[i].eq_ignore_ascii_case(b"AUTH") && more >= 2 {
                credentials = Some((&args[i + 1], &args[i + 2]));
                i += 3;
            } else if args[i].eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
                name = Some(&args[i + 1]);
                i += 2;
            } else {
                return Frame::error(format!("ERR Syntax error in HELLO option '{}'", lossy(&args[i])));
            }
        }
        if let Some((user, password)) = credentials {
            if !self.check_credentials(user, password) {
                return wrongpass();
            }
            self.authenticated = true;
        }
        if !self.authenticated {
            return Frame::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
                 HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
                 select the RESP protocol version at the same time",
            );
        }
        if let Some(name) = name {
            if let Err(error) = validate_attribute(name, "Client names") {
                return error;
            }
            self.info.name = name.clone();
        }
        if let Some(proto) = proto {
            self.info.proto = proto;
        }
        self.publish();
        let field = |key: &'static str, value: Frame| (Frame::bulk(key), value);
        Frame::Map(vec![
            field("server", Frame::bulk("redis")),
            field("version", Frame::bulk(REDIS_VERSION)),
            field("proto", Frame::Integer(i64::from(self.info.proto))),
            field("id", Frame::Integer(self.info.id as i64)),
            field("mode", Frame::bulk("standalone")),
            field("role", Frame::bulk("master")),
            field("modules", Frame::Array(vec![])),
        ])
    }

    /// `AUTH [username] password`.
    fn auth(&mut self, args: &[Bytes]) -> Frame {
        let (user, password) = match args {
            [_, password] => {
                if self.ctx.password.is_none() {
                    return Frame::error(
                        "ERR AUTH <password> called without any password configured for the default user. \
                         Are you sure your configuration is correct?",
                    );
                }
                (DEFAULT_USER, password)
            }
            [_, user, password] => (&user[..], password),
            _ => return arity_error("auth"),
        };
        if !self.check_credentials(user, password) {
            return wrongpass();
        }
        self.authenticated = true;
        Frame::ok()
    }

    /// Like Redis without ACLs: the only user is `default`; without a password
    /// configured it takes any password.
    fn check_credentials(&self, user: &[u8], password: &[u8]) -> bool {
        let password_ok = match &self.ctx.password {
            None => true,
            Some(expected) => constant_time_eq(expected, password),
        };
        user == DEFAULT_USER && password_ok
    }

    fn select(&mut self, index: &[u8]) -> Frame {
        let Some(index) = parse_integer(index).filter(|&n| i32::try_from(n).is_ok()) else {
            return Frame::error("ERR value is not an integer or out of range");
        };
        match usize::try_from(index) {
            Ok(db) if self.ctx.handler.db_exists(db) => {
                self.info.db = db;
                self.publish();
                Frame::ok()
            }
            _ => Frame::error("ERR DB index is out of range"),
        }
    }

    /// Back to a new connection's state: database 0, RESP2, no name, and
    /// unauthenticated when a password is configured.
    fn reset(&mut self) -> Frame {
        self.info.db = 0;
        self.info.proto = RESP2;
        self.info.name = Bytes::new();
        self.authenticated = self.ctx.password.is_none();
        self.publish();
        Frame::Simple("RESET".into())
    }

    fn client(&mut self, sub: ClientSub, args: &[Bytes]) -> Frame {
        match sub {
            ClientSub::Id => Frame::Integer(self.info.id as i64),
            ClientSub::GetName if self.info.name.is_empty() => Frame::Null,
            ClientSub::GetName => Frame::Bulk(self.info.name.clone()),
            ClientSub::SetName => {
                if let Err(error) = validate_attribute(&args[2], "Client names") {
                    return error;
                }
                self.info.name = args[2].clone();
                self.publish();
                Frame::ok()
            }
            ClientSub::SetInfo => {
                let (attr, value) = (&args[2], &args[3]);
                let label = if attr.eq_ignore_ascii_case(b"LIB-NAME") {
                    "lib-name"
                } else if attr.eq_ignore_ascii_case(b"LIB-VER") {
                    "lib-ver"
                } else {
                    return Frame::error(format!("ERR Unrecognized option '{}'", lossy(attr)));
                };
                if let Err(error) = validate_attribute(value, &lossy(attr)) {
                    return error;
                }
                if label == "lib-name" {
                    self.info.lib_name = value.clone();
                } else {
                    self.info.lib_ver = value.clone();
                }
                self.publish();
                Frame::ok()
            }
            ClientSub::Info => Frame::Bulk(format!("{}\n", self.info.line()).into()),
            ClientSub::List => self.client_list(&args[2..]),
            ClientSub::Help => help(&[
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GETNAME",
                "ID",
                "INFO",
                "LIST [ID <client-id> [<client-id> ...]]",
                "SETINFO <LIB-NAME|LIB-VER> <value>",
                "SETNAME <name>",
                "HELP",
            ]),
        }
    }

    /// `CLIENT LIST [ID id ...]`; other filters are not supported.
    fn client_list(&self, filters: &[Bytes]) -> Frame {
        let ids = match filters {
            [] => None,
            [keyword, ids @ ..] if keyword.eq_ignore_ascii_case(b"ID") && !ids.is_empty() => {
                let parsed: Option<Vec<u64>> = ids
                    .iter()
                    .map(|id| parse_integer(id).and_then(|n| u64::try_from(n).ok()).filter(|&n| n > 0))
                    .collect();
                match parsed {
                    Some(ids) => Some(ids),
                    None => return Frame::error("ERR Invalid client ID"),
                }
            }
            _ => return Frame::error("ERR syntax error"),
        };
        Frame::Bulk(self.ctx.clients.lines(ids.as_deref()).into())
    }
}

/// `COMMAND` and its subcommands. Command metadata is not published: the lists are
/// empty, which redis-cli (it asks `COMMAND DOCS` on start) and client libraries accept.
fn command(sub: Option<CommandSub>, args: &[Bytes]) -> Frame {
    match sub {
        None | Some(CommandSub::List) => Frame::Array(vec![]),
        Some(CommandSub::Count) => Frame::Integer(0),
        Some(CommandSub::Docs) => Frame::Map(vec![]),
        Some(CommandSub::Info) => Frame::Array(args[2..].iter().map(|_| Frame::Null).collect()),
        Some(CommandSub::Help) => help(&[
            "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "(no subcommand)",
            "COUNT",
            "DOCS [<command-name> ...]",
            "INFO [<command-name> ...]",
            "LIST",
            "HELP",
        ]),
    }
}

fn help(lines: &[&str]) -> Frame {
    Frame::Array(lines.iter().map(|line| Frame::Simple((*line).into())).collect())
}

/// A command handled here, resolved with its subcommand and arity checked.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Builtin {
    Ping,
    Echo,
    Quit,
    Hello,
    Auth,
    Select,
    Reset,
    Client(ClientSub),
    Command(Option<CommandSub>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ClientSub {
    Id,
    GetName,
    SetName,
    SetInfo,
    Info,
    List,
    Help,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum CommandSub {
    Count,
    Docs,
    Info,
    List,
    Help,
}

/// Redis's arity: `n` is exactly n arguments (the name included), `-n` at least n.
type Arity = i32;

const BUILTINS: &[(&str, Arity, Builtin)] = &[
    ("ping", -1, Builtin::Ping),
    ("echo", 2, Builtin::Echo),
    ("quit", -1, Builtin::Quit),
    ("hello", -1, Builtin::Hello),
    ("auth", -2, Builtin::Auth),
    ("select", 2, Builtin::Select),
    ("reset", 1, Builtin::Reset),
];

const CLIENT_SUBS: &[(&str, Arity, ClientSub)] = &[
    ("id", 2, ClientSub::Id),
    ("getname", 2, ClientSub::GetName),
    ("setname", 3, ClientSub::SetName),
    ("setinfo", 4, ClientSub::SetInfo),
    ("info", 2, ClientSub::Info),
    ("list", -2, ClientSub::List),
    ("help", 2, ClientSub::Help),
];

const COMMAND_SUBS: &[(&str, Arity, CommandSub)] = &[
    ("count", 2, CommandSub::Count),
    ("docs", -2, CommandSub::Docs),
    ("info", -2, CommandSub::Info),
    ("list", -2, CommandSub::List),
    ("help", 2, CommandSub::Help),
];

impl Builtin {
    /// `Ok(None)` for a command that is not handled here; `Err` with the reply for an
    /// unknown subcommand or a wrong number of arguments.
    fn resolve(args: &[Bytes]) -> Result<Option<Builtin>, Frame> {
        let name = &args[0];
        if name.eq_ignore_ascii_case(b"client") {
            let sub = resolve_sub("client", CLIENT_SUBS, -2, args)?;
            return Ok(Some(Builtin::Client(sub)));
        }
        if name.eq_ignore_ascii_case(b"command") {
            if args.len() == 1 {
                return Ok(Some(Builtin::Command(None)));
            }
            let sub = resolve_sub("command", COMMAND_SUBS, -1, args)?;
            return Ok(Some(Builtin::Command(Some(sub))));
        }
        let Some(&(name, arity, builtin)) = BUILTINS.iter().find(|(n, ..)| name.eq_ignore_ascii_case(n.as_bytes()))
        else {
            return Ok(None);
        };
        // PING and AUTH take at most one optional argument more than their minimum.
        let too_many = match builtin {
            Builtin::Ping => args.len() > 2,
            Builtin::Auth => args.len() > 3,
            _ => false,
        };
        if !arity_ok(arity, args.len()) || too_many {
            return Err(arity_error(name));
        }
        Ok(Some(builtin))
    }

    fn allowed_before_auth(self) -> bool {
        matches!(self, Builtin::Auth | Builtin::Hello | Builtin::Quit | Builtin::Reset)
    }
}

/// Resolves the subcommand in `args[1]` of the container command `container`.
fn resolve_sub<T: Copy>(
    container: &str,
    table: &[(&str, Arity, T)],
    container_arity: Arity,
    args: &[Bytes],
) -> Result<T, Frame> {
    let Some(sub) = args.get(1) else {
        debug_assert!(!arity_ok(container_arity, 1));
        return Err(arity_error(container));
    };
    let Some(&(name, arity, value)) = table.iter().find(|(n, ..)| sub.eq_ignore_ascii_case(n.as_bytes())) else {
        let mut text = format!(
            "ERR unknown subcommand '{}'. Try {} HELP.",
            lossy(&sub[..sub.len().min(UNKNOWN_COMMAND_QUOTE_BYTES_MAX)]),
            container.to_ascii_uppercase()
        );
        text = text.replace(['\r', '\n'], " ");
        return Err(Frame::Error(text));
    };
    if !arity_ok(arity, args.len()) {
        return Err(arity_error(&format!("{container}|{name}")));
    }
    Ok(value)
}

fn arity_ok(arity: Arity, argc: usize) -> bool {
    let argc = argc as i64;
    let arity = i64::from(arity);
    if arity >= 0 {
        argc == arity
    } else {
        argc >= -arity
    }
}

fn arity_error(name: &str) -> Frame {
    Frame::error(format!("ERR wrong number of arguments for '{name}' command"))
}

fn wrongpass() -> Frame {
    Frame::error("WRONGPASS invalid username-password pair or user is disabled.")
}

/// Redis's reply to a command it does not know: the name and the first arguments,
/// quoted, 128 bytes of each at most, each argument followed by a space.
pub(crate) fn unknown_command(args: &[Bytes]) -> Frame {
    let name = &args[0][..args[0].len().min(UNKNOWN_COMMAND_QUOTE_BYTES_MAX)];
    let mut quoted = Vec::new();
    for arg in &args[1..] {
        if quoted.len() >= UNKNOWN_COMMAND_QUOTE_BYTES_MAX {
            break;
        }
        let room = UNKNOWN_COMMAND_QUOTE_BYTES_MAX - quoted.len();
        quoted.push(b'\'');
        quoted.extend_from_slice(&arg[..arg.len().min(room)]);
        quoted.extend_from_slice(b"' ");
    }
    let text = format!("ERR unknown command '{}', with args beginning with: {}", lossy(name), lossy(&quoted));
    Frame::Error(text.replace(['\r', '\n'], " "))
}

/// Client names and library attributes: printable ASCII without spaces, as Redis wants.
fn validate_attribute(value: &[u8], what: &str) -> Result<(), Frame> {
    if value.iter().all(|&b| (b'!'..=b'~').contains(&b)) {
        Ok(())
    } else {
        Err(Frame::error(format!("ERR {what} cannot contain spaces, newlines or special characters.")))
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Compares without an early exit, so the time taken does not tell how much of a
/// guessed password was right.
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    for (i, &byte) in expected.iter().enumerate() {
        diff |= byte ^ given.get(i).copied().unwrap_or(!byte);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Knows `GET` only, and databases 0 to 15.
    struct Stub;

    impl CommandHandler for Stub {
        fn execute<'a>(
            &'a self,
            db: usize,
            args: &'a [Bytes],
        ) -> Pin<Box<dyn Future<Output = Option<Executed>> + Send + 'a>> {
            Box::pin(async move { args[0].eq_ignore_ascii_case(b"get").then(|| Frame::bulk(format!("db{db}")).into()) })
        }

        fn db_exists(&self, db: usize) -> bool {
            db < 16
        }
    }

    fn session(password: Option<&str>) -> Session {
        let ctx = Arc::new(ServerContext {
            handler: Arc::new(Stub),
            password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
            clients: ClientRegistry::default(),
        });
        let addr = "127.0.0.1:5000".parse().unwrap();
        Session::new(ctx, addr, "127.0.0.1:6379".parse().unwrap())
    }

    fn run(session: &mut Session, command: &str) -> Frame {
        let args: Vec<Bytes> = crate::resp::split_args(command.as_bytes()).unwrap();
        let reply = block_on(session.apply(&args));
        assert!(!reply.close || args[0].eq_ignore_ascii_case(b"quit"));
        reply.frame
    }

    /// Runs a future to completion (the stub handler never waits).
    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
    }

    fn err(text: &str) -> Frame {
        Frame::error(text)
    }

    #[test]
    fn ping_and_echo() {
        let mut s = session(None);
        assert_eq!(run(&mut s, "PING"), Frame::Simple("PONG".into()));
        assert_eq!(run(&mut s, "ping hi"), Frame::bulk("hi"));
        assert_eq!(run(&mut s, "PiNg a b"), err("ERR wrong number of arguments for 'ping' command"));
        assert_eq!(run(&mut s, "ECHO x"), Frame::bulk("x"));
        assert_eq!(run(&mut s, "echo"), err("ERR wrong number of arguments for 'echo' command"));
    }

    #[test]
    fn quit_replies_ok_then_closes() {
        let mut s = session(Some("pw"));
        let reply = block_on(s.apply(&[Bytes::from("QUIT")]));
        assert_eq!(reply, Reply { frame: Frame::ok(), close: true, durable: None });
    }

    #[test]
    fn unknown_command_quotes_like_redis() {
        let mut s = session(None);
        assert_eq!(run(&mut s, "foo a b"), err("ERR unknown command 'foo', with args beginning with: 'a' 'b' "));
        assert_eq!(run(&mut s, "FOO"), err("ERR unknown command 'FOO', with args beginning with: "));
        let long = "x".repeat(200);
        let Frame::Error(text) = run(&mut s, &format!("foo {long} more")) else { panic!() };
        assert_eq!(text, format!("ERR unknown command 'foo', with args beginning with: '{}' ", "x".repeat(128)));
        assert_eq!(run(&mut s, "GET k"), Frame::bulk("db0"));
    }

    #[test]
    fn select_validates_through_the_handler() {
        let mut s = session(None);
        assert_eq!(run(&mut s, "SELECT 3"), Frame::ok());
        assert_eq!(run(&mut s, "GET k"), Frame::bulk("db3"));
        assert_eq!(run(&mut s, "SELECT 16"), err("ERR DB index is out of range"));
        assert_eq!(run(&mut s, "SELECT -1"), err("ERR DB index is out of range"));
        assert_eq!(run(&mut s, "SELECT x"), err("ERR value is not an integer or out of range"));
        assert_eq!(run(&mut s, "SELECT 4294967296"), err("ERR value is not an integer or out of range"));
        assert_eq!(run(&mut s, "SELECT"), err("ERR wrong number of arguments for 'select' command"));
    }

    #[test]
    fn hello_switches_protocol() {
        let mut s = session(None);
        let Frame::Map(fields) = run(&mut s, "HELLO 3") else { panic!("not a map") };
        assert_eq!(s.proto(), RESP3);
        let expected = [
            ("server", Frame::bulk("redis")),
            ("version", Frame::bulk("7.2.0")),
            ("proto", Frame::Integer(3)),
            ("id", Frame::Integer(s.id() as i64)),
            ("mode", Frame::bulk("standalone")),
            ("role", Frame::bulk("master")),
            ("modules", Frame::Array(vec![])),
        ];
        let expected: Vec<(Frame, Frame)> = expected.into_iter().map(|(k, v)| (Frame::bulk(k), v)).collect();
        assert_eq!(fields, expected);
        assert!(matches!(run(&mut s, "hello"), Frame::Map(_)));
        assert_eq!(s.proto(), RESP3, "HELLO without a version keeps it");
        assert_eq!(run(&mut s, "HELLO 4"), err("NOPROTO unsupported protocol version"));
        assert_eq!(run(&mut s, "HELLO x"), err("ERR Protocol version is not an integer or out of range"));
        assert_eq!(run(&mut s, "HELLO 2 FOO"), err("ERR Syntax error in HELLO option 'FOO'"));
        assert_eq!(run(&mut s, "HELLO 2 AUTH default"), err("ERR Syntax error in HELLO option 'AUTH'"));
        assert!(matches!(run(&mut s, "HELLO 2 SETNAME app"), Frame::Map(_)));
        assert_eq!(s.proto(), RESP2);
        assert_eq!(run(&mut s, "CLIENT GETNAME"), Frame::bulk("app"));
    }

    #[test]
    fn password_gates_commands() {
        let mut s = session(Some("secret"));
        assert_eq!(run(&mut s, "PING"), err("NOAUTH Authentication required."));
        assert_eq!(run(&mut s, "GET k"), err("NOAUTH Authentication required."));
        assert_eq!(run(&mut s, "nosuch"), err("NOAUTH Authentication required."));
        // Arity is checked before authentication, as in Redis.
        assert_eq!(run(&mut s, "PING a b"), err("ERR wrong number of arguments for 'ping' command"));
        assert!(matches!(run(&mut s, "HELLO 3"), Frame::Error(e) if e.starts_with("NOAUTH HELLO must be called")));
        let wrongpass = err("WRONGPASS invalid username-password pair or user is disabled.");
        assert_eq!(run(&mut s, "AUTH nope"), wrongpass);
        assert_eq!(run(&mut s, "AUTH someone secret"), wrongpass);
        assert_eq!(run(&mut s, "AUTH a b c"), err("ERR wrong number of arguments for 'auth' command"));
        assert_eq!(run(&mut s, "AUTH secret"), Frame::ok());
        assert_eq!(run(&mut s, "PING"), Frame::Simple("PONG".into()));
        assert_eq!(run(&mut s, "RESET"), Frame::Simple("RESET".into()));
        assert_eq!(run(&mut s, "PING"), err("NOAUTH Authentication required."));
        assert_eq!(run(&mut s, "HELLO 3 AUTH default wrong"), wrongpass);
        assert!(matches!(run(&mut s, "HELLO 3 AUTH default secret"), Frame::Map(_)));
        assert_eq!(s.proto(), RESP3);
        assert_eq!(run(&mut s, "AUTH default secret"), Frame::ok());
    }

    #[test]
    fn auth_without_a_password_configured() {
        let mut s = session(None);
        assert_eq!(
            run(&mut s, "AUTH pw"),
            err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
        );
        assert_eq!(run(&mut s, "AUTH default anything"), Frame::ok());
        assert_eq!(
            run(&mut s, "AUTH other anything"),
            err("WRONGPASS invalid username-password pair or user is disabled.")
        );
    }

    #[test]
    fn client_subcommands() {
        let mut s = session(None);
        assert_eq!(run(&mut s, "CLIENT ID"), Frame::Integer(s.id() as i64));
        assert_eq!(run(&mut s, "CLIENT GETNAME"), Frame::Null);
        assert_eq!(run(&mut s, "client setname worker-1"), Frame::ok());
        assert_eq!(run(&mut s, "CLIENT GETNAME"), Frame::bulk("worker-1"));
        assert_eq!(
            run(&mut s, "CLIENT SETNAME \"a b\""),
            err("ERR Client names cannot contain spaces, newlines or special characters.")
        );
        assert_eq!(run(&mut s, "CLIENT SETINFO LIB-NAME redis-rs"), Frame::ok());
        assert_eq!(run(&mut s, "CLIENT SETINFO lib-ver 0.27.6"), Frame::ok());
        assert_eq!(run(&mut s, "CLIENT SETINFO color red"), err("ERR Unrecognized option 'color'"));
        assert_eq!(
            run(&mut s, "CLIENT SETINFO lib-ver \"1 2\""),
            err("ERR lib-ver cannot contain spaces, newlines or special characters.")
        );
        let Frame::Bulk(info) = run(&mut s, "CLIENT INFO") else { panic!() };
        let info = String::from_utf8(info.to_vec()).unwrap();
        assert!(
            info.starts_with(&format!("id={} addr=127.0.0.1:5000 laddr=127.0.0.1:6379 name=worker-1 ", s.id())),
            "{info}"
        );
        assert!(info.ends_with("resp=2 lib-name=redis-rs lib-ver=0.27.6\n"), "{info}");
        assert_eq!(run(&mut s, "CLIENT LIST"), Frame::Bulk(info.clone().into()));
        let list_self = format!("CLIENT LIST ID {}", s.id());
        assert_eq!(run(&mut s, &list_self), Frame::Bulk(info.into()));
        assert_eq!(run(&mut s, "CLIENT LIST ID 999"), Frame::bulk(""));
        assert_eq!(run(&mut s, "CLIENT LIST TYPE normal"), err("ERR syntax error"));
        assert_eq!(run(&mut s, "CLIENT"), err("ERR wrong number of arguments for 'client' command"));
        assert_eq!(run(&mut s, "CLIENT SETNAME"), err("ERR wrong number of arguments for 'client|setname' command"));
        assert_eq!(run(&mut s, "CLIENT KILL x"), err("ERR unknown subcommand 'KILL'. Try CLIENT HELP."));
        assert!(matches!(run(&mut s, "CLIENT HELP"), Frame::Array(lines) if !lines.is_empty()));
    }

    #[test]
    fn client_list_shows_every_connection() {
        let mut a = session(None);
        let b = Session::new(a.ctx.clone(), "127.0.0.1:5001".parse().unwrap(), "127.0.0.1:6379".parse().unwrap());
        let Frame::Bulk(list) = run(&mut a, "CLIENT LIST") else { panic!() };
        assert_eq!(list.iter().filter(|&&b| b == b'\n').count(), 2);
        drop(b);
        let Frame::Bulk(list) = run(&mut a, "CLIENT LIST") else { panic!() };
        assert_eq!(list.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn command_metadata_is_empty() {
        let mut s = session(None);
        assert_eq!(run(&mut s, "COMMAND"), Frame::Array(vec![]));
        assert_eq!(run(&mut s, "COMMAND DOCS"), Frame::Map(vec![]));
        assert_eq!(run(&mut s, "command docs get set"), Frame::Map(vec![]));
        assert_eq!(run(&mut s, "COMMAND COUNT"), Frame::Integer(0));
        assert_eq!(run(&mut s, "COMMAND INFO get"), Frame::Array(vec![Frame::Null]));
        assert_eq!(run(&mut s, "COMMAND COUNT x"), err("ERR wrong number of arguments for 'command|count' command"));
        assert_eq!(run(&mut s, "COMMAND nope"), err("ERR unknown subcommand 'nope'. Try COMMAND HELP."));
    }

    #[test]
    fn reset_restores_defaults() {
        let mut s = session(None);
        run(&mut s, "SELECT 2");
        run(&mut s, "HELLO 3 SETNAME n");
        assert_eq!(run(&mut s, "reset"), Frame::Simple("RESET".into()));
        assert_eq!(s.proto(), RESP2);
        assert_eq!(run(&mut s, "GET k"), Frame::bulk("db0"));
        assert_eq!(run(&mut s, "CLIENT GETNAME"), Frame::Null);
        assert_eq!(run(&mut s, "RESET x"), err("ERR wrong number of arguments for 'reset' command"));
    }

    #[test]
    fn password_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secre"));
        assert!(!constant_time_eq(b"secret", b"secrets"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
