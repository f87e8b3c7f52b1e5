//! The outbox of the Redis store (see "The outbox on Redis" in docs/ARCHITECTURE.md).
//!
//! Per session, in the session's slot (hash tag `{<tenant>:<sessionId>}`):
//! - `<prefix>:oq:{...}`: a list, the session's events in the order of its changes, each
//!   element `<event id> <recorded_at> <JSON>` (the JSON: kind, version, time, customer, the
//!   document for `created`/`updated`, numbers as strings). One copy per event, whatever the
//!   number of destinations;
//! - `<prefix>:ob:{...}`: a hash, per destination `d` its cursor `c<d>` (how many elements of
//!   the list it is past), the attempts `a<d>` and next attempt `t<d>` of its head, and the claim
//!   on its head (owner `o<d>`, until `u<d>`); `nd`, how many destinations the list is kept for;
//!   `it`, the token of the last operation that ran on the session (see below). The list is
//!   trimmed to the slowest cursor; the hash expires on its own ([`OB_TTL`]) once the list is
//!   empty.
//!
//! The scripts that change a session push its event there in the same script as the change.
//!
//! Per shard (16, each its own hash tag `{s<n>}`, a session's shard a hash of its tag), one slot:
//! - `<prefix>:outbox:{s<n>}:due`: sessions (member `<tenant>:<sessionId>`) whose events a
//!   dispatcher must look at, scored by when;
//! - `...:exp`: sessions that expire, scored by (at most) when; the sweeper's work list;
//! - `...:tok`: per member, the token of the last change that listed it, and when (`<token>|<ms>`);
//! - `...:cnt`: how many entries (events × destinations) are pending, for the metrics;
//! - `...:old`: per session with pending entries, when its oldest was recorded, for the metrics.
//!
//! Index first: a change lists its session (`ZADD LT`: scores only come down) and notes its
//! token *before* its script runs, so no event or expiry exists that the indexes miss. Repair on
//! read: a dispatcher or the sweeper that finds a listed session with nothing (more) to do moves
//! or drops its entry only if the token is still the one it read before looking at the session
//! (and the score the one it read), and drops it only once the last change that listed it is
//! older than [`GRACE`] (a write lands within `GRACE` of its listing or never, the assumption of
//! the customer index); before that it looks again later, at once if that change has not run yet
//! (`it` is not its token), else at its listing time plus `GRACE`.

use std::collections::BTreeMap;

use redis::Script;
use redis::aio::ConnectionLike;
use tokio::task::JoinSet;

use super::customers::{GRACE, Nodes};
use super::{RedisStore, from_redis};
use crate::clock::Millis;
use crate::store::outbox::{EventKind, EventRecord, OutboxStats, PendingEvent, Settlement};
use crate::store::{SessionKey, StoreError};

/// How many shards the indexes have.
pub(super) const SHARDS: u64 = 16;

/// How long a session's outbox hash outlives its last event (its cursors and `it`).
const OB_TTL: Millis = 2 * GRACE;

/// With events on, a session's native expiry comes this long after its expiry time, so that
/// the sweeper removes it first (and records its `expired` event).
pub(super) const NATIVE_GRACE: Millis = 60 * 60 * 1000;

/// The soonest a listed session whose change has not run yet is looked at again.
const RECHECK: Millis = 1000;

/// How many sessions an index is read by at a time.
const BATCH: usize = 200;

/// Lua helpers for the session scripts with events on: KEYS[2] the outbox hash, KEYS[3] the
/// event list.
pub(super) fn session_lua() -> String {
    format!(
        r#"
local function outbox_push(n, now, id, kind, version, customer, doc, time)
  local nd = tonumber(redis.call('HGET', KEYS[2], 'nd') or '0')
  if n > nd then
    local len = redis.call('LLEN', KEYS[3])
    for d = nd, n - 1 do redis.call('HSET', KEYS[2], 'c' .. d, len) end
    redis.call('HSET', KEYS[2], 'nd', n)
    nd = n
  end
  local body = {{k = kind, v = version, t = time}}
  if customer ~= '' then body['c'] = customer end
  if doc then body['s'] = doc end
  redis.call('RPUSH', KEYS[3], id .. ' ' .. now .. ' ' .. cjson.encode(body))
  return nd
end
local function outbox_done(token)
  redis.call('HSET', KEYS[2], 'it', token)
  if redis.call('LLEN', KEYS[3]) == 0 then
    redis.call('PEXPIRE', KEYS[2], {OB_TTL})
  else
    redis.call('PERSIST', KEYS[2])
  end
end
"#
    )
}

/// KEYS: session, outbox hash, event list. ARGV: as WRITE (1 to 11), then the number of
/// destinations, the token, the event id, the id of the `expired` event of an expired record
/// a creation replaces. Returns {1, customer before, entries recorded} or {0, "", 0}.
pub(super) const WRITE_EVENTS: &str = r#"
local stored = redis.call('HMGET', KEYS[1], 'v', 'e', 'g')
local live = stored[1] and (not stored[2] or tonumber(stored[2]) > tonumber(ARGV[3]))
if ARGV[1] == 'absent' then
  if live then outbox_done(ARGV[13]) return {0, '', 0} end
elseif not live or stored[1] ~= ARGV[2] or (stored[3] or '0') ~= ARGV[8] then
  outbox_done(ARGV[13])
  return {0, '', 0}
end
local before = customer_of(KEYS[1])
local n = tonumber(ARGV[12])
local pushed = 0
if stored[1] and not live then
  pushed = pushed + outbox_push(n, ARGV[3], ARGV[15], 'expired', stored[1], before, nil, stored[2])
end
store_record()
local kind = 'updated'
if ARGV[1] == 'absent' then kind = 'created' end
pushed = pushed + outbox_push(n, ARGV[3], ARGV[14], kind, ARGV[4], ARGV[10], ARGV[6], ARGV[3])
outbox_done(ARGV[13])
return {1, before, pushed}
"#;

/// KEYS: session, outbox hash, event list. ARGV: now, expected version, expected generation,
/// destinations, token, event id. Returns {1, customer, entries recorded} or {0, "", 0}.
pub(super) const DELETE_EVENTS: &str = r#"
local stored = redis.call('HMGET', KEYS[1], 'v', 'e', 'g')
local live = stored[1] and (not stored[2] or tonumber(stored[2]) > tonumber(ARGV[1]))
if not live or stored[1] ~= ARGV[2] or (stored[3] or '0') ~= ARGV[3] then
  outbox_done(ARGV[5])
  return {0, '', 0}
end
local customer = customer_of(KEYS[1])
redis.call('DEL', KEYS[1])
local pushed = outbox_push(tonumber(ARGV[4]), ARGV[1], ARGV[6], 'deleted', stored[1], customer, nil, ARGV[1])
outbox_done(ARGV[5])
return {1, customer, pushed}
"#;

/// KEYS: session, outbox hash, event list. ARGV: customer, now, destinations, token, event id.
/// As DELETE_IF_CUSTOMER, recording `deleted` (live) or `expired`; a removal answers {2, live,
/// version, generation, entries recorded}.
pub(super) const DELETE_IF_CUSTOMER_EVENTS: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'v', 'g', 'e', 'm')
if not f[1] then outbox_done(ARGV[4]) return {'0'} end
local customer = customer_of(KEYS[1])
if customer ~= ARGV[1] then
  outbox_done(ARGV[4])
  return {'1', customer, f[1], f[2] or '0', f[3] or '', f[4] or ''}
end
redis.call('DEL', KEYS[1])
local live = '0'
local kind, time = 'expired', f[3]
if not f[3] or tonumber(f[3]) > tonumber(ARGV[2]) then live = '1' kind = 'deleted' time = ARGV[2] end
local pushed = outbox_push(tonumber(ARGV[3]), ARGV[2], ARGV[5], kind, f[1], customer, nil, time)
outbox_done(ARGV[4])
return {'2', live, f[1], f[2] or '0', tostring(pushed)}
"#;

/// KEYS: session, outbox hash, event list. ARGV: as EXTEND, then the token.
pub(super) const EXTEND_EVENTS: &str = r#"
local stored = redis.call('HMGET', KEYS[1], 'v', 'e', 'g')
local live = stored[1] and (not stored[2] or tonumber(stored[2]) > tonumber(ARGV[1]))
if not live or stored[1] ~= ARGV[2] or (stored[3] or '0') ~= ARGV[3] then outbox_done(ARGV[6]) return 0 end
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[1], 'e')
  redis.call('PERSIST', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'e', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
outbox_done(ARGV[6])
return 1
"#;

/// KEYS: session, outbox hash, event list. ARGV: now, destinations, token, event id. Removes
/// the session if it expired at `now`, recording `expired` (at its expiry time). Returns {1 if
/// removed, entries recorded, what is there now: "missing", "none" (never expires) or its
/// expiry time}.
pub(super) const SWEEP_EVENTS: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'v', 'e')
local state, pushed, swept = 'missing', 0, 0
if f[1] then
  if f[2] and tonumber(f[2]) <= tonumber(ARGV[1]) then
    local customer = customer_of(KEYS[1])
    redis.call('DEL', KEYS[1])
    pushed = outbox_push(tonumber(ARGV[2]), ARGV[1], ARGV[4], 'expired', f[1], customer, nil, f[2])
    swept = 1
  elseif f[2] then
    state = f[2]
  else
    state = 'none'
  end
end
outbox_done(ARGV[3])
return {tostring(swept), tostring(pushed), state}
"#;

/// KEYS: outbox hash, event list. ARGV: owner, now, until (now + lease), token read from the
/// index, how many entries at most. Claims the head of each destination's queue that is due
/// and not claimed by another owner (or whose claim ran out). Returns {1 if the change that
/// listed the session last has run (`it` is the token) else 0, when the session needs looking
/// at next ("" = nothing pending), when its oldest pending element was recorded ("" = none),
/// then per claim: destination, attempts, element}.
const CLAIM: &str = r#"
local len = redis.call('LLEN', KEYS[2])
local nd = tonumber(redis.call('HGET', KEYS[1], 'nd') or '0')
local landed = '0'
if (redis.call('HGET', KEYS[1], 'it') or '') == ARGV[4] then landed = '1' end
local now = tonumber(ARGV[2])
local max = tonumber(ARGV[5])
local out = {landed, '', ''}
local next_at = nil
local claimed = 0
for d = 0, nd - 1 do
  local f = redis.call('HMGET', KEYS[1], 'c' .. d, 'a' .. d, 't' .. d, 'o' .. d, 'u' .. d)
  local c = tonumber(f[1] or '0')
  if c < len then
    local at
    if f[4] and f[4] ~= ARGV[1] and tonumber(f[5]) > now then
      at = f[5]
    elseif f[3] and tonumber(f[3]) > now then
      at = f[3]
    elseif claimed < max then
      redis.call('HSET', KEYS[1], 'o' .. d, ARGV[1], 'u' .. d, ARGV[3])
      out[#out + 1] = tostring(d)
      out[#out + 1] = f[2] or '0'
      out[#out + 1] = redis.call('LINDEX', KEYS[2], c)
      claimed = claimed + 1
      at = ARGV[3]
    else
      at = ARGV[2]
    end
    if not next_at or tonumber(at) < tonumber(next_at) then next_at = at end
  end
end
if next_at then out[2] = next_at end
if len > 0 then out[3] = string.match(redis.call('LINDEX', KEYS[2], 0), '^%S+ (%-?%d+) ') or '' end
return out
"#;

/// KEYS: outbox hash, event list. ARGV: destination, event id, "done", "retry" (an attempt
/// counted) or "release" (not), next attempt.
/// Settles the destination's head if it is still that event. Returns {1 if an entry went else
/// 0, 1 if the destination has a next entry else 0, when the oldest element left was recorded
/// ("" = none left)}.
const SETTLE: &str = r#"
local d = ARGV[1]
local len = redis.call('LLEN', KEYS[2])
local c = tonumber(redis.call('HGET', KEYS[1], 'c' .. d) or '0')
local removed, more = 0, 0
if c < len then
  local head = redis.call('LINDEX', KEYS[2], c)
  if string.sub(head, 1, #ARGV[2] + 1) == ARGV[2] .. ' ' then
    if ARGV[3] == 'done' then
      redis.call('HSET', KEYS[1], 'c' .. d, c + 1)
      redis.call('HDEL', KEYS[1], 'a' .. d, 't' .. d, 'o' .. d, 'u' .. d)
      removed = 1
      if c + 1 < len then more = 1 end
      local nd = tonumber(redis.call('HGET', KEYS[1], 'nd') or '0')
      local low = nil
      for i = 0, nd - 1 do
        local ci = tonumber(redis.call('HGET', KEYS[1], 'c' .. i) or '0')
        if not low or ci < low then low = ci end
      end
      if low and low > 0 then
        redis.call('LTRIM', KEYS[2], low, -1)
        for i = 0, nd - 1 do redis.call('HINCRBY', KEYS[1], 'c' .. i, -low) end
      end
    else
      if ARGV[3] == 'retry' then redis.call('HINCRBY', KEYS[1], 'a' .. d, 1) end
      redis.call('HSET', KEYS[1], 't' .. d, ARGV[4])
      redis.call('HDEL', KEYS[1], 'o' .. d, 'u' .. d)
    end
  end
end
local oldest = ''
if redis.call('LLEN', KEYS[2]) > 0 then
  oldest = string.match(redis.call('LINDEX', KEYS[2], 0), '^%S+ (%-?%d+) ') or ''
else
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return {removed, more, oldest}
"#;

/// KEYS: a shard's due, exp, tok, cnt, old. ARGV: mode ("change", "sweep" or "extend"), now,
/// token, entries each change records, then pairs of member and expiry ("" = none). Lists each
/// member (index first): due now (not for "extend"), its expiry, its token, and counts its
/// entries as pending. A sweep keeps the time of the last change's listing (it is not a change
/// anyone waits for). Returns the token noted for each member.
const MARK: &str = r#"
local out = {}
for i = 5, #ARGV, 2 do
  local m, e = ARGV[i], ARGV[i + 1]
  local at = ARGV[2]
  if ARGV[1] == 'sweep' then
    local prev = redis.call('HGET', KEYS[3], m) or ''
    at = string.match(prev, '|(%-?%d+)$') or '0'
  end
  local token = ARGV[3] .. '|' .. at
  redis.call('HSET', KEYS[3], m, token)
  out[#out + 1] = token
  if ARGV[1] ~= 'extend' then
    redis.call('ZADD', KEYS[1], 'LT', ARGV[2], m)
    redis.call('ZADD', KEYS[5], 'NX', ARGV[2], m)
    redis.call('INCRBY', KEYS[4], ARGV[4])
  end
  if e ~= '' then redis.call('ZADD', KEYS[2], 'LT', e, m) end
end
return out
"#;

/// KEYS: an index (due or exp) and the shard's tok. ARGV: up to when, how many. Returns
/// triples of member, score, token ("" = none), lowest score first.
const PEEK: &str = r#"
local r = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2], 'WITHSCORES')
local out = {}
for i = 1, #r, 2 do
  out[#out + 1] = r[i]
  out[#out + 1] = r[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], r[i]) or ''
end
return out
"#;

/// KEYS: a shard's due, exp, tok, cnt, old. ARGV: which index (1 due, 2 exp), a change of the
/// pending count, then groups of member, token read, score read, new score ("drop" = unlist)
/// and the session's oldest pending time ("" = none, "-" = leave it). Each is done only if the
/// member's token is still the one read (no change listed it since), the score only if it is
/// still the one read. A member in neither index loses its token; a shard with nothing due has
/// nothing pending.
const FIX: &str = r#"
local index = KEYS[tonumber(ARGV[1])]
redis.call('INCRBY', KEYS[4], ARGV[2])
for i = 3, #ARGV, 5 do
  local m = ARGV[i]
  if (redis.call('HGET', KEYS[3], m) or '') == ARGV[i + 1] then
    local s = redis.call('ZSCORE', index, m)
    if s and tonumber(s) == tonumber(ARGV[i + 2]) then
      if ARGV[i + 3] == 'drop' then
        redis.call('ZREM', index, m)
      else
        redis.call('ZADD', index, 'XX', ARGV[i + 3], m)
      end
    end
    if ARGV[i + 4] == '' then
      redis.call('ZREM', KEYS[5], m)
    elseif ARGV[i + 4] ~= '-' then
      redis.call('ZADD', KEYS[5], ARGV[i + 4], m)
    end
    if not redis.call('ZSCORE', KEYS[1], m) and not redis.call('ZSCORE', KEYS[2], m) then
      redis.call('HDEL', KEYS[3], m)
    end
  end
end
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SET', KEYS[4], 0) end
return 1
"#;

/// KEYS: a shard's due, exp, tok, cnt, old. ARGV: member, entries settled (0 or 1), a due
/// score ("" = leave it), the session's oldest pending time ("" = none left).
const SETTLED: &str = r#"
if ARGV[2] ~= '0' then redis.call('DECRBY', KEYS[4], ARGV[2]) end
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[1], 'LT', ARGV[3], ARGV[1]) end
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[5], ARGV[1])
else
  redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1])
end
return 1
"#;

/// KEYS: a shard's cnt and old. Returns {pending, oldest recorded ("" = none)}.
const STATS: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local o = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {tostring(n), o[2] or ''}
"#;

/// The outbox scripts of a store.
#[derive(Clone)]
pub(super) struct Scripts {
    write: Script,
    delete: Script,
    pub(super) delete_if_customer: Script,
    extend: Script,
    sweep: Script,
    claim: Script,
    settle: Script,
    mark: Script,
    peek: Script,
    fix: Script,
    settled: Script,
    stats: Script,
}

impl Scripts {
    pub(super) fn new(customer_of: &str) -> Self {
        let session = |body: &str| Script::new(&format!("{customer_of}{}{body}", session_lua()));
        Scripts {
            write: session(WRITE_EVENTS),
            delete: session(DELETE_EVENTS),
            delete_if_customer: session(DELETE_IF_CUSTOMER_EVENTS),
            extend: session(EXTEND_EVENTS),
            sweep: session(SWEEP_EVENTS),
            claim: Script::new(CLAIM),
            settle: Script::new(SETTLE),
            mark: Script::new(MARK),
            peek: Script::new(PEEK),
            fix: Script::new(FIX),
            settled: Script::new(SETTLED),
            stats: Script::new(STATS),
        }
    }
}

/// How a change lists its session before its script runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A write or delete: due now, its entries counted, its expiry listed.
    Change,
    /// The sweeper about to remove it: as a change, keeping the last change's listing time.
    Sweep,
    /// A move of the expiry: only the expiry listed.
    Extend,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Change => "change",
            Mode::Sweep => "sweep",
            Mode::Extend => "extend",
        }
    }
}

/// A fresh token (64 random bits, hex).
fn new_token() -> Result<String, StoreError> {
    getrandom::u64()
        .map(|t| format!("{t:016x}"))
        .map_err(|e| StoreError::Backend(format!("no randomness for an outbox token: {e}")))
}

/// FNV-1a, for the shard of a session.
fn shard_of(tag: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tag.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash % SHARDS
}

/// When a token noted for a member was noted (the time after its `|`; 0 when unreadable).
fn listed_at(token: &str) -> Millis {
    token.rsplit_once('|').and_then(|(_, at)| at.parse().ok()).unwrap_or(0)
}

/// The score a listed session gets after it was looked at: `wanted` (when the session itself
/// needs looking at next, `None` = never), but no later than the change that listed it last
/// requires: none once it is older than [`GRACE`]; at its listing time plus `GRACE` when it ran
/// (`landed`; only a change listed earlier and still under way could still come); soon, backing
/// off, when it has not run yet.
fn next_look(wanted: Option<Millis>, token: &str, landed: bool, now: Millis) -> Option<Millis> {
    let at = listed_at(token);
    let schedule = if token.is_empty() || now.saturating_sub(at) >= GRACE {
        None
    } else if landed {
        Some(at.saturating_add(GRACE))
    } else {
        Some(
            now.saturating_add(now.saturating_sub(at).clamp(RECHECK, GRACE))
                .min(at.saturating_add(GRACE)),
        )
    };
    match (wanted, schedule) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("an outbox {what} is unreadable"))
}

fn number(text: &str, what: &str) -> Result<Millis, StoreError> {
    text.parse().map_err(|_| corrupt(what))
}

/// An event list element (`<id> <recorded_at> <JSON>`) read back: the event and when it was
/// recorded.
fn parse_element(element: &str) -> Result<(EventRecord, Millis), StoreError> {
    let mut parts = element.splitn(3, ' ');
    let (Some(id), Some(recorded_at), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(corrupt("element"));
    };
    let body: serde_json::Value = serde_json::from_str(body).map_err(|_| corrupt("element"))?;
    let text = |field: &str| body.get(field).and_then(serde_json::Value::as_str);
    let event = EventRecord {
        id: id.to_owned(),
        kind: EventKind::parse(text("k").unwrap_or(""))?,
        version: text("v").unwrap_or("").parse().map_err(|_| corrupt("version"))?,
        customer: text("c").map(str::to_owned),
        session: text("s").map(str::to_owned),
        time: number(text("t").unwrap_or(""), "time")?,
    };
    Ok((event, number(recorded_at, "recording time")?))
}

/// What the claim script answered for one session.
struct Claimed {
    landed: bool,
    next: Option<Millis>,
    oldest: Option<Millis>,
    entries: Vec<(u16, u32, String)>,
}

impl Claimed {
    fn parse(reply: Vec<String>) -> Result<Self, StoreError> {
        let [landed, next, oldest, rest @ ..] = reply.as_slice() else {
            return Err(corrupt("claim"));
        };
        let optional = |t: &str| {
            if t.is_empty() {
                Ok(None)
            } else {
                number(t, "time").map(Some)
            }
        };
        let mut entries = Vec::new();
        for claim in rest.chunks(3) {
            let [d, attempts, element] = claim else {
                return Err(corrupt("claim"));
            };
            entries.push((
                d.parse().map_err(|_| corrupt("destination"))?,
                attempts.parse().map_err(|_| corrupt("attempt count"))?,
                element.clone(),
            ));
        }
        Ok(Claimed {
            landed: landed == "1",
            next: optional(next)?,
            oldest: optional(oldest)?,
            entries,
        })
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Nodes + Clone + Send + Sync + 'static,
{
    /// The outbox hash and event list of the session with tag `tag` (`<tenant>:<sessionId>`).
    fn outbox_keys(&self, tag: &str) -> [String; 2] {
        [
            format!("{}:ob:{{{tag}}}", self.prefix),
            format!("{}:oq:{{{tag}}}", self.prefix),
        ]
    }

    /// The session, outbox hash and event list keys of `key`: one slot.
    pub(super) fn session_keys(&self, key: &SessionKey) -> [String; 3] {
        let [ob, oq] = self.outbox_keys(&tag(key));
        [self.key(key), ob, oq]
    }

    /// A shard's due, exp, tok, cnt and old keys: one slot.
    fn shard_keys(&self, shard: u64) -> [String; 5] {
        let base = format!("{}:outbox:{{s{shard}}}", self.prefix);
        ["due", "exp", "tok", "cnt", "old"].map(|k| format!("{base}:{k}"))
    }

    fn destinations(&self) -> u16 {
        self.destinations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Index first: lists `members` (tags, with the expiry each change sets) in their shards;
    /// returns the token noted for each, in order.
    pub(super) async fn outbox_mark(
        &self,
        mode: Mode,
        members: &[(String, Option<Millis>)],
        token: &str,
        now: Millis,
    ) -> Result<Vec<String>, StoreError> {
        let mut by_shard: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, (tag, _)) in members.iter().enumerate() {
            by_shard.entry(shard_of(tag)).or_default().push(i);
        }
        let mut tokens = vec![String::new(); members.len()];
        for (shard, indices) in by_shard {
            let mut invocation = self.outbox.mark.prepare_invoke();
            for key in self.shard_keys(shard) {
                invocation.key(key);
            }
            invocation
                .arg(mode.as_str())
                .arg(now)
                .arg(token)
                .arg(self.destinations());
            for &i in &indices {
                let (tag, expires_at) = &members[i];
                invocation
                    .arg(tag)
                    .arg(expires_at.map_or_else(String::new, |e| e.to_string()));
            }
            let noted: Vec<String> = invocation
                .invoke_async(&mut self.writes.clone())
                .await
                .map_err(from_redis)?;
            for (i, t) in indices.into_iter().zip(noted) {
                tokens[i] = t;
            }
        }
        Ok(tokens)
    }

    /// Corrects a shard's pending count by `delta` (a change recorded other than it announced).
    async fn outbox_count(&self, tag: &str, delta: i64) {
        if delta == 0 {
            return;
        }
        let [_, _, _, cnt, _] = self.shard_keys(shard_of(tag));
        let done: Result<i64, _> = redis::cmd("INCRBY")
            .arg(cnt)
            .arg(delta)
            .query_async(&mut self.writes.clone())
            .await;
        if let Err(e) = done {
            tracing::debug!(error = %e, "correcting the outbox count failed");
        }
    }

    /// `write` with events on, after (or rather: while) `customer_listing` lists the session
    /// under its customer.
    pub(super) async fn write_with_events(
        &self,
        key: &SessionKey,
        args: WriteArgs<'_>,
        record: &crate::store::StoredSession,
        customer_listing: impl std::future::Future<Output = Result<(), StoreError>>,
        now: Millis,
    ) -> Result<(bool, String), StoreError> {
        let tag = tag(key);
        let token = new_token()?;
        let member = [(tag.clone(), record.expires_at)];
        tokio::try_join!(customer_listing, self.outbox_mark(Mode::Change, &member, &token, now))?;
        let (expires_at, ttl) = expiry_args(record.expires_at, now);
        let mut invocation = self.outbox.write.prepare_invoke();
        for k in self.session_keys(key) {
            invocation.key(k);
        }
        let (written, before, pushed): (i64, String, i64) = invocation
            .arg(args.kind)
            .arg(args.expected)
            .arg(now)
            .arg(record.version)
            .arg(expires_at)
            .arg(&record.doc)
            .arg(ttl)
            .arg(args.expected_generation)
            .arg(record.generation)
            .arg(record.customer.as_deref().unwrap_or(""))
            .arg(record.modified_at)
            .arg(self.destinations())
            .arg(&token)
            .arg(EventRecord::new_id()?)
            .arg(EventRecord::new_id()?)
            .invoke_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        self.outbox_count(&tag, pushed - i64::from(self.destinations())).await;
        Ok((written == 1, before))
    }

    /// `delete` with events on.
    pub(super) async fn delete_with_events(
        &self,
        key: &SessionKey,
        revision: crate::store::Revision,
        now: Millis,
    ) -> Result<(bool, String), StoreError> {
        let tag = tag(key);
        let token = new_token()?;
        self.outbox_mark(Mode::Change, &[(tag.clone(), None)], &token, now)
            .await?;
        let mut invocation = self.outbox.delete.prepare_invoke();
        for k in self.session_keys(key) {
            invocation.key(k);
        }
        let (removed, customer, pushed): (i64, String, i64) = invocation
            .arg(now)
            .arg(revision.version)
            .arg(revision.generation)
            .arg(self.destinations())
            .arg(&token)
            .arg(EventRecord::new_id()?)
            .invoke_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        self.outbox_count(&tag, pushed - i64::from(self.destinations())).await;
        Ok((removed == 1, customer))
    }

    /// `extend` with events on, to an expiry time (to none, the plain script does).
    pub(super) async fn extend_with_events(
        &self,
        key: &SessionKey,
        revision: crate::store::Revision,
        expires_at: Millis,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let token = new_token()?;
        self.outbox_mark(Mode::Extend, &[(tag(key), Some(expires_at))], &token, now)
            .await?;
        let (expires_at, ttl) = expiry_args(Some(expires_at), now);
        let mut invocation = self.outbox.extend.prepare_invoke();
        for k in self.session_keys(key) {
            invocation.key(k);
        }
        let extended: i64 = invocation
            .arg(now)
            .arg(revision.version)
            .arg(revision.generation)
            .arg(expires_at)
            .arg(ttl)
            .arg(&token)
            .invoke_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        Ok(extended == 1)
    }

    /// Before a delete by customer removes the sessions `ids` of `tenant`: lists them (index
    /// first); the token to hand to their scripts.
    pub(super) async fn mark_removals(&self, tenant: &str, ids: &[String], now: Millis) -> Result<String, StoreError> {
        let token = new_token()?;
        let members: Vec<(String, Option<Millis>)> = ids
            .iter()
            .map(|id| (tag(&SessionKey::new(tenant, id.clone())), None))
            .collect();
        self.outbox_mark(Mode::Change, &members, &token, now).await?;
        Ok(token)
    }

    /// After a delete by customer: corrects the counts of the sessions `ids` of `tenant` by
    /// what their scripts recorded (`pushed`, `None` when nothing was removed).
    pub(super) async fn count_removals(&self, tenant: &str, ids: &[String], pushed: &[i64]) {
        for (id, pushed) in ids.iter().zip(pushed) {
            let tag = tag(&SessionKey::new(tenant, id.clone()));
            self.outbox_count(&tag, pushed - i64::from(self.destinations())).await;
        }
    }

    /// Reads up to `limit` members of a shard's index (`which`: 0 due, 1 exp) due at `now`:
    /// (member, score, token).
    async fn outbox_peek(
        &self,
        shard: u64,
        which: usize,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let keys = self.shard_keys(shard);
        let flat: Vec<String> = self
            .outbox
            .peek
            .key(&keys[which])
            .key(&keys[2])
            .arg(now)
            .arg(limit)
            .invoke_async(&mut self.reads.clone())
            .await
            .map_err(from_redis)?;
        Ok(flat
            .chunks(3)
            .filter_map(|c| match c {
                [m, s, t] => Some((m.clone(), s.clone(), t.clone())),
                _ => None,
            })
            .collect())
    }

    /// Applies `fixes` (member, token read, score read, new score or "drop", oldest or "-")
    /// to a shard's index `which` (1 due, 2 exp), with a change of its count.
    async fn outbox_fix(&self, shard: u64, which: u8, delta: i64, fixes: Vec<[String; 5]>) -> Result<(), StoreError> {
        if fixes.is_empty() && delta == 0 {
            return Ok(());
        }
        let mut invocation = self.outbox.fix.prepare_invoke();
        for key in self.shard_keys(shard) {
            invocation.key(key);
        }
        let _: i64 = invocation
            .arg(which)
            .arg(delta)
            .arg(fixes.concat())
            .invoke_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        Ok(())
    }

    /// The sweep with events on: the sessions the expiry index says expired, each removed by a
    /// script that records its `expired` event.
    pub(super) async fn sweep_with_events(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        let mut swept = 0;
        let first = getrandom::u64().unwrap_or(0) % SHARDS;
        for step in 0..SHARDS {
            if swept >= limit {
                break;
            }
            let shard = (first + step) % SHARDS;
            let candidates = self.outbox_peek(shard, 1, now, (limit - swept).min(BATCH)).await?;
            if candidates.is_empty() {
                continue;
            }
            swept += self.sweep_batch(shard, candidates, now).await?;
        }
        Ok(swept)
    }

    async fn sweep_batch(
        &self,
        shard: u64,
        candidates: Vec<(String, String, String)>,
        now: Millis,
    ) -> Result<usize, StoreError> {
        let token = new_token()?;
        let members: Vec<(String, Option<Millis>)> = candidates.iter().map(|(m, ..)| (m.clone(), None)).collect();
        let tokens = self.outbox_mark(Mode::Sweep, &members, &token, now).await?;
        let destinations = self.destinations();
        let mut tasks = JoinSet::new();
        for (i, (member, ..)) in candidates.iter().enumerate() {
            let Some(key) = untag(member) else { continue };
            let keys = self.session_keys(&key);
            let script = self.outbox.sweep.clone();
            let mut conn = self.writes.clone();
            let (token, id) = (token.clone(), EventRecord::new_id()?);
            tasks.spawn(async move {
                let mut invocation = script.prepare_invoke();
                for k in keys {
                    invocation.key(k);
                }
                let reply: Result<(String, i64, String), _> = invocation
                    .arg(now)
                    .arg(destinations)
                    .arg(token)
                    .arg(id)
                    .invoke_async(&mut conn)
                    .await;
                (i, reply)
            });
        }
        let mut replies = vec![None; candidates.len()];
        let mut failure = None;
        while let Some(done) = tasks.join_next().await {
            let (i, reply) = done.map_err(|e| StoreError::Backend(format!("a Redis task failed: {e}")))?;
            match reply {
                Ok(reply) => replies[i] = Some(reply),
                Err(e) => failure = Some(from_redis(e)),
            }
        }
        let (mut swept, mut delta, mut fixes) = (0, 0i64, Vec::new());
        for (((member, score, _), token), reply) in candidates.into_iter().zip(tokens).zip(replies) {
            let Some((removed, pushed, state)) = reply else {
                // Unreadable member, or its script failed: its entry stays, due.
                continue;
            };
            swept += usize::from(removed == "1");
            delta += pushed - i64::from(destinations);
            let wanted = state.parse::<Millis>().ok();
            let new = next_look(wanted, &token, true, now);
            fixes.push([
                member,
                token,
                score,
                new.map_or_else(|| "drop".into(), |s| s.to_string()),
                "-".into(),
            ]);
        }
        self.outbox_fix(shard, 2, delta, fixes).await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(swept),
        }
    }

    /// Claims due entries (see `SessionStore::claim_events`).
    pub(super) async fn claim(
        &self,
        owner: &str,
        limit: usize,
        lease: Millis,
        now: Millis,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        let mut claimed = Vec::new();
        let first = getrandom::u64().unwrap_or(0) % SHARDS;
        for step in 0..SHARDS {
            if claimed.len() >= limit {
                break;
            }
            let shard = (first + step) % SHARDS;
            let due = self
                .outbox_peek(shard, 0, now, (limit - claimed.len()).min(BATCH))
                .await?;
            let mut fixes = Vec::new();
            for (member, score, token) in due {
                let Some(key) = untag(&member) else { continue };
                let remaining = limit.saturating_sub(claimed.len());
                let [_, ob, oq] = self.session_keys(&key);
                let reply: Vec<String> = self
                    .outbox
                    .claim
                    .key(ob)
                    .key(oq)
                    .arg(owner)
                    .arg(now)
                    .arg(now.saturating_add(lease))
                    .arg(token.split('|').next().unwrap_or(""))
                    .arg(remaining)
                    .invoke_async(&mut self.writes.clone())
                    .await
                    .map_err(from_redis)?;
                let answer = Claimed::parse(reply)?;
                for (destination, attempts, element) in answer.entries {
                    let (event, recorded_at) = parse_element(&element)?;
                    claimed.push(PendingEvent {
                        entry: format!("{destination}:{}:{member}", event.id),
                        destination,
                        key: key.clone(),
                        event,
                        attempts,
                        recorded_at,
                    });
                }
                let new = next_look(answer.next, &token, answer.landed, now);
                fixes.push([
                    member,
                    token,
                    score,
                    new.map_or_else(|| "drop".into(), |s| s.to_string()),
                    answer.oldest.map_or_else(String::new, |o| o.to_string()),
                ]);
            }
            self.outbox_fix(shard, 1, 0, fixes).await?;
        }
        Ok(claimed)
    }

    /// Settles a claimed entry (see `SessionStore::settle_event`).
    pub(super) async fn settle(&self, entry: &str, settlement: &Settlement) -> Result<(), StoreError> {
        let not_ours = || StoreError::Backend(format!("not an outbox entry: {entry}"));
        let mut parts = entry.splitn(3, ':');
        let (Some(destination), Some(id), Some(member)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(not_ours());
        };
        let destination: u16 = destination.parse().map_err(|_| not_ours())?;
        let key = untag(member).ok_or_else(not_ours)?;
        let [_, ob, oq] = self.session_keys(&key);
        let (kind, next_attempt_at) = match settlement {
            Settlement::Done => ("done", String::new()),
            Settlement::Retry { next_attempt_at } => ("retry", next_attempt_at.to_string()),
            Settlement::Release { next_attempt_at } => ("release", next_attempt_at.to_string()),
        };
        let (removed, more, oldest): (i64, i64, String) = self
            .outbox
            .settle
            .key(ob)
            .key(oq)
            .arg(destination)
            .arg(id)
            .arg(kind)
            .arg(&next_attempt_at)
            .arg(OB_TTL)
            .invoke_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        // The next entry of the destination is due at once: a score below every time (minus
        // the wall clock, so that it differs from what a concurrent claim read and its fix
        // leaves it alone); a retry is due at its time.
        let due = match settlement {
            Settlement::Done if more == 1 => {
                let wall = crate::clock::Clock::now(&crate::clock::SystemClock);
                (-wall.max(1)).to_string()
            }
            Settlement::Done => String::new(),
            Settlement::Retry { .. } | Settlement::Release { .. } => next_attempt_at,
        };
        let mut invocation = self.outbox.settled.prepare_invoke();
        for k in self.shard_keys(shard_of(member)) {
            invocation.key(k);
        }
        let _: i64 = invocation
            .arg(member)
            .arg(removed)
            .arg(due)
            .arg(oldest)
            .invoke_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        Ok(())
    }

    /// The pending count and the oldest pending time, over every shard.
    pub(super) async fn stats(&self) -> Result<OutboxStats, StoreError> {
        let mut stats = OutboxStats::default();
        for shard in 0..SHARDS {
            let [_, _, _, cnt, old] = self.shard_keys(shard);
            let (pending, oldest): (String, String) = self
                .outbox
                .stats
                .key(cnt)
                .key(old)
                .invoke_async(&mut self.reads.clone())
                .await
                .map_err(from_redis)?;
            stats.pending += pending.parse::<i64>().unwrap_or(0).max(0) as u64;
            if let Ok(oldest) = oldest.parse::<f64>() {
                let oldest = oldest as Millis;
                stats.oldest_recorded_at = Some(stats.oldest_recorded_at.map_or(oldest, |o| o.min(oldest)));
            }
        }
        if stats.pending == 0 {
            stats.oldest_recorded_at = None;
        }
        Ok(stats)
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Nodes + Clone + Send + Sync + 'static,
{
    /// Starts the repair pass (see [`Self::repair`]) in the background.
    pub(super) fn start_repair(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.clone();
        runtime.spawn(async move {
            if let Err(e) = store.repair().await {
                tracing::error!(error = %e, "repairing the outbox indexes failed");
            }
        });
    }

    /// Off the request path, when events are turned on (at each start): lists as due every
    /// session that has an event list (what a lost due listing, for example a failover of the
    /// shard's node that lost its last writes, would leave unseen), and, once per prefix, lists
    /// every session with an expiry in the expiry index (sessions written while events were
    /// off). `SCAN` on every primary; instances that start together take turns with a lock key.
    pub(crate) async fn repair(&self) -> Result<(), StoreError> {
        let lock = format!("{}:outbox:repairing", self.prefix);
        let built = format!("{}:outbox:expiry-index-built", self.prefix);
        let mut conn = self.writes.clone();
        if !super::customers::take_lock(&mut conn, &lock).await? {
            return Ok(());
        }
        let expiries_listed: bool = redis::cmd("EXISTS")
            .arg(&built)
            .query_async(&mut conn)
            .await
            .map_err(from_redis)?;
        let prefix = super::customers::glob_escape(&self.prefix);
        let mut patterns = vec![(format!("{prefix}:oq:{{*"), true)];
        if !expiries_listed {
            patterns.push((format!("{prefix}:{{*"), false));
        }
        let (mut queues, mut expiring) = (0u64, 0u64);
        for node in conn.primaries().await.map_err(from_redis)? {
            for (pattern, queue) in &patterns {
                let mut cursor = 0;
                loop {
                    let (next, keys) = conn.scan(&node, cursor, pattern).await.map_err(from_redis)?;
                    for key in keys {
                        if *queue {
                            queues += u64::from(self.relist_queue(&key).await?);
                        } else {
                            expiring += u64::from(self.relist_expiry(&key).await?);
                        }
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
        }
        if !expiries_listed {
            let _: () = redis::cmd("SET")
                .arg(&built)
                .arg(expiring)
                .query_async(&mut conn)
                .await
                .map_err(from_redis)?;
        }
        let _: () = redis::cmd("DEL")
            .arg(&lock)
            .query_async(&mut conn)
            .await
            .map_err(from_redis)?;
        tracing::debug!(queues, expiring, "outbox indexes repaired");
        Ok(())
    }

    /// Lists the session of the event list `key` as due (at once).
    async fn relist_queue(&self, key: &str) -> Result<bool, StoreError> {
        let Some(tag) = key
            .strip_prefix(&format!("{}:oq:{{", self.prefix))
            .and_then(|rest| rest.strip_suffix('}'))
        else {
            return Ok(false);
        };
        let [due, ..] = self.shard_keys(shard_of(tag));
        let _: i64 = redis::cmd("ZADD")
            .arg(due)
            .arg("LT")
            .arg(0)
            .arg(tag)
            .query_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        Ok(true)
    }

    /// Lists the session hash `key` in the expiry index if it has an expiry.
    async fn relist_expiry(&self, key: &str) -> Result<bool, StoreError> {
        let Some(tag) = key
            .strip_prefix(&format!("{}:{{", self.prefix))
            .and_then(|rest| rest.strip_suffix('}'))
        else {
            return Ok(false);
        };
        let expires_at: Option<String> = redis::cmd("HGET")
            .arg(key)
            .arg("e")
            .query_async(&mut self.reads.clone())
            .await
            .map_err(from_redis)?;
        let Some(expires_at) = expires_at else {
            return Ok(false);
        };
        let [_, exp, ..] = self.shard_keys(shard_of(tag));
        let _: i64 = redis::cmd("ZADD")
            .arg(exp)
            .arg("LT")
            .arg(expires_at)
            .arg(tag)
            .query_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        Ok(true)
    }
}

/// The arguments of a write that name its condition.
pub(super) struct WriteArgs<'a> {
    pub kind: &'a str,
    pub expected: String,
    pub expected_generation: String,
}

/// A session's hash tag: `<tenant>:<sessionId>`.
pub(super) fn tag(key: &SessionKey) -> String {
    format!("{}:{}", key.tenant, key.session_id)
}

/// The session a tag names.
fn untag(tag: &str) -> Option<SessionKey> {
    tag.split_once(':').map(|(t, s)| SessionKey::new(t, s))
}

/// A record's expiry as the scripts with events on take it: as `expiry_args`, with the native
/// expiry [`NATIVE_GRACE`] later, so that the sweeper gets there first.
fn expiry_args(expires_at: Option<Millis>, now: Millis) -> (String, String) {
    match expires_at {
        Some(at) => (
            at.to_string(),
            at.saturating_sub(now).max(1).saturating_add(NATIVE_GRACE).to_string(),
        ),
        None => (String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_goes_only_once_its_change_cannot_come_any_more() {
        let now = 10 * GRACE;
        let token = |at: Millis| format!("abc|{at}");
        // nothing wanted, last change long ago: drop
        assert_eq!(next_look(None, &token(now - GRACE), true, now), None);
        assert_eq!(next_look(None, "", false, now), None);
        // a change that ran recently: one last look at its listing time + GRACE
        assert_eq!(next_look(None, &token(now - 5), true, now), Some(now - 5 + GRACE));
        // a change not run yet: soon
        assert_eq!(next_look(None, &token(now - 5), false, now), Some(now + RECHECK));
        // what the session wants first, if earlier
        assert_eq!(next_look(Some(now + 7), &token(now - 5), true, now), Some(now + 7));
        assert_eq!(
            next_look(Some(now + GRACE * 2), &token(now - GRACE), true, now),
            Some(now + 2 * GRACE)
        );
    }

    #[test]
    fn elements_read_back() {
        let element =
            r#"0b4f8c0e-0000-4000-8000-000000000000 1000 {"k":"updated","v":"2","t":"999","c":"C1","s":"{\"a\":1}"}"#;
        let (event, recorded_at) = parse_element(element).unwrap();
        assert_eq!(recorded_at, 1000);
        assert_eq!(event.kind, EventKind::Updated);
        assert_eq!((event.version, event.time), (2, 999));
        assert_eq!(event.customer.as_deref(), Some("C1"));
        assert_eq!(event.session.as_deref(), Some(r#"{"a":1}"#));
        assert!(parse_element("x 1").is_err());
    }

    #[test]
    fn shards_spread() {
        let shards: std::collections::HashSet<u64> = (0..200).map(|i| shard_of(&format!("t:s{i}"))).collect();
        assert_eq!(shards.len() as u64, SHARDS);
    }
}
