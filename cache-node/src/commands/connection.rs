//! The connection commands — `PING`, `ECHO`, `QUIT`, `HELLO`, `AUTH`, `SELECT`,
//! `CLIENT`, `COMMAND`, `RESET`, and the (un)subscriptions of [`super::pubsub`] — which act on the client's [`Session`] rather than
//! on data. The table ([`super::table`]) has resolved the subcommand and checked
//! the arity before one runs.

use super::errors::{err, lossy, wrong_arity};
use super::handler::{CommandHandler, Reply};
use super::pubsub;
use crate::pubsub::Kind;
use crate::resp::{parse_integer, Frame, RESP2, RESP3};
use crate::session::{Session, DEFAULT_USER};
use bytes::Bytes;

/// The version `HELLO` reports: clients see a Redis 7.2 server.
pub const REDIS_VERSION: &str = "7.2.0";

/// A connection command, with its subcommand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionCommand {
    Ping,
    Echo,
    Quit,
    Hello,
    Auth,
    Select,
    Reset,
    Client(ClientSub),
    Command(CommandSub),
    /// `SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`.
    Subscribe(Kind),
    /// `UNSUBSCRIBE`, `PUNSUBSCRIBE`, `SUNSUBSCRIBE`.
    Unsubscribe(Kind),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientSub {
    Id,
    GetName,
    SetName,
    SetInfo,
    Info,
    List,
    Help,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandSub {
    Count,
    Docs,
    Info,
    List,
    Help,
}

/// Runs a connection command. `handler` says which databases `SELECT` may choose.
pub(super) fn run(
    session: &mut Session,
    handler: &dyn CommandHandler,
    cmd: ConnectionCommand,
    args: &[Bytes],
) -> Reply {
    let frame = match cmd {
        ConnectionCommand::Ping if session.subscribed() && session.proto() == RESP2 => {
            pubsub::subscribed_ping(args.get(1))
        }
        ConnectionCommand::Ping => match args.get(1) {
            None => Frame::Simple("PONG".into()),
            Some(message) => Frame::Bulk(message.clone()),
        },
        ConnectionCommand::Echo => Frame::Bulk(args[1].clone()),
        ConnectionCommand::Quit => return Reply { frame: Frame::ok(), close: true, durable: None, more: Vec::new() },
        ConnectionCommand::Subscribe(kind) => return pubsub::subscribe(session, kind, &args[1..]),
        ConnectionCommand::Unsubscribe(kind) => return pubsub::unsubscribe(session, kind, &args[1..]),
        ConnectionCommand::Hello => hello(session, args),
        ConnectionCommand::Auth => auth(session, args),
        ConnectionCommand::Select => select(session, handler, &args[1]),
        ConnectionCommand::Reset => {
            session.reset();
            Frame::Simple("RESET".into())
        }
        ConnectionCommand::Client(sub) => client(session, sub, args),
        ConnectionCommand::Command(sub) => command(sub, args),
    };
    frame.into()
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
fn hello(session: &mut Session, args: &[Bytes]) -> Frame {
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
        if !session.check_credentials(user, password) {
            return wrongpass();
        }
        session.authenticate();
    }
    if !session.authenticated() {
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
    }
    session.update(|info| {
        if let Some(name) = name {
            info.name = name.clone();
        }
        if let Some(proto) = proto {
            info.proto = proto;
        }
    });
    let field = |key: &'static str, value: Frame| (Frame::bulk(key), value);
    Frame::Map(vec![
        field("server", Frame::bulk("redis")),
        field("version", Frame::bulk(REDIS_VERSION)),
        field("proto", Frame::Integer(i64::from(session.proto()))),
        field("id", Frame::Integer(session.id() as i64)),
        field("mode", Frame::bulk("standalone")),
        field("role", Frame::bulk("master")),
        field("modules", Frame::Array(vec![])),
    ])
}

/// `AUTH [username] password`.
fn auth(session: &mut Session, args: &[Bytes]) -> Frame {
    let (user, password) = match args {
        [_, password] => {
            if !session.password_configured() {
                return Frame::error(
                    "ERR AUTH <password> called without any password configured for the default user. \
                     Are you sure your configuration is correct?",
                );
            }
            (DEFAULT_USER, password)
        }
        [_, user, password] => (&user[..], password),
        _ => return wrong_arity("auth"),
    };
    if !session.check_credentials(user, password) {
        return wrongpass();
    }
    session.authenticate();
    Frame::ok()
}

fn select(session: &mut Session, handler: &dyn CommandHandler, index: &[u8]) -> Frame {
    match selected_db(handler, index) {
        Ok(db) => {
            session.update(|info| info.db = db);
            Frame::ok()
        }
        Err(error) => error,
    }
}

/// The database `SELECT index` chooses, or its error reply.
pub(super) fn selected_db(handler: &dyn CommandHandler, index: &[u8]) -> Result<usize, Frame> {
    let Some(index) = parse_integer(index).filter(|&n| i32::try_from(n).is_ok()) else {
        return Err(err("ERR value is not an integer or out of range"));
    };
    match usize::try_from(index) {
        Ok(db) if handler.db_exists(db) => Ok(db),
        _ => Err(err("ERR DB index is out of range")),
    }
}

fn client(session: &mut Session, sub: ClientSub, args: &[Bytes]) -> Frame {
    match sub {
        ClientSub::Id => Frame::Integer(session.id() as i64),
        ClientSub::GetName if session.info().name.is_empty() => Frame::Null,
        ClientSub::GetName => Frame::Bulk(session.info().name.clone()),
        ClientSub::SetName => {
            if let Err(error) = validate_attribute(&args[2], "Client names") {
                return error;
            }
            session.update(|info| info.name = args[2].clone());
            Frame::ok()
        }
        ClientSub::SetInfo => client_setinfo(session, &args[2], &args[3]),
        ClientSub::Info => Frame::Bulk(format!("{}\n", session.info().line()).into()),
        ClientSub::List => client_list(session, &args[2..]),
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

/// `CLIENT SETINFO <LIB-NAME|LIB-VER> <value>`.
fn client_setinfo(session: &mut Session, attr: &Bytes, value: &Bytes) -> Frame {
    let lib_name = if attr.eq_ignore_ascii_case(b"LIB-NAME") {
        true
    } else if attr.eq_ignore_ascii_case(b"LIB-VER") {
        false
    } else {
        return Frame::error(format!("ERR Unrecognized option '{}'", lossy(attr)));
    };
    if let Err(error) = validate_attribute(value, &lossy(attr)) {
        return error;
    }
    session.update(|info| {
        if lib_name {
            info.lib_name = value.clone();
        } else {
            info.lib_ver = value.clone();
        }
    });
    Frame::ok()
}

/// `CLIENT LIST [ID id ...]`; other filters are not supported.
fn client_list(session: &Session, filters: &[Bytes]) -> Frame {
    let ids = match filters {
        [] => None,
        [keyword, ids @ ..] if keyword.eq_ignore_ascii_case(b"ID") && !ids.is_empty() => {
            let parsed: Option<Vec<u64>> =
                ids.iter().map(|id| parse_integer(id).and_then(|n| u64::try_from(n).ok()).filter(|&n| n > 0)).collect();
            match parsed {
                Some(ids) => Some(ids),
                None => return Frame::error("ERR Invalid client ID"),
            }
        }
        _ => return Frame::error("ERR syntax error"),
    };
    Frame::Bulk(session.clients().lines(ids.as_deref()).into())
}

/// `COMMAND` and its subcommands. Command metadata is not published: the lists are
/// empty, which redis-cli (it asks `COMMAND DOCS` on start) and client libraries accept.
fn command(sub: CommandSub, args: &[Bytes]) -> Frame {
    match sub {
        CommandSub::List => Frame::Array(vec![]),
        CommandSub::Count => Frame::Integer(0),
        CommandSub::Docs => Frame::Map(vec![]),
        CommandSub::Info => Frame::Array(args[2..].iter().map(|_| Frame::Null).collect()),
        CommandSub::Help => help(&[
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

fn wrongpass() -> Frame {
    Frame::error("WRONGPASS invalid username-password pair or user is disabled.")
}

/// Client names and library attributes: printable ASCII without spaces, as Redis wants.
fn validate_attribute(value: &[u8], what: &str) -> Result<(), Frame> {
    if value.iter().all(|&b| (b'!'..=b'~').contains(&b)) {
        Ok(())
    } else {
        Err(Frame::error(format!("ERR {what} cannot contain spaces, newlines or special characters.")))
    }
}
