//! The libraries Redis 7.0 loads for scripts besides Lua's own, rewritten in Rust
//! to give Redis's bytes and Redis's errors: `cjson` (lua-cjson 2.1.0), `struct`
//! (struct 1.4 with Redis's fixes), `cmsgpack` (lua-cmsgpack 0.4.0) and `bit`
//! (LuaBitOp 1.0.2). [`install`] puts them in a script's globals.
//!
//! - **Errors read as the C libraries' do.** A `luaL_error` is prefixed with where
//!   the library function was called from (`user_script:3: `, and nothing when
//!   `pcall` called it); a bad argument names the function as its call site does
//!   (`bad argument #2 to 'band' (number expected, got table)`); an error of Lua's
//!   own (`table index is nil`) has no prefix. A Rust function can raise only an
//!   error object, so `pcall` and `xpcall` are wrapped to hand over these errors'
//!   text as the string Redis's `pcall` gives.
//! - **cjson**: `encode` (numbers with `%.14g`, `/` escaped as `\/`, a table with
//!   only positive integer keys an array with its holes `null`, an excessively
//!   sparse one an error, an empty table `{}`, other tables objects in `next`
//!   order, 1000 levels by default), `decode` (strtod numbers with hex, inf and
//!   nan accepted, `null` as `cjson.null`, a light userdata NULL, 1000 levels by
//!   default), the settings functions and `new`.
//! - **cmsgpack**: `pack` (each argument in the smallest encoding, concatenated;
//!   integers as msgpack integers, other numbers as float32 when exact, tables as
//!   arrays when their keys are exactly 1..n, 16 levels of tables, deeper ones
//!   nil), `unpack`, `unpack_one`, `unpack_limit`.
//! - **bit**: `tobit tohex bnot band bor bxor lshift rshift arshift rol ror bswap`
//!   on 32-bit integers, numbers converted as LuaBitOp does (2^52+2^51 added).
//! - **struct**: `pack`, `unpack` (from a position, returning the next one) and
//!   `size`; the format language of `lua_struct.c` on x86-64 (`<` `>` `!n` and
//!   spaces; `b B h H l L T i[n] I[n] c[n] s f d x`; native little endian; `=` is
//!   an invalid option, as there), numbers converted as C converts them (integers
//!   wider than 8 bytes keep 8, shifts modulo 64), and its errors, the first
//!   missing argument of `pack` read as nil as there.
//!
//! What still differs from Redis: a script's settings (`cjson.encode_max_depth(…)`)
//! last for that script only (Redis keeps them until `SCRIPT FLUSH`); the library
//! tables can be written to (Redis's are read-only), and are empty to `pairs`,
//! `next` and `rawget` until a field of one is read; a number passed directly as
//! the argument of `cjson.encode` or `cmsgpack.pack` (not inside a table) that is
//! `-0` or smaller than 2.2e-16 in size reaches Rust as 0 (mlua's Lua 5.1 number
//! conversion), and so does a table key that small; nesting past
//! [`ENCODE_NESTING_MAX`] and [`OPEN_TABLES_MAX`] levels (with the depth settings
//! raised past them), more than [`HANDLES_HELD_MAX`] strings and tables or
//! [`RETURNED_VALUES_MAX`] values returned at once by `cmsgpack.unpack` (and
//! `struct.unpack`, whose two arguments leave room for 7996 values where Redis
//! returns 7998), fail where Redis would still go on; a `struct` option byte past
//! ASCII is named in its error as a Latin-1 character (Redis writes the byte);
//! a library function given about 7,990 or more strings or tables at once (from
//! `unpack` or a vararg function) still exhausts mlua's auxiliary stack, which
//! panics (only `redis.call` and `redis.pcall` take their arguments as a table:
//! a Lua function in front of a library function would lose its name and line
//! in errors when tail-called).

use mlua::{Error as LuaError, Function, LightUserData, Lua, MultiValue, Result, Table, Value};
use std::cell::Cell;
use std::fmt;
use std::rc::Rc;

/// `LUAI_MAXCSTACK`: the Lua stack slots one C function may use in Lua 5.1, which
/// Redis's libraries run into (`stack overflow (…)`, `Found too many nested data
/// structures`); emulated here slot for slot.
const C_STACK_SLOTS_MAX: usize = 8000;

/// Strings and tables `cmsgpack.unpack` holds at once at most: mlua keeps each
/// value Rust holds in a slot of its auxiliary thread, which has Lua's C stack
/// limit and panics when full.
pub const HANDLES_HELD_MAX: usize = 6000;

/// Values one library function returns at most: mlua's limit, the callback's
/// C frame holding its arguments too (Redis's `cmsgpack.unpack` returns 7999).
pub const RETURNED_VALUES_MAX: usize = 7997;

/// Levels of nesting `cjson.encode` goes at most, whatever `encode_max_depth`
/// says (each level holds up to two mlua values: the table and its last key).
pub const ENCODE_NESTING_MAX: i32 = 2500;

/// Levels of nesting `cjson.decode` opens at most, whatever `decode_max_depth`
/// says (each open table is a value Rust holds).
pub const OPEN_TABLES_MAX: usize = 4000;

/// Bytes `cjson.encode` and `cmsgpack.pack` produce at most: no more than a
/// script's Lua memory could hold.
const ENCODED_BYTES_MAX: usize = super::script::SCRIPT_MEMORY_MAX;

/// Puts `cjson`, `cmsgpack` and `bit` in the globals, and wraps `pcall` and
/// `xpcall` so that they catch these libraries' errors as their text.
///
/// The three tables are filled when a script first reads a field of one of them
/// (most scripts never do, and making their ~30 functions adds half again to the
/// time a script's Lua takes to set up); filled, they are laid out as Redis's.
pub fn install(lua: &Lua) -> Result<()> {
    let globals = lua.globals();
    let next: Function = globals.get("next")?;
    let loader = lua.create_table()?;
    let fill = lua.create_function(move |lua, (touched, key): (Table, Value)| {
        let globals = lua.globals();
        for (name, _) in LIBRARIES {
            let library: Table = globals.raw_get(name)?;
            library.set_metatable(None);
            match name {
                "cjson" => cjson::fill(lua, &library, &next)?,
                "cmsgpack" => cmsgpack::fill(lua, &library)?,
                "struct" => lua_struct::fill(lua, &library)?,
                _ => bit::fill(lua, &library)?,
            }
        }
        touched.raw_get::<Value>(key)
    })?;
    loader.set("__index", fill)?;
    for (name, fields) in LIBRARIES {
        let library = lua.create_table_with_capacity(0, fields)?;
        library.set_metatable(Some(loader.clone()));
        globals.set(name, library)?;
    }
    let message = lua.create_function(|lua, e: Value| caught_message(lua, e))?;
    lua.load(CATCHING).set_name("=xsite_libs").call::<()>(message)?;
    Ok(())
}

/// The libraries, and the fields their tables are created with room for (as
/// Redis's: `luaL_register` sizes `struct`'s and `bit`'s, lua-cjson and
/// lua-cmsgpack start empty).
const LIBRARIES: [(&str, usize); 4] = [("cjson", 0), ("struct", 3), ("cmsgpack", 0), ("bit", 12)];

/// `pcall` and `xpcall` handing over a library error as its text (`message`
/// turns one into it, and leaves any other error as it is).
const CATCHING: &str = r#"
local message = ...
local rawpcall, rawxpcall = pcall, xpcall
local function caught(ok, ...)
  if ok then return ok, ... end
  return false, message((...))
end
pcall = function(...) return caught(rawpcall(...)) end
xpcall = function(f, handler)
  return rawxpcall(f, function(e) return handler(message(e)) end)
end
"#;

/// An error one of these libraries raised, with the text Redis's gives it.
#[derive(Debug)]
struct Raised(String);

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// The text of a library error inside an error mlua passed through Lua.
fn raised_text(e: &LuaError) -> Option<&str> {
    match e {
        LuaError::CallbackError { cause, .. } | LuaError::WithContext { cause, .. } => raised_text(cause),
        LuaError::ExternalError(inner) => inner.downcast_ref::<Raised>().map(|r| r.0.as_str()),
        _ => None,
    }
}

/// `e` as a script's `pcall` should see it: a library error's text, anything else
/// as it is.
fn caught_message(lua: &Lua, e: Value) -> Result<Value> {
    if let Value::Error(err) = &e {
        if let Some(text) = raised_text(err) {
            return Ok(Value::String(lua.create_string(text)?));
        }
    }
    Ok(e)
}

pub(super) use c::c_i64;

/// What Lua's C API gives a library function, emulated on mlua's values.
mod c {
    use super::*;

    /// A library function's arguments, numbered from 1 as Lua numbers them.
    pub struct Args(pub Vec<Value>);

    impl Args {
        pub fn new(args: MultiValue) -> Args {
            Args(args.into_iter().collect())
        }

        pub fn len(&self) -> usize {
            self.0.len()
        }

        /// Argument `i`, `None` past the last one (Lua's "no value").
        pub fn get(&self, i: usize) -> Option<&Value> {
            i.checked_sub(1).and_then(|i| self.0.get(i))
        }

        pub fn is_none_or_nil(&self, i: usize) -> bool {
            matches!(self.get(i), None | Some(Value::Nil))
        }
    }

    /// `luaL_typename`.
    pub fn type_name(v: Option<&Value>) -> &'static str {
        match v {
            None => "no value",
            Some(Value::Nil) => "nil",
            Some(Value::Boolean(_)) => "boolean",
            Some(Value::Integer(_) | Value::Number(_)) => "number",
            Some(Value::String(_)) => "string",
            Some(Value::Table(_)) => "table",
            Some(Value::Function(_)) => "function",
            Some(Value::Thread(_)) => "thread",
            Some(_) => "userdata",
        }
    }

    /// `luaL_where(L, 1)`: where the running library function was called from,
    /// `source:line: `, or nothing when a C function (`pcall`) called it.
    fn position(lua: &Lua) -> String {
        let Some(caller) = lua.inspect_stack(1) else { return String::new() };
        let line = caller.curr_line();
        if line <= 0 {
            return String::new();
        }
        let source = caller.source();
        format!("{}:{line}: ", source.short_src.as_deref().unwrap_or("?"))
    }

    /// `luaL_error`: `message` prefixed with where the function was called from.
    pub fn error<T>(lua: &Lua, message: impl fmt::Display) -> Result<T> {
        Err(raised_at(lua, message))
    }

    /// The error [`error`] returns.
    pub fn raised_at(lua: &Lua, message: impl fmt::Display) -> LuaError {
        LuaError::external(Raised(format!("{}{message}", position(lua))))
    }

    /// An error of Lua's own raised inside a C function (`table index is nil`):
    /// no position.
    pub fn runtime_error(message: &str) -> LuaError {
        LuaError::external(Raised(message.to_string()))
    }

    /// Out of the memory a script may use.
    pub fn memory_error<T>() -> Result<T> {
        Err(LuaError::MemoryError("not enough memory".into()))
    }

    /// `luaL_argerror`: the function named as its call site names it.
    pub fn arg_error<T>(lua: &Lua, narg: i64, extra: &str) -> Result<T> {
        let Some(running) = lua.inspect_stack(0) else {
            return error(lua, format!("bad argument #{narg} ({extra})"));
        };
        let names = running.names();
        let name = names.name.as_deref().unwrap_or("?").to_string();
        let mut narg = narg;
        if names.name_what == Some("method") {
            narg -= 1;
            if narg == 0 {
                return error(lua, format!("calling '{name}' on bad self ({extra})"));
            }
        }
        error(lua, format!("bad argument #{narg} to '{name}' ({extra})"))
    }

    /// `luaL_typerror`.
    pub fn type_error<T>(lua: &Lua, args: &Args, narg: usize, expected: &str) -> Result<T> {
        let got = type_name(args.get(narg));
        arg_error(lua, narg as i64, &format!("{expected} expected, got {got}"))
    }

    /// `lua_tonumber`, `None` where Lua 5.1 gives 0 for a value that is no number
    /// (numeric strings are numbers, converted by Lua itself).
    pub fn to_number(lua: &Lua, v: Option<&Value>) -> Option<f64> {
        match v? {
            Value::Integer(i) => Some(*i as f64),
            Value::Number(n) => Some(*n),
            s @ Value::String(_) => lua.coerce_number(s.clone()).ok().flatten(),
            _ => None,
        }
    }

    /// A number value's number (callers match numbers first).
    pub fn number(v: &Value) -> f64 {
        match v {
            Value::Integer(i) => *i as f64,
            Value::Number(n) => *n,
            _ => 0.0,
        }
    }

    /// C's conversion of a double to `int64_t` on x86-64 (`cvttsd2si`): truncated,
    /// and `i64::MIN` when out of range or NaN.
    pub fn c_i64(n: f64) -> i64 {
        if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&n) {
            n as i64
        } else {
            i64::MIN
        }
    }

    /// C's conversion of a double to `int` on x86-64: truncated, and `i32::MIN`
    /// when out of range or NaN.
    pub fn c_i32(n: f64) -> i32 {
        if n > -2_147_483_649.0 && n < 2_147_483_648.0 {
            n as i32
        } else {
            i32::MIN
        }
    }

    /// C's conversion of a double to `uint64_t` on x86-64 as gcc compiles it:
    /// below 2^63 (and NaN) as to `int64_t`, above with 2^63 taken off and put back.
    pub fn c_u64(n: f64) -> u64 {
        match n >= 9_223_372_036_854_775_808.0 {
            true => (c_i64(n - 9_223_372_036_854_775_808.0) as u64) ^ (1 << 63),
            false => c_i64(n) as u64,
        }
    }

    /// `luaL_checknumber`.
    pub fn check_number(lua: &Lua, args: &Args, narg: usize) -> Result<f64> {
        match to_number(lua, args.get(narg)) {
            Some(n) => Ok(n),
            None => type_error(lua, args, narg, "number"),
        }
    }

    /// `luaL_checkinteger` (Lua 5.1: 0 from a non-number is the error).
    pub fn check_integer(lua: &Lua, args: &Args, narg: usize) -> Result<i64> {
        match to_number(lua, args.get(narg)) {
            Some(n) => Ok(c_i64(n)),
            None => type_error(lua, args, narg, "number"),
        }
    }

    /// `luaL_optinteger`.
    pub fn opt_integer(lua: &Lua, args: &Args, narg: usize, default: i64) -> Result<i64> {
        match args.is_none_or_nil(narg) {
            true => Ok(default),
            false => check_integer(lua, args, narg),
        }
    }

    /// `luaL_checklstring`: a string, or a number as Lua writes it.
    pub fn check_string(lua: &Lua, args: &Args, narg: usize) -> Result<mlua::String> {
        match args.get(narg) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(n @ (Value::Integer(_) | Value::Number(_))) => match lua.coerce_string(n.clone())? {
                Some(s) => Ok(s),
                None => type_error(lua, args, narg, "string"),
            },
            _ => type_error(lua, args, narg, "string"),
        }
    }

    /// `luaL_checkoption` with no default: the index of argument `narg` in
    /// `options`.
    pub fn check_option(lua: &Lua, args: &Args, narg: usize, options: &[&str]) -> Result<usize> {
        let name = check_string(lua, args, narg)?;
        let name = name.as_bytes();
        match options.iter().position(|o| o.as_bytes() == &name[..]) {
            Some(i) => Ok(i),
            None => arg_error(lua, narg as i64, &format!("invalid option '{}'", String::from_utf8_lossy(&name))),
        }
    }

    /// The value of table `t` at `key` with its number exact: mlua hands Rust
    /// numbers smaller than 2.2e-16 (and -0) as the integer 0, and a typed read
    /// keeps them.
    pub fn exact(t: &Table, key: &Value, v: Value) -> Value {
        if !matches!(v, Value::Integer(0)) {
            return v;
        }
        // A key that small reaches Rust as 0 too: read again only a number.
        match t.raw_get::<Value>(key.clone()) {
            Ok(Value::Integer(0)) => t.raw_get::<f64>(key.clone()).map_or(v, Value::Number),
            _ => v,
        }
    }

    /// C's `%.<precision>g` (Lua's own number format is `%.14g`).
    pub fn fmt_g(x: f64, precision: usize) -> String {
        if x.is_nan() {
            return if x.is_sign_negative() { "-nan" } else { "nan" }.to_string();
        }
        if x.is_infinite() {
            return if x < 0.0 { "-inf" } else { "inf" }.to_string();
        }
        if x == 0.0 {
            return if x.is_sign_negative() { "-0" } else { "0" }.to_string();
        }
        let p = precision.max(1);
        // An integer of at most `p` digits is written as it is.
        if x.fract() == 0.0 && p <= 15 && x.abs() < 10f64.powi(p as i32) {
            return (x as i64).to_string();
        }
        let scientific = format!("{:.*e}", p - 1, x);
        let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
        let exponent: i32 = exponent.parse().unwrap_or(0);
        if exponent < -4 || exponent >= p as i32 {
            let sign = if exponent < 0 { '-' } else { '+' };
            format!("{}e{sign}{:02}", trim_fraction(mantissa), exponent.unsigned_abs())
        } else {
            let decimals = (p as i32 - 1 - exponent) as usize;
            trim_fraction(&format!("{x:.decimals$}")).to_string()
        }
    }

    /// `%g`'s trailing zeros (and point) removed.
    fn trim_fraction(s: &str) -> &str {
        match s.contains('.') {
            true => s.trim_end_matches('0').trim_end_matches('.'),
            false => s,
        }
    }

    /// glibc's `strtod` on the start of `s` (which ends where a C string would):
    /// the number and the bytes it took, `None` when none is there. Decimal
    /// (correctly rounded), hexadecimal (`0x1.8p3`), `inf`, `infinity`, `nan`,
    /// `nan(…)`, any case, with a sign.
    pub fn strtod(s: &[u8]) -> Option<(f64, usize)> {
        let at = |i: usize| s.get(i).copied().unwrap_or(0);
        let (negative, start) = match at(0) {
            b'-' => (true, 1),
            b'+' => (false, 1),
            _ => (false, 0),
        };
        let signed = |v: f64| if negative { -v } else { v };
        let rest = &s[start.min(s.len())..];
        if starts_with_ignore_case(rest, b"inf") {
            let taken = if starts_with_ignore_case(rest, b"infinity") { 8 } else { 3 };
            return Some((signed(f64::INFINITY), start + taken));
        }
        if starts_with_ignore_case(rest, b"nan") {
            let mut end = start + 3;
            if at(end) == b'(' {
                let mut j = end + 1;
                while at(j).is_ascii_alphanumeric() || at(j) == b'_' {
                    j += 1;
                }
                if at(j) == b')' {
                    end = j + 1;
                }
            }
            return Some((signed(f64::NAN), end));
        }
        if at(start) == b'0' && at(start + 1) | 0x20 == b'x' {
            if let Some((v, taken)) = hexadecimal(&s[start + 2..]) {
                return Some((signed(v), start + 2 + taken));
            }
        }
        let mut i = start;
        let digits_from = i;
        while at(i).is_ascii_digit() {
            i += 1;
        }
        let mut digits = i - digits_from;
        if at(i) == b'.' {
            i += 1;
            let from = i;
            while at(i).is_ascii_digit() {
                i += 1;
            }
            digits += i - from;
        }
        if digits == 0 {
            return None;
        }
        if at(i) | 0x20 == b'e' {
            let mut j = i + 1;
            if matches!(at(j), b'+' | b'-') {
                j += 1;
            }
            if at(j).is_ascii_digit() {
                while at(j).is_ascii_digit() {
                    j += 1;
                }
                i = j;
            }
        }
        let text = std::str::from_utf8(&s[..i]).ok()?;
        Some((text.parse::<f64>().ok()?, i))
    }

    fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
        s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    }

    /// The hexadecimal number after `0x`: its value and the bytes it took.
    fn hexadecimal(s: &[u8]) -> Option<(f64, usize)> {
        let at = |i: usize| s.get(i).copied().unwrap_or(0);
        let (mut i, mut mantissa, mut exponent, mut sticky) = (0usize, 0u64, 0i64, false);
        let (mut any_digit, mut seen_point) = (false, false);
        loop {
            let c = at(i);
            if c == b'.' && !seen_point {
                seen_point = true;
                i += 1;
                continue;
            }
            let Some(d) = (c as char).to_digit(16) else { break };
            any_digit = true;
            if mantissa >> 60 == 0 {
                mantissa = mantissa << 4 | u64::from(d);
                if seen_point {
                    exponent -= 4;
                }
            } else {
                sticky |= d != 0;
                if !seen_point {
                    exponent += 4;
                }
            }
            i += 1;
        }
        if !any_digit {
            return None;
        }
        if at(i) | 0x20 == b'p' {
            let mut j = i + 1;
            let negative = match at(j) {
                b'-' => {
                    j += 1;
                    true
                }
                b'+' => {
                    j += 1;
                    false
                }
                _ => false,
            };
            if at(j).is_ascii_digit() {
                let mut e: i64 = 0;
                while at(j).is_ascii_digit() {
                    e = (e * 10 + i64::from(at(j) - b'0')).min(1 << 40);
                    j += 1;
                }
                exponent += if negative { -e } else { e };
                i = j;
            }
        }
        Some((binary_float(mantissa, sticky, exponent), i))
    }

    /// `mantissa × 2^exponent` (`sticky`: nonzero bits below the mantissa)
    /// rounded to the nearest double, ties to even.
    fn binary_float(mantissa: u64, sticky: bool, exponent: i64) -> f64 {
        if mantissa == 0 {
            return 0.0;
        }
        let top = 63 - i64::from(mantissa.leading_zeros());
        if top + exponent > 1023 {
            return f64::INFINITY;
        }
        // The lowest bit a double keeps: 52 below the top one, or 2^-1074.
        let keep_from = (top + exponent - 52).max(-1074);
        let drop = keep_from - exponent;
        let mut m = if drop <= 0 {
            mantissa << (-drop)
        } else {
            let (kept, half, below) = match drop {
                1..=63 => {
                    (mantissa >> drop, (mantissa >> (drop - 1)) & 1 == 1, mantissa & ((1u64 << (drop - 1)) - 1) != 0)
                }
                64 => (0, mantissa >> 63 == 1, mantissa & (u64::MAX >> 1) != 0),
                _ => (0, false, true),
            };
            let up = half && (below || sticky || kept & 1 == 1);
            kept + u64::from(up)
        };
        let mut e = keep_from;
        if m == 1 << 53 {
            m >>= 1;
            e += 1;
        }
        if m == 0 {
            return 0.0;
        }
        if 63 - i64::from(m.leading_zeros()) + e > 1023 {
            return f64::INFINITY;
        }
        let scale = match e >= -1022 {
            true => f64::from_bits(((e + 1023) as u64) << 52),
            false => f64::from_bits(1u64 << (e + 1074)),
        };
        m as f64 * scale
    }
}

/// The light userdata NULL: `cjson.null`.
fn null() -> Value {
    Value::LightUserData(LightUserData(std::ptr::null_mut()))
}

/// lua-cjson 2.1.0, as Redis 7.0 builds it.
mod cjson {
    use super::c::{self, Args};
    use super::*;

    /// The settings of one `cjson` table (`cjson.new()` makes another).
    #[derive(Clone, Copy, Debug)]
    pub struct Config {
        sparse_convert: u8,
        sparse_ratio: i32,
        sparse_safe: i32,
        encode_max_depth: i32,
        decode_max_depth: i32,
        /// 0: an error, 1: `inf`, `nan`, 2: `null`.
        encode_invalid_numbers: u8,
        decode_invalid_numbers: u8,
        keep_buffer: u8,
        number_precision: i32,
    }

    impl Default for Config {
        fn default() -> Config {
            Config {
                sparse_convert: 0,
                sparse_ratio: 2,
                sparse_safe: 10,
                encode_max_depth: 1000,
                decode_max_depth: 1000,
                encode_invalid_numbers: 0,
                decode_invalid_numbers: 1,
                keep_buffer: 1,
                number_precision: 14,
            }
        }
    }

    type Shared = Rc<Cell<Config>>;

    /// Fills `t` as a `cjson` table with settings of its own, its fields set in
    /// lua-cjson's order (so `pairs` lists them as Redis's does).
    pub fn fill(lua: &Lua, t: &Table, next: &Function) -> Result<()> {
        let cfg: Shared = Rc::new(Cell::new(Config::default()));
        let with = |f: fn(&Lua, &Shared, Args) -> Result<MultiValue>| {
            let cfg = cfg.clone();
            lua.create_function(move |lua, args: MultiValue| f(lua, &cfg, Args::new(args)))
        };
        let (encode_cfg, walk, next) = (cfg.clone(), next.clone(), next.clone());
        let encode_fn = lua.create_function(move |lua, args: MultiValue| {
            let text = encode(lua, encode_cfg.get(), &walk, &Args::new(args))?;
            one(Value::String(lua.create_string(text)?))
        })?;
        t.set("encode", encode_fn)?;
        t.set("decode", with(|lua, cfg, args| one(decode(lua, cfg.get(), &args)?))?)?;
        t.set("encode_sparse_array", with(encode_sparse_array)?)?;
        t.set(
            "encode_max_depth",
            with(|lua, cfg, args| int_setting(lua, cfg, &args, 1, i32::MAX, Setting::EncodeDepth))?,
        )?;
        t.set(
            "decode_max_depth",
            with(|lua, cfg, args| int_setting(lua, cfg, &args, 1, i32::MAX, Setting::DecodeDepth))?,
        )?;
        t.set(
            "encode_number_precision",
            with(|lua, cfg, args| int_setting(lua, cfg, &args, 1, 14, Setting::Precision))?,
        )?;
        t.set(
            "encode_keep_buffer",
            with(|lua, cfg, args| enum_setting(lua, cfg, &args, &BOOLEAN, Setting::KeepBuffer))?,
        )?;
        t.set(
            "encode_invalid_numbers",
            with(|lua, cfg, args| enum_setting(lua, cfg, &args, &["off", "on", "null"], Setting::EncodeInvalid))?,
        )?;
        t.set(
            "decode_invalid_numbers",
            with(|lua, cfg, args| enum_setting(lua, cfg, &args, &BOOLEAN, Setting::DecodeInvalid))?,
        )?;
        let new = lua.create_function(move |lua, _: MultiValue| {
            let t = lua.create_table()?;
            fill(lua, &t, &next)?;
            Ok(t)
        })?;
        t.set("new", new)?;
        t.set("null", null())?;
        t.set("_NAME", "cjson")?;
        t.set("_VERSION", "2.1.0")?;
        Ok(())
    }

    fn one(v: Value) -> Result<MultiValue> {
        Ok(MultiValue::from_iter([v]))
    }

    const BOOLEAN: [&str; 2] = ["off", "on"];

    #[derive(Clone, Copy)]
    enum Setting {
        EncodeDepth,
        DecodeDepth,
        Precision,
        SparseRatio,
        SparseSafe,
        SparseConvert,
        KeepBuffer,
        EncodeInvalid,
        DecodeInvalid,
    }

    impl Setting {
        fn int(self, c: &mut Config) -> &mut i32 {
            match self {
                Setting::EncodeDepth => &mut c.encode_max_depth,
                Setting::DecodeDepth => &mut c.decode_max_depth,
                Setting::Precision => &mut c.number_precision,
                Setting::SparseRatio => &mut c.sparse_ratio,
                _ => &mut c.sparse_safe,
            }
        }

        fn choice(self, c: &mut Config) -> &mut u8 {
            match self {
                Setting::SparseConvert => &mut c.sparse_convert,
                Setting::KeepBuffer => &mut c.keep_buffer,
                Setting::EncodeInvalid => &mut c.encode_invalid_numbers,
                _ => &mut c.decode_invalid_numbers,
            }
        }
    }

    /// `json_arg_init`: at most `n` arguments.
    fn at_most(lua: &Lua, args: &Args, n: usize) -> Result<()> {
        match args.len() > n {
            true => c::arg_error(lua, n as i64 + 1, "found too many arguments"),
            false => Ok(()),
        }
    }

    /// `json_integer_option`: sets the setting from argument `narg` unless it is
    /// nil; the setting's value. (An out-of-range value is argument #1's error, as
    /// in lua-cjson.)
    fn int_option(lua: &Lua, cfg: &Shared, args: &Args, narg: usize, min: i32, max: i32, s: Setting) -> Result<Value> {
        let mut c = cfg.get();
        if !args.is_none_or_nil(narg) {
            let v = c::check_integer(lua, args, narg)? as i32;
            if !(min <= v && v <= max) {
                return c::arg_error(lua, 1, &format!("expected integer between {min} and {max}"));
            }
            *s.int(&mut c) = v;
            cfg.set(c);
        }
        Ok(Value::Integer(i64::from(*s.int(&mut c))))
    }

    fn int_setting(lua: &Lua, cfg: &Shared, args: &Args, min: i32, max: i32, s: Setting) -> Result<MultiValue> {
        at_most(lua, args, 1)?;
        Ok(MultiValue::from_iter([int_option(lua, cfg, args, 1, min, max, s)?]))
    }

    /// `json_enum_option`: a boolean sets 0 or 1, a string the option it names;
    /// the setting as a boolean when it is 0 or 1, else as its name.
    fn enum_option(lua: &Lua, cfg: &Shared, args: &Args, narg: usize, options: &[&str], s: Setting) -> Result<Value> {
        let mut c = cfg.get();
        if !args.is_none_or_nil(narg) {
            *s.choice(&mut c) = match args.get(narg) {
                Some(Value::Boolean(b)) => u8::from(*b),
                _ => c::check_option(lua, args, narg, options)? as u8,
            };
            cfg.set(c);
        }
        Ok(match *s.choice(&mut c) {
            v @ (0 | 1) => Value::Boolean(v == 1),
            v => Value::String(lua.create_string(options[usize::from(v)])?),
        })
    }

    fn enum_setting(lua: &Lua, cfg: &Shared, args: &Args, options: &[&str], s: Setting) -> Result<MultiValue> {
        at_most(lua, args, 1)?;
        Ok(MultiValue::from_iter([enum_option(lua, cfg, args, 1, options, s)?]))
    }

    fn encode_sparse_array(lua: &Lua, cfg: &Shared, args: Args) -> Result<MultiValue> {
        at_most(lua, &args, 3)?;
        let convert = enum_option(lua, cfg, &args, 1, &BOOLEAN, Setting::SparseConvert)?;
        let ratio = int_option(lua, cfg, &args, 2, 0, i32::MAX, Setting::SparseRatio)?;
        let safe = int_option(lua, cfg, &args, 3, 0, i32::MAX, Setting::SparseSafe)?;
        Ok(MultiValue::from_iter([convert, ratio, safe]))
    }

    /// `cjson.encode(value)`. `next` is Lua's, which walks an object in the order
    /// lua-cjson's `lua_next` does.
    pub fn encode(lua: &Lua, cfg: Config, next: &Function, args: &Args) -> Result<Vec<u8>> {
        if args.len() != 1 {
            return c::arg_error(lua, 1, "expected 1 argument");
        }
        let mut encoder = Encoder { lua, cfg, next, out: Vec::new(), slots: 1 };
        encoder.nested(&args.0[0], 0)?;
        Ok(encoder.out)
    }

    /// Tables nested deeper than this are written from an explicit stack, walked
    /// with Lua's `next`: deep nesting needs no Rust stack.
    const RECURSION_MAX: i32 = 16;

    /// A table being written: an array's next index, or an object's last key.
    enum Level {
        Array { table: Table, len: i64, next: i64 },
        Object { table: Table, key: Value },
    }

    impl Level {
        /// The Lua stack slots lua-cjson uses for it while writing a value in it:
        /// the value, and an object's key.
        fn slots(&self) -> usize {
            match self {
                Level::Array { .. } => 1,
                Level::Object { .. } => 2,
            }
        }
    }

    struct Encoder<'a> {
        lua: &'a Lua,
        cfg: Config,
        next: &'a Function,
        out: Vec<u8>,
        /// The Lua stack slots lua-cjson would use: the argument and the tables'.
        slots: usize,
    }

    impl Encoder<'_> {
        /// A value inside `depth` tables: its tables written by recursion with
        /// `for_each` down to [`RECURSION_MAX`], by [`Encoder::run`] below.
        fn nested(&mut self, v: &Value, depth: i32) -> Result<()> {
            let Value::Table(t) = v else { return self.value(v, depth, &mut Vec::new()) };
            if depth >= RECURSION_MAX {
                return self.run(v, depth);
            }
            self.check_depth(depth + 1)?;
            match self.array_length(t)? {
                len if len > 0 => {
                    self.slots += 1;
                    self.out.push(b'[');
                    for i in 1..=i64::from(len) {
                        if i > 1 {
                            self.out.push(b',');
                        }
                        let key = Value::Integer(i);
                        let v = c::exact(t, &key, t.raw_get::<Value>(i)?);
                        self.nested(&v, depth + 1)?;
                    }
                    self.out.push(b']');
                    self.slots -= 1;
                }
                _ => {
                    self.slots += 2;
                    self.out.push(b'{');
                    let mut first = true;
                    t.for_each::<Value, Value>(|k, v| {
                        if !first {
                            self.out.push(b',');
                        }
                        first = false;
                        self.key(&k)?;
                        self.nested(&c::exact(t, &k, v), depth + 1)
                    })?;
                    self.out.push(b'}');
                    self.slots -= 2;
                }
            }
            Ok(())
        }

        /// A value inside `depth` tables, its tables on an explicit stack.
        fn run(&mut self, v: &Value, depth: i32) -> Result<()> {
            let mut levels: Vec<Level> = Vec::new();
            self.value(v, depth, &mut levels)?;
            while let Some(level) = levels.last_mut() {
                let item = match level {
                    Level::Array { table, len, next } => match *next > *len {
                        true => None,
                        false => {
                            if *next > 1 {
                                self.out.push(b',');
                            }
                            let key = Value::Integer(*next);
                            *next += 1;
                            Some(c::exact(table, &key, table.raw_get::<Value>(key.clone())?))
                        }
                    },
                    Level::Object { table, key } => {
                        let (k, v): (Value, Value) = self.next.call((table.clone(), key.clone()))?;
                        match k {
                            Value::Nil => None,
                            k => {
                                if !matches!(key, Value::Nil) {
                                    self.out.push(b',');
                                }
                                self.key(&k)?;
                                let v = c::exact(table, &k, v);
                                *key = k;
                                Some(v)
                            }
                        }
                    }
                };
                match item {
                    Some(v) => self.value(&v, depth, &mut levels)?,
                    None => {
                        let done = levels.pop().expect("the table just written is open");
                        self.slots -= done.slots();
                        self.out.push(match done {
                            Level::Array { .. } => b']',
                            Level::Object { .. } => b'}',
                        });
                    }
                }
            }
            Ok(())
        }

        /// Writes a value, or opens a table (its first byte written, its level
        /// pushed on `levels`, which are inside `depth` tables).
        fn value(&mut self, v: &Value, depth: i32, levels: &mut Vec<Level>) -> Result<()> {
            match v {
                Value::String(s) => self.string(&s.as_bytes()),
                Value::Integer(_) | Value::Number(_) => self.number(c::number(v))?,
                Value::Boolean(true) => self.out.extend_from_slice(b"true"),
                Value::Boolean(false) => self.out.extend_from_slice(b"false"),
                Value::Table(t) => self.open(t, depth, levels)?,
                Value::Nil => self.out.extend_from_slice(b"null"),
                Value::LightUserData(p) if p.0.is_null() => self.out.extend_from_slice(b"null"),
                other => return self.exception(c::type_name(Some(other)), "type not supported"),
            }
            match self.out.len() > ENCODED_BYTES_MAX {
                true => c::memory_error(),
                false => Ok(()),
            }
        }

        fn exception<T>(&self, type_name: &str, reason: &str) -> Result<T> {
            c::error(self.lua, format!("Cannot serialise {type_name}: {reason}"))
        }

        fn key(&mut self, k: &Value) -> Result<()> {
            match k {
                Value::Integer(_) | Value::Number(_) => {
                    self.out.push(b'"');
                    self.number(c::number(k))?;
                    self.out.extend_from_slice(b"\":");
                }
                Value::String(s) => {
                    self.string(&s.as_bytes());
                    self.out.push(b':');
                }
                other => return self.exception(c::type_name(Some(other)), "table key must be a number or string"),
            }
            Ok(())
        }

        fn string(&mut self, s: &[u8]) {
            self.out.reserve(s.len() + 2);
            self.out.push(b'"');
            for &b in s {
                match b {
                    b'"' => self.out.extend_from_slice(b"\\\""),
                    b'\\' => self.out.extend_from_slice(b"\\\\"),
                    b'/' => self.out.extend_from_slice(b"\\/"),
                    0x08 => self.out.extend_from_slice(b"\\b"),
                    b'\t' => self.out.extend_from_slice(b"\\t"),
                    b'\n' => self.out.extend_from_slice(b"\\n"),
                    0x0c => self.out.extend_from_slice(b"\\f"),
                    b'\r' => self.out.extend_from_slice(b"\\r"),
                    0..=0x1f | 0x7f => self.out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                    _ => self.out.push(b),
                }
            }
            self.out.push(b'"');
        }

        fn number(&mut self, n: f64) -> Result<()> {
            if !n.is_finite() {
                match self.cfg.encode_invalid_numbers {
                    0 => return self.exception("number", "must not be NaN or Inf"),
                    1 if n.is_nan() => {
                        self.out.extend_from_slice(b"nan");
                        return Ok(());
                    }
                    1 => {}
                    _ => {
                        self.out.extend_from_slice(b"null");
                        return Ok(());
                    }
                }
            }
            let text = c::fmt_g(n, self.cfg.number_precision as usize);
            self.out.extend_from_slice(text.as_bytes());
            Ok(())
        }

        /// `json_check_encode_depth` for a table at `depth`: within
        /// `encode_max_depth` and the Lua stack.
        fn check_depth(&self, depth: i32) -> Result<()> {
            let fits = self.slots + 3 <= C_STACK_SLOTS_MAX && depth <= ENCODE_NESTING_MAX;
            if depth > self.cfg.encode_max_depth || !fits {
                return c::error(self.lua, format!("Cannot serialise, excessive nesting ({depth})"));
            }
            Ok(())
        }

        /// An array when `lua_array_length` finds one, else an object.
        fn open(&mut self, t: &Table, depth: i32, levels: &mut Vec<Level>) -> Result<()> {
            self.check_depth(depth + levels.len() as i32 + 1)?;
            let level = match self.array_length(t)? {
                len if len > 0 => {
                    self.out.push(b'[');
                    Level::Array { table: t.clone(), len: i64::from(len), next: 1 }
                }
                _ => {
                    self.out.push(b'{');
                    Level::Object { table: t.clone(), key: Value::Nil }
                }
            };
            self.slots += level.slots();
            levels.push(level);
            Ok(())
        }

        /// `lua_array_length`: the array's length when every key is a positive
        /// integer (its largest key, with C's int conversion), else -1; an
        /// excessively sparse array is an error (or -1, converted to an object).
        fn array_length(&self, t: &Table) -> Result<i32> {
            let (mut max, mut items, mut array) = (0i32, 0i32, true);
            t.for_each::<Value, Value>(|k, _| {
                let k = match k {
                    Value::Integer(_) | Value::Number(_) if array => c::number(&k),
                    _ => {
                        array = false;
                        return Ok(());
                    }
                };
                if k != 0.0 && k.floor() == k && k >= 1.0 {
                    if k > f64::from(max) {
                        max = c::c_i32(k);
                    }
                    items = items.wrapping_add(1);
                } else {
                    array = false;
                }
                Ok(())
            })?;
            if !array {
                return Ok(-1);
            }
            let cfg = &self.cfg;
            if cfg.sparse_ratio > 0 && max > items.wrapping_mul(cfg.sparse_ratio) && max > cfg.sparse_safe {
                if cfg.sparse_convert == 0 {
                    return self.exception("table", "excessively sparse array");
                }
                return Ok(-1);
            }
            Ok(max)
        }
    }

    /// `cjson.decode(text)`.
    pub fn decode(lua: &Lua, cfg: Config, args: &Args) -> Result<Value> {
        if args.len() != 1 {
            return c::arg_error(lua, 1, "expected 1 argument");
        }
        let text = c::check_string(lua, args, 1)?;
        let bytes = text.as_bytes();
        if bytes.len() >= 2 && (bytes[0] == 0 || bytes[1] == 0) {
            return c::error(lua, "JSON parser does not support UTF-16 or UTF-32");
        }
        // lua-cjson reads a C string: it ends at the first NUL.
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Parser { lua, cfg, data: &bytes[..end], ptr: 0, depth: 0, slots: 1 }.run()
    }

    enum Tok {
        ObjBegin,
        ObjEnd,
        ArrBegin,
        ArrEnd,
        Str(Vec<u8>),
        Number(f64),
        Boolean(bool),
        Null,
        Colon,
        Comma,
        End,
        /// What was found instead of a token.
        Error(&'static str),
    }

    struct Token {
        tok: Tok,
        /// Where it starts (where the error is, for an error), from 0.
        index: usize,
    }

    impl Token {
        fn name(&self) -> &'static str {
            match self.tok {
                Tok::ObjBegin => "T_OBJ_BEGIN",
                Tok::ObjEnd => "T_OBJ_END",
                Tok::ArrBegin => "T_ARR_BEGIN",
                Tok::ArrEnd => "T_ARR_END",
                Tok::Str(_) => "T_STRING",
                Tok::Number(_) => "T_NUMBER",
                Tok::Boolean(_) => "T_BOOLEAN",
                Tok::Null => "T_NULL",
                Tok::Colon => "T_COLON",
                Tok::Comma => "T_COMMA",
                Tok::End => "T_END",
                Tok::Error(found) => found,
            }
        }
    }

    /// A table being filled.
    enum Open {
        Array { table: Table, next: i64 },
        Object { table: Table, key: Vec<u8> },
    }

    impl Open {
        /// The Lua stack slots lua-cjson uses for it while parsing a value in it:
        /// the table, and an object's key.
        fn slots(&self) -> usize {
            match self {
                Open::Array { .. } => 1,
                Open::Object { .. } => 2,
            }
        }
    }

    struct Parser<'a> {
        lua: &'a Lua,
        cfg: Config,
        data: &'a [u8],
        ptr: usize,
        depth: i32,
        /// The Lua stack slots lua-cjson would use: the argument and the open
        /// tables'.
        slots: usize,
    }

    impl Parser<'_> {
        fn at(&self, i: usize) -> u8 {
            self.data.get(i).copied().unwrap_or(0)
        }

        /// The whole text as one value; the tables open are on an explicit
        /// stack, not Rust's.
        fn run(mut self) -> Result<Value> {
            let mut open: Vec<Open> = Vec::new();
            let mut token = self.next_token();
            'value: loop {
                let mut value = match token.tok {
                    Tok::Str(s) => Value::String(self.lua.create_string(s)?),
                    Tok::Number(n) => Value::Number(n),
                    Tok::Boolean(b) => Value::Boolean(b),
                    Tok::Null => null(),
                    Tok::ObjBegin => {
                        self.descend(3, open.len())?;
                        let table = self.lua.create_table()?;
                        let first = self.next_token();
                        if let Tok::ObjEnd = first.tok {
                            self.depth -= 1;
                            Value::Table(table)
                        } else {
                            let key = self.key(first)?;
                            token = self.next_token();
                            self.push(&mut open, Open::Object { table, key });
                            continue 'value;
                        }
                    }
                    Tok::ArrBegin => {
                        self.descend(2, open.len())?;
                        let table = self.lua.create_table()?;
                        token = self.next_token();
                        if let Tok::ArrEnd = token.tok {
                            self.depth -= 1;
                            Value::Table(table)
                        } else {
                            self.push(&mut open, Open::Array { table, next: 1 });
                            continue 'value;
                        }
                    }
                    _ => return self.parse_error("value", &token),
                };
                // The value goes in the table open last; each table it completes
                // goes in the one before.
                loop {
                    let Some(last) = open.last_mut() else {
                        let end = self.next_token();
                        if !matches!(end.tok, Tok::End) {
                            return self.parse_error("the end", &end);
                        }
                        return Ok(value);
                    };
                    match last {
                        Open::Array { table, next } => {
                            table.raw_set(*next, value)?;
                            *next += 1;
                            let t = self.next_token();
                            match t.tok {
                                Tok::ArrEnd => {}
                                Tok::Comma => {
                                    token = self.next_token();
                                    continue 'value;
                                }
                                _ => return self.parse_error("comma or array end", &t),
                            }
                        }
                        Open::Object { table, key } => {
                            table.raw_set(self.lua.create_string(&*key)?, value)?;
                            let t = self.next_token();
                            match t.tok {
                                Tok::ObjEnd => {}
                                Tok::Comma => {
                                    let t = self.next_token();
                                    *key = self.key(t)?;
                                    token = self.next_token();
                                    continue 'value;
                                }
                                _ => return self.parse_error("comma or object end", &t),
                            }
                        }
                    }
                    self.depth -= 1;
                    let done = open.pop().expect("the table just filled is open");
                    self.slots -= done.slots();
                    value = match done {
                        Open::Array { table, .. } | Open::Object { table, .. } => Value::Table(table),
                    };
                }
            }
        }

        fn push(&mut self, open: &mut Vec<Open>, table: Open) {
            self.slots += table.slots();
            open.push(table);
        }

        /// `json_decode_descend`: one level deeper, within `decode_max_depth` and
        /// the Lua stack (`slots` more).
        fn descend(&mut self, slots: usize, open: usize) -> Result<()> {
            self.depth += 1;
            let fits = self.slots + slots <= C_STACK_SLOTS_MAX && open < OPEN_TABLES_MAX;
            if self.depth <= self.cfg.decode_max_depth && fits {
                return Ok(());
            }
            let message = format!("Found too many nested data structures ({}) at character {}", self.depth, self.ptr);
            c::error(self.lua, message)
        }

        /// An object's key and the colon after it.
        fn key(&mut self, t: Token) -> Result<Vec<u8>> {
            let Tok::Str(key) = t.tok else { return self.parse_error("object key string", &t) };
            let colon = self.next_token();
            match colon.tok {
                Tok::Colon => Ok(key),
                _ => self.parse_error("colon", &colon),
            }
        }

        fn parse_error<T>(&self, expected: &str, found: &Token) -> Result<T> {
            let message = format!("Expected {expected} but found {} at character {}", found.name(), found.index + 1);
            c::error(self.lua, message)
        }

        fn error_token(&self, what: &'static str) -> Token {
            Token { tok: Tok::Error(what), index: self.ptr }
        }

        fn next_token(&mut self) -> Token {
            while matches!(self.at(self.ptr), b' ' | b'\t' | b'\n' | b'\r') {
                self.ptr += 1;
            }
            let index = self.ptr;
            let single = match self.at(index) {
                b'{' => Tok::ObjBegin,
                b'}' => Tok::ObjEnd,
                b'[' => Tok::ArrBegin,
                b']' => Tok::ArrEnd,
                b',' => Tok::Comma,
                b':' => Tok::Colon,
                0 => return Token { tok: Tok::End, index },
                b'"' => return self.string_token(),
                b'-' | b'0'..=b'9' => {
                    if self.cfg.decode_invalid_numbers == 0 && self.is_invalid_number() {
                        return self.error_token("invalid number");
                    }
                    return self.number_token();
                }
                b'f' | b'i' | b'I' | b'n' | b'N' | b't' | b'+' => return self.word_token(),
                _ => return self.error_token("invalid token"),
            };
            self.ptr += 1;
            Token { tok: single, index }
        }

        fn word_token(&mut self) -> Token {
            let index = self.ptr;
            let rest = &self.data[self.ptr..];
            let (tok, len) = if rest.starts_with(b"true") {
                (Tok::Boolean(true), 4)
            } else if rest.starts_with(b"false") {
                (Tok::Boolean(false), 5)
            } else if rest.starts_with(b"null") {
                (Tok::Null, 4)
            } else if self.cfg.decode_invalid_numbers != 0 && self.is_invalid_number() {
                return self.number_token();
            } else {
                return self.error_token("invalid token");
            };
            self.ptr += len;
            Token { tok, index }
        }

        /// `json_is_invalid_number`: a number strict JSON refuses (a `+`, hex,
        /// leading zeros, inf, nan).
        fn is_invalid_number(&self) -> bool {
            let mut p = self.ptr;
            match self.at(p) {
                b'+' => return true,
                b'-' => p += 1,
                _ => {}
            }
            let ch = self.at(p);
            if ch == b'0' {
                let ch2 = self.at(p + 1);
                return ch2 | 0x20 == b'x' || ch2.is_ascii_digit();
            }
            // C's `char` is signed: bytes from 0x80 count as "below '9'".
            if (ch as i8) <= b'9' as i8 {
                return false;
            }
            let word = &self.data[p..self.data.len().min(p + 3)];
            word.eq_ignore_ascii_case(b"inf") || word.eq_ignore_ascii_case(b"nan")
        }

        fn number_token(&mut self) -> Token {
            let index = self.ptr;
            match c::strtod(&self.data[self.ptr..]) {
                Some((n, len)) => {
                    self.ptr += len;
                    Token { tok: Tok::Number(n), index }
                }
                None => self.error_token("invalid number"),
            }
        }

        fn string_token(&mut self) -> Token {
            let index = self.ptr;
            self.ptr += 1;
            let mut s = Vec::new();
            loop {
                let ch = self.at(self.ptr);
                match ch {
                    b'"' => break,
                    0 => return self.error_token("unexpected end of string"),
                    b'\\' => {
                        let escaped = match self.at(self.ptr + 1) {
                            b'"' => b'"',
                            b'\\' => b'\\',
                            b'/' => b'/',
                            b'b' => 0x08,
                            b't' => b'\t',
                            b'n' => b'\n',
                            b'f' => 0x0c,
                            b'r' => b'\r',
                            b'u' => match self.unicode_escape(&mut s) {
                                true => continue,
                                false => return self.error_token("invalid unicode escape code"),
                            },
                            _ => return self.error_token("invalid escape code"),
                        };
                        s.push(escaped);
                        self.ptr += 2;
                    }
                    _ => {
                        s.push(ch);
                        self.ptr += 1;
                    }
                }
            }
            self.ptr += 1;
            Token { tok: Tok::Str(s), index }
        }

        fn hex4(&self, at: usize) -> Option<u32> {
            (0..4).try_fold(0u32, |acc, i| Some(acc << 4 | (self.at(at + i) as char).to_digit(16)?))
        }

        /// `\uXXXX` (a surrogate pair `\uD83D\uDE00` together) as UTF-8; false
        /// when it is not one.
        fn unicode_escape(&mut self, s: &mut Vec<u8>) -> bool {
            let Some(mut codepoint) = self.hex4(self.ptr + 2) else { return false };
            let mut len = 6;
            if codepoint & 0xF800 == 0xD800 {
                if codepoint & 0x400 != 0 || self.at(self.ptr + 6) != b'\\' || self.at(self.ptr + 7) != b'u' {
                    return false;
                }
                let Some(low) = self.hex4(self.ptr + 8) else { return false };
                if low & 0xFC00 != 0xDC00 {
                    return false;
                }
                codepoint = (((codepoint & 0x3FF) << 10) | (low & 0x3FF)) + 0x10000;
                len = 12;
            }
            utf8(codepoint, s);
            self.ptr += len;
            true
        }
    }

    /// lua-cjson's `codepoint_to_utf8` (any value up to 0x10FFFF, surrogates
    /// included).
    fn utf8(cp: u32, s: &mut Vec<u8>) {
        match cp {
            0..=0x7F => s.push(cp as u8),
            0x80..=0x7FF => s.extend_from_slice(&[(cp >> 6) as u8 | 0xC0, (cp & 0x3F) as u8 | 0x80]),
            0x800..=0xFFFF => s.extend_from_slice(&[
                (cp >> 12) as u8 | 0xE0,
                ((cp >> 6) & 0x3F) as u8 | 0x80,
                (cp & 0x3F) as u8 | 0x80,
            ]),
            _ => s.extend_from_slice(&[
                (cp >> 18) as u8 | 0xF0,
                ((cp >> 12) & 0x3F) as u8 | 0x80,
                ((cp >> 6) & 0x3F) as u8 | 0x80,
                (cp & 0x3F) as u8 | 0x80,
            ]),
        }
    }
}

/// lua-cmsgpack 0.4.0, as Redis 7.0 builds it.
mod cmsgpack {
    use super::c::{self, Args};
    use super::*;

    /// Tables nested deeper than this are packed as nil (`LUACMSGPACK_MAX_NESTING`).
    const NESTING_MAX: usize = 16;

    const TOO_MANY_VALUES: &str =
        "stack overflow (too many return values at once; use unpack_one or unpack_limit instead.)";

    pub fn fill(lua: &Lua, t: &Table) -> Result<()> {
        t.set("pack", lua.create_function(|lua, args: MultiValue| pack(lua, &Args::new(args)))?)?;
        t.set("unpack", lua.create_function(|lua, args: MultiValue| unpack(lua, &Args::new(args), None))?)?;
        t.set(
            "unpack_one",
            lua.create_function(|lua, args: MultiValue| {
                let args = Args::new(args);
                let offset = c::opt_integer(lua, &args, 2, 0)?;
                unpack(lua, &args, Some((1, offset)))
            })?,
        )?;
        t.set(
            "unpack_limit",
            lua.create_function(|lua, args: MultiValue| {
                let args = Args::new(args);
                let limit = c::check_integer(lua, &args, 2)?;
                let offset = c::opt_integer(lua, &args, 3, 0)?;
                unpack(lua, &args, Some((limit, offset)))
            })?,
        )?;
        t.set("_NAME", "cmsgpack")?;
        t.set("_VERSION", "lua-cmsgpack 0.4.0")?;
        t.set("_COPYRIGHT", "Copyright (C) 2012, Salvatore Sanfilippo")?;
        t.set("_DESCRIPTION", "MessagePack C implementation for Lua")?;
        Ok(())
    }

    /// `cmsgpack.pack(...)`: every argument, one after the other.
    fn pack(lua: &Lua, args: &Args) -> Result<mlua::String> {
        if args.len() == 0 {
            return c::arg_error(lua, 0, "MessagePack pack needs input.");
        }
        if 2 * args.len() > C_STACK_SLOTS_MAX {
            return c::arg_error(lua, 0, "Too many arguments for MessagePack pack.");
        }
        let mut out = Vec::new();
        for v in &args.0 {
            encode(&mut out, v, 0)?;
        }
        lua.create_string(out)
    }

    fn encode(out: &mut Vec<u8>, v: &Value, level: usize) -> Result<()> {
        match v {
            Value::Table(_) if level == NESTING_MAX => out.push(0xc0),
            Value::String(s) => bytes(out, &s.as_bytes()),
            Value::Boolean(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            Value::Integer(_) | Value::Number(_) => number(out, c::number(v)),
            Value::Table(t) => table(out, t, level)?,
            _ => out.push(0xc0),
        }
        match out.len() > ENCODED_BYTES_MAX {
            true => c::memory_error(),
            false => Ok(()),
        }
    }

    fn bytes(out: &mut Vec<u8>, s: &[u8]) {
        let len = s.len();
        match len {
            0..=31 => out.push(0xa0 | len as u8),
            32..=0xff => out.extend_from_slice(&[0xd9, len as u8]),
            0x100..=0xffff => {
                out.push(0xda);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0xdb);
                out.extend_from_slice(&(len as u32).to_be_bytes());
            }
        }
        out.extend_from_slice(s);
    }

    /// An integer when the number is one that fits 64 bits, else a float32 when
    /// that is exact, else a float64.
    fn number(out: &mut Vec<u8>, n: f64) {
        let i = c::c_i64(n);
        if !n.is_infinite() && i as f64 == n {
            return int(out, i);
        }
        let f = n as f32;
        if f64::from(f) == n {
            out.push(0xca);
            out.extend_from_slice(&f.to_be_bytes());
        } else {
            out.push(0xcb);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }

    fn int(out: &mut Vec<u8>, n: i64) {
        match n {
            0..=127 => out.push(n as u8),
            128..=0xff => out.extend_from_slice(&[0xcc, n as u8]),
            0x100..=0xffff => {
                out.push(0xcd);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(0xce);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            0x1_0000_0000.. => {
                out.push(0xcf);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
            -32..=-1 => out.push(n as i8 as u8),
            -128..=-33 => out.extend_from_slice(&[0xd0, n as i8 as u8]),
            -32768..=-129 => {
                out.push(0xd1);
                out.extend_from_slice(&(n as i16).to_be_bytes());
            }
            -2_147_483_648..=-32769 => {
                out.push(0xd2);
                out.extend_from_slice(&(n as i32).to_be_bytes());
            }
            _ => {
                out.push(0xd3);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
    }

    fn header(out: &mut Vec<u8>, n: usize, fix: u8, marker16: u8) {
        match n {
            0..=15 => out.push(fix | n as u8),
            16..=0xffff => {
                out.push(marker16);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                out.push(marker16 + 1);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
    }

    fn table(out: &mut Vec<u8>, t: &Table, level: usize) -> Result<()> {
        if is_array(t)? {
            let len = t.raw_len();
            header(out, len, 0x90, 0xdc);
            for j in 1..=len as i64 {
                let key = Value::Integer(j);
                let v = c::exact(t, &key, t.raw_get::<Value>(j)?);
                encode(out, &v, level + 1)?;
            }
            return Ok(());
        }
        let mut len = 0usize;
        t.for_each::<Value, Value>(|_, _| {
            len += 1;
            Ok(())
        })?;
        header(out, len, 0x80, 0xde);
        t.for_each::<Value, Value>(|k, v| {
            encode(out, &k, level + 1)?;
            encode(out, &c::exact(t, &k, v), level + 1)
        })
    }

    /// `table_is_an_array`: its keys are exactly 1..n (an empty table is one).
    fn is_array(t: &Table) -> Result<bool> {
        let (mut count, mut max, mut array) = (0i32, 0i32, true);
        t.for_each::<Value, Value>(|k, _| {
            let n = match k {
                Value::Integer(_) | Value::Number(_) if array => c::number(&k),
                _ => {
                    array = false;
                    return Ok(());
                }
            };
            if n <= 0.0 || n.is_infinite() || f64::from(c::c_i32(n)) != n {
                array = false;
                return Ok(());
            }
            max = max.max(c::c_i32(n));
            count = count.wrapping_add(1);
            Ok(())
        })?;
        Ok(array && max == count)
    }

    /// `mp_unpack_full`: `(limit, offset)` for `unpack_one` and `unpack_limit`,
    /// whose first value is the offset to go on from (-1 at the end).
    fn unpack(lua: &Lua, args: &Args, limit_offset: Option<(i64, i64)>) -> Result<MultiValue> {
        let (limit, offset) = limit_offset.unwrap_or((0, 0));
        let s = c::check_string(lua, args, 1)?;
        let data = s.as_bytes();
        let len = data.len();
        if offset < 0 || limit < 0 {
            let message =
                format!("Invalid request to unpack with offset of {} and limit of {}.", offset as i32, len as i32);
            return c::error(lua, message);
        }
        if offset as u64 > len as u64 {
            return c::error(lua, format!("Start offset {} greater than input length {}.", offset as i32, len as i32));
        }
        let decode_all = limit == 0 && offset == 0;
        let limit = if decode_all { i64::from(i32::MAX) } else { limit };
        let mut reader = Reader { lua, data: &data[..], pos: offset as usize, slots: 1, held: 0 };
        let mut values = Vec::new();
        while reader.pos < len && (values.len() as i64) < limit {
            reader.slots = 1 + values.len();
            match reader.value() {
                Ok(v) => {
                    reader.held += usize::from(holds(&v));
                    values.push(v);
                }
                Err(Fail::Short) => return c::error(lua, "Missing bytes in input."),
                Err(Fail::Format) => return c::error(lua, "Bad data format in input."),
                Err(Fail::Lua(e)) => return Err(e),
            }
        }
        if !decode_all {
            if values.len() + 2 > C_STACK_SLOTS_MAX {
                return c::error(lua, "stack overflow (in function mp_unpack_full)");
            }
            let next = if reader.pos == len { -1 } else { reader.pos as i64 };
            values.insert(0, Value::Integer(next));
        }
        if values.len() > RETURNED_VALUES_MAX {
            return c::error(lua, TOO_MANY_VALUES);
        }
        Ok(MultiValue::from_iter(values))
    }

    /// Whether Rust holding `v` takes a slot of mlua's auxiliary thread.
    fn holds(v: &Value) -> bool {
        matches!(v, Value::String(_) | Value::Table(_))
    }

    enum Fail {
        /// `Missing bytes in input.`
        Short,
        /// `Bad data format in input.`
        Format,
        Lua(LuaError),
    }

    impl From<LuaError> for Fail {
        fn from(e: LuaError) -> Fail {
            Fail::Lua(e)
        }
    }

    /// A table being filled, and the Lua stack slots in use when it was opened.
    enum Open {
        Array { table: Table, left: usize, next: i64, slots: usize },
        Map { table: Table, left: usize, key: Option<Value>, slots: usize },
    }

    struct Reader<'a> {
        lua: &'a Lua,
        data: &'a [u8],
        pos: usize,
        /// The Lua stack slots lua-cmsgpack would use before the next value.
        slots: usize,
        /// Strings and tables Rust holds (see [`HANDLES_HELD_MAX`]).
        held: usize,
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], Fail> {
            let data = self.data;
            if data.len() - self.pos < n {
                return Err(Fail::Short);
            }
            let taken = &data[self.pos..self.pos + n];
            self.pos += n;
            Ok(taken)
        }

        fn be(&mut self, n: usize) -> std::result::Result<u64, Fail> {
            Ok(self.take(n)?.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
        }

        /// One whole value; tables open are on an explicit stack, not Rust's.
        fn value(&mut self) -> std::result::Result<Value, Fail> {
            let mut open: Vec<Open> = Vec::new();
            loop {
                let Some(mut v) = self.item(&mut open)? else { continue };
                loop {
                    match open.last_mut() {
                        None => return Ok(v),
                        Some(Open::Array { table, left, next, .. }) => {
                            table.raw_set(*next, v)?;
                            *next += 1;
                            *left -= 1;
                            if *left > 0 {
                                break;
                            }
                        }
                        Some(Open::Map { table, left, key, slots }) => {
                            let Some(k) = key.take() else {
                                self.held += usize::from(holds(&v));
                                *key = Some(v);
                                self.slots = *slots + 2;
                                break;
                            };
                            self.held -= usize::from(holds(&k));
                            match &k {
                                Value::Nil => return Err(c::runtime_error("table index is nil").into()),
                                Value::Number(n) if n.is_nan() => {
                                    return Err(c::runtime_error("table index is NaN").into())
                                }
                                _ => {}
                            }
                            table.raw_set(k, v)?;
                            *left -= 1;
                            self.slots = *slots + 1;
                            if *left > 0 {
                                break;
                            }
                        }
                    }
                    let (table, slots) = match open.pop().expect("the table just filled is open") {
                        Open::Array { table, slots, .. } | Open::Map { table, slots, .. } => (table, slots),
                    };
                    self.held -= 1;
                    self.slots = slots;
                    v = Value::Table(table);
                }
            }
        }

        /// `mp_decode_to_lua_type` for one item: a value, or `None` when it opened
        /// a table (pushed on `open`, to fill with the items that follow).
        fn item(&mut self, open: &mut Vec<Open>) -> std::result::Result<Option<Value>, Fail> {
            if self.pos >= self.data.len() {
                return Err(Fail::Short);
            }
            if self.slots + 1 > C_STACK_SLOTS_MAX || self.held >= HANDLES_HELD_MAX {
                return Err(c::raised_at(self.lua, TOO_MANY_VALUES).into());
            }
            let marker = self.take(1)?[0];
            let n = |v: f64| Ok(Some(Value::Number(v)));
            match marker {
                0xcc => n(self.be(1)? as f64),
                0xd0 => n(f64::from(self.be(1)? as u8 as i8)),
                0xcd => n(self.be(2)? as f64),
                0xd1 => n(f64::from(self.be(2)? as u16 as i16)),
                0xce => n(self.be(4)? as f64),
                0xd2 => n(f64::from(self.be(4)? as u32 as i32)),
                // A uint 64 goes through lua_Integer, an int64_t.
                0xcf | 0xd3 => n(self.be(8)? as i64 as f64),
                0xc0 => Ok(Some(Value::Nil)),
                0xc3 => Ok(Some(Value::Boolean(true))),
                0xc2 => Ok(Some(Value::Boolean(false))),
                0xca => n(f64::from(f32::from_bits(self.be(4)? as u32))),
                0xcb => n(f64::from_bits(self.be(8)?)),
                0xd9 => {
                    let len = self.be(1)? as usize;
                    self.string(len)
                }
                0xda => {
                    let len = self.be(2)? as usize;
                    self.string(len)
                }
                0xdb => {
                    let len = self.be(4)? as usize;
                    self.string(len)
                }
                0xdc => {
                    let len = self.be(2)? as usize;
                    self.array(open, len)
                }
                0xdd => {
                    let len = self.be(4)? as usize;
                    self.array(open, len)
                }
                0xde => {
                    let len = self.be(2)? as usize;
                    self.map(open, len)
                }
                0xdf => {
                    let len = self.be(4)? as usize;
                    self.map(open, len)
                }
                0x00..=0x7f => n(f64::from(marker)),
                0xe0..=0xff => n(f64::from(marker as i8)),
                0xa0..=0xbf => self.string(usize::from(marker & 0x1f)),
                0x90..=0x9f => self.array(open, usize::from(marker & 0xf)),
                0x80..=0x8f => self.map(open, usize::from(marker & 0xf)),
                _ => Err(Fail::Format),
            }
        }

        fn string(&mut self, len: usize) -> std::result::Result<Option<Value>, Fail> {
            let s = self.take(len)?;
            Ok(Some(Value::String(self.lua.create_string(s)?)))
        }

        fn array(&mut self, open: &mut Vec<Open>, len: usize) -> std::result::Result<Option<Value>, Fail> {
            if self.slots + 2 > C_STACK_SLOTS_MAX {
                return Err(c::raised_at(self.lua, "stack overflow (in function mp_decode_to_lua_array)").into());
            }
            let table = self.lua.create_table()?;
            if len == 0 {
                return Ok(Some(Value::Table(table)));
            }
            open.push(Open::Array { table, left: len, next: 1, slots: self.slots });
            self.held += 1;
            self.slots += 2;
            Ok(None)
        }

        fn map(&mut self, open: &mut Vec<Open>, len: usize) -> std::result::Result<Option<Value>, Fail> {
            let table = self.lua.create_table()?;
            if len == 0 {
                return Ok(Some(Value::Table(table)));
            }
            open.push(Open::Map { table, left: len, key: None, slots: self.slots });
            self.held += 1;
            self.slots += 1;
            Ok(None)
        }
    }
}

/// struct 1.4 (Roberto Ierusalimschy's `struct.c`) as Redis 7.0 builds it
/// (`lua_struct.c`, with Redis's checks of sizes and offsets), on x86-64: native
/// little endian, `int` 4 bytes, `short` 2, `long` and `size_t` 8, native
/// alignment 8.
mod lua_struct {
    use super::c::{self, Args};
    use super::*;

    /// `MAXINTSIZE`: the largest size of `i` and `I`.
    const INT_SIZE_MAX: i32 = 32;
    /// `MAXALIGN`: the alignment `!` sets without a number.
    const ALIGN_NATIVE: i32 = 8;
    /// `sizeof(int)`: the size of `i` and `I` without a number.
    const INT_SIZE: i32 = 4;

    pub fn fill(lua: &Lua, t: &Table) -> Result<()> {
        t.set("pack", lua.create_function(|lua, args: MultiValue| pack(lua, Args::new(args)))?)?;
        t.set("unpack", lua.create_function(|lua, args: MultiValue| unpack(lua, &Args::new(args)))?)?;
        t.set("size", lua.create_function(|lua, args: MultiValue| size(lua, &Args::new(args)))?)?;
        Ok(())
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Endian {
        Big,
        Little,
    }

    /// `Header`: the endianness and the alignment in force, native and 1 at first.
    struct Header {
        endian: Endian,
        align: u64,
    }

    impl Header {
        fn new() -> Header {
            Header { endian: Endian::Little, align: 1 }
        }
    }

    /// A format string, read as C reads it: up to its first NUL.
    struct Format<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl<'a> Format<'a> {
        fn new(bytes: &'a [u8]) -> Format<'a> {
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            Format { bytes: &bytes[..end], at: 0 }
        }

        fn next(&mut self) -> Option<u8> {
            let opt = *self.bytes.get(self.at)?;
            self.at += 1;
            Some(opt)
        }

        fn digit(&self) -> Option<i32> {
            self.bytes.get(self.at).filter(|b| b.is_ascii_digit()).map(|b| i32::from(b - b'0'))
        }

        /// `getnum`: the number at this point of the format, `default` if none.
        fn number(&mut self, lua: &Lua, default: i32) -> Result<i32> {
            if self.digit().is_none() {
                return Ok(default);
            }
            let mut a: i32 = 0;
            while let Some(d) = self.digit() {
                if a > i32::MAX / 10 || a * 10 > i32::MAX - d {
                    return c::error(lua, "integral size overflow");
                }
                a = a * 10 + d;
                self.at += 1;
            }
            Ok(a)
        }
    }

    /// `optsize`: the bytes of option `opt` (0 for those with no size).
    fn opt_size(lua: &Lua, opt: u8, fmt: &mut Format<'_>) -> Result<u64> {
        Ok(match opt {
            b'B' | b'b' => 1,
            b'H' | b'h' => 2,
            b'L' | b'l' | b'T' | b'd' => 8,
            b'f' => 4,
            b'x' => 1,
            b'c' => fmt.number(lua, 1)? as u64,
            b'i' | b'I' => {
                let size = fmt.number(lua, INT_SIZE)?;
                if size > INT_SIZE_MAX {
                    return c::error(lua, format!("integral size {size} is larger than limit of {INT_SIZE_MAX}"));
                }
                size as u64
            }
            _ => 0,
        })
    }

    /// `gettoalign`: the padding before an option of `size` bytes at `len`.
    fn to_align(len: u64, h: &Header, opt: u8, size: u64) -> u64 {
        if size == 0 || opt == b'c' {
            return 0;
        }
        let size = size.min(h.align);
        (size.wrapping_sub(len & (size - 1))) & (size - 1)
    }

    /// `controloptions`: spaces, endianness and alignment; any other option is
    /// invalid.
    fn control(lua: &Lua, opt: u8, fmt: &mut Format<'_>, h: &mut Header) -> Result<()> {
        match opt {
            b' ' => {}
            b'>' => h.endian = Endian::Big,
            b'<' => h.endian = Endian::Little,
            b'!' => {
                let a = fmt.number(lua, ALIGN_NATIVE)?;
                if a <= 0 || a & (a - 1) != 0 {
                    return c::error(lua, format!("alignment {a} is not a power of 2"));
                }
                h.align = a as u64;
            }
            _ => return c::arg_error(lua, 1, &format!("invalid format option '{}'", char::from(opt))),
        }
        Ok(())
    }

    fn is_integer(opt: u8) -> bool {
        matches!(opt, b'b' | b'B' | b'h' | b'H' | b'l' | b'L' | b'T' | b'i' | b'I')
    }

    /// `bytes` (little endian) in the order `endian` wants.
    fn ordered<const N: usize>(mut bytes: [u8; N], endian: Endian) -> [u8; N] {
        if endian == Endian::Big {
            bytes.reverse();
        }
        bytes
    }

    /// `struct.pack(fmt, ...)`.
    fn pack(lua: &Lua, mut args: Args) -> Result<mlua::String> {
        let format = c::check_string(lua, &args, 1)?;
        // `b_pack` pushes a nil after its arguments: the first one missing is nil.
        args.0.push(Value::Nil);
        let args = &args;
        let format = format.as_bytes();
        let mut fmt = Format::new(&format);
        let mut h = Header::new();
        let mut arg = 2;
        let mut out: Vec<u8> = Vec::new();
        while let Some(opt) = fmt.next() {
            let size = opt_size(lua, opt, &mut fmt)?;
            let padding = to_align(out.len() as u64, &h, opt, size);
            out.resize(out.len() + padding as usize, 0);
            match opt {
                _ if is_integer(opt) => {
                    let n = c::check_number(lua, args, arg)?;
                    arg += 1;
                    put_integer(&mut out, n, h.endian, size as usize);
                }
                b'x' => out.push(0),
                b'f' => {
                    let n = c::check_number(lua, args, arg)? as f32;
                    arg += 1;
                    out.extend_from_slice(&ordered(n.to_le_bytes(), h.endian));
                }
                b'd' => {
                    let n = c::check_number(lua, args, arg)?;
                    arg += 1;
                    out.extend_from_slice(&ordered(n.to_le_bytes(), h.endian));
                }
                b'c' | b's' => {
                    let s = c::check_string(lua, args, arg)?;
                    arg += 1;
                    let s = s.as_bytes();
                    let size = if size == 0 { s.len() as u64 } else { size };
                    if (s.len() as u64) < size {
                        // (`luaL_argcheck` after the argument was counted.)
                        return c::arg_error(lua, arg as i64, "string too short");
                    }
                    out.extend_from_slice(&s[..size as usize]);
                    if opt == b's' {
                        out.push(0);
                    }
                }
                _ => control(lua, opt, &mut fmt, &mut h)?,
            }
            if out.len() > ENCODED_BYTES_MAX {
                return c::memory_error();
            }
        }
        lua.create_string(out)
    }

    /// `putinteger`: `n` in `size` bytes (past 8 of them, zeros).
    fn put_integer(out: &mut Vec<u8>, n: f64, endian: Endian, size: usize) {
        let mut value = if n < 0.0 { c::c_i64(n) as u64 } else { c::c_u64(n) };
        let start = out.len();
        out.resize(start + size, 0);
        let field = &mut out[start..];
        for i in 0..size {
            let at = if endian == Endian::Little { i } else { size - 1 - i };
            field[at] = value as u8;
            value >>= 8;
        }
    }

    /// `getinteger`: the `size` bytes of `field` as a number (past 8 bytes, the
    /// last 8 read count; the sign mask shifted as x86-64 shifts, modulo 64).
    fn get_integer(field: &[u8], endian: Endian, signed: bool) -> f64 {
        let size = field.len();
        let mut l: u64 = 0;
        for i in 0..size {
            let at = if endian == Endian::Big { i } else { size - 1 - i };
            l = l << 8 | u64::from(field[at]);
        }
        if !signed {
            return l as f64;
        }
        let shift = (size as i64 * 8 - 1) & 63;
        let mask = u64::MAX << shift;
        if l & mask != 0 {
            l |= mask;
        }
        l as i64 as f64
    }

    /// `struct.unpack(fmt, data [, init])`: the values, then the position after them.
    fn unpack(lua: &Lua, args: &Args) -> Result<MultiValue> {
        let format = c::check_string(lua, args, 1)?;
        let format = format.as_bytes();
        let data = c::check_string(lua, args, 2)?;
        let data = data.as_bytes();
        let ld = data.len() as u64;
        let init = c::opt_integer(lua, args, 3, 1)? as u64;
        if init == 0 {
            return c::arg_error(lua, 3, "offset must be 1 or greater");
        }
        let mut pos = init - 1;
        let mut fmt = Format::new(&format);
        let mut h = Header::new();
        let mut values: Vec<Value> = Vec::new();
        // Values Rust may return at once, as `cmsgpack.unpack` (the arguments
        // take room too), and strings it may hold.
        let returned_max = (RETURNED_VALUES_MAX + 1).saturating_sub(args.len());
        let mut strings = 0;
        while let Some(opt) = fmt.next() {
            let size = opt_size(lua, opt, &mut fmt)?;
            pos = pos.wrapping_add(to_align(pos, &h, opt, size));
            if size > ld || pos > ld - size {
                return c::arg_error(lua, 2, "data string too short");
            }
            let full = args.len() + values.len() + 2 > C_STACK_SLOTS_MAX;
            if full || values.len() + 1 >= returned_max || strings >= HANDLES_HELD_MAX {
                return c::error(lua, "stack overflow (too many results)");
            }
            let at = pos as usize;
            let mut size = size;
            match opt {
                _ if is_integer(opt) => {
                    let n = get_integer(&data[at..at + size as usize], h.endian, opt.is_ascii_lowercase());
                    values.push(Value::Number(n));
                }
                b'x' => {}
                b'f' => {
                    let bytes: [u8; 4] = data[at..at + 4].try_into().unwrap_or_default();
                    values.push(Value::Number(f64::from(f32::from_le_bytes(ordered(bytes, h.endian)))));
                }
                b'd' => {
                    let bytes: [u8; 8] = data[at..at + 8].try_into().unwrap_or_default();
                    values.push(Value::Number(f64::from_le_bytes(ordered(bytes, h.endian))));
                }
                b'c' => {
                    if size == 0 {
                        let previous = values.last().and_then(|v| c::to_number(lua, Some(v)));
                        let Some(n) = previous else {
                            return c::error(lua, "format 'c0' needs a previous size");
                        };
                        if let Some(Value::String(_)) = values.pop() {
                            strings -= 1;
                        }
                        size = c::c_u64(n);
                        if size > ld - pos {
                            return c::arg_error(lua, 2, "data string too short");
                        }
                    }
                    values.push(Value::String(lua.create_string(&data[at..at + size as usize])?));
                    strings += 1;
                }
                b's' => {
                    let Some(len) = data[at..].iter().position(|&b| b == 0) else {
                        return c::error(lua, "unfinished string in data");
                    };
                    values.push(Value::String(lua.create_string(&data[at..at + len])?));
                    strings += 1;
                    size = len as u64 + 1;
                }
                _ => control(lua, opt, &mut fmt, &mut h)?,
            }
            pos = pos.wrapping_add(size);
        }
        values.push(Value::Number(pos.wrapping_add(1) as i64 as f64));
        Ok(MultiValue::from_iter(values))
    }

    /// `struct.size(fmt)`: the bytes `pack` makes of `fmt`.
    fn size(lua: &Lua, args: &Args) -> Result<Value> {
        let format = c::check_string(lua, args, 1)?;
        let format = format.as_bytes();
        let mut fmt = Format::new(&format);
        let mut h = Header::new();
        let mut pos: u64 = 0;
        while let Some(opt) = fmt.next() {
            let size = opt_size(lua, opt, &mut fmt)?;
            pos = pos.wrapping_add(to_align(pos, &h, opt, size));
            if opt == b's' {
                return c::arg_error(lua, 1, "option 's' has no fixed size");
            } else if opt == b'c' && size == 0 {
                return c::arg_error(lua, 1, "option 'c0' has no fixed size");
            }
            if !opt.is_ascii_alphanumeric() {
                control(lua, opt, &mut fmt, &mut h)?;
            }
            pos = pos.wrapping_add(size);
        }
        Ok(Value::Number(pos as i64 as f64))
    }
}

/// LuaBitOp 1.0.2.
mod bit {
    use super::c::{self, Args};
    use super::*;

    type Op = fn(&Lua, &Args) -> Result<Value>;

    /// The functions in the order `luaL_register` sets them.
    const FUNCTIONS: [(&str, Op); 12] = [
        ("tobit", |lua, a| ret(barg(lua, a, 1)?)),
        ("bnot", |lua, a| ret(!barg(lua, a, 1)?)),
        ("band", |lua, a| fold(lua, a, |x, y| x & y)),
        ("bor", |lua, a| fold(lua, a, |x, y| x | y)),
        ("bxor", |lua, a| fold(lua, a, |x, y| x ^ y)),
        ("lshift", |lua, a| shift(lua, a, |b, n| b << n)),
        ("rshift", |lua, a| shift(lua, a, |b, n| b >> n)),
        ("arshift", |lua, a| shift(lua, a, |b, n| ((b as i32) >> n) as u32)),
        ("rol", |lua, a| shift(lua, a, u32::rotate_left)),
        ("ror", |lua, a| shift(lua, a, u32::rotate_right)),
        ("bswap", |lua, a| ret(barg(lua, a, 1)?.swap_bytes())),
        ("tohex", tohex),
    ];

    pub fn fill(lua: &Lua, t: &Table) -> Result<()> {
        for (name, f) in FUNCTIONS {
            t.set(name, lua.create_function(move |lua, args: MultiValue| f(lua, &Args::new(args)))?)?;
        }
        Ok(())
    }

    /// `barg`: argument `narg` as 32 bits, the low word of the number plus
    /// 2^52+2^51 (so rounded to even, modulo 2^32); not a number is an error.
    fn barg(lua: &Lua, args: &Args, narg: usize) -> Result<u32> {
        let n = c::to_number(lua, args.get(narg));
        let b = (n.unwrap_or(0.0) + 6_755_399_441_055_744.0).to_bits() as u32;
        if b == 0 && n.is_none() {
            return c::type_error(lua, args, narg, "number");
        }
        Ok(b)
    }

    /// `BRET`: the bits as a signed 32-bit number.
    fn ret(b: u32) -> Result<Value> {
        Ok(Value::Integer(i64::from(b as i32)))
    }

    /// `band`, `bor`, `bxor`: the first argument, then the others from the last.
    fn fold(lua: &Lua, args: &Args, op: fn(u32, u32) -> u32) -> Result<Value> {
        let mut b = barg(lua, args, 1)?;
        for i in (2..=args.len()).rev() {
            b = op(b, barg(lua, args, i)?);
        }
        ret(b)
    }

    fn shift(lua: &Lua, args: &Args, op: fn(u32, u32) -> u32) -> Result<Value> {
        let b = barg(lua, args, 1)?;
        let n = barg(lua, args, 2)? & 31;
        ret(op(b, n))
    }

    /// `tohex(x [, n])`: `n` hex digits (8 by default), uppercase when `n` is
    /// negative, 8 at most.
    fn tohex(lua: &Lua, args: &Args) -> Result<Value> {
        let mut b = barg(lua, args, 1)?;
        let n = match args.get(2) {
            None => 8,
            Some(_) => barg(lua, args, 2)? as i32,
        };
        let digits: &[u8; 16] = if n < 0 { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
        let n = n.unsigned_abs().min(8) as usize;
        let mut buf = [0u8; 8];
        for slot in buf[..n].iter_mut().rev() {
            *slot = digits[(b & 15) as usize];
            b >>= 4;
        }
        Ok(Value::String(lua.create_string(&buf[..n])?))
    }
}

#[cfg(test)]
mod tests {
    use super::c::{fmt_g, strtod};
    use super::*;

    /// A Lua like a script's, with the libraries.
    fn lua() -> Lua {
        let lua =
            Lua::new_with(mlua::StdLib::TABLE | mlua::StdLib::STRING | mlua::StdLib::MATH, Default::default()).unwrap();
        install(&lua).unwrap();
        lua
    }

    fn eval<T: mlua::FromLuaMulti>(lua: &Lua, code: &str) -> T {
        lua.load(code).set_name("@user_script").eval().unwrap()
    }

    #[test]
    fn numbers_are_written_as_cs_printf_writes_them() {
        let lua = lua();
        let format: mlua::Function = eval(&lua, "return string.format");
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut samples = vec![
            99999999999999.0,
            100000000000000.0,
            -99999999999999.0,
            999.0,
            1000.0,
            0.1,
            0.5,
            1.5,
            2.5,
            0.125,
            0.375,
            1e15 + 0.5,
            123456789012345678.0,
            1e-5,
            1e-4,
            9.9999999999999e14,
        ];
        samples.extend([5e-324, f64::MAX, f64::MIN_POSITIVE, 1e21, 1e20, 99999999999999.5, 0.00001234]);
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if v.is_finite() {
                samples.push(v);
            }
            samples.push((x % 1_000_000) as f64 / 64.0);
            samples.push((x % 1_000_000_000_000_000) as f64 - 5e14);
        }
        for v in samples {
            for p in [14, 1, 3, 17] {
                let want: String = format.call((format!("%.{p}g"), v)).unwrap();
                assert_eq!(fmt_g(v, p), want, "{v:e} at %.{p}g");
            }
        }
    }

    #[test]
    fn strtod_reads_what_lua_reads_as_a_number() {
        let lua = lua();
        let tonumber: mlua::Function = lua.globals().get("tonumber").unwrap();
        let cases = [
            "1",
            "-1",
            "+1",
            "1.",
            "-.5",
            "1e5",
            "1E-5",
            "0x10",
            "0X1p3",
            "-0x1.8p1",
            "0x.8",
            "0x1.fffffffffffff8p0",
            "0x1p-1074",
            "0x1p-1075",
            "0x1.8p-1074",
            "0x3p-1076",
            "0x1p1023",
            "0x1.fffffffffffffp1023",
            "0x1p1024",
            "0x123456789abcdef123p0",
            "0x0.0000000000001p-1022",
            "inf",
            "-Infinity",
            "1e400",
            "1e-400",
            "2.2250738585072011e-308",
            "123456789012345678901234567890",
            "0.1",
            "4.9e-324",
            "2.5e-324",
            "1.7976931348623158e308",
            "1.7976931348623159e308",
        ];
        for case in cases {
            let want: Option<f64> = tonumber.call(case).unwrap();
            let (got, len) = strtod(case.as_bytes()).unwrap();
            assert_eq!(len, case.len(), "{case}");
            assert_eq!(got.to_bits(), want.unwrap().to_bits(), "{case}: {got:e}");
        }
        assert_eq!(strtod(b"0x"), Some((0.0, 1)));
        assert_eq!(strtod(b"1e+"), Some((1.0, 1)));
        assert_eq!(strtod(b"-"), None);
        assert_eq!(strtod(b".x"), None);
        assert_eq!(strtod(b"infinit").map(|(_, n)| n), Some(3));
        assert_eq!(strtod(b"nan(12_a)x").map(|(_, n)| n), Some(9));
        assert_eq!(strtod(b"nan(12").map(|(_, n)| n), Some(3));
        assert!(strtod(b"-nan").unwrap().0.is_sign_negative());
    }

    #[test]
    fn a_library_error_carries_the_callers_position_and_pcall_gets_its_text() {
        let lua = lua();
        let e = lua.load("local x = 1\nreturn cjson.decode('[1,2')").set_name("@user_script").exec().unwrap_err();
        let first = e.to_string();
        assert_eq!(
            first.lines().next(),
            Some("user_script:2: Expected comma or array end but found T_END at character 5")
        );
        let caught: (bool, String) = eval(&lua, "return pcall(cjson.decode, '[1,2')");
        assert_eq!(caught, (false, "Expected comma or array end but found T_END at character 5".to_string()));
        let caught: (bool, String) = eval(&lua, "return pcall(function() return bit.band(1, {}) end)");
        assert_eq!(caught.1, "user_script:1: bad argument #2 to 'band' (number expected, got table)");
        let handled: (bool, String) =
            eval(&lua, "return xpcall(function() cmsgpack.unpack('\\205') end, function(e) return 'got ' .. e end)");
        assert_eq!(handled.1, "got user_script:1: Missing bytes in input.");
        // Errors that are not the libraries' pass through as they are.
        let other: (bool, String) = eval(&lua, "return pcall(error, 'mine')");
        assert_eq!(other.1, "mine");
    }

    #[test]
    fn json_round_trips_and_keeps_lua_order() {
        let lua = lua();
        let text: String =
            eval(&lua, r#"return cjson.encode(cjson.decode('{"b":[1,2.5,null,true,"x\\/\\u00e9"],"a":{}}'))"#);
        let order: String = eval(
            &lua,
            r#"local s = '' for k in pairs(cjson.decode('{"b":1,"a":2,"c":3}')) do s = s .. k end return s"#,
        );
        let pairs_order: String =
            eval(&lua, r#"local t = {b=1, a=2, c=3} local s = '' for k in pairs(t) do s = s .. k end return s"#);
        let encoded_order: String = eval(&lua, "return cjson.encode({b=1, a=2, c=3})");
        let keys: Vec<char> = encoded_order.chars().filter(|c| "abc".contains(*c)).collect();
        assert_eq!(keys.into_iter().collect::<String>(), pairs_order);
        assert_eq!(order.len(), 3);
        assert!(
            text.starts_with('{') && text.contains(r#""b":[1,2.5,null,true,"x\/é"]"#) && text.contains(r#""a":{}"#)
        );
        assert_eq!(eval::<String>(&lua, "return cjson.encode({-0, 1e-20, 1e20})"), "[-0,1e-20,1e+20]");
    }

    #[test]
    fn msgpack_numbers_take_the_smallest_encoding() {
        let lua = lua();
        let packed: mlua::String =
            eval(&lua, "return cmsgpack.pack(0, -1, 200, -200, 70000, 2^40, -2^40, 0.5, 0.1, {1, {a = true}})");
        let want: &[u8] = &[
            0x00, 0xff, 0xcc, 200, 0xd1, 0xff, 0x38, 0xce, 0, 1, 0x11, 0x70, 0xcf, 0, 0, 1, 0, 0, 0, 0, 0, 0xd3, 0xff,
            0xff, 0xff, 0, 0, 0, 0, 0, 0xca, 0x3f, 0, 0, 0, 0xcb, 0x3f, 0xb9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a, 0x92,
            0x01, 0x81, 0xa1, b'a', 0xc3,
        ];
        assert_eq!(&packed.as_bytes()[..], want);
        let back: (i64, i64, f64, i64) = eval(
            &lua,
            "local a, b, c, d = cmsgpack.unpack(cmsgpack.pack(7, -300, 0.5, {x = {1}})) return a, b, c, d.x[1]",
        );
        assert_eq!(back, (7, -300, 0.5, 1));
    }

    #[test]
    fn depths_raised_past_the_limits_end_in_errors_not_crashes() {
        let lua = lua();
        let encode: String = eval(
            &lua,
            "local j = cjson.new() j.encode_max_depth(100000) local t = {} t[1] = t return select(2, pcall(j.encode, t))",
        );
        assert_eq!(encode, format!("Cannot serialise, excessive nesting ({})", ENCODE_NESTING_MAX + 1));
        let decode: String = eval(
            &lua,
            "local j = cjson.new() j.decode_max_depth(100000) return select(2, pcall(j.decode, string.rep('[', 100000)))",
        );
        let at = OPEN_TABLES_MAX + 1;
        assert_eq!(decode, format!("Found too many nested data structures ({at}) at character {at}"));
        let strings: String =
            eval(&lua, "return select(2, pcall(cmsgpack.unpack, string.rep(string.char(161, 97), 7000)))");
        assert!(strings.starts_with("stack overflow (too many return values at once"), "{strings}");
        let numbers: String = eval(&lua, "return select(2, pcall(cmsgpack.unpack, string.rep(string.char(1), 7998)))");
        assert!(numbers.starts_with("stack overflow (too many return values at once"), "{numbers}");
        let most: i64 = eval(
            &lua,
            &format!("return select('#', cmsgpack.unpack(string.rep(string.char(1), {RETURNED_VALUES_MAX})))"),
        );
        assert_eq!(most, RETURNED_VALUES_MAX as i64);
    }

    #[test]
    fn struct_unpack_past_the_values_rust_can_return_ends_in_an_error_not_a_panic() {
        let lua = lua();
        let count = |format: &str| -> String {
            let code = format!("return select('#', struct.unpack({format}, string.rep('a', 8000)))");
            match lua.load(code).set_name("@user_script").eval::<i64>() {
                Ok(n) => n.to_string(),
                Err(e) => e.to_string().lines().next().unwrap_or_default().to_string(),
            }
        };
        // Two arguments: RETURNED_VALUES_MAX - 1 values, the next position last.
        let most = RETURNED_VALUES_MAX - 2;
        assert_eq!(count(&format!("string.rep('b', {most})")), (most + 1).to_string());
        let over = count(&format!("string.rep('b', {})", most + 1));
        assert!(over.ends_with("user_script:1: stack overflow (too many results)"), "{over}");
        assert_eq!(count(&format!("string.rep('c1', {HANDLES_HELD_MAX})")), (HANDLES_HELD_MAX + 1).to_string());
        let strings = count(&format!("string.rep('c1', {})", HANDLES_HELD_MAX + 1));
        assert!(strings.ends_with("user_script:1: stack overflow (too many results)"), "{strings}");
    }

    #[test]
    fn deep_json_nests_on_a_small_stack() {
        // A script runs on a runtime worker's stack: 1000 levels of tables must
        // not need much of it.
        let run = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let lua = lua();
                let len: i64 = eval(
                    &lua,
                    "local t = {} local c = t for i = 1, 999 do c[1] = {} c = c[1] end return #cjson.encode(t)",
                );
                let objects: i64 = eval(
                    &lua,
                    "local t = {} local c = t for i = 1, 999 do c.k = {} c = c.k end return #cjson.encode(t)",
                );
                let decoded: bool =
                    eval(&lua, "return type(cjson.decode(string.rep('[', 1000) .. string.rep(']', 1000))) == 'table'");
                (len, objects, decoded)
            })
            .unwrap();
        assert_eq!(run.join().unwrap(), (2000, 999 * 6 + 2, true));
    }
}
