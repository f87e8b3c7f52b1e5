//! The stores, each of memory, SQLite, PostgreSQL, Redis and Redis Cluster, against the
//! contract:
//!
//! - `store_contract`: the `SessionStore` contract suite, written once and run on every store;
//! - `concurrency`: many writers on one session, through the router; nothing is lost;
//! - `model`: the one sequential model of the contract (`apply(state, input, now)`), which
//!   both of the next two check against;
//! - `model_based`: random operation sequences through the use cases, compared step by step
//!   with the model, the clock moving past idle timeouts and the anonymous cap;
//! - `histories`: concurrent clients on real service processes, each session's history
//!   checked for linearizability against the model (`histories::checker`);
//! - `lifecycle`: the background sweep removes expired sessions from storage;
//! - `outbox`: with events on, every change records its event atomically; the claim rules;
//! - `outbox_redis`: the outbox's Redis-only risks (the sweeper before native expiry, a lost
//!   due listing, two instances claiming side by side).
//!
//! Run one part with a filter: `cargo test --test stores histories::`.

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod concurrency;
mod histories;
mod lifecycle;
mod model;
mod model_based;
mod outbox;
mod outbox_redis;
mod store_contract;
