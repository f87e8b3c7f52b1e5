//! Any bytes as a request body: reading them never panics, and whatever PUT, PATCH or an
//! attribute body accepts can be applied to a session and served back as JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_context::domain::{SessionContext, json, request, rules};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = json::read_object(data) else { return };
    let stored = SessionContext::new("s1", 1_000);
    if let Ok(put) = request::read_put(&body, "s1") {
        let next = rules::apply_put(Some(stored.clone()), "s1", &put, 2_000);
        let text = serde_json::to_string(&next).expect("a session serializes");
        let back: SessionContext = serde_json::from_str(&text).expect("a served session reads back");
        assert_eq!(back, next);
    }
    if let Ok(patch) = request::read_patch(&body) {
        let next = rules::apply_patch(Some(stored.clone()), "s1", None, &patch, 2_000);
        assert_eq!(next.metadata.version, 2);
    }
    if let Ok((key, value)) = request::read_attribute(&body) {
        let next = rules::set_attribute(stored, &key, &value, 2_000);
        assert_eq!(next.context.get(&key), Some(&value));
    }
});
