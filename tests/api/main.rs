//! The API in process: the router with a manual clock, on the memory store and SQLite (the
//! stores themselves are the `stores` binary's subject, so the HTTP suite does not repeat on
//! every networked store).
//!
//! - `endpoints`: the HTTP suite, every row of the contract through the router;
//! - `journey`: the shopper's journey (lifetimes, login adoption, first use, logout);
//! - `auth_matrix`: every kind of bad or insufficient token on every endpoint;
//! - `cors`: browser storefronts through the router;
//! - `customers`: a customer's sessions (11 to 14), on every store;
//! - `policy`: the tenant policy (limits, protected and hidden attributes, allowed values), on
//!   every store;
//! - `fuzz_regressions`: every committed fuzz input replayed through the fuzz targets' checks.
//!
//! Run one part with a filter: `cargo test --test api journey::`.

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod auth_matrix;
mod cors;
mod customers;
mod endpoints;
mod fuzz_regressions;
mod journey;
mod policy;
