//! session-context: a self-hostable service that speaks the Emporix Session-context API.
//!
//! - [`cli`] parses the command line (`serve`, `token`, `seed`, `sessions`); [`config`] turns it into one
//!   typed [`config::Settings`]; [`startup`] builds the state, binds and serves (used by `main`
//!   and tests); [`connections`] is the accept loop: every connection's header and idle
//!   deadlines, the connection cap, the HTTP/2 limits.
//! - [`domain`] holds the session context and every rule of the contract as pure functions,
//!   its lifetime (idle timeouts, the anonymous cap, login adoption) among them.
//! - [`service`] runs the use cases: load, apply a domain rule, write only if nobody else wrote.
//! - [`store`] is the narrow storage trait and its backends (memory, SQLite, PostgreSQL, Redis
//!   and Redis Cluster), one file each.
//! - [`auth`] verifies access tokens and saas-tokens; [`http`] is the router, the extractors
//!   that turn tokens into principals, the handlers and the error body.
//! - [`seed`] fills a store with generated sessions for benchmarks and load tests;
//!   [`operator`] lists and ends a customer's sessions straight on a store
//!   (`session-context sessions list|delete`).
//! - [`events`] delivers what the stores' outboxes record: every change as a signed webhook.
//! - [`clock`] is the time source, injectable so expiry can be tested without sleeping.

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod domain;
pub mod events;
pub mod http;
pub mod operator;
pub mod seed;
pub mod service;
pub mod startup;
pub mod store;
