//! The real binary, as operators and attackers meet it: processes started on port 0 and talked
//! to over HTTP (and raw TCP and HTTP/2), on real stores and servers.
//!
//! - `binary`: start, SIGTERM, SIGKILL under load, the command line, the SQLite file taken away
//!   or the disk full, Redis with writes paused; `binary::cors`: a storefront in headless Chromium;
//! - `attacks`: slow headers, the connection cap, unfinished bodies, memory under hostile clients;
//! - `customers`: a customer's sessions (11 to 14): a delete by customer cut short by SIGKILL
//!   and retried, two instances creating and deleting on one store, lists under deletes and
//!   creations, and the 403s, 400s, paging and tenants of the endpoints;
//! - `policy`: a --config file and the environment, a shopper growing a session, a bad file;
//! - `scale_out`: several processes on one shared store, the store taken away and brought back;
//! - `events`: signed webhooks to receivers the tests run, on every store: each change's event,
//!   expiry, a receiver failing, down or hanging, SIGKILL under load, two instances, memory;
//! - `cluster_outage`: every Redis Cluster node paused under a running service;
//! - `postgres_tls`, `redis_tls`: the stores over TLS with a private certificate authority.
//!
//! Run one part with a filter: `cargo test --test process attacks::`.

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod attacks;
mod binary;
mod cluster_outage;
mod customers;
mod events;
mod policy;
mod postgres_tls;
mod redis_tls;
mod scale_out;
