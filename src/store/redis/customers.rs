//! The customer index of the Redis store: per customer of a tenant, a sorted set
//! `<prefix>:cust:{<tenant>:<customer>}` (member: session id, score: minus `modifiedAt`, so that
//! ascending order is newest first and equal times go by ascending session id) and, in the same
//! slot, a hash `<prefix>:cust:{<tenant>:<customer>}:w` that notes for each member which write
//! listed it last (its *token*: the revision that write expected, or `-` for a creation, and
//! when it listed it). The customer id is escaped (`%`, `{`, `}` and `:` as `%XX`) so that the
//! hash tag and the key name one customer only.
//!
//! A session's slot and its customer's slot differ, so the two cannot change in one atomic
//! step; the rules that keep them consistent (see "The customer index" in
//! docs/ARCHITECTURE.md):
//!
//! 1. a write lists the session under its customer *before* the session is written, so a
//!    session that exists is always listed under its customer;
//! 2. an entry is dropped only when its session is not that customer's live session when
//!    checked, *and* the write that listed it can never land any more (the session is no longer
//!    at the revision it expected) or is older than [`GRACE`]; and only if its token is still the
//!    one checked (a write that listed it again meanwhile wins);
//! 3. lists and deletes read the sessions themselves, so a gone session or someone else's is
//!    never shown nor counted, only dropped from the index.

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{RedisError, Value};
use tokio::task::JoinSet;

use super::{RedisStore, from_redis};
use crate::clock::{Millis, parse_rfc3339};
use crate::store::{
    CustomerKey, CustomerSessions, Expect, Page, RemovedSession, Revision, SessionKey, SessionStore, StoreError,
    StoredSession,
};

/// How long a write may take at most between listing its session and writing it: a listing
/// older than this, whose session is not the customer's, is dropped even if its write could in
/// principle still land. Far longer than any response timeout.
pub(super) const GRACE: Millis = 10 * 60 * 1000;

/// How many index entries are read and checked at a time.
const BATCH: usize = 500;

/// What a check of one session found.
pub(crate) enum Seen {
    Missing,
    Present {
        /// "" for none.
        customer: String,
        revision: Revision,
        expires_at: Option<Millis>,
        /// `None` in a hash written before the index.
        modified_at: Option<Millis>,
    },
}

impl Seen {
    fn is_live_of(&self, customer: &str, now: Millis) -> bool {
        matches!(self, Seen::Present { customer: c, expires_at, .. }
            if c == customer && expires_at.is_none_or(|at| at > now))
    }

    /// From the fields {customer, version, generation, expires_at, modified_at} a script returns.
    fn from_fields(fields: &[String]) -> Result<Seen, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("a session's {what} is not a number"));
        let [customer, version, generation, expires_at, modified_at] = fields else {
            return Err(StoreError::Corrupt("an unexpected answer of a script".into()));
        };
        let optional = |text: &str, what: &str| -> Result<Option<Millis>, StoreError> {
            if text.is_empty() {
                Ok(None)
            } else {
                text.parse().map(Some).map_err(|_| corrupt(what))
            }
        };
        Ok(Seen::Present {
            customer: customer.clone(),
            revision: Revision {
                version: version.parse().map_err(|_| corrupt("version"))?,
                generation: generation.parse().map_err(|_| corrupt("generation"))?,
            },
            expires_at: optional(expires_at, "expiry")?,
            modified_at: optional(modified_at, "modification time")?,
        })
    }

    /// From the answer of the OBSERVE script.
    fn from_reply(reply: Vec<String>) -> Result<Seen, StoreError> {
        match reply.split_first() {
            Some((code, fields)) if code == "1" => Seen::from_fields(fields),
            _ => Ok(Seen::Missing),
        }
    }
}

/// What to do with one index entry after its check.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The customer's live session: list it.
    Valid,
    /// Not (now) the customer's, but the write that listed it may still land: leave it.
    Keep,
    /// Stale for good: unlist it.
    Drop,
}

/// The token a write of `expect` notes when it lists its session at `now`.
pub(crate) fn token(expect: Expect, now: Millis) -> String {
    match expect {
        Expect::Absent => format!("-|{now}"),
        Expect::Current { version, generation } => format!("{version}:{generation}|{now}"),
    }
}

/// Rule 2 of the module doc, for an entry of `customer` with `token` whose session was `seen`
/// after the token was read.
fn verdict(customer: &str, token: &str, seen: &Seen, now: Millis) -> Verdict {
    if seen.is_live_of(customer, now) {
        return Verdict::Valid;
    }
    let (expected, at) = token.split_once('|').unwrap_or(("-", "0"));
    if now.saturating_sub(at.parse().unwrap_or(0)) > GRACE {
        return Verdict::Drop;
    }
    match seen {
        // A creation lands whenever the session is missing or expired: it may still come.
        _ if expected == "-" => Verdict::Keep,
        // An update lands only on the live revision it expected; revisions never come back.
        Seen::Present {
            revision, expires_at, ..
        } if expires_at.is_none_or(|at| at > now)
            && expected == format!("{}:{}", revision.version, revision.generation) =>
        {
            Verdict::Keep
        }
        _ => Verdict::Drop,
    }
}

/// The customer and the modification time in a session's JSON document (sessions written
/// before the index have them nowhere else); none and 0 when the document does not say.
pub(crate) fn owner_in_doc(doc: &str) -> (Option<String>, Millis) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(doc) else {
        return (None, 0);
    };
    let customer = value["customerId"].as_str().map(str::to_owned);
    let modified_at = value["metadata"]["modifiedAt"]
        .as_str()
        .and_then(parse_rfc3339)
        .unwrap_or(0);
    (customer, modified_at)
}

/// `text` with `%`, `{`, `}` and `:` as `%XX`.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' | '{' | '}' | ':' => out.push_str(&format!("%{:02X}", c as u32)),
            _ => out.push(c),
        }
    }
    out
}

/// The native expiry of an index listing a record that expires at `expires_at` ("" = never):
/// the record's, plus [`GRACE`].
fn index_ttl(expires_at: Option<Millis>, now: Millis) -> String {
    expires_at.map_or_else(String::new, |at| {
        (at.saturating_sub(now).max(1).saturating_add(GRACE)).to_string()
    })
}

/// The nodes that together hold every key, and a `SCAN` on one of them: for the one-time
/// backfill of the index (never on the request path).
#[async_trait]
pub trait Nodes {
    /// Each primary, as host and port (`None`: the only server).
    async fn primaries(&mut self) -> Result<Vec<Option<(String, u16)>>, RedisError>;
    /// One step of `SCAN cursor MATCH pattern` on `node`.
    async fn scan(
        &mut self,
        node: &Option<(String, u16)>,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<String>), RedisError>;
}

fn scan_command(cursor: u64, pattern: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(BATCH);
    cmd
}

#[async_trait]
impl Nodes for ConnectionManager {
    async fn primaries(&mut self) -> Result<Vec<Option<(String, u16)>>, RedisError> {
        Ok(vec![None])
    }

    async fn scan(
        &mut self,
        _node: &Option<(String, u16)>,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<String>), RedisError> {
        scan_command(cursor, pattern).query_async(self).await
    }
}

#[async_trait]
impl Nodes for ClusterConnection {
    async fn primaries(&mut self) -> Result<Vec<Option<(String, u16)>>, RedisError> {
        let slots = self
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let ranges: Vec<Vec<Value>> = redis::from_redis_value(slots)?;
        let mut primaries = Vec::new();
        for range in ranges {
            // [first slot, last slot, [host, port, id, ...], replicas...]
            let Some(primary) = range.into_iter().nth(2) else {
                continue;
            };
            let fields: Vec<Value> = redis::from_redis_value(primary)?;
            let mut fields = fields.into_iter();
            let (Some(host), Some(port)) = (fields.next(), fields.next()) else {
                continue;
            };
            let node = Some((
                redis::from_redis_value::<String>(host)?,
                redis::from_redis_value::<u16>(port)?,
            ));
            if !primaries.contains(&node) {
                primaries.push(node);
            }
        }
        Ok(primaries)
    }

    async fn scan(
        &mut self,
        node: &Option<(String, u16)>,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<String>), RedisError> {
        let routing = match node {
            Some((host, port)) => RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            }),
            None => RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        };
        let reply = self.route_command(scan_command(cursor, pattern), routing).await?;
        Ok(redis::from_redis_value(reply)?)
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Nodes + Clone + Send + Sync + 'static,
{
    /// The customer's index and its tokens.
    fn index_keys(&self, customer: &CustomerKey) -> [String; 2] {
        let index = format!(
            "{}:cust:{{{}:{}}}",
            self.prefix,
            customer.tenant,
            escape(&customer.customer_id)
        );
        let tokens = format!("{index}:w");
        [index, tokens]
    }

    /// Lists `session_id` under `customer` (rule 1), noting `token`, the index kept alive at
    /// least as long as `record`.
    pub(super) async fn index_add(
        &self,
        customer: &CustomerKey,
        session_id: &str,
        record: &StoredSession,
        token: String,
        now: Millis,
    ) -> Result<(), StoreError> {
        let [index, tokens] = self.index_keys(customer);
        let _: i64 = self
            .index_add
            .key(index)
            .key(tokens)
            .arg(session_id)
            .arg(-record.modified_at)
            .arg(token)
            .arg(index_ttl(record.expires_at, now))
            .invoke_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        Ok(())
    }

    /// Keeps `customer`'s index alive until at least `expires_at` (`None`: for ever).
    pub(super) async fn index_keep(
        &self,
        customer: &CustomerKey,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let [index, tokens] = self.index_keys(customer);
        let _: i64 = self
            .index_keep
            .key(index)
            .key(tokens)
            .arg(index_ttl(expires_at, now))
            .invoke_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        Ok(())
    }

    /// What the session under `key` is now, for the index.
    pub(super) async fn observe_one(&self, key: &SessionKey) -> Result<Seen, StoreError> {
        let reply: Vec<String> = self
            .observe
            .key(self.key(key))
            .invoke_async(&mut self.reads.clone())
            .await
            .map_err(from_redis)?;
        Seen::from_reply(reply)
    }

    /// Runs `script` (with `args` after the key) on the session `id` of `tenant` for each of
    /// `ids`, all at once (one slot each, so one call each), on the `writes` or the read
    /// connection; the answers in the order of `ids`.
    async fn on_each_session(
        &self,
        script: &redis::Script,
        tenant: &str,
        ids: &[String],
        args: &[String],
        writes: bool,
    ) -> Result<Vec<Vec<String>>, StoreError> {
        let mut tasks = JoinSet::new();
        for (i, id) in ids.iter().enumerate() {
            let key = self.key(&SessionKey::new(tenant, id.clone()));
            let mut conn = if writes {
                self.writes.clone()
            } else {
                self.reads.clone()
            };
            let (script, args) = (script.clone(), args.to_vec());
            tasks.spawn(async move {
                let reply: Result<Vec<String>, _> = script.key(key).arg(args).invoke_async(&mut conn).await;
                (i, reply)
            });
        }
        let mut replies = vec![Vec::new(); ids.len()];
        while let Some(done) = tasks.join_next().await {
            let (i, reply) = done.map_err(|e| StoreError::Backend(format!("a Redis task failed: {e}")))?;
            replies[i] = reply.map_err(from_redis)?;
        }
        Ok(replies)
    }

    /// With events on, DELETE_IF_CUSTOMER on each of `ids` recording its event, the sessions
    /// listed in the outbox indexes first; the answers as `on_each_session`'s, without the
    /// count of entries recorded.
    async fn delete_if_customer_with_events(
        &self,
        customer: &CustomerKey,
        ids: &[String],
        now: Millis,
    ) -> Result<Vec<Vec<String>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let token = self.mark_removals(&customer.tenant, ids, now).await?;
        let destinations = self.destinations.load(std::sync::atomic::Ordering::Relaxed);
        let mut tasks = JoinSet::new();
        for (i, id) in ids.iter().enumerate() {
            let keys = self.session_keys(&SessionKey::new(customer.tenant.clone(), id.clone()));
            let script = self.outbox.delete_if_customer.clone();
            let mut conn = self.writes.clone();
            let args = (
                customer.customer_id.clone(),
                now,
                destinations,
                token.clone(),
                crate::store::outbox::EventRecord::new_id()?,
            );
            tasks.spawn(async move {
                let mut invocation = script.prepare_invoke();
                for key in keys {
                    invocation.key(key);
                }
                let reply: Result<Vec<String>, _> = invocation
                    .arg(args.0)
                    .arg(args.1)
                    .arg(args.2)
                    .arg(args.3)
                    .arg(args.4)
                    .invoke_async(&mut conn)
                    .await;
                (i, reply)
            });
        }
        let mut replies = vec![Vec::new(); ids.len()];
        let mut failure = None;
        while let Some(done) = tasks.join_next().await {
            let (i, reply) = done.map_err(|e| StoreError::Backend(format!("a Redis task failed: {e}")))?;
            match reply {
                Ok(reply) => replies[i] = reply,
                Err(e) => failure = Some(from_redis(e)),
            }
        }
        // What each recorded (a removal's last field), against what the listing counted.
        let mut pushed = Vec::with_capacity(ids.len());
        for reply in &mut replies {
            let recorded = match reply.first().map(String::as_str) {
                Some("2") => reply.pop().and_then(|p| p.parse().ok()).unwrap_or(0),
                _ => 0,
            };
            pushed.push(recorded);
        }
        self.count_removals(&customer.tenant, ids, &pushed).await;
        match failure {
            Some(e) => Err(e),
            None => Ok(replies),
        }
    }

    /// The tokens of `ids` in `customer`'s index ("" for none).
    async fn tokens(&self, customer: &CustomerKey, ids: &[String]) -> Result<Vec<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let [_, tokens] = self.index_keys(customer);
        let found: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(tokens)
            .arg(ids)
            .query_async(&mut self.reads.clone())
            .await
            .map_err(from_redis)?;
        Ok(found.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Applies the drops and score corrections `fixes` (id, token checked, "drop" or a score).
    async fn fix(&self, customer: &CustomerKey, fixes: Vec<[String; 3]>) -> Result<(), StoreError> {
        if fixes.is_empty() {
            return Ok(());
        }
        let [index, tokens] = self.index_keys(customer);
        let _: i64 = self
            .index_fix
            .key(index)
            .key(tokens)
            .arg(fixes.concat())
            .invoke_async(&mut self.writes.clone())
            .await
            .map_err(from_redis)?;
        Ok(())
    }

    /// Checks the entries `ids` (with their scores, when known) of `customer`'s index against
    /// their sessions; drops the stale ones and corrects wrong scores; which are valid.
    async fn check(
        &self,
        customer: &CustomerKey,
        entries: &[(String, Option<f64>)],
        now: Millis,
    ) -> Result<Vec<bool>, StoreError> {
        let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
        // The tokens before the sessions: see rule 2.
        let tokens = self.tokens(customer, &ids).await?;
        let replies = self
            .on_each_session(&self.observe, &customer.tenant, &ids, &[], false)
            .await?;
        let mut valid = Vec::with_capacity(ids.len());
        let mut fixes = Vec::new();
        for (((id, score), token), reply) in entries.iter().zip(tokens).zip(replies) {
            let seen = Seen::from_reply(reply)?;
            let verdict = verdict(&customer.customer_id, &token, &seen, now);
            if verdict == Verdict::Drop {
                fixes.push([id.clone(), token.clone(), "drop".into()]);
            }
            if let (
                Verdict::Valid,
                Some(score),
                Seen::Present {
                    modified_at: Some(m), ..
                },
            ) = (&verdict, score, &seen)
                && *score != -(*m as f64)
            {
                fixes.push([id.clone(), token, (-m).to_string()]);
            }
            valid.push(verdict == Verdict::Valid);
        }
        self.fix(customer, fixes).await?;
        Ok(valid)
    }

    /// Checks the one entry `session_id` of `customer` (after a write or delete that took the
    /// session away from them); a failure only leaves the entry to the next read.
    pub(super) async fn tidy(&self, customer: &CustomerKey, session_id: &str, now: Millis) {
        if let Err(e) = self.check(customer, &[(session_id.to_owned(), None)], now).await {
            tracing::debug!(error = %e, "unlisting a session from its former customer failed");
        }
    }

    /// The list: walks the whole index in batches (checking each entry: the total counts only
    /// the customer's live sessions) and loads the sessions of the page. The walk goes by
    /// position in the index's order, (score, member), not by rank: entries added in front of
    /// it (newer sessions) or removed behind it (by a delete or another list) while it walks
    /// would shift ranks and make a rank-based walk read an entry twice or skip one. An entry
    /// is counted at most once per list even if its score moves during the walk.
    pub(super) async fn list(
        &self,
        customer: &CustomerKey,
        page: Page,
        now: Millis,
    ) -> Result<CustomerSessions, StoreError> {
        let [index, _] = self.index_keys(customer);
        let (mut total, mut wanted) = (0u64, Vec::new());
        let mut counted = std::collections::HashSet::new();
        let mut after: Option<(i64, String)> = None;
        loop {
            let (entries, more) = self.entries_after(&index, after.as_ref()).await?;
            let Some((last_id, last_score)) = entries.last().map(|(id, s)| (id.clone(), *s)) else {
                break;
            };
            let candidates: Vec<(String, Option<f64>)> = entries
                .into_iter()
                .filter(|(id, _)| !counted.contains(id))
                .map(|(id, s)| (id, Some(s)))
                .collect();
            let valid = self.check(customer, &candidates, now).await?;
            for ((id, _), valid) in candidates.into_iter().zip(valid) {
                if valid && counted.insert(id.clone()) {
                    if total >= page.offset && total - page.offset < page.limit {
                        wanted.push(id);
                    }
                    total += 1;
                }
            }
            after = Some((last_score as i64, last_id));
            if !more {
                break;
            }
        }
        let mut sessions = Vec::with_capacity(wanted.len());
        for id in wanted {
            let key = customer.session(&id);
            // Changed meanwhile (another customer's now, or gone): left out of the page.
            if let Some(record) = SessionStore::load(self, &key, now).await?
                && record.customer.as_deref() == Some(customer.customer_id.as_str())
            {
                sessions.push((id, record));
            }
        }
        Ok(CustomerSessions { sessions, total })
    }

    /// The next entries of `index` after `after` (a score and a member) in the index's order,
    /// about a batch of them, and whether there may be more: the rest of `after`'s score (equal
    /// scores go by member; such ties are rare, the scores being milliseconds), then a batch
    /// of greater scores.
    async fn entries_after(
        &self,
        index: &str,
        after: Option<&(i64, String)>,
    ) -> Result<(Vec<(String, f64)>, bool), StoreError> {
        let range = |from: String| {
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(index)
                .arg(from)
                .arg("+inf")
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(BATCH)
                .arg("WITHSCORES");
            cmd
        };
        let mut entries: Vec<(String, f64)> = Vec::new();
        let next = match after {
            None => range("-inf".into()),
            Some((score, member)) => {
                let ties: Vec<(String, f64)> = redis::cmd("ZRANGE")
                    .arg(index)
                    .arg(*score)
                    .arg(*score)
                    .arg("BYSCORE")
                    .arg("WITHSCORES")
                    .query_async(&mut self.reads.clone())
                    .await
                    .map_err(from_redis)?;
                entries.extend(ties.into_iter().filter(|(id, _)| id.as_str() > member.as_str()));
                range(format!("({score}"))
            }
        };
        let batch: Vec<(String, f64)> = next.query_async(&mut self.reads.clone()).await.map_err(from_redis)?;
        let more = batch.len() >= BATCH;
        entries.extend(batch);
        Ok((entries, more))
    }

    /// The delete: walks the index with `ZSCAN` (which returns every entry present from the
    /// start of the walk to its end) and removes each session that is the customer's when
    /// reached, with a script on that session; then unlists what it removed.
    pub(super) async fn delete_all(
        &self,
        customer: &CustomerKey,
        except: Option<&str>,
        now: Millis,
    ) -> Result<Vec<RemovedSession>, StoreError> {
        let [index, _] = self.index_keys(customer);
        let (mut cursor, mut removed) = (0u64, Vec::new());
        loop {
            let (next, flat): (u64, Vec<String>) = redis::cmd("ZSCAN")
                .arg(&index)
                .arg(cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut self.reads.clone())
                .await
                .map_err(from_redis)?;
            let ids: Vec<String> = flat
                .into_iter()
                .step_by(2)
                .filter(|id| Some(id.as_str()) != except)
                .collect();
            // The tokens before the sessions: see rule 2.
            let tokens = self.tokens(customer, &ids).await?;
            let replies = if self.events() {
                self.delete_if_customer_with_events(customer, &ids, now).await?
            } else {
                let args = [customer.customer_id.clone(), now.to_string()];
                self.on_each_session(&self.delete_if_customer, &customer.tenant, &ids, &args, true)
                    .await?
            };
            let mut fixes = Vec::new();
            for ((id, token), reply) in ids.into_iter().zip(tokens).zip(replies) {
                let seen = match reply.split_first() {
                    Some((code, fields)) if code == "2" => {
                        let [live, version, generation] = fields else {
                            return Err(StoreError::Corrupt("an unexpected answer of a script".into()));
                        };
                        let corrupt = || StoreError::Corrupt("a session's version is not a number".into());
                        if live == "1" {
                            removed.push(RemovedSession {
                                session_id: id.clone(),
                                revision: Revision {
                                    version: version.parse().map_err(|_| corrupt())?,
                                    generation: generation.parse().map_err(|_| corrupt())?,
                                },
                            });
                        }
                        Seen::Missing
                    }
                    Some((code, fields)) if code == "1" => Seen::from_fields(fields)?,
                    _ => Seen::Missing,
                };
                if verdict(&customer.customer_id, &token, &seen, now) == Verdict::Drop {
                    fixes.push([id, token, "drop".into()]);
                }
            }
            self.fix(customer, fixes).await?;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(removed)
    }

    /// Starts the one-time backfill of the index (see [`Self::backfill`]) in the background.
    pub(super) fn with_backfill(self) -> Self {
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.backfill().await {
                tracing::error!(error = %e, "building the customer index of existing sessions failed");
            }
        });
        self
    }

    /// Lists the sessions written before the index existed (hashes without field `m`) under
    /// their customers, once per prefix: `SCAN` over every primary, off the request path,
    /// guarded by a marker key set when done. Instances that start together take turns with a
    /// lock key (which expires, so a crashed instance's turn passes to the next start); two
    /// running at once would only list the same sessions twice, which changes nothing.
    pub(crate) async fn backfill(&self) -> Result<(), StoreError> {
        let done = format!("{}:customer-index:built", self.prefix);
        let lock = format!("{}:customer-index:building", self.prefix);
        let mut conn = self.writes.clone();
        let built: bool = redis::cmd("EXISTS")
            .arg(&done)
            .query_async(&mut conn)
            .await
            .map_err(from_redis)?;
        if built {
            return Ok(());
        }
        if !take_lock(&mut conn, &lock).await? {
            return Ok(());
        }
        let pattern = format!("{}:{{*", glob_escape(&self.prefix));
        let mut listed = 0u64;
        for node in conn.primaries().await.map_err(from_redis)? {
            let mut cursor = 0;
            loop {
                let (next, keys) = conn.scan(&node, cursor, &pattern).await.map_err(from_redis)?;
                for key in keys {
                    listed += u64::from(self.backfill_one(&key).await?);
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let _: () = redis::cmd("SET")
            .arg(&done)
            .arg(listed)
            .query_async(&mut conn)
            .await
            .map_err(from_redis)?;
        let _: () = redis::cmd("DEL")
            .arg(&lock)
            .query_async(&mut conn)
            .await
            .map_err(from_redis)?;
        if listed > 0 {
            tracing::info!(listed, "listed existing sessions under their customers");
        }
        Ok(())
    }

    /// Lists the session hash `key` under its customer if it was written before the index.
    async fn backfill_one(&self, key: &str) -> Result<bool, StoreError> {
        let Some((tenant, session_id)) = key
            .strip_prefix(&format!("{}:{{", self.prefix))
            .and_then(|rest| rest.strip_suffix('}'))
            .and_then(|tag| tag.split_once(':'))
        else {
            return Ok(false);
        };
        type Fields = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let (version, generation, expires_at, modified_at, doc): Fields = redis::cmd("HMGET")
            .arg(key)
            .arg(&["v", "g", "e", "m", "d"])
            .query_async(&mut self.reads.clone())
            .await
            .map_err(from_redis)?;
        let (Some(version), None, Some(doc)) = (version, modified_at, doc) else {
            return Ok(false); // written since the index exists, or not a session
        };
        let (Some(customer), modified_at) = owner_in_doc(&doc) else {
            return Ok(false);
        };
        let record = StoredSession {
            version: version.parse().unwrap_or(0),
            generation: generation.map_or(Ok(0), |g| g.parse()).unwrap_or(0),
            expires_at: expires_at.and_then(|e| e.parse().ok()),
            doc: String::new(),
            customer: Some(customer.clone()),
            modified_at,
        };
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        // The revision it has now: dropped later only once it changed (rule 2).
        let token = token(Expect::unchanged(&record), now);
        let customer = CustomerKey::new(tenant, customer);
        self.index_add(&customer, session_id, &record, token, now).await?;
        Ok(true)
    }
}

/// Takes the lock key `lock` of a one-time job at start (for `GRACE`, so a holder that died
/// leaves it to the next start); whether this instance got it.
pub(super) async fn take_lock<C: ConnectionLike + Send>(conn: &mut C, lock: &str) -> Result<bool, StoreError> {
    let mine: Option<String> = redis::cmd("SET")
        .arg(lock)
        .arg("1")
        .arg("NX")
        .arg("PX")
        .arg(GRACE)
        .query_async(conn)
        .await
        .map_err(from_redis)?;
    Ok(mine.is_some())
}

/// `text` with the glob characters of `SCAN MATCH` escaped.
pub(super) fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_ids_cannot_break_out_of_their_hash_tag() {
        assert_eq!(escape("a:b{c}%d"), "a%3Ab%7Bc%7D%25d");
        assert_ne!(escape("a:b"), escape("a%3Ab"));
    }

    #[test]
    fn an_entry_is_dropped_only_when_its_write_can_no_longer_land() {
        let now = 1_000_000;
        let at = |version, customer: &str| Seen::Present {
            customer: customer.into(),
            revision: Revision { version, generation: 7 },
            expires_at: None,
            modified_at: Some(1),
        };
        let update = token(
            Expect::Current {
                version: 3,
                generation: 7,
            },
            now,
        );
        let creation = token(Expect::Absent, now);
        assert_eq!(verdict("a", &update, &at(4, "a"), now), Verdict::Valid);
        // still at the revision the update expected: it may land
        assert_eq!(verdict("a", &update, &at(3, "b"), now), Verdict::Keep);
        assert_eq!(verdict("a", &update, &at(4, "b"), now), Verdict::Drop);
        assert_eq!(verdict("a", &update, &Seen::Missing, now), Verdict::Drop);
        assert_eq!(verdict("a", &creation, &Seen::Missing, now), Verdict::Keep);
        assert_eq!(verdict("a", &creation, &Seen::Missing, now + GRACE + 1), Verdict::Drop);
        assert_eq!(verdict("a", "", &Seen::Missing, now), Verdict::Drop);
    }

    #[test]
    fn old_documents_name_their_customer_and_time() {
        let doc = r#"{"customerId":"c1","metadata":{"version":1,"modifiedAt":"2026-02-04T16:30:04.047Z"}}"#;
        assert_eq!(owner_in_doc(doc), (Some("c1".into()), 1_770_222_604_047));
        assert_eq!(owner_in_doc("not json"), (None, 0));
    }
}
