//! Model-based testing: random sequences of operations (PUT, attribute set and remove, delete,
//! a login that adopts an anonymous session, the clock moving past the idle timeout and the
//! absolute cap of anonymous sessions) applied to the real use cases on every store and to the
//! one model of the contract (`model.rs`). After every step the answers and the stored sessions
//! must agree; the reads that check them are uses too, and extend expiry in the model as in the
//! service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{Backend, START, open_store};
use crate::model::{CUSTOMER, Contract, Input, Output, State, View};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Value, json};
use session_context::clock::ManualClock;
use session_context::domain::{FieldChange, Lifetime, PutRequest, TextField};
use session_context::service::{
    Caller, Outcome, Policy, Precondition, SaasToken, ServiceError, Sessions, Shopper, Snapshot,
};
use session_context::store::SessionKey;

/// Anonymous sessions idle out after an hour, and end 150 minutes after they were created
/// (`--anonymous-max-age`) however much they are used; customer sessions do not expire.
const CONTRACT: Contract = Contract {
    idle: Some(60 * 60 * 1000),
    max_age: Some(150 * 60 * 1000),
};
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

impl Op {
    /// The session the operation is on (the clock's move: none, so the first).
    fn id(&self) -> usize {
        match self {
            Op::Put { id, .. }
            | Op::SetAttribute { id, .. }
            | Op::RemoveAttribute { id, .. }
            | Op::Delete { id }
            | Op::Login { id } => *id,
            Op::Advance { .. } => 0,
        }
    }
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

/// What the use cases answered, as the model's output.
fn output(result: Result<Outcome, ServiceError>) -> Output {
    match result {
        Ok(Outcome::Created { version }) => Output::Created { version },
        Ok(Outcome::Updated { version }) => Output::Updated { version },
        Ok(Outcome::Unchanged) => Output::Unchanged,
        Err(ServiceError::NotFound) => Output::Missing,
        Err(ServiceError::VersionMismatch { current, .. }) => Output::Conflict { current },
        Err(other) => panic!("unexpected error {other}"),
    }
}

/// What a read answered, as the model's view; the record's version is the document's.
fn found(record: &Snapshot) -> Output {
    let doc: Value = serde_json::from_str(&record.doc).unwrap();
    assert_eq!(doc["metadata"]["version"], json!(record.version), "{doc}");
    let context: BTreeMap<String, Value> = serde_json::from_value(doc["context"].clone()).unwrap();
    Output::Found(View {
        version: record.version,
        currency: doc["currency"].as_str().map(str::to_owned),
        customer: doc["customerId"].as_str().map(str::to_owned),
        context: context.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
    })
}

/// The model's input for `op` on `state` at `now` (`None` for the clock moving): a stale PUT
/// names a version the session is not at.
fn input(op: &Op, state: &State, now: i64) -> Option<Input> {
    let owned = |value: &Option<Option<&str>>| value.map(|v| v.map(str::to_owned));
    Some(match op {
        Op::Advance { .. } => return None,
        Op::Put {
            currency,
            customer,
            stale,
            upsert,
            ..
        } => {
            let current = CONTRACT.live(state, now).map_or(1, |s| s.version);
            Input::Put {
                version: if *stale { current + 7 } else { current },
                upsert: *upsert,
                currency: owned(currency),
                customer: owned(customer),
                context: None,
            }
        }
        Op::SetAttribute { key, value, .. } => Input::SetAttribute {
            key: KEYS[*key].into(),
            value: json!(value).to_string(),
            me: false,
        },
        Op::RemoveAttribute { key, .. } => Input::RemoveAttribute {
            key: KEYS[*key].into(),
            me: false,
        },
        Op::Delete { .. } => Input::Delete,
        Op::Login { .. } => Input::Login,
    })
}

/// Runs `input` on session `id` through the use cases.
async fn apply_to_service(sessions: &Sessions, id: usize, input: &Input) -> Output {
    let key = SessionKey::new("shop", IDS[id]);
    let saas = SaasToken::Customer(CUSTOMER.into());
    match input {
        Input::Put {
            version,
            upsert,
            currency,
            customer,
            context: None,
        } => {
            let mut fields = Vec::new();
            for (field, value) in [(TextField::Currency, currency), (TextField::CustomerId, customer)] {
                if let Some(v) = value {
                    fields.push((field, v.clone().map_or(FieldChange::Remove, FieldChange::Set)));
                }
            }
            let req = PutRequest {
                fields,
                context: None,
                version: Some(*version),
            };
            output(
                sessions
                    .put(&key, &req, Some(Precondition::Version(*version)), *upsert, &saas)
                    .await,
            )
        }
        Input::SetAttribute {
            key: k,
            value,
            me: false,
        } => output(
            sessions
                .set_attribute(
                    &key,
                    &Caller::Management,
                    k,
                    &serde_json::from_str::<Value>(value).unwrap(),
                )
                .await,
        ),
        Input::RemoveAttribute { key: k, me: false } => {
            output(sessions.remove_attribute(&key, &Caller::Management, k).await)
        }
        Input::Delete => match sessions.delete(&key, &saas).await {
            Ok(()) => Output::Deleted,
            Err(e) => output(Err(e)),
        },
        Input::Login => {
            let shopper = Shopper {
                customer: Some(CUSTOMER.into()),
                issued_at: Some(i64::MAX / 2),
                defaults: vec![],
            };
            match sessions.get(&key, &Caller::Me(shopper)).await {
                Ok(record) => found(&record),
                Err(e) => output(Err(e)),
            }
        }
        Input::Get { me: false } => match sessions.get(&key, &Caller::Management).await {
            Ok(record) => found(&record),
            Err(e) => output(Err(e)),
        },
        other => unreachable!("the model-based tests do not send {other:?}"),
    }
}

/// Reads every session, in the service and in the model (each read is a use, and may extend
/// its expiry, in the model too).
async fn check_state(sessions: &Sessions, model: &mut [State], now: i64) {
    for (id, name) in IDS.iter().enumerate() {
        let read = Input::Get { me: false };
        let got = apply_to_service(sessions, id, &read).await;
        let (expected, next) = CONTRACT.apply(&model[id], &read, now);
        assert_eq!(got, expected, "{name}: the model and the store disagree");
        model[id] = next;
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
        let policy = Policy::with_lifetime(Lifetime {
            anonymous_ttl: CONTRACT.idle,
            anonymous_max_age: CONTRACT.max_age,
            customer_ttl: None,
        });
        let sessions = Sessions::new(store, clock.clone(), policy);
        let mut model: Vec<State> = vec![None; IDS.len()];
        let mut now = START;
        for (step, op) in ops.iter().enumerate() {
            match (op, input(op, &model[op.id()], now)) {
                (Op::Advance { minutes }, _) => {
                    clock.advance(Duration::from_secs(minutes * 60));
                    now += (*minutes as i64) * 60_000;
                }
                (op, Some(input)) => {
                    let got = apply_to_service(&sessions, op.id(), &input).await;
                    let (expected, next) = CONTRACT.apply(&model[op.id()], &input, now);
                    assert_eq!(got, expected, "step {step}: {op:?}");
                    model[op.id()] = next;
                }
                (op, None) => unreachable!("{op:?} is an operation"),
            }
            check_state(&sessions, &mut model, now).await;
        }
    });
}

/// A model-based test on one backend: `cases` random sequences, skipped (and reported so)
/// when the backend's server is not configured. Failures are kept in
/// `model_based.proptest-regressions` next to this file and replayed first.
macro_rules! model_test {
    ($name:ident, $backend:ident, $cases:expr) => {
        #[test]
        fn $name() {
            if !Backend::$backend.available() {
                return;
            }
            let config = ProptestConfig {
                cases: $cases,
                failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
                ..ProptestConfig::default()
            };
            proptest!(config, |(ops in prop::collection::vec(op(), 1..24))| {
                run_sequence(Backend::$backend, &ops);
            });
        }
    };
}

model_test!(memory_agrees_with_the_model, Memory, 128);
model_test!(sqlite_agrees_with_the_model, Sqlite, 48);
model_test!(postgres_agrees_with_the_model, Postgres, 24);
model_test!(redis_agrees_with_the_model, Redis, 32);
model_test!(redis_cluster_agrees_with_the_model, RedisCluster, 24);
