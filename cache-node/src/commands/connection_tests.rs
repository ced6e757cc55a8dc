//! The connection commands and the order of checks of [`dispatch`], against a stub
//! handler: Redis 7.2's replies, word for word.

use super::*;
use crate::resp::{Frame, RESP2, RESP3};
use crate::session::{Session, Shared};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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
    let shared = Arc::new(Shared {
        password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
        clients: Default::default(),
        hub: Default::default(),
    });
    let addr = "127.0.0.1:5000".parse().unwrap();
    Session::new(shared, addr, "127.0.0.1:6379".parse().unwrap())
}

fn apply(session: &mut Session, args: &[Bytes]) -> Reply {
    block_on(dispatch(session, &Stub, args))
}

fn run(session: &mut Session, command: &str) -> Frame {
    let args: Vec<Bytes> = crate::resp::split_args(command.as_bytes()).unwrap();
    let reply = apply(session, &args);
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
    let reply = apply(&mut s, &[Bytes::from("QUIT")]);
    assert_eq!(reply, Reply { frame: Frame::ok(), close: true, durable: None, more: Vec::new() });
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
    let b = Session::new(a.shared().clone(), "127.0.0.1:5001".parse().unwrap(), "127.0.0.1:6379".parse().unwrap());
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
fn exec_runs_each_queued_command_against_the_database_selected_before_it() {
    let mut s = session(None);
    assert_eq!(run(&mut s, "MULTI"), Frame::ok());
    for command in ["GET k", "SELECT 2", "GET k", "SELECT 99", "CLIENT SETNAME tx", "GET k", "UNWATCH"] {
        assert_eq!(run(&mut s, command), Frame::Simple("QUEUED".into()), "{command}");
    }
    assert_eq!(s.db(), 0, "nothing ran yet");
    let replies = [
        Frame::bulk("db0"),
        Frame::ok(),
        Frame::bulk("db2"),
        err("ERR DB index is out of range"),
        Frame::ok(),
        Frame::bulk("db2"),
        Frame::ok(),
    ];
    assert_eq!(run(&mut s, "EXEC"), Frame::Array(replies.to_vec()));
    assert_eq!((s.db(), &s.info().name[..]), (2, &b"tx"[..]));
    assert_eq!(run(&mut s, "EXEC"), err("ERR EXEC without MULTI"));
}

#[test]
fn inside_multi_a_refused_request_fails_the_transaction() {
    let mut s = session(Some("pw"));
    assert_eq!(run(&mut s, "MULTI"), err("NOAUTH Authentication required."));
    assert_eq!(run(&mut s, "AUTH pw"), Frame::ok());
    assert_eq!(run(&mut s, "MULTI"), Frame::ok());
    assert_eq!(run(&mut s, "MULTI"), err("ERR MULTI calls can not be nested"));
    assert_eq!(run(&mut s, "WATCH k"), err("ERR WATCH inside MULTI is not allowed"));
    assert_eq!(run(&mut s, "GET k"), Frame::Simple("QUEUED".into()));
    assert_eq!(run(&mut s, "EXEC"), Frame::Array(vec![Frame::bulk("db0")]), "those errors fail nothing");
    assert_eq!(run(&mut s, "MULTI"), Frame::ok());
    assert_eq!(run(&mut s, "SAVE"), err("ERR Command not allowed inside a transaction"));
    assert_eq!(run(&mut s, "EXEC"), err("EXECABORT Transaction discarded because of previous errors."));
    assert_eq!(run(&mut s, "MULTI"), Frame::ok());
    assert_eq!(run(&mut s, "RESET"), Frame::Simple("RESET".into()));
    assert_eq!(run(&mut s, "AUTH pw"), Frame::ok(), "RESET ran at once, and ended the transaction");
    assert_eq!(run(&mut s, "EXEC"), err("ERR EXEC without MULTI"));
    assert_eq!(
        run(&mut s, "EXEC now"),
        err("EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command")
    );
}
