//! `cargo fuzz run request_bodies`: see `checks::request_bodies` for what it asserts.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::request_bodies(data));
