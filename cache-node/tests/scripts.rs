//! Lua scripts as clients see them, on the real path of a node:
//!
//! - the same commands sent as raw RESP to a real `redis-server` (7.0, Debian's
//!   package) and to a node, every reply compared: EVAL, EVALSHA, EVAL_RO,
//!   EVALSHA_RO and SCRIPT with their errors, the conversions both ways, KEYS and
//!   ARGV, `redis.call` and `redis.pcall` of every type's commands, error replies
//!   with their `script: …, on @user_script:<line>.` suffix, read-only globals,
//!   scripts inside MULTI, and the `cjson`, `cmsgpack` and `bit` libraries: every
//!   function, their number formats and edge cases, and their errors as `pcall`
//!   catches them and as they reach the client;
//! - a script's writes at one MockCluster site reach the other as one unit: a
//!   reader there never sees one key of the script written and the other not;
//! - redis-py's `Lock` (its acquire, extend and release are scripts) and a
//!   `register_script` rate limiter, across two sites.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Instant;
use support::redis_server::differences;

const FIXED: &[&str] = &[
    // Conversions, Lua to Redis
    "EVAL \"return 1\" 0",
    "EVAL \"return 3.99\" 0",
    "EVAL \"return -3.99\" 0",
    "EVAL \"return 'x'\" 0",
    "EVAL \"return {1, 2, {3, 'a'}, nil, 5}\" 0",
    "EVAL \"return {true, false}\" 0",
    "EVAL \"return true\" 0",
    "EVAL \"return false\" 0",
    "EVAL \"return nil\" 0",
    "EVAL \"return {err = 'My error'}\" 0",
    "EVAL \"return {ok = 'FINE'}\" 0",
    "EVAL \"return redis.error_reply('ERR mine')\" 0",
    "EVAL \"return redis.status_reply('PONG')\" 0",
    "EVAL \"return redis.sha1hex('')\" 0",
    "EVAL \"return {}\" 0",
    // KEYS and ARGV, numkeys
    "EVAL \"return {KEYS[1], KEYS[2], ARGV[1], ARGV[2]}\" 2 k1 k2 a1 a2",
    "EVAL \"return #ARGV\" 0 a b c",
    "EVAL \"return 1\" -1",
    "EVAL \"return 1\" 2 a",
    "EVAL \"return 1\" x",
    "EVAL",
    // Conversions, Redis to Lua
    "SET s abc",
    "RPUSH l a b c",
    "HSET h f v g w",
    "EVAL \"return redis.call('get', KEYS[1])\" 1 s",
    "EVAL \"return redis.call('get', 'nosuch')\" 0",
    "EVAL \"return type(redis.call('get', 'nosuch'))\" 0",
    "EVAL \"return redis.call('set', 'x', 'y')\" 0",
    "EVAL \"return redis.call('set', 'x', 'y')['ok']\" 0",
    "EVAL \"return redis.call('lrange', 'l', 0, -1)\" 0",
    "EVAL \"return redis.call('incr', 'n') + 1\" 0",
    "EVAL \"return redis.call('hgetall', 'h')\" 0",
    "EVAL \"return redis.call('exists', 's', 'x', 'nosuch')\" 0",
    "EVAL \"return redis.pcall('incr', 's')\" 0",
    "EVAL \"return redis.pcall('incr', 's')['err']\" 0",
    "EVAL \"local ok, e = pcall(redis.call, 'incr', 's'); return {tostring(ok), type(e), e}\" 0",
    "EVAL \"local ok, e = pcall(function() redis.call('incr', 's') end); return e\" 0",
    "EVAL \"local ok, e = pcall(redis.call, 'incr', 's'); if not ok then error(e) end\" 0",
    "EVAL \"local ok, e = pcall(redis.call, 'incr', 's'); return redis.error_reply(e)\" 0",
    "EVAL \"return {pcall(redis.call, 'get', 's')}\" 0",
    "EVAL \"local ok, e = pcall(error, 'mine'); return {tostring(ok), e}\" 0",
    "EVAL \"pcall(redis.call, 'incr', 's'); return redis.call('incr', 's')\" 0",
    "EVAL \"return redis.call('incrbyfloat', 'f', 1.5)\" 0",
    "EVAL \"return redis.call('set', 'num', 42)\" 0",
    "GET num",
    "EVAL \"return redis.call('zadd', 'z', 1.5, 'm')\" 0",
    "EVAL \"return redis.call('zscore', 'z', 'm')\" 0",
    "EVAL \"return redis.call('sadd', 'st', 'a', 'b')\" 0",
    "EVAL \"return redis.call('scard', 'st')\" 0",
    // Errors, with their suffix
    "EVAL \"return redis.call('incr', 's')\" 0",
    "EVAL \"local a = 1\nreturn redis.call('incr', 's')\" 0",
    "EVAL \"return x\" 0",
    "EVAL \"x = 1\" 0",
    "EVAL \"error('boom')\" 0",
    "EVAL \"error({err = 'ERR custom'})\" 0",
    "EVAL \"return redis.call('nosuch')\" 0",
    "EVAL \"return redis.call('set', 'k')\" 0",
    "EVAL \"return redis.call('blpop', 'nol', 0)\" 0",
    "EVAL \"return redis.call('multi')\" 0",
    "EVAL \"return redis.call('subscribe', 'x')\" 0",
    "EVAL \"return redis.call('eval', 'return 1', 0)\" 0",
    "EVAL \"return redis.call('get', {})\" 0",
    "EVAL \"return 1 +\" 0",
    "EVAL \"return redis.call('lpush', 's', 'v')\" 0",
    // The script cache
    "SCRIPT LOAD \"return 'loaded'\"",
    "EVALSHA b534286061d4b9e4026607613b95c06c06015ae8 0",
    "EVALSHA B534286061D4B9E4026607613B95C06C06015AE8 0",
    "EVALSHA nosuch 0",
    "SCRIPT EXISTS b534286061d4b9e4026607613b95c06c06015ae8 nosuch",
    "EVAL \"return 'cached by eval'\" 0",
    "SCRIPT EXISTS 14a0ec5969ac10dc856a79479466fd953463f052",
    "SCRIPT FLUSH",
    "SCRIPT EXISTS b534286061d4b9e4026607613b95c06c06015ae8",
    "SCRIPT FLUSH SYNC",
    "SCRIPT FLUSH LATER",
    "SCRIPT LOAD",
    "SCRIPT NOSUCH",
    "SCRIPT KILL",
    // Read-only scripts
    "EVAL_RO \"return redis.call('get', 's')\" 0",
    "EVAL_RO \"return redis.call('set', 's', 'v')\" 0",
    "GET s",
    // Writes of a script, and a script in a transaction
    "EVAL \"redis.call('set', KEYS[1], ARGV[1]); redis.call('rpush', KEYS[2], ARGV[1]); return redis.call('llen', KEYS[2])\" 2 w1 w2 hello",
    "GET w1",
    "LRANGE w2 0 -1",
    "MULTI",
    "EVAL \"return redis.call('incr', KEYS[1])\" 1 counter",
    "EVAL \"return redis.call('incr', KEYS[1])\" 1 counter",
    "EXEC",
    "EVAL \"local n = 0\nfor i = 1, 100 do n = n + redis.call('incr', 'loop') end\nreturn n\" 0",
    "EVAL \"return tonumber(ARGV[1]) * 2\" 0 21",
    "EVAL \"return string.rep('ab', 3) .. table.concat({1, 2}, ',')\" 0",
    "EVAL \"return math.floor(7 / 2)\" 0",
    // cjson.encode: numbers, escapes, arrays and objects in Lua's order, errors
    "EVAL \"return cjson.encode({1, 2, 3})\" 0",
    "EVAL \"return cjson.encode({b = 1, a = 2, c = {d = 'x', e = {}}, [5] = true})\" 0",
    "EVAL \"return cjson.encode({1e20, 1e-20, -0, 0.1, 1/3, 2^53, 123456789012345678, -1.5e300, 100, -7.25})\" 0",
    "EVAL \"return cjson.encode(string.char(47, 92, 34, 0, 1, 8, 9, 10, 12, 13, 31, 32, 127, 128, 255) .. 'é')\" 0",
    "EVAL \"return cjson.encode({1, nil, 3})\" 0",
    "EVAL \"return cjson.encode({[10] = 1})\" 0",
    "EVAL \"return cjson.encode({[11] = 1})\" 0",
    "EVAL \"return cjson.encode({[3] = 1, [4] = 1, [5] = 1, [6] = 1, [12] = 1})\" 0",
    "EVAL \"return cjson.encode({[2] = 1, [4] = 3, [6] = 1, [8] = 1, [10] = 1, [12] = 1})\" 0",
    "EVAL \"return cjson.encode({[1] = 1, [2] = 2, [2^31] = 3})\" 0",
    "EVAL \"return cjson.encode({[2^31] = 1, [1] = 2})\" 0",
    "EVAL \"return cjson.encode({[2^40] = 1, [2^31 - 1] = 2})\" 0",
    "EVAL \"return cjson.encode({[1.5] = 1, [-1] = 2, [0] = 3, ['1'] = 4, [1e300] = 5})\" 0",
    "EVAL \"return cjson.encode({})\" 0",
    "EVAL \"return cjson.encode({{}, {{}}, {a = {}}})\" 0",
    "EVAL \"return cjson.encode({cjson.null, false, true, 'x'})\" 0",
    "EVAL \"return cjson.encode(cjson.null)\" 0",
    "EVAL \"return cjson.encode(nil)\" 0",
    "EVAL \"return cjson.encode(12.5)\" 0",
    "EVAL \"return cjson.encode()\" 0",
    "EVAL \"return cjson.encode(1, 2)\" 0",
    "EVAL \"return cjson.encode(0/0)\" 0",
    "EVAL \"return cjson.encode({a = 1/0})\" 0",
    "EVAL \"return cjson.encode({[-1/0] = 1})\" 0",
    "EVAL \"return cjson.encode(function() end)\" 0",
    "EVAL \"return cjson.encode({x = coroutine.create(function() end)})\" 0",
    "EVAL \"return cjson.encode({[true] = 1})\" 0",
    "EVAL \"return cjson.encode({[{}] = 1})\" 0",
    "EVAL \"local t = {} t[1] = t return cjson.encode(t)\" 0",
    "EVAL \"local t = {} local c = t for i = 1, 999 do c.k = {} c = c.k end return #cjson.encode(t)\" 0",
    "EVAL \"local t = {} local c = t for i = 1, 1000 do c[1] = {} c = c[1] end return cjson.encode(t)\" 0",
    "EVAL \"local x = 1\nreturn cjson.encode({f = function() end})\" 0",
    "EVAL \"return {pcall(cjson.encode, {[true] = 1})}\" 0",
    "EVAL \"local ok, e = pcall(function() return cjson.encode(0/0) end) return e\" 0",
    "EVAL \"return redis.call('set', 'json', cjson.encode({name = 'x', n = 3}))\" 0",
    "EVAL \"return cjson.decode(redis.call('get', 'json')).n\" 0",
    // cjson.decode: values, strtod numbers, errors with their character
    "EVAL \"return cjson.decode('[1,2,3]')\" 0",
    r#"EVAL "local t = cjson.decode('{\"a\":[1,{\"b\":null}],\"c\":\"d\"}') return {t.a[1], type(t.a[2].b), tostring(t.a[2].b == cjson.null), t.c}" 0"#,
    r#"EVAL "return cjson.encode(cjson.decode([[{\"b\":1,\"a\":[true,false,null,\"\\u00e9\\ud83d\\ude00\\n\\/\\\"\\\\\\b\\f\\r\\t\"],\"c\":{}}]]))" 0"#,
    r#"EVAL "local s = '' for k in pairs(cjson.decode('{\"b\":1,\"a\":2,\"c\":3,\"d\":4}')) do s = s .. k end return s" 0"#,
    r#"EVAL "return cjson.decode([[\"\\u0000x\"]])" 0"#,
    "EVAL \"return tostring(cjson.null)\" 0",
    "EVAL \"return type(cjson.null)\" 0",
    "EVAL \"return cjson.decode('null') == cjson.null\" 0",
    "EVAL \"return {tostring(cjson.decode('0x10')), tostring(cjson.decode('-0x1p3')), tostring(cjson.decode('inf')), tostring(cjson.decode('-Infinity')), tostring(cjson.decode('NaN')), tostring(cjson.decode('-nan')), tostring(cjson.decode('+1')), tostring(cjson.decode('01')), tostring(cjson.decode('1.')), tostring(cjson.decode('-.5')), tostring(cjson.decode('1e400')), tostring(cjson.decode('1.5e-3')), tostring(cjson.decode(' 7 '))}\" 0",
    "EVAL \"return cjson.decode('[1,2')\" 0",
    "EVAL \"return cjson.decode('nul')\" 0",
    r#"EVAL "return cjson.decode('{\"a\":1,}')" 0"#,
    "EVAL \"return cjson.decode('[1,]')\" 0",
    "EVAL \"return cjson.decode('{1:2}')\" 0",
    r#"EVAL "return cjson.decode('{\"a\" 1}')" 0"#,
    r#"EVAL "return cjson.decode('{\"a\":1 \"b\"}')" 0"#,
    "EVAL \"return cjson.decode('[1] x')\" 0",
    "EVAL \"return cjson.decode('')\" 0",
    "EVAL \"return cjson.decode('  ')\" 0",
    r#"EVAL "return cjson.decode('\"abc')" 0"#,
    r#"EVAL "return cjson.decode([[\"a\\qb\"]])" 0"#,
    r#"EVAL "return cjson.decode([[\"a\\u12\"]])" 0"#,
    r#"EVAL "return cjson.decode([[\"\\ud800\"]])" 0"#,
    r#"EVAL "return cjson.decode([[\"\\ud800\\u0041\"]])" 0"#,
    r#"EVAL "return cjson.decode([[\"\\udc00\"]])" 0"#,
    "EVAL \"return cjson.decode('-')\" 0",
    "EVAL \"return cjson.decode('1e')\" 0",
    "EVAL \"return cjson.decode('.5')\" 0",
    "EVAL \"return cjson.decode('infinit')\" 0",
    "EVAL \"return cjson.decode('truex')\" 0",
    "EVAL \"return cjson.decode('[tru]')\" 0",
    "EVAL \"return cjson.decode('+x')\" 0",
    "EVAL \"return cjson.decode(string.rep('[', 1001))\" 0",
    r#"EVAL "return cjson.decode(string.rep('{\"a\":', 1001))" 0"#,
    "EVAL \"return cjson.decode('  ' .. string.rep('[', 1001))\" 0",
    "EVAL \"return #cjson.decode(string.rep('[', 1000) .. string.rep(']', 1000))\" 0",
    "EVAL \"return cjson.decode('a' .. string.char(0) .. 'b')\" 0",
    "EVAL \"return cjson.decode('[1]' .. string.char(0) .. 'x')\" 0",
    "EVAL \"return cjson.decode('[1' .. string.char(0) .. ']')\" 0",
    "EVAL \"return cjson.decode()\" 0",
    "EVAL \"return cjson.decode('1', 2)\" 0",
    "EVAL \"return cjson.decode({})\" 0",
    "EVAL \"return cjson.decode(123)\" 0",
    "EVAL \"local x = 1\nreturn cjson.decode('[1,2')\" 0",
    "EVAL \"return {pcall(cjson.decode, '[1,2')}\" 0",
    "EVAL \"local ok, e = pcall(cjson.decode, '[1'); return {type(e), e}\" 0",
    "EVAL \"local ok, e = pcall(function() return cjson.decode('[1') end); return e\" 0",
    "EVAL \"local ok, e = pcall(cjson.decode, '['); if not ok then error(e) end\" 0",
    "EVAL \"local ok, e = xpcall(function() return cjson.decode('{') end, function(m) return 'handled: ' .. m end); return e\" 0",
    // cjson's settings, on tables of their own (Redis keeps cjson's until SCRIPT FLUSH)
    "EVAL \"local j = cjson.new() return {j.encode_sparse_array()}\" 0",
    "EVAL \"local j = cjson.new() return {j.encode_max_depth(), j.decode_max_depth(), j.encode_number_precision(), j.encode_keep_buffer(), j.encode_invalid_numbers(), j.decode_invalid_numbers()}\" 0",
    "EVAL \"local j = cjson.new() j.encode_invalid_numbers(true) return j.encode({1/0, -1/0, 0/0, [1/0] = 1})\" 0",
    "EVAL \"local j = cjson.new() j.encode_invalid_numbers(true) return j.encode({[-1/0] = 1})\" 0",
    "EVAL \"local j = cjson.new() return {j.encode_invalid_numbers('null'), j.encode({1/0, 0/0})}\" 0",
    "EVAL \"local j = cjson.new() return j.encode_invalid_numbers('x')\" 0",
    "EVAL \"local j = cjson.new() return j.encode_invalid_numbers(1)\" 0",
    "EVAL \"local j = cjson.new() j.encode_number_precision(3) return j.encode({1/3, 12345, 0.0001})\" 0",
    "EVAL \"local j = cjson.new() return j.encode_number_precision(15)\" 0",
    "EVAL \"local j = cjson.new() j.encode_sparse_array(true) return j.encode({[20] = 1})\" 0",
    "EVAL \"local j = cjson.new() j.encode_sparse_array(false, 0) return #j.encode({[20] = 1})\" 0",
    "EVAL \"local j = cjson.new() return {j.encode_sparse_array(nil, 3, 4)}\" 0",
    "EVAL \"local j = cjson.new() return j.encode_sparse_array(1, 2, 3, 4)\" 0",
    "EVAL \"local j = cjson.new() return j.encode_sparse_array(false, -1)\" 0",
    "EVAL \"local j = cjson.new() return j.encode_sparse_array(false, 'x')\" 0",
    "EVAL \"local j = cjson.new() return j.encode_max_depth('x')\" 0",
    "EVAL \"local j = cjson.new() return j.encode_max_depth(0)\" 0",
    "EVAL \"local j = cjson.new() j.encode_max_depth(2) return j.encode({{{}}})\" 0",
    "EVAL \"local j = cjson.new() j.decode_max_depth(2) return j.decode('[[[]]]')\" 0",
    "EVAL \"local j = cjson.new() j.decode_invalid_numbers(false) return j.decode('0x10')\" 0",
    "EVAL \"local j = cjson.new() j.decode_invalid_numbers(false) return j.decode('nan')\" 0",
    "EVAL \"local j = cjson.new() j.decode_invalid_numbers(false) return j.decode('[-1.5e2]')\" 0",
    "EVAL \"local j = cjson.new() return {j.encode_keep_buffer('off'), j.encode_keep_buffer()}\" 0",
    "EVAL \"return {cjson._NAME, cjson._VERSION, cmsgpack._NAME, cmsgpack._VERSION, cmsgpack._COPYRIGHT, cmsgpack._DESCRIPTION}\" 0",
    // (the tables are filled when a field is first read: `pairs` comes after one)
    "EVAL \"local s = {} local _ = bit.band for k in pairs(cjson) do s[#s + 1] = k end return s\" 0",
    "EVAL \"local s = {} for k in pairs(cjson.new()) do s[#s + 1] = k end return s\" 0",
    "EVAL \"local s = {} local _ = cmsgpack.pack for k in pairs(cmsgpack) do s[#s + 1] = k end return s\" 0",
    "EVAL \"local s = {} local _ = cjson.null for k in pairs(bit) do s[#s + 1] = k end return s\" 0",
    // cmsgpack.pack: the smallest encodings, several values, tables, nesting
    "EVAL \"return cmsgpack.pack(1, 2, 'ab')\" 0",
    "EVAL \"return cmsgpack.pack()\" 0",
    "EVAL \"return cmsgpack.pack({1, 2, 3}, {a = 1}, {}, true, false, nil)\" 0",
    "EVAL \"return cmsgpack.pack(0, 127, 128, 255, 256, 65535, 65536, 2^32 - 1, 2^32, 2^53, -1, -32, -33, -128, -129, -32768, -32769, -2^31, -2^31 - 1, -2^53)\" 0",
    "EVAL \"return cmsgpack.pack(0.5, 0.1, 1/0, -1/0, 1e300, 2^63, -2^63, 2^64, 0/0, -0.0, 3.25)\" 0",
    "EVAL \"return cmsgpack.pack(string.rep('x', 31), string.rep('y', 32), '')\" 0",
    "EVAL \"return {#cmsgpack.pack(string.rep('x', 255)), #cmsgpack.pack(string.rep('x', 256)), #cmsgpack.pack(string.rep('x', 65535)), #cmsgpack.pack(string.rep('x', 65536))}\" 0",
    "EVAL \"return cmsgpack.pack(cjson.null, function() end)\" 0",
    "EVAL \"return cmsgpack.pack({[1] = 1, [3] = 3}, {[0] = 1}, {1.5}, {[1] = 1, [2] = 2, [4] = 3, [3] = 1}, {1e-20, -0})\" 0",
    "EVAL \"return cmsgpack.pack({b = 1, a = {x = 'y'}, [5] = false, [1.5] = {}})\" 0",
    "EVAL \"return cmsgpack.pack({[1] = 1, [2] = 2, [2^31] = 3})\" 0",
    "EVAL \"local t = {} for i = 1, 16 do t[i] = i end local m = {} for i = 1, 16 do m['k' .. i] = i end return cmsgpack.pack(t, m)\" 0",
    "EVAL \"local t = {} for i = 1, 70000 do t[i] = i % 3 end return #cmsgpack.pack(t)\" 0",
    "EVAL \"local t = {} local c = t for i = 1, 20 do c[1] = {} c = c[1] end return cmsgpack.pack(t)\" 0",
    "EVAL \"local t = {} t.a = t return cmsgpack.pack(t)\" 0",
    "EVAL \"return cmsgpack.pack(setmetatable({}, {__index = function() return 1 end}))\" 0",
    // cmsgpack.unpack, unpack_one, unpack_limit, and their errors
    "EVAL \"return {cmsgpack.unpack(cmsgpack.pack(1, 'a', {1, 2}, {x = 1}, true, 0.5))}\" 0",
    "EVAL \"local a, b, c, d = cmsgpack.unpack(cmsgpack.pack({x = {1, 2}}, -300, 'z', 1.5)) return {a.x[2], b, c, tostring(d)}\" 0",
    "EVAL \"return cmsgpack.unpack('')\" 0",
    "EVAL \"return select('#', cmsgpack.unpack(''))\" 0",
    "EVAL \"return {cmsgpack.unpack(string.char(192, 1))}\" 0",
    "EVAL \"return cmsgpack.unpack(string.char(193))\" 0",
    "EVAL \"return cmsgpack.unpack(string.char(205, 1))\" 0",
    "EVAL \"local x = 1\nreturn cmsgpack.unpack(string.char(205, 1))\" 0",
    "EVAL \"return cmsgpack.unpack(string.char(145))\" 0",
    "EVAL \"return cmsgpack.unpack(string.char(129, 192, 1))\" 0",
    "EVAL \"return cmsgpack.unpack(string.char(129, 192))\" 0",
    "EVAL \"return cmsgpack.unpack(string.char(129, 202, 127, 192, 0, 0, 1))\" 0",
    "EVAL \"return {cmsgpack.unpack(string.char(129, 1, 192))}\" 0",
    "EVAL \"return #cmsgpack.unpack(string.char(147, 1, 192, 3))\" 0",
    "EVAL \"return cmsgpack.unpack({})\" 0",
    "EVAL \"return cmsgpack.unpack(12)\" 0",
    "EVAL \"return cmsgpack.unpack()\" 0",
    "EVAL \"return {cmsgpack.unpack(string.char(196, 1, 97))}\" 0",
    "EVAL \"return {cmsgpack.unpack(string.char(217, 2, 97, 98) .. string.char(219, 0, 0, 0, 2, 97, 98) .. string.char(218, 0, 1, 99) .. string.char(161, 100))}\" 0",
    "EVAL \"return cmsgpack.unpack(string.char(219, 0, 0, 0, 3, 97, 98))\" 0",
    "EVAL \"return {cmsgpack.unpack(string.char(221, 0, 0, 0, 1, 5, 220, 0, 1, 6, 223, 0, 0, 0, 1, 5, 6, 222, 0, 1, 7, 8, 128, 144))}\" 0",
    "EVAL \"return {tostring(cmsgpack.unpack(string.char(202, 63, 192, 0, 0))), tostring(cmsgpack.unpack(string.char(203, 63, 248, 0, 0, 0, 0, 0, 0))), tostring(cmsgpack.unpack(string.char(202, 127, 192, 0, 0))), tostring(cmsgpack.unpack(string.char(202, 52, 0, 0, 1)))}\" 0",
    "EVAL \"return {cmsgpack.unpack(string.char(224, 208, 128, 209, 128, 0, 210, 128, 0, 0, 0, 204, 255, 205, 255, 255, 206, 255, 255, 255, 255, 127))}\" 0",
    "EVAL \"return {tostring(cmsgpack.unpack(string.char(207, 255, 255, 255, 255, 255, 255, 255, 255))), tostring(cmsgpack.unpack(string.char(207, 128, 0, 0, 0, 0, 0, 0, 1))), tostring(cmsgpack.unpack(string.char(211, 128, 0, 0, 0, 0, 0, 0, 1)))}\" 0",
    "EVAL \"return {cmsgpack.unpack_one(cmsgpack.pack(1, 2, 3))}\" 0",
    "EVAL \"return {cmsgpack.unpack_one(cmsgpack.pack(1, 2, 3), 1)}\" 0",
    "EVAL \"return {cmsgpack.unpack_one(cmsgpack.pack(1, 2, 3), 2)}\" 0",
    "EVAL \"return {cmsgpack.unpack_one(cmsgpack.pack(1, 2), 2)}\" 0",
    "EVAL \"return {cmsgpack.unpack_one('', 0)}\" 0",
    "EVAL \"return {cmsgpack.unpack_one(cmsgpack.pack(1, 2), 1.7)}\" 0",
    "EVAL \"return {cmsgpack.unpack_one(cmsgpack.pack(1, 2), nil, 'junk')}\" 0",
    "EVAL \"return {cmsgpack.unpack_limit(cmsgpack.pack(1, 2, 3), 2)}\" 0",
    "EVAL \"return {cmsgpack.unpack_limit(cmsgpack.pack(1, 2, 3), 2, 2)}\" 0",
    "EVAL \"return {cmsgpack.unpack_limit(cmsgpack.pack(1, 2), 0)}\" 0",
    "EVAL \"return {cmsgpack.unpack_limit(cmsgpack.pack(1, 2), 0, 1)}\" 0",
    "EVAL \"return cmsgpack.unpack_limit(cmsgpack.pack(1, 2), -1)\" 0",
    "EVAL \"return cmsgpack.unpack_limit(cmsgpack.pack(1, 2))\" 0",
    "EVAL \"return cmsgpack.unpack_limit({}, 'x')\" 0",
    "EVAL \"return cmsgpack.unpack_one(cmsgpack.pack(1), 5)\" 0",
    "EVAL \"return cmsgpack.unpack_one(cmsgpack.pack(1), -1)\" 0",
    "EVAL \"return cmsgpack.unpack_one(cmsgpack.pack(1), 'x')\" 0",
    "EVAL \"return select('#', cmsgpack.unpack(string.rep(string.char(1), 7000)))\" 0",
    "EVAL \"return select('#', cmsgpack.unpack(string.rep(string.char(1), 10000)))\" 0",
    "EVAL \"return select('#', cmsgpack.unpack(string.rep(string.char(1), 7997) .. string.char(145, 1)))\" 0",
    "EVAL \"return select('#', cmsgpack.unpack(string.rep(string.char(1), 7998) .. string.char(145, 1)))\" 0",
    "EVAL \"return {pcall(cmsgpack.unpack, string.char(205))}\" 0",
    "EVAL \"return {pcall(cmsgpack.pack)}\" 0",
    // bit: LuaBitOp's conversion, operations and errors
    "EVAL \"return {bit.tobit(0xffffffff), bit.tobit(2^32 + 5), bit.tobit(-1), bit.tobit(1.5), bit.tobit(2.5), bit.tobit(-1.5), bit.tobit('10'), bit.tobit('0x10'), bit.tobit(2^53), bit.tobit(2^60 + 3), bit.tobit(1e300), bit.tobit(0/0), bit.tobit(1, 2, {})}\" 0",
    "EVAL \"return bit.tobit()\" 0",
    "EVAL \"return bit.tobit('x')\" 0",
    "EVAL \"return bit.tobit(nil)\" 0",
    "EVAL \"return bit.tobit(true)\" 0",
    "EVAL \"return {bit.tohex(255), bit.tohex(-1), bit.tohex(255, 2), bit.tohex(255, -4), bit.tohex(255, 0), bit.tohex(255, 20), bit.tohex(255, -20), bit.tohex(0x12345678, 3), bit.tohex(65535, -2^31 + 1)}\" 0",
    "EVAL \"return bit.tohex(1, 'x')\" 0",
    "EVAL \"return bit.tohex(1, nil)\" 0",
    "EVAL \"return {bit.bnot(0), bit.bnot(-1), bit.band(0xff, 0x0f, 0x3), bit.bor(1, 2, 4), bit.bxor(7, 2), bit.band(5), bit.bor(5), bit.bxor(5, 1, 1, 1)}\" 0",
    "EVAL \"return bit.bor()\" 0",
    "EVAL \"return bit.band(1, {}, {})\" 0",
    "EVAL \"return {bit.lshift(1, 31), bit.lshift(1, 32), bit.lshift(1, 33), bit.rshift(-1, 28), bit.arshift(-256, 4), bit.rol(0x12345678, 8), bit.ror(0x12345678, 8), bit.rol(1, 0), bit.ror(1, 0), bit.bswap(0x12345678), bit.lshift(1, -1), bit.arshift(-1, 31), bit.rshift(-1, 0)}\" 0",
    "EVAL \"return bit.lshift(1)\" 0",
    "EVAL \"local f = bit.band return f(1, {})\" 0",
    "EVAL \"local t = {band = bit.band} return t.band(1, 'x')\" 0",
    "EVAL \"return {pcall(bit.band, 1, {})}\" 0",
    "EVAL \"local x = 1\nlocal y = 2\nreturn bit.tobit({})\" 0",
    // redis.call's line in the error reply, when the script tail-calls it
    "EVAL \"local call = redis.call\nlocal x = 1\ncall('incr', 's')\" 0",
    "EVAL \"local function f()\n  return redis.call('incr', 's')\nend\nreturn f()\" 0",
    "EVAL \"return redis.call(\n'incr', 's')\" 0",
    "EVAL \"return redis.call('incr',\n's')\" 0",
    "EVAL \"local x = 1\nreturn redis.pcall('incr', 's')\" 0",
    "EVAL \"local t = {}\nreturn {pcall(redis.call, 'incr', 's')}\" 0",
    "EVAL \"return {2^63, 2^64, -2^64, 1/0, -1/0, 0/0, 2^53 + 1, -3.7}\" 0",
    // struct.pack: every format character, both byte orders, sizes and counts
    "EVAL \"return struct.pack('bBhHlLTiI', -1, 255, -2, 65535, -3, 2^40, 7, -4, 4000000000)\" 0",
    "EVAL \"return struct.pack('>bBhHlLTiI', -1, 255, -2, 65535, -3, 2^40, 7, -4, 4000000000)\" 0",
    "EVAL \"return struct.pack('<bBhHlLTiI', -1, 255, -2, 65535, -3, 2^40, 7, -4, 4000000000)\" 0",
    "EVAL \"return struct.pack('>i1i2i3i5i7i8 <i1i2i3i5i7i8', 1, 2, 3, 5, 7, 8, 1, 2, 3, 5, 7, 8)\" 0",
    "EVAL \"return struct.pack('<i16I16i32>i16I9', -1, 1, -2, -1, 2^60)\" 0",
    "EVAL \"return struct.pack('i0I0i', 5, 6, 7)\" 0",
    "EVAL \"return struct.pack('fd>f>d<f', 1.5, -0.1, 1/3, 1e300, 1e39)\" 0",
    "EVAL \"return struct.pack('f', 0/0) .. struct.pack('d', 1/0) .. struct.pack('>d', -1/0)\" 0",
    "EVAL \"return struct.pack('c3sc0xcxx', 'abcdef', 'zz', 'hello', 'q')\" 0",
    "EVAL \"return struct.pack('s', 'a' .. string.char(0) .. 'b') .. struct.pack('c0', '')\" 0",
    "EVAL \"return struct.pack('s c2', 1.5, 42)\" 0",
    "EVAL \"return struct.pack('>B>b>I>i<i>l', 256, -129, -1, 2^31, 1.9, -1.9)\" 0",
    "EVAL \"return struct.pack('>L', 0/0) .. struct.pack('>L', 2^64) .. struct.pack('>L', 1e300) .. struct.pack('>l', -1e300) .. struct.pack('>L', 2^63) .. struct.pack('>L', 2^63 + 2^11)\" 0",
    "EVAL \"return struct.pack('i', '12') .. struct.pack('d', '0x10') .. struct.pack('b', ' 7 ')\" 0",
    "EVAL \"return struct.pack('')\" 0",
    "EVAL \"return struct.pack('b' .. string.char(0) .. 'q', 1)\" 0",
    "EVAL \"return struct.pack('b', 1, 2, 3)\" 0",
    "EVAL \"return struct.pack('   ')\" 0",
    // alignment
    "EVAL \"return struct.pack('!4bi', 1, 2)\" 0",
    "EVAL \"return struct.pack('!bd', 1, 2)\" 0",
    "EVAL \"return struct.pack('!2bibh!8bdbf', 1, 2, 3, 4, 5, 6, 7, 8)\" 0",
    "EVAL \"return struct.pack('!16bi16bd', 1, 2, 3, 4)\" 0",
    "EVAL \"return struct.pack('!8bi3bi5bi6', 1, 2, 3, 4, 5, 6)\" 0",
    "EVAL \"return struct.pack('!4bc3i', 1, 'abc', 2)\" 0",
    "EVAL \"return struct.pack('!4bsi', 1, 'ab', 2)\" 0",
    "EVAL \"return struct.pack('!4bxi!1bi', 1, 2, 3, 4)\" 0",
    "EVAL \"return struct.pack('!1bi!bi', 1, 2, 3, 4)\" 0",
    // struct.size
    "EVAL \"return {struct.size('bhilT!8d c5'), struct.size(''), struct.size('!4bi!8bd b'), struct.size('i3i16I0'), struct.size('q'), struct.size('z9'), struct.size('!8bi3b')}\" 0",
    "EVAL \"return struct.size('s')\" 0",
    "EVAL \"return struct.size('bc0')\" 0",
    "EVAL \"return struct.size('=')\" 0",
    "EVAL \"return struct.size('i40')\" 0",
    "EVAL \"return struct.size(' !3')\" 0",
    "EVAL \"return struct.size()\" 0",
    "EVAL \"return struct.size({})\" 0",
    "EVAL \"return struct.size(12)\" 0",
    // struct.unpack: round trips, positions, and the next position
    "EVAL \"return {struct.unpack('bBhHlLTiI', struct.pack('bBhHlLTiI', -1, 255, -2, 65535, -3, 2^40, 7, -4, 4000000000))}\" 0",
    "EVAL \"return {struct.unpack('>bBhHlLTiI', struct.pack('>bBhHlLTiI', -1, 255, -2, 65535, -3, 2^40, 7, -4, 4000000000))}\" 0",
    "EVAL \"return {struct.unpack('>i3I3<i3I3', string.char(255, 255, 254, 255, 255, 254, 254, 255, 255, 254, 255, 255))}\" 0",
    "EVAL \"return {struct.unpack('<I16', string.rep(string.char(255), 16))}\" 0",
    "EVAL \"return {struct.unpack('<i16', string.rep(string.char(255), 16))}\" 0",
    "EVAL \"return {struct.unpack('<i9>i9', string.rep(string.char(255), 9) .. string.char(1, 0, 0, 0, 0, 0, 0, 0, 255))}\" 0",
    "EVAL \"return {struct.unpack('>L>l', string.rep(string.char(255), 8) .. string.char(128, 0, 0, 0, 0, 0, 0, 0))}\" 0",
    "EVAL \"return {struct.unpack('<i0I0', '')}\" 0",
    "EVAL \"return {struct.unpack('>i5I5<i7I7', string.char(128, 0, 0, 0, 1, 128, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 128, 1, 0, 0, 0, 0, 0, 128))}\" 0",
    "EVAL \"local a, b, c, d, e = struct.unpack('<f>fd>d', struct.pack('<f>fd>d', 0.1, 1e39, -2.5, 1/3)) return {tostring(a), tostring(b), tostring(c), tostring(d), e}\" 0",
    "EVAL \"local a, b = struct.unpack('fd', struct.pack('fd', 0/0, -1/0)) return {tostring(a), tostring(b)}\" 0",
    "EVAL \"return {struct.unpack('c3sc0xc', struct.pack('c3sc0xc', 'abcdef', 'zz', 'hello', 'q'))}\" 0",
    "EVAL \"return {struct.unpack('bc0b', string.char(3) .. 'abc' .. string.char(9))}\" 0",
    "EVAL \"return {struct.unpack('c1c0', '3abcd')}\" 0",
    "EVAL \"return {struct.unpack('bc0', string.char(0) .. 'x')}\" 0",
    "EVAL \"return {struct.unpack('bc0', string.char(5) .. 'abc')}\" 0",
    "EVAL \"return {struct.unpack('ss', 'a' .. string.char(0) .. string.char(0))}\" 0",
    "EVAL \"return {struct.unpack('!4bi', struct.pack('!4bi', 1, 2))}\" 0",
    "EVAL \"return {struct.unpack('!8bi3bd', struct.pack('!8bi3bd', 1, -2, 3, 4.5))}\" 0",
    "EVAL \"return {struct.unpack('xbx', 'abc')}\" 0",
    "EVAL \"return {struct.unpack('b', 'abc', 2)}\" 0",
    "EVAL \"return {struct.unpack('bb', 'abc', 2)}\" 0",
    "EVAL \"return {struct.unpack('b', 'abc', 3)}\" 0",
    "EVAL \"return {struct.unpack('b', 'abc', 2.9)}\" 0",
    "EVAL \"return {struct.unpack('b', 'abc', '2')}\" 0",
    "EVAL \"return {struct.unpack('b', 'abc', nil)}\" 0",
    "EVAL \"return {struct.unpack('', 'abc', 4)}\" 0",
    "EVAL \"return {struct.unpack('', 'abc', 100)}\" 0",
    "EVAL \"return {struct.unpack('', 'abc', -1)}\" 0",
    "EVAL \"return {struct.unpack('', '')}\" 0",
    "EVAL \"return {struct.unpack('i', 123456)}\" 0",
    "EVAL \"return {struct.unpack(' < > ', 'abc')}\" 0",
    "EVAL \"local pos, out = 1, {} local s = struct.pack('>hhh', 1, 2, 3) for i = 1, 3 do local v v, pos = struct.unpack('>h', s, pos) out[i] = v end out[4] = pos return out\" 0",
    "EVAL \"return select('#', struct.unpack(string.rep('b', 5000), string.rep('a', 5000)))\" 0",
    "EVAL \"return select('#', struct.unpack(string.rep('c1', 5000), string.rep('a', 5000)))\" 0",
    "EVAL \"return select('#', struct.unpack(string.rep('b', 8000), string.rep('a', 8000)))\" 0",
    // struct's errors, as they reach the client and as pcall catches them
    "EVAL \"return struct.pack('q')\" 0",
    "EVAL \"return struct.pack('=i', 1)\" 0",
    "EVAL \"return struct.pack('i33', 1)\" 0",
    "EVAL \"return struct.pack('i99999999999', 1)\" 0",
    "EVAL \"return struct.pack('c2147483648', 'a')\" 0",
    "EVAL \"return struct.pack('!3i', 1)\" 0",
    "EVAL \"return struct.pack('!0i', 1)\" 0",
    "EVAL \"return struct.pack('!99999999999', 1)\" 0",
    "EVAL \"return struct.pack('c5', 'ab')\" 0",
    "EVAL \"return struct.pack('bc5', 1, 'ab')\" 0",
    "EVAL \"return struct.pack('i')\" 0",
    "EVAL \"return struct.pack('bi', 1)\" 0",
    "EVAL \"return struct.pack('i', 'x')\" 0",
    "EVAL \"return struct.pack('i', {})\" 0",
    "EVAL \"return struct.pack('d', nil)\" 0",
    "EVAL \"return struct.pack('s', true)\" 0",
    "EVAL \"return struct.pack('c', {})\" 0",
    "EVAL \"return struct.pack()\" 0",
    "EVAL \"return struct.pack({})\" 0",
    "EVAL \"return struct.pack(12)\" 0",
    "EVAL \"return struct.unpack('c0', 'abc')\" 0",
    "EVAL \"return struct.unpack('s', 'abc')\" 0",
    "EVAL \"return struct.unpack('i', 'abc')\" 0",
    "EVAL \"return struct.unpack('bi', 'abcd')\" 0",
    "EVAL \"return struct.unpack('b', 'abc', 0)\" 0",
    "EVAL \"return struct.unpack('b', 'abc', -1)\" 0",
    "EVAL \"return struct.unpack('b', 'abc', 4)\" 0",
    "EVAL \"return struct.unpack('<', 'abc', 5)\" 0",
    "EVAL \"return struct.unpack('b', 'abc', 'x')\" 0",
    "EVAL \"return struct.unpack('b', 'abc', {})\" 0",
    "EVAL \"return struct.unpack('q', 'abc')\" 0",
    "EVAL \"return struct.unpack('i40', 'abc')\" 0",
    "EVAL \"return struct.unpack('c9', 'abc')\" 0",
    "EVAL \"return struct.unpack()\" 0",
    "EVAL \"return struct.unpack('b')\" 0",
    "EVAL \"return struct.unpack('b', {})\" 0",
    "EVAL \"return struct.unpack({}, 'a')\" 0",
    "EVAL \"return {pcall(struct.pack, 'q')}\" 0",
    "EVAL \"return {pcall(struct.unpack, 'i', 'ab')}\" 0",
    "EVAL \"local ok, e = pcall(function() return struct.size('s') end) return e\" 0",
    "EVAL \"local x = 1\nreturn struct.pack('i33', 1)\" 0",
    "EVAL \"local x = 1\nlocal f = struct.unpack\nreturn f('i', 'a')\" 0",
    "EVAL \"local t = {p = struct.pack} return t.p('i', {})\" 0",
    "EVAL \"local s = {} local _ = struct.pack for k in pairs(struct) do s[#s + 1] = k end return s\" 0",
    "EVAL \"return {type(struct), type(struct.pack), type(struct.unpack), type(struct.size)}\" 0",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_of_the_script_commands_is_redis_7s() {
    // The SHA1s the list names are those of the scripts it loads.
    assert_eq!(xsite_node::commands::script::sha1_hex(b"return 'loaded'"), "b534286061d4b9e4026607613b95c06c06015ae8");
    let commands: Vec<String> = FIXED.iter().map(|c| c.to_string()).collect();
    let (want, got) = support::replies_of_both("script-test", &commands, |_| false).await;
    let diffs = differences(&commands, &want, &got);
    assert!(diffs.is_empty(), "{} replies differ from Redis's:\n{}", diffs.len(), diffs.join("\n"));
}

/// Defect this exists to avoid (a script's writes shipped one by one): a reader at
/// the other site could see a script's first key written and not its second. A
/// script at site a writes two keys to the same number, many times, while a reader
/// at site b polls both with MGET: it never sees them differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scripts_writes_reach_the_other_site_as_one_unit() {
    let mesh = support::Mesh::start(2).await;
    support::wait_units_readable(mesh.node(0)).await;
    support::never_seen_half(&mesh, 200, |i| {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg("redis.call('set', KEYS[1], ARGV[1]); redis.call('set', KEYS[2], ARGV[1]); return 1");
        cmd.arg(2).arg("left").arg("right").arg(i);
        cmd
    })
    .await;
    mesh.converged().await;
    mesh.shutdown().await;
}

/// redis-py (PyPI) end to end: its `Lock` (acquire, extend, release are scripts) at
/// each site, and a rate limiter made with `register_script` counted at both sites;
/// the same script against a redis-server first, as the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_py_runs_locks_and_rate_limiters_across_two_sites() {
    support::redis_py_across_two_sites("scripts_sites.py", 50, xsite_schemas::FORMAT_VERSION_UNITS).await;
}

/// A script that never ends is stopped at its time limit with an error, one that
/// takes all memory at its memory limit, and the node serves the next command:
/// neither holds the store forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_script_is_stopped_at_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = support::start_single(dir.path(), "script-test", |_| {}).await;
    let mut raw = support::redis_server::Raw::connect(node.resp_addr).await;
    let started = Instant::now();
    let reply =
        String::from_utf8(raw.call("EVAL \"redis.call('set', 'before', 1) while true do end\" 0").await).unwrap();
    assert!(reply.starts_with("-ERR ") && reply.contains("ran longer than 5000 ms"), "{reply}");
    assert!(started.elapsed() >= xsite_node::commands::script::SCRIPT_TIME_MAX, "{:?}", started.elapsed());
    let reply = String::from_utf8(raw.call("EVAL \"local t = {} for i = 1, 1e9 do t[i] = i end\" 0").await).unwrap();
    assert!(reply.starts_with("-ERR ") && reply.contains("memory"), "{reply}");
    // Not rolled back, as in Redis: what ran before the error stays.
    assert_eq!(raw.call("GET before").await, b"$1\r\n1\r\n");
    assert_eq!(raw.call("PING").await, b"+PONG\r\n");
    support::stop_single(node, cancel).await;
}

/// Defect this exists to avoid: `redis.call` and `redis.pcall` given about 7,990
/// arguments or more made mlua panic inside the node (each string argument took a
/// slot of mlua's auxiliary stack, which has Lua's C stack limit of 8000), and the
/// script got an error where Redis runs the command. The replies are Redis's: up to
/// 7,999 values from `unpack` and any number from a vararg function run, past that
/// `unpack` itself fails; and no thread of the test's process panics meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_arguments_to_redis_call_are_run_as_redis_runs_them_without_a_panic() {
    let panics = Arc::new(Mutex::new(Vec::<String>::new()));
    let previous = std::panic::take_hook();
    let seen = panics.clone();
    std::panic::set_hook(Box::new(move |info| {
        seen.lock().unwrap_or_else(|p| p.into_inner()).push(info.to_string());
        previous(info)
    }));
    let argv = |n: usize| vec!["a"; n].join(" ");
    let table = |n: usize, call: &str| {
        format!("EVAL \"local t = {{}} for i = 1, {n} do t[i] = 'k' .. i % 7 end return {call}\" 0")
    };
    // `f(n)` returns `n` values: more than `unpack` can give.
    let many = |call: &str| {
        format!("EVAL \"local function f(n, ...) if n == 0 then return ... end return f(n - 1, 'k', ...) end return {call}\" 0")
    };
    let commands = vec![
        format!("EVAL \"return redis.call('del', unpack(ARGV))\" 0 {}", argv(7990)),
        format!("EVAL \"return redis.call('del', unpack(ARGV))\" 0 {}", argv(7999)),
        format!("EVAL \"return redis.call('del', unpack(ARGV))\" 0 {}", argv(8000)),
        format!("EVAL \"return redis.pcall('del', unpack(ARGV))\" 0 {}", argv(7999)),
        table(7999, "redis.call('rpush', 'list', unpack(t))"),
        table(7999, "redis.pcall('rpush', 'list', unpack(t))"),
        table(7999, "{pcall(redis.call, 'del', unpack(t))}"),
        table(7999, "redis.pcall('get', unpack(t))"),
        table(7999, "redis.call('get', unpack(t))"),
        table(10000, "redis.call('del', unpack(t))"),
        table(10000, "redis.pcall('del', unpack(t))"),
        "EVAL \"local t = {} for i = 1, 7999 do t[i] = i end return redis.call('del', unpack(t))\" 0".to_string(),
        "EVAL \"local t = {} for i = 1, 7998 do t[i] = 'k' end t[7990] = {} return redis.call('del', unpack(t))\" 0"
            .to_string(),
        many("redis.call('rpush', 'many', f(9000))"),
        many("redis.pcall('mset', f(9000))"),
        many("#redis.call('mget', f(9000))"),
        many("{pcall(redis.call, 'del', f(9000))}"),
        many("redis.call('del', f(9000), {})"),
        format!("EVAL \"return {{#KEYS, #ARGV, redis.call('del', unpack(KEYS))}}\" 7999 {} x y", argv(7999)),
        format!("EVAL \"return #KEYS\" 9000 {}", argv(9000)),
        format!("EVAL \"return ARGV[9000]\" 0 {} last", argv(8999)),
        "LLEN list".to_string(),
        "LLEN many".to_string(),
        "SET after ok".to_string(),
        "GET after".to_string(),
        "EVAL \"return redis.call('get', 'after')\" 0".to_string(),
    ];
    let (want, got) = support::replies_of_both("script-test", &commands, |_| false).await;
    let short: Vec<String> = commands.iter().map(|c| c.chars().take(160).collect()).collect();
    let diffs = differences(&short, &want, &got);
    let panics = panics.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(panics.is_empty(), "{} panics while scripts ran:\n{}", panics.len(), panics.join("\n"));
    assert!(diffs.is_empty(), "{} replies differ from Redis's:\n{}", diffs.len(), diffs.join("\n"));
}
