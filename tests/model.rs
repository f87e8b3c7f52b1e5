//! Model-based testing: random sequences of operations (PUT, attribute set and remove, delete,
//! the clock moving past the lifetime of anonymous sessions) applied to the real use cases on
//! every store and to a tiny model of the contract written independently here. After every
//! step the answers and the stored sessions must agree.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, START, open_store};
use proptest::prelude::*;
use serde_json::{Value, json};
use session_context::clock::ManualClock;
use session_context::domain::{FieldChange, PutRequest, TextField};
use session_context::service::{Caller, Expected, Outcome, SaasToken, ServiceError, Sessions};
use session_context::store::SessionKey;

const TTL_MS: i64 = 60 * 60 * 1000;
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
    modified_at: i64,
}

/// What an operation answered, reduced to what the contract specifies.
#[derive(Debug, PartialEq)]
enum Answer {
    Created(u64),
    Updated(u64),
    Unchanged,
    NotFound,
    Conflict(u64),
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
    model
        .get(&id)
        .filter(|m| m.customer.is_some() || m.modified_at + TTL_MS > now)
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
                    m.modified_at = t;
                    m
                }
                (None, false) => return Answer::NotFound,
                (None, true) => Model {
                    version: 1,
                    currency: None,
                    customer: None,
                    context: BTreeMap::new(),
                    modified_at: t,
                },
            };
            if let Some(c) = currency {
                next.currency = c.map(str::to_owned);
            }
            if let Some(c) = customer {
                next.customer = c.map(str::to_owned);
            }
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
            m.version += 1;
            m.modified_at = t;
            let version = m.version;
            model.insert(*id, m);
            Answer::Updated(version)
        }
        Op::RemoveAttribute { id, key } => {
            let Some(mut m) = live(model, *id, t).cloned() else {
                return Answer::NotFound;
            };
            if m.context.remove(KEYS[*key]).is_none() {
                return Answer::Unchanged;
            }
            m.version += 1;
            m.modified_at = t;
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
                    .put(&key(*id), &req, Expected::Body(expected), *upsert, &saas)
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
    }
}

async fn check_state(sessions: &Sessions, model: &HashMap<usize, Model>, now: i64) {
    for (id, name) in IDS.iter().enumerate() {
        let stored = sessions.get(&SessionKey::new("shop", *name), &Caller::Management).await;
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
        let (store, _dir) = open_store(backend).await;
        let clock = Arc::new(ManualClock::new(START));
        let sessions = Sessions::new(store, clock.clone(), Some(TTL_MS));
        let mut model = HashMap::new();
        let mut now = START;
        for (step, op) in ops.iter().enumerate() {
            let got = apply_to_service(&sessions, &clock, &model, op, now).await;
            let expected = apply_to_model(&mut model, op, &mut now);
            assert_eq!(got, expected, "step {step}: {op:?}");
            check_state(&sessions, &model, now).await;
        }
    });
}

macro_rules! model_test {
    ($name:ident, $backend:ident, $cases:expr) => {
        proptest! {
            #![proptest_config(ProptestConfig { cases: $cases, ..ProptestConfig::default() })]
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
