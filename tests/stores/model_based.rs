//! Model-based testing: random sequences of operations (PUT, attribute set and remove, delete,
//! a login that adopts an anonymous session, the clock moving past the idle timeout and the
//! absolute cap of anonymous sessions) applied to the real use cases on every store and to a
//! tiny model of the contract written independently here. After every step the answers and the
//! stored sessions must agree; the reads that check them are uses too, and extend expiry in the
//! model as in the service.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{Backend, START, open_store};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Value, json};
use session_context::clock::ManualClock;
use session_context::domain::{FieldChange, Lifetime, PutRequest, TextField};
use session_context::service::{Caller, Outcome, Policy, Precondition, SaasToken, ServiceError, Sessions, Shopper};
use session_context::store::SessionKey;

const TTL_MS: i64 = 60 * 60 * 1000;
/// The absolute cap of anonymous sessions (`--anonymous-max-age`).
const MAX_AGE_MS: i64 = 150 * 60 * 1000;
const IDS: [&str; 2] = ["a", "b"];
const KEYS: [&str; 2] = ["k1", "k2"];

#[derive(Debug, Clone)]
enum Op {
    Put {
        id: usize,
        currency: Option<Option<&'static str>>,
        customer: Option<Option<&'static str>>,
        stale: bool,
        upsert: bool,
    },
    SetAttribute {
        id: usize,
        key: usize,
        value: i64,
    },
    RemoveAttribute {
        id: usize,
        key: usize,
    },
    Delete {
        id: usize,
    },
    /// `GET /me/context` with a customer token for C1: adopts an anonymous session.
    Login {
        id: usize,
    },
    Advance {
        minutes: u64,
    },
}

fn change<T: Clone + std::fmt::Debug + 'static>(values: Vec<T>) -> impl Strategy<Value = Option<Option<T>>> {
    prop_oneof![
        Just(None),
        Just(Some(None)),
        prop::sample::select(values).prop_map(|v| Some(Some(v)))
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, change(vec!["EUR", "USD"]), change(vec!["C1"]), any::<bool>(), any::<bool>())
            .prop_map(|(id, currency, customer, stale, upsert)| Op::Put { id, currency, customer, stale, upsert }),
        3 => (0..2usize, 0..2usize, 0..100i64).prop_map(|(id, key, value)| Op::SetAttribute { id, key, value }),
        2 => (0..2usize, 0..2usize).prop_map(|(id, key)| Op::RemoveAttribute { id, key }),
        1 => (0..2usize).prop_map(|id| Op::Delete { id }),
        1 => (0..2usize).prop_map(|id| Op::Login { id }),
        1 => prop::sample::select(vec![1u64, 30, 61]).prop_map(|minutes| Op::Advance { minutes }),
    ]
}

/// The contract, as little code as it takes.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    version: u64,
    currency: Option<String>,
    customer: Option<String>,
    context: BTreeMap<String, Value>,
    created_at: i64,
    expires_at: Option<i64>,
}

impl Model {
    /// A change at `t`: the expiry starts over (within the cap; customers never expire).
    fn changed(&mut self, t: i64) {
        self.version += 1;
        self.expires_at = self.expiry(t);
    }

    fn expiry(&self, t: i64) -> Option<i64> {
        self.customer
            .is_none()
            .then(|| (t + TTL_MS).min(self.created_at + MAX_AGE_MS))
    }

    /// A use at `t` that changes nothing: the expiry moves on only when less than half of the
    /// idle timeout is left, and only forwards.
    fn used(&mut self, t: i64) {
        if let (Some(current), Some(next)) = (self.expires_at, self.expiry(t))
            && (current - t) * 2 < TTL_MS
            && next > current
        {
            self.expires_at = Some(next);
        }
    }
}

/// What an operation answered, reduced to what the contract specifies.
#[derive(Debug, PartialEq)]
enum Answer {
    Created(u64),
    Updated(u64),
    Unchanged,
    NotFound,
    Conflict(u64),
    Read(u64),
}

fn answer(result: Result<Outcome, ServiceError>) -> Answer {
    match result {
        Ok(Outcome::Created { version }) => Answer::Created(version),
        Ok(Outcome::Updated { version }) => Answer::Updated(version),
        Ok(Outcome::Unchanged) => Answer::Unchanged,
        Err(ServiceError::NotFound) => Answer::NotFound,
        Err(ServiceError::VersionMismatch { current, .. }) => Answer::Conflict(current),
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn live(model: &HashMap<usize, Model>, id: usize, now: i64) -> Option<&Model> {
    model.get(&id).filter(|m| m.expires_at.is_none_or(|at| at > now))
}

fn apply_to_model(model: &mut HashMap<usize, Model>, op: &Op, now: &mut i64) -> Answer {
    let t = *now;
    match op {
        Op::Advance { minutes } => {
            *now += (*minutes as i64) * 60_000;
            Answer::Unchanged
        }
        Op::Put {
            id,
            currency,
            customer,
            stale,
            upsert,
        } => {
            let current = live(model, *id, t).cloned();
            let mut next = match (current, upsert) {
                (Some(m), _) if *stale => return Answer::Conflict(m.version),
                (Some(mut m), _) => {
                    m.version += 1;
                    m
                }
                (None, false) => return Answer::NotFound,
                (None, true) => Model {
                    version: 1,
                    currency: None,
                    customer: None,
                    context: BTreeMap::new(),
                    created_at: t,
                    expires_at: None,
                },
            };
            if let Some(c) = currency {
                next.currency = c.map(str::to_owned);
            }
            if let Some(c) = customer {
                next.customer = c.map(str::to_owned);
            }
            next.expires_at = next.expiry(t);
            let created = next.version == 1;
            let version = next.version;
            model.insert(*id, next);
            if created {
                Answer::Created(version)
            } else {
                Answer::Updated(version)
            }
        }
        Op::SetAttribute { id, key, value } => {
            let Some(mut m) = live(model, *id, t).cloned() else {
                return Answer::NotFound;
            };
            m.context.insert(KEYS[*key].into(), json!(value));
            m.changed(t);
            let version = m.version;
            model.insert(*id, m);
            Answer::Updated(version)
        }
        Op::RemoveAttribute { id, key } => {
            let Some(mut m) = live(model, *id, t).cloned() else {
                return Answer::NotFound;
            };
            if m.context.remove(KEYS[*key]).is_none() {
                m.used(t);
                model.insert(*id, m);
                return Answer::Unchanged;
            }
            m.changed(t);
            let version = m.version;
            model.insert(*id, m);
            Answer::Updated(version)
        }
        Op::Delete { id } => {
            if live(model, *id, t).is_none() {
                return Answer::NotFound;
            }
            model.remove(id);
            Answer::Unchanged
        }
        Op::Login { id } => {
            let Some(mut m) = live(model, *id, t).cloned() else {
                return Answer::NotFound;
            };
            if m.customer.is_none() {
                m.customer = Some("C1".into());
                m.changed(t);
            }
            let version = m.version;
            model.insert(*id, m);
            Answer::Read(version)
        }
    }
}

async fn apply_to_service(
    sessions: &Sessions,
    clock: &ManualClock,
    model: &HashMap<usize, Model>,
    op: &Op,
    now: i64,
) -> Answer {
    let key = |id: usize| SessionKey::new("shop", IDS[id]);
    match op {
        Op::Advance { minutes } => {
            clock.advance(Duration::from_secs(minutes * 60));
            Answer::Unchanged
        }
        Op::Put {
            id,
            currency,
            customer,
            stale,
            upsert,
        } => {
            let mut fields = Vec::new();
            for (field, value) in [(TextField::Currency, currency), (TextField::CustomerId, customer)] {
                if let Some(v) = value {
                    fields.push((field, v.map_or(FieldChange::Remove, |s| FieldChange::Set(s.to_owned()))));
                }
            }
            let current = live(model, *id, now).map_or(1, |m| m.version);
            let expected = if *stale { current + 7 } else { current };
            let req = PutRequest {
                fields,
                context: None,
                version: Some(expected),
            };
            let saas = SaasToken::Customer("C1".into());
            answer(
                sessions
                    .put(&key(*id), &req, Some(Precondition::Version(expected)), *upsert, &saas)
                    .await,
            )
        }
        Op::SetAttribute { id, key: k, value } => answer(
            sessions
                .set_attribute(&key(*id), &Caller::Management, KEYS[*k], &json!(value))
                .await,
        ),
        Op::RemoveAttribute { id, key: k } => answer(
            sessions
                .remove_attribute(&key(*id), &Caller::Management, KEYS[*k])
                .await,
        ),
        Op::Delete { id } => match sessions.delete(&key(*id), &SaasToken::Customer("C1".into())).await {
            Ok(()) => Answer::Unchanged,
            Err(e) => answer(Err(e)),
        },
        Op::Login { id } => {
            let shopper = Shopper {
                customer: Some("C1".into()),
                issued_at: Some(i64::MAX / 2),
                defaults: vec![],
            };
            match sessions.get(&key(*id), &Caller::Me(shopper)).await {
                Ok(record) => Answer::Read(record.version),
                Err(e) => answer(Err(e)),
            }
        }
    }
}

/// Reads every session (each read is a use, and may extend its expiry, in the model too).
async fn check_state(sessions: &Sessions, model: &mut HashMap<usize, Model>, now: i64) {
    for (id, name) in IDS.iter().enumerate() {
        let stored = sessions.get(&SessionKey::new("shop", *name), &Caller::Management).await;
        if live(model, id, now).is_some() {
            model.get_mut(&id).expect("live").used(now);
        }
        match (live(model, id, now), stored) {
            (None, Err(ServiceError::NotFound)) => {}
            (Some(m), Ok(record)) => {
                let doc: Value = serde_json::from_str(&record.doc).unwrap();
                assert_eq!(record.version, m.version, "{name}: {doc}");
                assert_eq!(doc["metadata"]["version"], json!(m.version));
                assert_eq!(doc["currency"].as_str(), m.currency.as_deref(), "{name}: {doc}");
                assert_eq!(doc["customerId"].as_str(), m.customer.as_deref(), "{name}: {doc}");
                let context: BTreeMap<String, Value> = serde_json::from_value(doc["context"].clone()).unwrap();
                assert_eq!(context, m.context, "{name}: {doc}");
            }
            (expected, got) => panic!("{name}: the model has {expected:?}, the store answered {got:?}"),
        }
    }
}

fn run_sequence(backend: Backend, ops: &[Op]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let _share = backend.share().await;
        let (store, _dir) = open_store(backend).await;
        let clock = Arc::new(ManualClock::new(START));
        let policy = Policy {
            lifetime: Lifetime {
                anonymous_ttl: Some(TTL_MS),
                anonymous_max_age: Some(MAX_AGE_MS),
                customer_ttl: None,
            },
            create_on_first_use: false,
        };
        let sessions = Sessions::new(store, clock.clone(), policy);
        let mut model = HashMap::new();
        let mut now = START;
        for (step, op) in ops.iter().enumerate() {
            let got = apply_to_service(&sessions, &clock, &model, op, now).await;
            let expected = apply_to_model(&mut model, op, &mut now);
            assert_eq!(got, expected, "step {step}: {op:?}");
            check_state(&sessions, &mut model, now).await;
        }
    });
}

macro_rules! model_test {
    ($name:ident, $backend:ident, $cases:expr) => {
        // Failures are kept in `model_based.proptest-regressions` next to this file.
        proptest! {
            #![proptest_config(ProptestConfig {
                cases: $cases,
                failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
                ..ProptestConfig::default()
            })]
            #[test]
            fn $name(ops in prop::collection::vec(op(), 1..24)) {
                if Backend::$backend.available() {
                    run_sequence(Backend::$backend, &ops);
                }
            }
        }
    };
}

model_test!(memory_agrees_with_the_model, Memory, 128);
model_test!(sqlite_agrees_with_the_model, Sqlite, 48);
model_test!(postgres_agrees_with_the_model, Postgres, 24);
model_test!(redis_agrees_with_the_model, Redis, 32);
model_test!(redis_cluster_agrees_with_the_model, RedisCluster, 24);
