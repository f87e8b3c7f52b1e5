//! `cargo fuzz run http_requests`: see `checks::http_requests` for what it asserts.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::http_requests(data));
