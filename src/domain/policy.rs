//! A tenant's policy (the contract's "Tenant policy"): how large a session may grow, which
//! attributes a shopper may not write or not even see, which values the text fields may take,
//! and how long sessions live. Every rule is a pure function of the policy, the caller and
//! the session before and after the change; the use cases call them, the stores never see them.

use std::collections::HashMap;

use serde_json::Map;

use super::lifetime::Lifetime;
use super::session::{SessionContext, TextField};
use super::validate::FieldError;

/// The default of `--max-session-bytes`: the same as the default body limit.
pub const DEFAULT_MAX_SESSION_BYTES: usize = 64 * 1024;
/// The default of `--max-attributes`.
pub const DEFAULT_MAX_ATTRIBUTES: usize = 256;

/// A pattern for attribute names: it matches the whole key, case-sensitively; `*` matches any
/// run of characters (dots included) or none; nothing else is special.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern as written; empty patterns are refused (they would match only the empty key,
    /// which is not a valid attribute name, so they are surely a mistake).
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("an attribute pattern must not be empty".into());
        }
        Ok(Pattern(pattern.to_owned()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `key` matches as a whole. Greedy matching with one backtrack point (the last
    /// `*`): linear in practice, and at worst the product of the two lengths, both bounded
    /// (keys to 256 bytes).
    pub fn matches(&self, key: &str) -> bool {
        let (pattern, key) = (self.0.as_bytes(), key.as_bytes());
        let (mut p, mut k) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while k < key.len() {
            if p < pattern.len() && pattern[p] == b'*' {
                star = Some((p, k));
                p += 1;
            } else if p < pattern.len() && pattern[p] == key[k] {
                p += 1;
                k += 1;
            } else if let Some((star_p, star_k)) = star {
                // Let the last `*` take one more byte and try again after it. A `*` can end
                // inside a multi-byte character only if the literal after it starts there too,
                // which UTF-8 rules out (no character's bytes start another's), so byte-wise
                // matching is character-wise matching.
                p = star_p + 1;
                k = star_k + 1;
                star = Some((star_p, star_k + 1));
            } else {
                return false;
            }
        }
        pattern[p..].iter().all(|&b| b == b'*')
    }
}

/// A list of patterns: a key is matched when any of them matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(Vec<Pattern>);

impl Patterns {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        patterns
            .iter()
            .map(|p| Pattern::new(p.as_ref()))
            .collect::<Result<_, _>>()
            .map(Patterns)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, key: &str) -> bool {
        self.0.iter().any(|p| p.matches(key))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pattern> {
        self.0.iter()
    }
}

/// The values each text field may take (`--allowed-*`); an empty list allows any valid value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedValues {
    pub currency: Vec<String>,
    pub site_code: Vec<String>,
    pub language: Vec<String>,
    pub target_location: Vec<String>,
}

impl AllowedValues {
    /// Whether every field may take any valid value.
    pub fn is_empty(&self) -> bool {
        self.currency.is_empty()
            && self.site_code.is_empty()
            && self.language.is_empty()
            && self.target_location.is_empty()
    }

    fn list(&self, field: TextField) -> &[String] {
        match field {
            TextField::Currency => &self.currency,
            TextField::SiteCode => &self.site_code,
            TextField::Language => &self.language,
            TextField::TargetLocation => &self.target_location,
            TextField::CustomerId | TextField::CartId => &[],
        }
    }

    /// Whether `value` is allowed for `field`. Languages are compared as language tags are:
    /// without regard to case, and `de_DE` is the same tag as `de-DE`.
    pub fn allows(&self, field: TextField, value: &str) -> bool {
        let list = self.list(field);
        if list.is_empty() {
            return true;
        }
        match field {
            TextField::Language => list.iter().any(|allowed| same_language(allowed, value)),
            _ => list.iter().any(|allowed| allowed == value),
        }
    }

    /// The first field of `after` whose value is new (not the one `before` had) and not
    /// allowed. A value already stored stays acceptable when a list changes, so that changes
    /// of other fields are not refused for it.
    pub fn check(&self, before: Option<&SessionContext>, after: &SessionContext) -> Result<(), FieldError> {
        for field in [
            TextField::SiteCode,
            TextField::Currency,
            TextField::TargetLocation,
            TextField::Language,
        ] {
            let Some(value) = after.text(field) else { continue };
            if before.and_then(|b| b.text(field)) == Some(value) || self.allows(field, value) {
                continue;
            }
            return Err(FieldError::new(
                field.json_name(),
                "not_allowed",
                format!(
                    "{} `{value}` is not allowed here; allowed: {}",
                    field.json_name(),
                    self.list(field).join(", ")
                ),
            ));
        }
        Ok(())
    }
}

fn same_language(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let norm = |c: u8| if c == b'_' { b'-' } else { c.to_ascii_lowercase() };
            norm(x) == norm(y)
        })
}

/// How large a session is: what the limits measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes of its JSON as stored and served.
    pub bytes: usize,
    /// Keys of its `context`.
    pub attributes: usize,
}

/// Why the policy refuses a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The session would be larger than `--max-session-bytes` (413).
    TooLarge { limit: usize },
    /// `context` would have more than `--max-attributes` keys (400).
    TooManyAttributes { limit: usize },
    /// A shopper tried to change (or to name) an attribute that is not theirs to write (403).
    Protected { key: String },
    /// A text field got a value outside its allowed list (400).
    NotAllowed(FieldError),
}

/// One tenant's policy (the top-level flags, or a `[tenants.<name>]` table over them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPolicy {
    pub lifetime: Lifetime,
    pub max_session_bytes: usize,
    pub max_attributes: usize,
    /// Attributes a shopper (`/me`) may not change.
    pub protected: Patterns,
    /// Attributes a shopper may neither see nor change.
    pub hidden: Patterns,
    pub allowed: AllowedValues,
}

impl Default for TenantPolicy {
    /// The command line's defaults: anonymous sessions idle out after an hour, 64 KiB and 256
    /// attributes at most, every attribute the shopper's, any valid value.
    fn default() -> Self {
        TenantPolicy {
            lifetime: Lifetime::anonymous(Some(3_600_000)),
            max_session_bytes: DEFAULT_MAX_SESSION_BYTES,
            max_attributes: DEFAULT_MAX_ATTRIBUTES,
            protected: Patterns::default(),
            hidden: Patterns::default(),
            allowed: AllowedValues::default(),
        }
    }
}

impl TenantPolicy {
    /// The size limits, for every caller: a change may not take a session past a limit, but
    /// one that makes a session already past it smaller (in that measure) is allowed, so a
    /// session stored before a limit was lowered can still be cut down.
    pub fn check_limits(&self, before: Option<Footprint>, after: Footprint) -> Result<(), PolicyError> {
        let shrinks = |measure: fn(&Footprint) -> usize| before.is_some_and(|b| measure(&after) < measure(&b));
        if after.attributes > self.max_attributes && !shrinks(|f| f.attributes) {
            return Err(PolicyError::TooManyAttributes {
                limit: self.max_attributes,
            });
        }
        if after.bytes > self.max_session_bytes && !shrinks(|f| f.bytes) {
            return Err(PolicyError::TooLarge {
                limit: self.max_session_bytes,
            });
        }
        Ok(())
    }

    /// Whether any attribute is protected or hidden (else a shopper may write them all).
    pub fn guards_attributes(&self) -> bool {
        !self.protected.is_empty() || !self.hidden.is_empty()
    }

    /// Whether a shopper (`/me`) may name attribute `key` in a request at all: not a hidden
    /// one, whatever the request would do with it. Hidden attributes are refused by name and
    /// not by effect, so that the answer never tells whether one is stored or what it holds.
    pub fn check_shopper_key(&self, key: &str) -> Result<(), PolicyError> {
        if self.hidden.matches(key) {
            return Err(PolicyError::Protected { key: key.to_owned() });
        }
        Ok(())
    }

    /// Whether a shopper may make the change from `before` to `after`: no protected (or
    /// hidden) attribute may be added, removed or given another value. Sending back a stored
    /// value unchanged is not a change.
    pub fn check_shopper_change(
        &self,
        before: Option<&SessionContext>,
        after: &SessionContext,
    ) -> Result<(), PolicyError> {
        if !self.guards_attributes() {
            return Ok(());
        }
        let empty = Map::new();
        let before = before.map_or(&empty, |b| &b.context);
        let changed = |key: &String| before.get(key) != after.context.get(key);
        let guarded = |key: &&String| self.protected.matches(key) || self.hidden.matches(key);
        match before
            .keys()
            .chain(after.context.keys())
            .filter(guarded)
            .find(|key| changed(key))
        {
            Some(key) => Err(PolicyError::Protected { key: key.clone() }),
            None => Ok(()),
        }
    }

    /// `context` as a shopper may see it: without the hidden attributes.
    pub fn shopper_view(&self, session: &mut SessionContext) {
        if !self.hidden.is_empty() {
            session.context.retain(|key, _| !self.hidden.matches(key));
        }
    }

    /// After a shopper's change: the hidden attributes as they were before it. A shopper's
    /// "clear the whole context" (`"context": null` in a PATCH) clears what the shopper can
    /// see; the hidden attributes stay, as the shopper does not know they are there. (Naming a
    /// hidden attribute is refused before, by [`TenantPolicy::check_shopper_key`].)
    pub fn keep_hidden(&self, before: Option<&SessionContext>, after: &mut SessionContext) {
        let Some(before) = before.filter(|_| !self.hidden.is_empty()) else {
            return;
        };
        for (key, value) in &before.context {
            if self.hidden.matches(key) && !after.context.contains_key(key) {
                after.context.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The policy of every tenant: the default (the top-level flags) and the tenants that have a
/// table of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPolicies {
    pub default: TenantPolicy,
    pub tenants: HashMap<String, TenantPolicy>,
}

impl TenantPolicies {
    /// One policy for every tenant.
    pub fn uniform(policy: TenantPolicy) -> Self {
        TenantPolicies {
            default: policy,
            tenants: HashMap::new(),
        }
    }

    /// The policy of `tenant`.
    pub fn of(&self, tenant: &str) -> &TenantPolicy {
        self.tenants.get(tenant).unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests;
