//! `redis://` and `redis-cluster://`: one hash per session under `<prefix>:{<tenant>:<sessionId>}`,
//! so a session never spans cluster slots. The check-and-write, the delete and moving the expiry
//! are Lua scripts on that one key (sent by hash, loaded on first use), hence atomic; each
//! checks version and generation first. A record with an expiry time (field `e`) also gets a
//! native expiry (`PEXPIRE`, relative to the caller's `now`), removed with `PERSIST` when it
//! has none; the script that moves the expiry sets both, and leaves version, generation and
//! document alone. The record's own expiry time is compared too, so a session is missing the
//! moment it expires. Topology discovery, MOVED/ASK redirects and reconnects are the `redis`
//! crate's work. No `KEYS`, `SCAN` or `RENAME` on the request path (the one `SCAN` is the
//! one-time backfill of the customer index, in the background at open).
//!
//! A customer's sessions are listed in an index of their own (a sorted set per customer, its own
//! hash tag), written *before* the session and checked against the sessions when read: see
//! [`customers`] and "The customer index" in docs/ARCHITECTURE.md. Each session hash also holds
//! its customer (`c`) and modification time (`m`).
//!
//! With events on (`set_event_destinations(n > 0)`), each change runs a variant of its script
//! that also records the change's event in the session's slot, the session listed first in
//! sharded due and expiry indexes, and the native expiry comes an hour after the record's so
//! that the sweep removes an expired session first and records its `expired` event: see
//! [`outbox`] and "The outbox on Redis" in docs/ARCHITECTURE.md. With events off, nothing of
//! this runs.
//!
//! Loads and pings have a connection of their own (on a cluster, one to each node), apart from
//! the one the write, delete and extend scripts share. Redis runs one connection's commands in
//! order, so on a single shared connection a script that Redis holds back (`CLIENT PAUSE
//! WRITE`, as a failover does) held back every later read too, of any session. Reads stay
//! linearizable: both connections reach the same server (on a cluster the primary that owns the
//! slot, never a replica), which runs commands one at a time, so a read sent after a write was
//! acknowledged runs after it and sees it; a write still held back, or answered 503 by the
//! response timeout, may still take effect later, which is what the contract's "outcome
//! unknown" allows.
//!
//! A response timeout does not poison a connection: the crate's multiplexed connections match
//! answers to requests in order, so the late answer of a timed-out script is read and dropped,
//! and a timeout is not a reason to reconnect (only a dropped connection is). The script itself
//! may still run once Redis takes writes again; being conditional, a write and a retry with the
//! same version cannot both apply: whichever runs second finds the version moved on. Moving an
//! expiry leaves the version where it is, so a late extend script can still apply after a later
//! one of the same revision and set the expiry it was sent with, which may be the earlier one.

mod customers;
mod outbox;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script, TlsCertificates};

pub use customers::Nodes;

use super::url::RedisOptions;
use super::{
    CustomerKey, CustomerSessions, Expect, Page, RemovedSession, Revision, SessionKey, SessionStore, StoreError,
    StoredSession,
};
use crate::clock::Millis;

/// Functions every session script starts with: `customer_of(key)`, the customer of the session
/// hash `key` ("" for none; field `c` says it in hashes written since the customer index exists,
/// which all have field `m`; an older hash, without `m`, is read from its document), and
/// `store_record()`, the write scripts' one way to store the record their ARGV carry.
const CUSTOMER_OF: &str = r#"
local function customer_of(key)
  local f = redis.call('HMGET', key, 'c', 'm', 'd')
  if f[2] then return f[1] or '' end
  if not f[3] then return '' end
  local ok, doc = pcall(cjson.decode, f[3])
  if ok and type(doc) == 'table' and type(doc['customerId']) == 'string' then return doc['customerId'] end
  return ''
end
-- The write scripts' one way to store the record their ARGV carry (version 4, expires_at 5,
-- doc 6, ttl 7, generation 9, customer 10, modified_at 11) in the session hash KEYS[1].
local function store_record()
  redis.call('HSET', KEYS[1], 'v', ARGV[4], 'd', ARGV[6], 'g', ARGV[9], 'm', ARGV[11])
  if ARGV[10] == '' then
    redis.call('HDEL', KEYS[1], 'c')
  else
    redis.call('HSET', KEYS[1], 'c', ARGV[10])
  end
  if ARGV[5] == '' then
    redis.call('HDEL', KEYS[1], 'e')
    redis.call('PERSIST', KEYS[1])
  else
    redis.call('HSET', KEYS[1], 'e', ARGV[5])
    redis.call('PEXPIRE', KEYS[1], ARGV[7])
  end
end
"#;

/// KEYS[1]: the session. ARGV: expectation ("absent" or "current"), expected version, now,
/// new version, expires_at ("" = never), doc, ttl in ms from now, expected generation, new
/// generation, customer ("" = none), modified_at. A hash without a generation (written before
/// there was one) counts as "0". Returns {1, the customer the hash had before ("" = none)}
/// when written, else {0, ""}.
const WRITE: &str = r#"
local stored = redis.call('HMGET', KEYS[1], 'v', 'e', 'g')
local live = stored[1] and (not stored[2] or tonumber(stored[2]) > tonumber(ARGV[3]))
if ARGV[1] == 'absent' then
  if live then return {0, ''} end
elseif not live or stored[1] ~= ARGV[2] or (stored[3] or '0') ~= ARGV[8] then
  return {0, ''}
end
local before = customer_of(KEYS[1])
store_record()
return {1, before}
"#;

/// KEYS[1]: the session. ARGV: now, expected version, expected generation. Removes the
/// session only when it is live and at exactly that version and generation: returns {1, its
/// customer ("" = none)}, else {0, ""}.
const DELETE: &str = r#"
local stored = redis.call('HMGET', KEYS[1], 'v', 'e', 'g')
local live = stored[1] and (not stored[2] or tonumber(stored[2]) > tonumber(ARGV[1]))
if not live or stored[1] ~= ARGV[2] or (stored[3] or '0') ~= ARGV[3] then return {0, ''} end
local customer = customer_of(KEYS[1])
redis.call('DEL', KEYS[1])
return {1, customer}
"#;

/// KEYS[1]: a session. Reads what the customer index checks: {0} when there is no hash, else
/// {1, customer ("" = none), version, generation, expires_at ("" = never), modified_at (""
/// in a hash written before the index)}. Changes nothing.
const OBSERVE: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'v', 'g', 'e', 'm')
if not f[1] then return {'0'} end
return {'1', customer_of(KEYS[1]), f[1], f[2] or '0', f[3] or '', f[4] or ''}
"#;

/// KEYS[1]: a session. ARGV: customer, now. Removes the session if it is that customer's
/// (live or expired): {2, 1 if it was live at now else 0, version, generation}; a session of
/// someone else is left as it is and observed: {1, customer, version, generation, expires_at,
/// modified_at}; no session: {0}.
const DELETE_IF_CUSTOMER: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'v', 'g', 'e', 'm')
if not f[1] then return {'0'} end
local customer = customer_of(KEYS[1])
if customer ~= ARGV[1] then return {'1', customer, f[1], f[2] or '0', f[3] or '', f[4] or ''} end
redis.call('DEL', KEYS[1])
local live = '0'
if not f[3] or tonumber(f[3]) > tonumber(ARGV[2]) then live = '1' end
return {'2', live, f[1], f[2] or '0'}
"#;

/// The native expiry of a customer's index keys, in a script: `ttl` ("" = never) or later.
/// The keys live at least as long as the longest-living session they list; once they carry no
/// expiry they keep none (a session that never expires was listed).
const INDEX_TTL: &str = r#"
local function keep_index(ttl, left)
  for _, key in ipairs(KEYS) do
    if ttl == '' then
      redis.call('PERSIST', key)
    elseif left == -2 or (left >= 0 and left < tonumber(ttl)) then
      redis.call('PEXPIRE', key, ttl)
    end
  end
end
"#;

/// KEYS: a customer's index (sorted set) and its tokens (hash). ARGV: session id, score
/// (minus modified_at), token, ttl in ms ("" = never). Lists the session, and notes which write
/// listed it.
const INDEX_ADD: &str = r#"
local left = redis.call('PTTL', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
keep_index(ARGV[4], left)
return 1
"#;

/// KEYS: a customer's index and its tokens. ARGV: ttl in ms ("" = never). Makes the index live
/// at least that long, if it exists.
const INDEX_KEEP: &str = r#"
local left = redis.call('PTTL', KEYS[1])
if left == -2 then return 0 end
keep_index(ARGV[1], left)
return 1
"#;

/// KEYS: a customer's index and its tokens. ARGV: triples of session id, the token it had
/// when it was checked ("" = none), and what to do: "drop" (unlist it) or a score to correct
/// (`ZADD XX`). Each is done only if the token is still the one checked: a write that listed
/// the session again meanwhile wins. Returns how many were dropped.
const INDEX_FIX: &str = r#"
local dropped = 0
for i = 1, #ARGV, 3 do
  local token = redis.call('HGET', KEYS[2], ARGV[i]) or ''
  if token == ARGV[i + 1] then
    if ARGV[i + 2] == 'drop' then
      redis.call('ZREM', KEYS[1], ARGV[i])
      redis.call('HDEL', KEYS[2], ARGV[i])
      dropped = dropped + 1
    else
      redis.call('ZADD', KEYS[1], 'XX', ARGV[i + 2], ARGV[i])
    end
  end
end
return dropped
"#;

/// KEYS[1]: the session. ARGV: now, expected version, expected generation, expires_at ("" =
/// never), ttl in ms from now. Moves the expiry (field and native) and returns 1 only when the
/// session is live and at exactly that version and generation; nothing else changes.
const EXTEND: &str = r#"
local stored = redis.call('HMGET', KEYS[1], 'v', 'e', 'g')
local live = stored[1] and (not stored[2] or tonumber(stored[2]) > tonumber(ARGV[1]))
if not live or stored[1] ~= ARGV[2] or (stored[3] or '0') ~= ARGV[3] then return 0 end
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[1], 'e')
  redis.call('PERSIST', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'e', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return 1
"#;

/// Sessions in Redis, over single-server or cluster connections.
#[derive(Clone)]
pub struct RedisStore<C> {
    /// Loads and pings: never queued behind a write.
    reads: C,
    /// The write, delete and extend scripts.
    writes: C,
    prefix: String,
    write: Script,
    delete: Script,
    extend: Script,
    observe: Script,
    delete_if_customer: Script,
    index_add: Script,
    index_keep: Script,
    index_fix: Script,
    /// With events on: the outbox scripts (see [`outbox`]).
    outbox: outbox::Scripts,
    /// How many event destinations there are; 0 = events off.
    destinations: Arc<AtomicU16>,
}

impl RedisStore<ConnectionManager> {
    /// Connects to one Redis server (reconnecting by itself when it goes away).
    pub async fn open_single(options: &RedisOptions) -> Result<Self, StoreError> {
        let node = options.nodes[0].as_str();
        let client = match trusted_cas(options)? {
            Some(certificates) => redis::Client::build_with_tls(node, certificates),
            None => redis::Client::open(node),
        }
        .map_err(from_redis)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(1);
        // Two managers, hence two TCP connections, each reconnecting by itself.
        let reads = client
            .get_connection_manager_with_config(config.clone())
            .await
            .map_err(from_redis)?;
        let writes = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(from_redis)?;
        Ok(Self::from_connections(reads, writes, options).with_backfill())
    }
}

impl RedisStore<ClusterConnection> {
    /// Connects to a Redis Cluster, discovering the topology from any listed node.
    pub async fn open_cluster(options: &RedisOptions) -> Result<Self, StoreError> {
        let mut builder = ClusterClientBuilder::new(options.nodes.iter().map(String::as_str))
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.response_timeout)
            .retries(2);
        if let Some(certificates) = trusted_cas(options)? {
            builder = builder.certs(certificates);
        }
        // Replicas are never read from (no `read_from_replicas`): they may lag behind.
        let client = builder.build().map_err(from_redis)?;
        // Each call opens its own connections to the nodes, with its own view of the slots.
        let reads = client.get_async_connection().await.map_err(from_redis)?;
        let writes = client.get_async_connection().await.map_err(from_redis)?;
        Ok(Self::from_connections(reads, writes, options).with_backfill())
    }
}

/// The private certificate authorities a `rediss://` URL names with `ca=`, if any; without
/// one, TLS trusts the system's authorities.
fn trusted_cas(options: &RedisOptions) -> Result<Option<TlsCertificates>, StoreError> {
    let Some(path) = &options.ca else { return Ok(None) };
    let pem = std::fs::read(path)
        .map_err(|e| StoreError::Backend(format!("cannot read the CA file {}: {e}", path.display())))?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

impl<C> RedisStore<C> {
    fn from_connections(reads: C, writes: C, options: &RedisOptions) -> Self {
        RedisStore {
            reads,
            writes,
            prefix: options.prefix.clone(),
            write: Script::new(&format!("{CUSTOMER_OF}{WRITE}")),
            delete: Script::new(&format!("{CUSTOMER_OF}{DELETE}")),
            extend: Script::new(EXTEND),
            observe: Script::new(&format!("{CUSTOMER_OF}{OBSERVE}")),
            delete_if_customer: Script::new(&format!("{CUSTOMER_OF}{DELETE_IF_CUSTOMER}")),
            index_add: Script::new(&format!("{INDEX_TTL}{INDEX_ADD}")),
            index_keep: Script::new(&format!("{INDEX_TTL}{INDEX_KEEP}")),
            index_fix: Script::new(INDEX_FIX),
            outbox: outbox::Scripts::new(CUSTOMER_OF),
            destinations: Arc::new(AtomicU16::new(0)),
        }
    }

    /// Whether the outbox is on.
    fn events(&self) -> bool {
        self.destinations.load(Ordering::Relaxed) > 0
    }

    /// The hash tag holds tenant and session id, so all of a session is in one slot.
    fn key(&self, key: &SessionKey) -> String {
        format!("{}:{{{}:{}}}", self.prefix, key.tenant, key.session_id)
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Nodes + Clone + Send + Sync + 'static,
{
    /// After a write of `record` under `key` that found the session with customer `before`
    /// ("" = none).
    async fn after_write(&self, key: &SessionKey, record: &StoredSession, before: String, now: Millis) {
        if !before.is_empty() && record.customer.as_deref() != Some(before.as_str()) {
            // No longer that customer's: unlist it there (else the next read of that index will).
            let customer = CustomerKey::new(key.tenant.clone(), before);
            self.tidy(&customer, &key.session_id, now).await;
        }
    }
}

#[async_trait]
impl<C> SessionStore for RedisStore<C>
where
    C: ConnectionLike + Nodes + Clone + Send + Sync + 'static,
{
    async fn load(&self, key: &SessionKey, now: Millis) -> Result<Option<StoredSession>, StoreError> {
        type Fields = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let (version, expires_at, doc, generation, customer, modified_at): Fields = redis::cmd("HMGET")
            .arg(self.key(key))
            .arg(&["v", "e", "d", "g", "c", "m"])
            .query_async(&mut self.reads.clone())
            .await
            .map_err(from_redis)?;
        let (Some(version), Some(doc)) = (version, doc) else {
            return Ok(None);
        };
        let version = version
            .parse()
            .map_err(|_| StoreError::Corrupt("version is not a number".into()))?;
        let expires_at = expires_at
            .map(|e| e.parse::<Millis>())
            .transpose()
            .map_err(|_| StoreError::Corrupt("expiry is not a number".into()))?;
        let generation = generation
            .map_or(Ok(0), |g| g.parse())
            .map_err(|_| StoreError::Corrupt("generation is not a number".into()))?;
        let (customer, modified_at) = match modified_at {
            Some(m) => (
                customer,
                m.parse()
                    .map_err(|_| StoreError::Corrupt("modification time is not a number".into()))?,
            ),
            // Written before the customer index: both are only in the document.
            None => customers::owner_in_doc(&doc),
        };
        let record = StoredSession {
            version,
            generation,
            expires_at,
            doc,
            customer,
            modified_at,
        };
        Ok(record.is_live(now).then_some(record))
    }

    async fn write(
        &self,
        key: &SessionKey,
        expect: Expect,
        record: &StoredSession,
        now: Millis,
    ) -> Result<(), StoreError> {
        let (kind, expected, expected_generation) = match expect {
            Expect::Absent => ("absent", String::new(), String::new()),
            Expect::Current { version, generation } => ("current", version.to_string(), generation.to_string()),
        };
        // The index first: a session that exists is always listed (see the module doc).
        let listing = async {
            if let Some(customer) = &record.customer {
                let customer = CustomerKey::new(key.tenant.clone(), customer.clone());
                self.index_add(&customer, &key.session_id, record, customers::token(expect, now), now)
                    .await?;
            }
            Ok(())
        };
        if self.events() {
            let args = outbox::WriteArgs {
                kind,
                expected,
                expected_generation,
            };
            // Both listings (customer, outbox) before the script, side by side.
            let (written, before) = self.write_with_events(key, args, record, listing, now).await?;
            StoreError::unless_held(written)?;
            self.after_write(key, record, before, now).await;
            return Ok(());
        }
        listing.await?;
        let (expires_at, ttl) = expiry_args(record.expires_at, now);
        let (written, before): (i64, String) = self
            .write
            .key(self.key(key))
            .arg(kind)
            .arg(expected)
            .arg(now)
            .arg(record.version)
            .arg(expires_at)
            .arg(&record.doc)
            .arg(ttl)
            .arg(expected_generation)
            .arg(record.generation)
            .arg(record.customer.as_deref().unwrap_or(""))
            .arg(record.modified_at)
            .invoke_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        StoreError::unless_held(written == 1)?;
        self.after_write(key, record, before, now).await;
        Ok(())
    }

    async fn delete(&self, key: &SessionKey, revision: Revision, now: Millis) -> Result<(), StoreError> {
        if self.events() {
            let (removed, customer) = self.delete_with_events(key, revision, now).await?;
            StoreError::unless_held(removed)?;
            if !customer.is_empty() {
                let customer = CustomerKey::new(key.tenant.clone(), customer);
                self.tidy(&customer, &key.session_id, now).await;
            }
            return Ok(());
        }
        let (removed, customer): (i64, String) = self
            .delete
            .key(self.key(key))
            .arg(now)
            .arg(revision.version)
            .arg(revision.generation)
            .invoke_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        StoreError::unless_held(removed == 1)?;
        if !customer.is_empty() {
            let customer = CustomerKey::new(key.tenant.clone(), customer);
            self.tidy(&customer, &key.session_id, now).await;
        }
        Ok(())
    }

    async fn extend(
        &self,
        key: &SessionKey,
        revision: Revision,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<(), StoreError> {
        // The index first again: it must live at least as long as the session it lists.
        if let customers::Seen::Present { customer, .. } = self.observe_one(key).await?
            && !customer.is_empty()
        {
            let customer = CustomerKey::new(key.tenant.clone(), customer);
            self.index_keep(&customer, expires_at, now).await?;
        }
        if self.events()
            && let Some(at) = expires_at
        {
            return StoreError::unless_held(self.extend_with_events(key, revision, at, now).await?);
        }
        let (expires_at, ttl) = expiry_args(expires_at, now);
        let extended: i64 = self
            .extend
            .key(self.key(key))
            .arg(now)
            .arg(revision.version)
            .arg(revision.generation)
            .arg(expires_at)
            .arg(ttl)
            .invoke_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        StoreError::unless_held(extended == 1)
    }

    async fn list_customer_sessions(
        &self,
        customer: &CustomerKey,
        page: Page,
        now: Millis,
    ) -> Result<CustomerSessions, StoreError> {
        self.list(customer, page, now).await
    }

    async fn delete_customer_sessions(
        &self,
        customer: &CustomerKey,
        except: Option<&str>,
        now: Millis,
    ) -> Result<Vec<RemovedSession>, StoreError> {
        self.delete_all(customer, except, now).await
    }

    /// With events off, Redis removes expired sessions itself (each record with an expiry time
    /// carries a native expiry), so there is nothing to sweep: always 0. With events on, the
    /// native expiry comes an hour late and the sweep removes what the expiry index lists as
    /// expired, recording each `expired` event (see [`outbox`]).
    async fn sweep_expired(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        if self.events() {
            return self.sweep_with_events(now, limit).await;
        }
        Ok(0)
    }

    fn set_event_destinations(&self, destinations: u16) {
        self.destinations.store(destinations, Ordering::Relaxed);
        if destinations > 0 {
            self.start_repair();
        }
    }

    async fn claim_events(
        &self,
        owner: &str,
        limit: usize,
        lease: Millis,
        now: Millis,
    ) -> Result<Vec<super::outbox::PendingEvent>, StoreError> {
        self.claim(owner, limit, lease, now).await
    }

    async fn settle_event(&self, entry: &str, settlement: &super::outbox::Settlement) -> Result<(), StoreError> {
        self.settle(entry, settlement).await
    }

    async fn outbox_stats(&self) -> Result<super::outbox::OutboxStats, StoreError> {
        self.stats().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.reads.clone())
            .await
            .map(|_| ())
            .map_err(from_redis)
    }
}

/// A record's expiry as the scripts take it: the time for field `e` and the native expiry in ms
/// from `now`, both "" for a record that never expires. The native expiry is relative, so it
/// does not depend on the clocks of Redis and of this instance agreeing. It is at least 1 ms
/// (`PEXPIRE` with 0 or less would delete the key on the spot).
fn expiry_args(expires_at: Option<Millis>, now: Millis) -> (String, String) {
    match expires_at {
        Some(at) => (at.to_string(), at.saturating_sub(now).max(1).to_string()),
        None => (String::new(), String::new()),
    }
}

fn from_redis(err: RedisError) -> StoreError {
    let transient = err.is_timeout()
        || err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_cluster_error()
        || err.is_unrecoverable_error()
        || matches!(
            err.code(),
            Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN")
        );
    if transient {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Backend(err.to_string())
    }
}
