//! The contract's input rules, one function each (and, for the rules the OpenAPI document states
//! as patterns, one [`StringRule`] constant that the function and the document both follow), and
//! the error that names the offending field.

use serde::Serialize;

use super::session::TextField;

/// Longest accepted value of a free text field (`siteCode`, `customerId`, `cartId`).
pub const MAX_TEXT_CHARS: usize = 256;
/// Longest accepted attribute name, in bytes of UTF-8.
pub const MAX_ATTRIBUTE_NAME_BYTES: usize = 256;
/// Deepest accepted nesting of a request body (the body object itself is level 1).
pub const MAX_BODY_DEPTH: usize = 32;

/// One reason a request was refused, as listed in an error body's `details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field, as a dotted path (`metadata.version`, `context.colour`).
    pub field: String,
    /// A short machine-readable reason: `required`, `invalid_type`, `invalid_format`, `too_long`, `mismatch`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// What a person should change.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, kind: &'static str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind,
            message: message.into(),
        }
    }
}

/// A rule for a string as the OpenAPI document states it: an ECMA 262 pattern and length
/// bounds in characters. Each rule is written once, here; the check function next to it
/// implements the same rule in code, the document is built from the constant, and a test
/// (`http::openapi`) holds every pattern in the document and its check equal on a corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StringRule {
    pub pattern: &'static str,
    pub min_chars: usize,
    pub max_chars: usize,
    /// The rule in words, for error messages and the document.
    pub words: &'static str,
}

/// `{tenant}`: lowercase letters and digits, starting with a letter.
pub const TENANT: StringRule = StringRule {
    pattern: "^[a-z][a-z0-9]+$",
    min_chars: 3,
    max_chars: 16,
    words: "tenant must be 3 to 16 lowercase letters and digits, starting with a letter",
};

/// `{sessionId}`.
pub const SESSION_ID: StringRule = StringRule {
    pattern: "^[A-Za-z0-9._:-]+$",
    min_chars: 1,
    max_chars: 128,
    words: "sessionId must be 1 to 128 characters of A-Z a-z 0-9 . _ : -",
};

/// `q` of a customer's sessions (11, 12): `customerId:` and the customer's id (1 to 256
/// characters, as `customerId` in a body).
pub const CUSTOMER_QUERY: StringRule = StringRule {
    pattern: "^customerId:[\\s\\S]+$",
    min_chars: 12,
    max_chars: 11 + MAX_TEXT_CHARS,
    words: "q must be customerId:<id>, the id 1 to 256 characters",
};

/// The customer a `q` names ([`CUSTOMER_QUERY`]).
pub fn customer_query(q: &str) -> Result<&str, FieldError> {
    q.strip_prefix("customerId:")
        .filter(|id| (1..=MAX_TEXT_CHARS).contains(&id.chars().count()))
        .ok_or_else(|| FieldError::new("q", "invalid_format", CUSTOMER_QUERY.words))
}

/// `currency`: three capital letters.
pub const CURRENCY: StringRule = StringRule {
    pattern: "^[A-Z]{3}$",
    min_chars: 3,
    max_chars: 3,
    words: "currency must be three capital letters (EUR)",
};

/// `targetLocation`: two capital letters.
pub const TARGET_LOCATION: StringRule = StringRule {
    pattern: "^[A-Z]{2}$",
    min_chars: 2,
    max_chars: 2,
    words: "targetLocation must be two capital letters (DE)",
};

/// `language`: a BCP-47 tag, or its underscore form.
pub const LANGUAGE: StringRule = StringRule {
    pattern: LANGUAGE_PATTERN,
    min_chars: 2,
    max_chars: MAX_LANGUAGE_CHARS,
    words: "language must be a BCP-47 tag (de, en-US) or its underscore form (de_DE)",
};

/// An entity tag that names a version (`If-Match`): `"<version>"` or `*`. Versions are kept
/// to 19 digits, which every version of a session fits (it grows by one per change).
pub const VERSION_TAG: StringRule = StringRule {
    pattern: r#"^(\*|"[0-9]{1,19}")$"#,
    min_chars: 1,
    max_chars: 21,
    words: "a version in quotes (\"3\") or *",
};

/// A version tag read: `Some(None)` for `*` (any version), `Some(Some(n))` for `"n"`; `None`
/// when the text breaks [`VERSION_TAG`].
pub fn version_tag(text: &str) -> Option<Option<u64>> {
    if text == "*" {
        return Some(None);
    }
    let digits = text.strip_prefix('"')?.strip_suffix('"')?;
    let ok = (1..=19).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    // 19 digits always fit in a u64.
    ok.then(|| digits.parse().ok()).flatten().map(Some)
}

/// A tenant: [`TENANT`].
pub fn tenant(value: &str) -> Result<(), FieldError> {
    let mut chars = value.chars();
    let ok = (3..=16).contains(&value.len())
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    ok.then_some(())
        .ok_or_else(|| FieldError::new("tenant", "invalid_format", TENANT.words))
}

/// A session id: [`SESSION_ID`].
pub fn session_id(value: &str) -> Result<(), FieldError> {
    let ok = (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    ok.then_some(())
        .ok_or_else(|| FieldError::new("sessionId", "invalid_format", SESSION_ID.words))
}

/// The characters an attribute name may not hold, as inclusive ranges: the control characters
/// (C0, DEL and C1), the bidirectional embeddings and overrides (U+202A to U+202E) and isolates
/// (U+2066 to U+2069), which reorder what is shown around them, U+200B ZERO WIDTH SPACE and
/// U+FEFF ZERO WIDTH NO-BREAK SPACE, which cannot be seen. The joiners U+200C and U+200D stay
/// allowed: emoji sequences (👩‍💻) and some scripts need them.
///
/// The one definition of the rule: [`attribute_name`] checks it, and the OpenAPI document
/// builds its pattern from it.
pub const ATTRIBUTE_NAME_FORBIDDEN: [(char, char); 6] = [
    ('\u{0}', '\u{1F}'),
    ('\u{7F}', '\u{9F}'),
    ('\u{200B}', '\u{200B}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2066}', '\u{2069}'),
    ('\u{FEFF}', '\u{FEFF}'),
];

/// The attribute-name rule in words, for error messages and the OpenAPI document.
pub const ATTRIBUTE_NAME_RULE: &str = "1 to 256 bytes of UTF-8; no control characters, no bidirectional controls \
     (U+202A to U+202E, U+2066 to U+2069), no U+200B or U+FEFF";

/// An attribute name: 1 to 256 bytes of UTF-8 without the [`ATTRIBUTE_NAME_FORBIDDEN`]
/// characters.
pub fn attribute_name(field: &str, value: &str) -> Result<(), FieldError> {
    let forbidden = |c: char| {
        ATTRIBUTE_NAME_FORBIDDEN
            .iter()
            .any(|&(from, to)| (from..=to).contains(&c))
    };
    let ok = (1..=MAX_ATTRIBUTE_NAME_BYTES).contains(&value.len()) && !value.chars().any(forbidden);
    ok.then_some(()).ok_or_else(|| {
        FieldError::new(
            field,
            "invalid_format",
            format!("attribute names are {ATTRIBUTE_NAME_RULE}"),
        )
    })
}

/// The value rule of one text field.
pub fn text_field(field: TextField, value: &str) -> Result<(), FieldError> {
    let name = field.json_name();
    let (ok, rule) = match field {
        TextField::Currency => (
            value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()),
            CURRENCY.words,
        ),
        TextField::TargetLocation => (
            value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase()),
            TARGET_LOCATION.words,
        ),
        TextField::Language => (is_language_tag(value), LANGUAGE.words),
        // A customer owns its session: an empty customer id would be a customer nobody is.
        TextField::CustomerId => (
            (1..=MAX_TEXT_CHARS).contains(&value.chars().count()),
            "customerId must be 1 to 256 characters",
        ),
        TextField::SiteCode | TextField::CartId => (value.chars().count() <= MAX_TEXT_CHARS, "at most 256 characters"),
    };
    ok.then_some(())
        .ok_or_else(|| FieldError::new(name, "invalid_format", rule))
}

/// The language rule's pattern ([`LANGUAGE`]; `is_language_tag` is the same rule in code).
pub const LANGUAGE_PATTERN: &str = "^[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*$";

/// The longest language tag.
pub const MAX_LANGUAGE_CHARS: usize = 35;

/// A BCP-47 tag in the contract's sense: letters, digits and hyphens, at most 35 characters,
/// a primary subtag of 2 to 8 letters and subtags of 1 to 8 characters. The underscore form
/// that many commerce back ends use (`de_DE`, `en_US`) is accepted too and stored as sent.
fn is_language_tag(value: &str) -> bool {
    if value.is_empty() || value.len() > MAX_LANGUAGE_CHARS {
        return false;
    }
    let mut parts = value.split(['-', '_']);
    let primary_ok = parts
        .next()
        .is_some_and(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    primary_ok && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Whether the JSON text nests arrays and objects deeper than `max`. Scans bytes without
/// parsing, so that a hostile body is refused before any recursive parser sees it.
pub fn nests_deeper_than(json: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_rule_follows_the_contract() {
        for ok in ["abc", "shop1", "a23456789012345b"] {
            assert!(tenant(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "1abc", "Abc", "ab-c", "a234567890123456b", "", "abc "] {
            assert!(tenant(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn session_id_rule_follows_the_contract() {
        assert!(session_id("62528895-b561-4518-bfdc-2cbf52a07845").is_ok());
        assert!(session_id("a.b_c:d-E9").is_ok());
        assert!(session_id(&"x".repeat(128)).is_ok());
        for bad in ["", "a b", "a/b", "é", "a%2F"] {
            assert!(session_id(bad).is_err(), "{bad}");
        }
        assert!(session_id(&"x".repeat(129)).is_err());
    }

    #[test]
    fn attribute_names_are_bounded_and_printable() {
        assert!(attribute_name("attributeName", "colour").is_ok());
        assert!(attribute_name("attributeName", "ünïcödé key").is_ok());
        assert!(attribute_name("attributeName", &"x".repeat(256)).is_ok());
        assert!(attribute_name("attributeName", &"x".repeat(257)).is_err());
        assert!(attribute_name("attributeName", "").is_err());
        assert!(attribute_name("attributeName", "a\nb").is_err());
        assert!(attribute_name("attributeName", "a\u{7f}").is_err());
        for invisible in [
            "a\u{202A}",
            "\u{202E}",
            "\u{2066}",
            "\u{2069}x",
            "\u{200B}",
            "\u{FEFF}",
            "a\u{85}",
        ] {
            assert!(attribute_name("attributeName", invisible).is_err(), "{invisible:?}");
        }
        for visible in [
            "\u{1F469}\u{200D}\u{1F4BB}",
            "a\u{200C}b",
            "\u{200A}",
            "a\u{2065}",
            "\u{206A}",
            "\u{202F}",
        ] {
            assert!(attribute_name("attributeName", visible).is_ok(), "{visible:?}");
        }
    }

    #[test]
    fn the_forbidden_ranges_hold_every_control_character() {
        let forbidden = |c: char| {
            ATTRIBUTE_NAME_FORBIDDEN
                .iter()
                .any(|&(from, to)| (from..=to).contains(&c))
        };
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            if c.is_control() {
                assert!(forbidden(c), "{c:?}");
            }
        }
        for (from, to) in ATTRIBUTE_NAME_FORBIDDEN {
            assert!(from <= to);
        }
    }

    #[test]
    fn text_fields_have_their_own_formats() {
        assert!(text_field(TextField::Currency, "EUR").is_ok());
        assert!(text_field(TextField::Currency, "eur").is_err());
        assert!(text_field(TextField::Currency, "EURO").is_err());
        assert!(text_field(TextField::TargetLocation, "DE").is_ok());
        assert!(text_field(TextField::TargetLocation, "DEU").is_err());
        for ok in ["de", "DE", "en-US", "zh-Hant-TW", "sr-Latn-RS", "de_DE", "en_US"] {
            assert!(text_field(TextField::Language, ok).is_ok(), "{ok}");
        }
        for bad in ["", "d", "en_", "_en", "en-", "-en", "de DE", "de__DE", &"a".repeat(36)] {
            assert!(text_field(TextField::Language, bad).is_err(), "{bad}");
        }
        assert!(text_field(TextField::CustomerId, "").is_err(), "a customer needs an id");
        assert!(text_field(TextField::SiteCode, "").is_ok());
        assert!(text_field(TextField::SiteCode, &"s".repeat(256)).is_ok());
        assert!(text_field(TextField::SiteCode, &"s".repeat(257)).is_err());
    }

    #[test]
    fn depth_scan_counts_containers_but_not_brackets_in_strings() {
        assert!(!nests_deeper_than(br#"{"a":{"b":[1,2]}}"#, 3));
        assert!(nests_deeper_than(br#"{"a":{"b":[[1]]}}"#, 3));
        assert!(!nests_deeper_than(br#"{"a":"[[[[[[{{{{"}"#, 1));
        assert!(!nests_deeper_than(br#"{"a":"\"[[[["}"#, 1));
        let deep = "[".repeat(100_000);
        assert!(nests_deeper_than(deep.as_bytes(), MAX_BODY_DEPTH));
    }
}
