//! Scripts: EVAL EVALSHA EVAL_RO EVALSHA_RO and SCRIPT LOAD|EXISTS|FLUSH|KILL|HELP,
//! Lua 5.1 as Redis 7.0 runs it (the `mlua` crate, Lua built from source).
//!
//! - **Atomic at the site.** A script runs with the write gate held and its cache's
//!   store excluded, as `EXEC` runs a transaction: no command of another client,
//!   and no entry from another site, is applied in between.
//! - **Effects replicate, not the script** (Redis's effects replication): each
//!   command a script runs joins the store and queues its entries as it would
//!   alone, and the script's entries go to the WAL together, as one transaction unit
//!   where every site reads units, so another site applies all of them or none.
//!   Scripts are not rolled back on error, as in Redis: what ran before the error
//!   stays, and replicates.
//! - **The Lua side** follows Redis 7.0: `KEYS` and `ARGV`; `redis.call` (an error
//!   reply raises it) and `redis.pcall` (returns it as `{err=…}`), `redis.sha1hex`,
//!   `redis.status_reply`, `redis.error_reply`, `redis.log`, `redis.setresp(2)`,
//!   `redis.set_repl` and `redis.replicate_commands` (effects are always what
//!   replicates); Lua's `pcall` of `redis.call` catching the error reply's text, as
//!   Redis 7.0's does; replies converted both ways by Redis's rules (integers to numbers
//!   and back, truncated; a nil bulk to `false`, `false` to a nil bulk; status and
//!   error replies as `{ok=…}`, `{err=…}`; arrays up to their first nil); the base,
//!   `table`, `string` and `math` libraries, and `cjson`, `struct`, `cmsgpack` and
//!   `bit` with Redis's bytes and errors (`script_libs.rs`); globals read-only (a
//!   new global is `Attempt to modify a readonly table`, an unknown one an error
//!   naming it). Error replies carry Redis's `script: <sha>, on
//!   @user_script:<line>.` suffix. Not provided: RESP3 inside scripts.
//! - **Any number of arguments**, as Redis: `KEYS`, `ARGV` and the arguments of
//!   `redis.call` reach Rust one value at a time (mlua keeps each value Rust holds
//!   in a slot of an auxiliary Lua thread, which has Lua's C stack limit of 8000
//!   and panics when full): `redis.call` and `redis.pcall` are Lua functions that
//!   hand Rust a count and a table of their arguments. A script that tail-calls
//!   them (`return redis.call(…)`) puts them in its own frame, so an error reply
//!   then names the line where the script read `redis.call`; it differs from
//!   Redis's only when that was a variable assigned on another line.
//! - **Commands a script may call**: every cache command but the blocking ones;
//!   connection, transaction, node and pub/sub commands are refused (`This Redis
//!   command is not allowed from script`), writes from `EVAL_RO` too.
//! - **Bounded.** A script may use [`SCRIPT_MEMORY_MAX`] bytes of Lua memory and run
//!   [`SCRIPT_TIME_MAX`]: past that it stops with an error (where Redis would let it
//!   run and answer `BUSY` to everyone else until `SCRIPT KILL`); what it wrote
//!   before stays. The script cache holds at most [`SCRIPTS_MAX`] scripts.
//! - **Across sites**, a script is atomic at its own site only: two sites may run
//!   scripts on the same keys at once (two clients may both hold a lock made of a
//!   script at two sites), and their effects merge as the commands' would.

use super::dispatch::run_on_cache;
use super::errors::{err, unknown_subcommand, wrong_arity, ERR_DB_RANGE, ERR_FENCED_UNACKNOWLEDGED};
use super::table::{lookup, Handler};
use crate::engine::{CacheState, Engine};
use crate::resp::Frame;
use bytes::Bytes;
use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};
use sha1::{Digest, Sha1};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xsite_schemas::LogEntry;

/// Scripts the cache keeps at most (`SCRIPT LOAD`, `EVAL`).
pub const SCRIPTS_MAX: usize = 10_000;
/// Lua memory one script may use.
pub const SCRIPT_MEMORY_MAX: usize = 64 * 1024 * 1024;
/// How long one script may run.
pub const SCRIPT_TIME_MAX: Duration = Duration::from_secs(5);
/// VM instructions between two looks at the clock.
const CLOCK_EVERY_INSTRUCTIONS: u32 = 10_000;

const ERR_NOSCRIPT: &str = "NOSCRIPT No matching script. Please use EVAL.";

/// The script cache, by lowercase SHA1 hex.
#[derive(Default)]
pub struct Scripts {
    by_sha: Mutex<HashMap<String, Arc<[u8]>>>,
}

impl Scripts {
    /// Keeps `body` and returns its SHA1; `Err` when the cache is full.
    fn load(&self, body: &[u8]) -> Result<String, Frame> {
        let sha = sha1_hex(body);
        let mut by_sha = self.by_sha.lock().unwrap_or_else(|p| p.into_inner());
        if !by_sha.contains_key(&sha) {
            if by_sha.len() >= SCRIPTS_MAX {
                return Err(err(&format!("ERR the script cache holds {SCRIPTS_MAX} scripts: SCRIPT FLUSH first")));
            }
            by_sha.insert(sha.clone(), Arc::from(body));
        }
        Ok(sha)
    }

    fn get(&self, sha: &str) -> Option<Arc<[u8]>> {
        self.by_sha.lock().unwrap_or_else(|p| p.into_inner()).get(&sha.to_ascii_lowercase()).cloned()
    }

    fn flush(&self) {
        self.by_sha.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Lowercase hex SHA1 of `body`, as Redis names scripts.
pub fn sha1_hex(body: &[u8]) -> String {
    Sha1::digest(body).iter().map(|b| format!("{b:02x}")).collect()
}

/// Which of the four EVAL commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eval {
    /// EVALSHA: `args[1]` names a cached script.
    pub by_sha: bool,
    /// EVAL_RO, EVALSHA_RO: the script may not write.
    pub read_only: bool,
}

/// A script ready to run: its body, name, keys and arguments.
struct Call<'a> {
    body: Arc<[u8]>,
    sha: String,
    keys: &'a [Bytes],
    argv: &'a [Bytes],
}

fn parse<'a>(engine: &Engine, how: Eval, args: &'a [Bytes]) -> Result<Call<'a>, Frame> {
    let numkeys = super::parse_i64(&args[2])?;
    if numkeys < 0 {
        return Err(err("ERR Number of keys can't be negative"));
    }
    let rest = &args[3..];
    if numkeys as u64 > rest.len() as u64 {
        return Err(err("ERR Number of keys can't be greater than number of args"));
    }
    let (keys, argv) = rest.split_at(numkeys as usize);
    let (body, sha) = match how.by_sha {
        true => {
            let sha = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
            (engine.scripts().get(&sha).ok_or_else(|| err(ERR_NOSCRIPT))?, sha)
        }
        false => {
            let sha = engine.scripts().load(&args[1])?;
            (Arc::from(&args[1][..]), sha)
        }
    };
    Ok(Call { body, sha, keys, argv })
}

/// EVAL and its kin outside a transaction: the script runs with its cache's store
/// excluded (the dispatcher holds the write gate for the writing ones), then its
/// entries are queued as one unit and the reply waits until they are durable.
pub async fn run(engine: &Engine, db: usize, how: Eval, args: &[Bytes]) -> Frame {
    let Some(cache) = engine.cache_by_db(db) else { return err(ERR_DB_RANGE) };
    let mut pending = Vec::new();
    let reply = {
        let _excluded = cache.store.exclude();
        run_into(engine, cache, how, args, &mut pending)
    };
    if pending.is_empty() {
        return reply;
    }
    let durable = match engine.submit_transaction(pending).await {
        Ok(durable) => durable,
        Err(e) => return super::errors::write_failed(&e),
    };
    match durable.wait().await {
        Ok(()) if cache.is_leased() && !engine.lease_holds(cache) => err(ERR_FENCED_UNACKNOWLEDGED),
        Ok(()) => reply,
        Err(e) => super::errors::write_failed(&e),
    }
}

/// EVAL and its kin inside a transaction (whose gates `EXEC` holds) or with the
/// store already excluded: runs the script, its entries queued in `pending`.
pub fn run_into(engine: &Engine, cache: &CacheState, how: Eval, args: &[Bytes], pending: &mut Vec<LogEntry>) -> Frame {
    let call = match parse(engine, how, args) {
        Ok(c) => c,
        Err(f) => return f,
    };
    match execute(engine, cache, how.read_only, &call, pending) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::warn!(sha = %call.sha, error = %e, "a script could not run");
            err(&format!("ERR the script could not run: {e}"))
        }
    }
}

/// The rest of the Lua library Redis gives scripts (`redis.call` and `redis.pcall`
/// are the Rust side's), and the read-only globals; returns `__xsite_where`, the
/// error handler (the `{msg=…, line=…}` of an error, for the reply's suffix).
/// Loaded as its own chunk: an error's line is the script's, not this library's.
const LIBRARY: &str = r#"
local where, raised = __xsite_where, __xsite_raised
local call, pcall_ = __xsite_call, __xsite_pcall
__xsite_where, __xsite_raised, __xsite_call, __xsite_pcall = nil, nil, nil, nil
local rawpcall = pcall
local function caught(ok, ...)
  if ok then return ok, ... end
  return false, raised((...))
end
pcall = function(...) return caught(rawpcall(...)) end
redis.status_reply = function(s) return {ok = s} end
redis.error_reply = function(s) return {err = s} end
redis.setresp = function(v) if v ~= 2 then error('RESP3 is not served inside scripts') end end
redis.set_repl = function() end
redis.replicate_commands = function() return true end
redis.REPL_NONE, redis.REPL_AOF, redis.REPL_SLAVE, redis.REPL_REPLICA, redis.REPL_ALL = 0, 1, 2, 2, 3
redis.LOG_DEBUG, redis.LOG_VERBOSE, redis.LOG_NOTICE, redis.LOG_WARNING = 0, 1, 2, 3
loadfile, dofile, print = nil, nil, nil
setmetatable(_G, {
  __index = function(_, k) error("Script attempted to access nonexistent global variable '" .. tostring(k) .. "'", 2) end,
  __newindex = function() error('Attempt to modify a readonly table', 2) end,
})
-- `redis.call` and `redis.pcall` hand Rust their arguments as one table, so that
-- any number of them (Redis takes as many as Lua passes) reaches the command: a
-- Rust function's arguments would each take a slot of mlua's auxiliary stack,
-- which has Lua's C stack limit of 8000. Not tail calls: the caller stays a frame.
local wrappers = {
  call = function(...) local reply = call(select('#', ...), {...}) return reply end,
  pcall = function(...) local reply = pcall_(select('#', ...), {...}) return reply end,
}
return where, wrappers
"#;

fn execute(
    engine: &Engine,
    cache: &CacheState,
    read_only: bool,
    call: &Call<'_>,
    pending: &mut Vec<LogEntry>,
) -> mlua::Result<Frame> {
    let lua = Lua::new_with(StdLib::TABLE | StdLib::STRING | StdLib::MATH, LuaOptions::default())?;
    lua.set_memory_limit(SCRIPT_MEMORY_MAX)?;
    let started = Instant::now();
    lua.set_hook(HookTriggers::new().every_nth_instruction(CLOCK_EVERY_INSTRUCTIONS), move |_, _| {
        if started.elapsed() > SCRIPT_TIME_MAX {
            return Err(mlua::Error::RuntimeError(format!(
                "the script ran longer than {} ms and was stopped",
                SCRIPT_TIME_MAX.as_millis()
            )));
        }
        Ok(VmState::Continue)
    });
    let globals = lua.globals();
    globals.set("KEYS", sequence(&lua, call.keys)?)?;
    globals.set("ARGV", sequence(&lua, call.argv)?)?;
    let redis = lua.create_table()?;
    redis.set("sha1hex", lua.create_function(|lua, s: mlua::String| lua.create_string(sha1_hex(&s.as_bytes())))?)?;
    redis.set(
        "log",
        lua.create_function(|_, (level, message): (i64, mlua::String)| {
            tracing::info!(level, message = %message.to_string_lossy(), "script log");
            Ok(())
        })?,
    )?;
    globals.set("redis", redis)?;
    super::script_libs::install(&lua)?;
    let script = lua.load(&call.body[..]).set_name("@user_script").into_function();
    let script = match script {
        Ok(f) => f,
        Err(mlua::Error::SyntaxError { message, .. }) => {
            return Ok(err(&format!("ERR Error compiling script (new function): {message}")));
        }
        Err(e) => return Err(e),
    };
    // What `redis.call` raised last: the command's error reply and the line of the
    // wrapper's caller.
    let raised: RefCell<Option<(String, i64)>> = RefCell::new(None);
    // The script's line where it last read `redis.call` or `redis.pcall`: the line
    // of the call when the script tail-called the wrapper (`return redis.call(…)`
    // puts the wrapper in the script's frame, where Redis's C function leaves it).
    let looked_up = Cell::new(0i64);
    let pending = RefCell::new(pending);
    lua.scope(|scope| {
        // The Rust side of `redis.call` and `redis.pcall`: the count of the
        // arguments and a table of them.
        globals.set(
            "__xsite_call",
            scope.create_function(|lua, (count, args): (usize, Table)| {
                let reply = call_command(lua, engine, cache, read_only, count, &args, &mut pending.borrow_mut())?;
                if let Frame::Error(text) = &reply {
                    // Level 1 is the wrapper, level 2 its caller.
                    let line = match lua.inspect_stack(2) {
                        Some(d) if d.source().what != "tail" => i64::from(d.curr_line()),
                        _ => looked_up.get(),
                    };
                    *raised.borrow_mut() = Some((text.clone(), line));
                    return Err(mlua::Error::RuntimeError(RAISED.into()));
                }
                to_lua(lua, reply)
            })?,
        )?;
        globals.set(
            "__xsite_pcall",
            scope.create_function(|lua, (count, args): (usize, Table)| {
                let reply = call_command(lua, engine, cache, read_only, count, &args, &mut pending.borrow_mut())?;
                to_lua(lua, reply)
            })?,
        )?;
        let where_ = lua.create_function(|lua, msg: Value| {
            let t = lua.create_table()?;
            t.set("msg", msg)?;
            t.set("line", script_line(lua))?;
            Ok(t)
        })?;
        globals.set("__xsite_where", where_)?;
        // Lua's `pcall` catching what `redis.call` raised gets the error reply's
        // text, as Redis 7.0's `pcall` gives it.
        let raised_text = scope.create_function(|lua, e: Value| {
            let last = raised.borrow_mut().take();
            match (&e, last) {
                (Value::Error(inner), Some((text, _))) if inner.to_string().contains(RAISED) => {
                    Ok(Value::String(lua.create_string(text)?))
                }
                (_, kept) => {
                    *raised.borrow_mut() = kept;
                    Ok(e)
                }
            }
        })?;
        globals.set("__xsite_raised", raised_text)?;
        let (handler, wrappers): (Function, Table) = lua.load(LIBRARY).set_name("@redis_lib").call(())?;
        // `redis.call` and `redis.pcall` are read through `__index`, which notes
        // the line reading them.
        let looked_up = &looked_up;
        let index = scope.create_function(move |lua, (_, key): (Table, Value)| {
            let found: Value = wrappers.raw_get(key)?;
            if !found.is_nil() {
                looked_up.set(lua.inspect_stack(1).map_or(0, |d| i64::from(d.curr_line())));
            }
            Ok(found)
        })?;
        let meta = lua.create_table()?;
        meta.raw_set("__index", index)?;
        globals.raw_get::<Table>("redis")?.set_metatable(Some(meta));
        let xpcall: Function = globals.raw_get("xpcall")?;
        let (ok, value): (bool, Value) = xpcall.call((script, handler))?;
        if ok {
            return Ok(to_frame(&value));
        }
        Ok(error_reply(&call.sha, &value, raised.borrow_mut().take()))
    })
}

/// A Lua array of `words`, made one string at a time: each string Rust holds takes
/// a slot of mlua's auxiliary stack, which has Lua's C stack limit (8000), and a
/// command may have more arguments than that.
fn sequence(lua: &Lua, words: &[Bytes]) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(words.len(), 0)?;
    for (i, word) in words.iter().enumerate() {
        t.raw_set(i + 1, lua.create_string(word)?)?;
    }
    Ok(t)
}

/// The line of the innermost frame of the script (not of the library) on the stack.
fn script_line(lua: &Lua) -> i64 {
    (0..64)
        .map_while(|level| lua.inspect_stack(level))
        .find(|d| d.source().source.as_deref() == Some("@user_script"))
        .map_or(0, |d| i64::from(d.curr_line()))
}

/// The message of the error `redis.call` raises for an error reply (which it keeps
/// aside, with the line).
const RAISED: &str = "xsite: redis.call got an error reply";

/// The reply to a script that raised `value` (the handler's `{msg, line}`);
/// `raised`: what `redis.call` raised last.
fn error_reply(sha: &str, value: &Value, raised: Option<(String, i64)>) -> Frame {
    let (msg, line) = match value {
        Value::Table(t) => (t.raw_get::<Value>("msg").unwrap_or(Value::Nil), t.raw_get::<i64>("line").unwrap_or(0)),
        other => (other.clone(), 0),
    };
    if let (Value::Error(e), Some((text, line))) = (&msg, raised) {
        if e.to_string().contains(RAISED) {
            return err(&format!("{text} script: {sha}, on @user_script:{line}."));
        }
    }
    let text = match &msg {
        Value::Table(t) => match t.raw_get::<Value>("err") {
            Ok(Value::String(e)) => e.to_string_lossy(),
            _ => "ERR unknown error".to_string(),
        },
        Value::String(s) => format!("ERR {}", s.to_string_lossy()),
        Value::Error(e) => format!("ERR {}", first_line(&e.to_string())),
        other => format!("ERR {}", other.to_string().unwrap_or_default()),
    };
    err(&format!("{text} script: {sha}, on @user_script:{line}."))
}

/// An mlua error's first line (its message, without the traceback).
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text).trim_start_matches("runtime error: ")
}

/// `redis.call`'s side: runs one command for the script, its `count` arguments
/// in `args` (read one at a time: Rust holds one of them at once); an error reply
/// (the command's, or why it may not run) as `Frame::Error`.
fn call_command(
    lua: &Lua,
    engine: &Engine,
    cache: &CacheState,
    read_only: bool,
    count: usize,
    args: &Table,
    pending: &mut Vec<LogEntry>,
) -> mlua::Result<Frame> {
    let mut words: Vec<Bytes> = Vec::with_capacity(count);
    for i in 1..=count {
        match args.raw_get::<Value>(i)? {
            Value::String(s) => words.push(Bytes::copy_from_slice(&s.as_bytes())),
            n @ (Value::Integer(_) | Value::Number(_)) => match lua.coerce_string(n)? {
                Some(s) => words.push(Bytes::copy_from_slice(&s.as_bytes())),
                None => return Ok(err("ERR Lua redis lib command arguments must be strings or integers")),
            },
            _ => return Ok(err("ERR Lua redis lib command arguments must be strings or integers")),
        }
    }
    let Some(name) = words.first() else {
        return Ok(err("ERR Please specify at least one argument for this redis lib call"));
    };
    let Some(spec) = lookup(name) else { return Ok(err("ERR Unknown Redis command called from script")) };
    if !spec.arity_ok(words.len()) {
        return Ok(err("ERR Wrong number of args calling Redis command from script"));
    }
    let f = match spec.handler {
        Handler::Cache(f) if !spec.blocks => f,
        _ => return Ok(err("ERR This Redis command is not allowed from script")),
    };
    if read_only && spec.write {
        return Ok(err("ERR Write commands are not allowed from read-only scripts."));
    }
    let (reply, _leased) = run_on_cache(engine, cache, spec, f, &words, pending);
    Ok(reply)
}

/// A command's reply as a script sees it (Redis's RESP2 conversion).
fn to_lua(lua: &Lua, frame: Frame) -> mlua::Result<Value> {
    let pair = |t: &Table, ok_or_err: &str, text: String| -> mlua::Result<()> { t.set(ok_or_err, text) };
    Ok(match frame {
        Frame::Simple(s) => {
            let t = lua.create_table()?;
            pair(&t, "ok", s)?;
            Value::Table(t)
        }
        Frame::Error(s) => {
            let t = lua.create_table()?;
            pair(&t, "err", s)?;
            Value::Table(t)
        }
        Frame::Integer(i) => Value::Number(i as f64),
        Frame::Bulk(b) => Value::String(lua.create_string(&b[..])?),
        Frame::Null | Frame::NullArray => Value::Boolean(false),
        Frame::Boolean(b) => Value::Number(f64::from(u8::from(b))),
        Frame::Double(d) => Value::String(lua.create_string(crate::resp::format_double(d))?),
        Frame::Array(items) | Frame::Set(items) | Frame::Push(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.into_iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
        Frame::Map(pairs) | Frame::Pairs(pairs) => {
            let t = lua.create_table_with_capacity(pairs.len() * 2, 0)?;
            for (i, (k, v)) in pairs.into_iter().enumerate() {
                t.raw_set(2 * i + 1, to_lua(lua, k)?)?;
                t.raw_set(2 * i + 2, to_lua(lua, v)?)?;
            }
            Value::Table(t)
        }
    })
}

/// A script's value as a reply (Redis's conversion): a number truncated to an
/// integer as C converts it (out of range or NaN, the smallest one), `true` 1,
/// `false` and nil a nil bulk, `{err=…}` an error and `{ok=…}` a status, any other
/// table an array up to its first nil.
fn to_frame(value: &Value) -> Frame {
    match value {
        Value::Nil | Value::Boolean(false) => Frame::Null,
        Value::Boolean(true) => Frame::Integer(1),
        Value::Integer(i) => Frame::Integer(*i),
        Value::Number(n) => Frame::Integer(super::script_libs::c_i64(*n)),
        Value::String(s) => Frame::Bulk(Bytes::copy_from_slice(&s.as_bytes())),
        Value::Table(t) => {
            if let Ok(Value::String(e)) = t.raw_get::<Value>("err") {
                return Frame::Error(e.to_string_lossy());
            }
            if let Ok(Value::String(s)) = t.raw_get::<Value>("ok") {
                return Frame::Simple(s.to_string_lossy());
            }
            let mut items = Vec::new();
            for i in 1.. {
                match t.raw_get::<Value>(i) {
                    Ok(Value::Nil) | Err(_) => break,
                    Ok(v) => items.push(to_frame(&v)),
                }
            }
            Frame::Array(items)
        }
        _ => Frame::Null,
    }
}

/// SCRIPT LOAD|EXISTS|FLUSH|KILL|HELP.
pub fn script(engine: &Engine, args: &[Bytes]) -> Frame {
    let sub = args[1].to_ascii_lowercase();
    let arity_ok = match sub.as_slice() {
        b"load" => args.len() == 3,
        b"exists" => args.len() >= 3,
        b"flush" => args.len() <= 3,
        b"kill" | b"help" => args.len() == 2,
        _ => return unknown_subcommand("script", &args[1]),
    };
    if !arity_ok {
        return wrong_arity(&format!("script|{}", String::from_utf8_lossy(&sub)));
    }
    match sub.as_slice() {
        b"load" => match engine.scripts().load(&args[2]) {
            Ok(sha) => Frame::Bulk(Bytes::from(sha)),
            Err(f) => f,
        },
        b"exists" => Frame::Array(
            args[2..]
                .iter()
                .map(|s| Frame::Integer(i64::from(engine.scripts().get(&String::from_utf8_lossy(s)).is_some())))
                .collect(),
        ),
        b"flush" => match args.get(2).map(|m| m.to_ascii_lowercase()) {
            None => {
                engine.scripts().flush();
                Frame::ok()
            }
            Some(m) if m == b"async" || m == b"sync" => {
                engine.scripts().flush();
                Frame::ok()
            }
            Some(_) => err("ERR SCRIPT FLUSH only support SYNC|ASYNC option"),
        },
        b"kill" => err("NOTBUSY No scripts in execution right now."),
        _ => Frame::Array(
            [
                "SCRIPT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "EXISTS <sha1> [<sha1> ...]",
                "    Return information about the existence of the scripts in the script cache.",
                "FLUSH [ASYNC|SYNC]",
                "    Flush the Lua scripts cache. Very dangerous on replicas.",
                "    When called without the optional mode argument, the behavior is determined by the",
                "    lazyfree-lazy-user-flush configuration directive. Valid modes are:",
                "    * ASYNC: Asynchronously flush the scripts cache.",
                "    * SYNC: Synchronously flush the scripts cache.",
                "KILL",
                "    Kill the currently executing Lua script.",
                "LOAD <script>",
                "    Load a script into the scripts cache without executing it.",
                "HELP",
                "    Prints this help.",
            ]
            .iter()
            .map(|l| Frame::Simple((*l).into()))
            .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_named_by_their_sha1_as_redis_names_them() {
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(sha1_hex(b"return 1"), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }
}
