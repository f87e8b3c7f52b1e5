//! Replays every committed fuzz input without a fuzzer: the seed corpus (`fuzz/seeds/<target>/`)
//! and every input that once found a bug (`fuzz/regressions/<target>/`, where
//! `scripts/fuzz.sh` puts each new crash, minimized). The checks are the fuzz targets' own
//! (`fuzz/checks.rs`), so a bug the fuzzer found stays found.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files: Vec<PathBuf> = ["seeds", "regressions"]
        .iter()
        .filter_map(|kind| std::fs::read_dir(root.join(kind).join(target)).ok())
        .flatten()
        .map(|entry| entry.expect("a readable directory").path())
        .filter(|path| path.is_file() && path.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no committed inputs for {target}");
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    for path in inputs(target) {
        let data = std::fs::read(&path).expect("a readable input");
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{target}: {} fails its check again", path.display());
        }
    }
}

#[test]
fn request_bodies_inputs_pass() {
    replay("request_bodies", checks::request_bodies);
}

#[test]
fn tokens_inputs_pass() {
    replay("tokens", checks::tokens);
}

#[test]
fn http_requests_inputs_pass() {
    replay("http_requests", checks::http_requests);
}
