//! `redis://` and `redis-cluster://`: one hash per session under `<prefix>:{<tenant>:<sessionId>}`,
//! so a session never spans cluster slots. The check-and-write, the delete and moving the expiry
//! are Lua scripts on that one key (sent by hash, loaded on first use), hence atomic; each
//! checks version and generation first. A record with an expiry time (field `e`) also gets a
//! native expiry (`PEXPIRE`, relative to the caller's `now`), removed with `PERSIST` when it
//! has none; the script that moves the expiry sets both, and leaves version, generation and
//! document alone. The record's own expiry time is compared too, so a session is missing the
//! moment it expires. Topology discovery, MOVED/ASK redirects and reconnects are the `redis`
//! crate's work. No `KEYS`, `SCAN` or `RENAME` anywhere.
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

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script, TlsCertificates};

use super::url::RedisOptions;
use super::{Expect, Revision, SessionKey, SessionStore, StoreError, StoredSession};
use crate::clock::Millis;

/// KEYS[1]: the session. ARGV: expectation ("absent" or "current"), expected version, now,
/// new version, expires_at ("" = never), doc, ttl in ms from now, expected generation, new
/// generation. A hash without a generation (written before there was one) counts as "0".
const WRITE: &str = r#"
local stored = redis.call('HMGET', KEYS[1], 'v', 'e', 'g')
local live = stored[1] and (not stored[2] or tonumber(stored[2]) > tonumber(ARGV[3]))
if ARGV[1] == 'absent' then
  if live then return 0 end
elseif not live or stored[1] ~= ARGV[2] or (stored[3] or '0') ~= ARGV[8] then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[4], 'd', ARGV[6], 'g', ARGV[9])
if ARGV[5] == '' then
  redis.call('HDEL', KEYS[1], 'e')
  redis.call('PERSIST', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'e', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
end
return 1
"#;

/// KEYS[1]: the session. ARGV: now, expected version, expected generation. Removes the
/// session and returns 1 only when it is live and at exactly that version and generation.
const DELETE: &str = r#"
local stored = redis.call('HMGET', KEYS[1], 'v', 'e', 'g')
local live = stored[1] and (not stored[2] or tonumber(stored[2]) > tonumber(ARGV[1]))
if not live or stored[1] ~= ARGV[2] or (stored[3] or '0') ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[1])
return 1
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
pub struct RedisStore<C> {
    /// Loads and pings: never queued behind a write.
    reads: C,
    /// The write, delete and extend scripts.
    writes: C,
    prefix: String,
    write: Script,
    delete: Script,
    extend: Script,
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
        Ok(Self::from_connections(reads, writes, options))
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
        Ok(Self::from_connections(reads, writes, options))
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
            write: Script::new(WRITE),
            delete: Script::new(DELETE),
            extend: Script::new(EXTEND),
        }
    }

    /// The hash tag holds tenant and session id, so all of a session is in one slot.
    fn key(&self, key: &SessionKey) -> String {
        format!("{}:{{{}:{}}}", self.prefix, key.tenant, key.session_id)
    }
}

#[async_trait]
impl<C> SessionStore for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn load(&self, key: &SessionKey, now: Millis) -> Result<Option<StoredSession>, StoreError> {
        type Fields = (Option<String>, Option<String>, Option<String>, Option<String>);
        let (version, expires_at, doc, generation): Fields = redis::cmd("HMGET")
            .arg(self.key(key))
            .arg(&["v", "e", "d", "g"])
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
        let record = StoredSession {
            version,
            generation,
            expires_at,
            doc,
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
        let (expires_at, ttl) = expiry_args(record.expires_at, now);
        let written: i64 = self
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
            .invoke_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        StoreError::unless_held(written == 1)
    }

    async fn delete(&self, key: &SessionKey, revision: Revision, now: Millis) -> Result<(), StoreError> {
        let removed: i64 = self
            .delete
            .key(self.key(key))
            .arg(now)
            .arg(revision.version)
            .arg(revision.generation)
            .invoke_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        StoreError::unless_held(removed == 1)
    }

    async fn extend(
        &self,
        key: &SessionKey,
        revision: Revision,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<(), StoreError> {
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

    /// Redis removes expired sessions itself (each record with an expiry time carries a native
    /// expiry), so there is nothing to sweep: always 0.
    async fn sweep_expired(&self, _now: Millis, _limit: usize) -> Result<usize, StoreError> {
        Ok(0)
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
