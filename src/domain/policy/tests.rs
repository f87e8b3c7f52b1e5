use serde_json::json;

use super::*;

fn pattern(p: &str) -> Pattern {
    Pattern::new(p).unwrap()
}

fn session(context: serde_json::Value) -> SessionContext {
    let mut s = SessionContext::new("s1", 1_000);
    s.context = context.as_object().unwrap().clone();
    s
}

fn policy(protected: &[&str], hidden: &[&str]) -> TenantPolicy {
    TenantPolicy {
        protected: Patterns::new(protected).unwrap(),
        hidden: Patterns::new(hidden).unwrap(),
        ..TenantPolicy::default()
    }
}

#[test]
fn patterns_match_whole_keys_with_stars_for_any_run() {
    let cases = [
        ("priceList", "priceList", true),
        ("priceList", "pricelist", false),  // case-sensitive
        ("priceList", "priceList2", false), // the whole key
        ("priceList", "xpriceList", false),
        ("b2b.*", "b2b.legalEntity", true),
        ("b2b.*", "b2b.", true), // a star matches nothing too
        ("b2b.*", "b2b", false),
        ("b2b.*", "b2bx.y", false),
        ("*", "anything.at.all", true),
        ("*Id", "legalEntityId", true),
        ("*Id", "legalEntityIdx", false),
        ("a*b*c", "aXXbYYc", true),
        ("a*b*c", "abcabc", true),
        ("a*b*c", "acb", false),
        ("risk*flag", "risk.flag", true), // dots are not special
        ("a?c", "abc", false),            // nothing but `*` is special
        ("a?c", "a?c", true),
        ("a.c", "abc", false),
        ("**x", "yyx", true),
        ("préférence*", "préférenceCouleur", true),
        ("*é", "café", true),
        ("*é", "cafe", false),
    ];
    for (p, key, expected) in cases {
        assert_eq!(pattern(p).matches(key), expected, "{p} ~ {key}");
    }
    assert!(Pattern::new("").is_err());
}

#[test]
fn pattern_matching_stays_fast_on_adversarial_keys() {
    // Many stars and a key that almost matches: at worst pattern length × key length steps.
    let p = pattern(&"a*".repeat(64));
    let key = "a".repeat(255) + "b";
    assert!(p.matches(&key));
    let p = pattern(&("a*".repeat(64) + "c"));
    assert!(!p.matches(&key));
}

#[test]
fn limits_refuse_growth_past_them_and_allow_shrinking() {
    let policy = TenantPolicy {
        max_session_bytes: 1_000,
        max_attributes: 3,
        ..TenantPolicy::default()
    };
    let fp = |bytes, attributes| Footprint { bytes, attributes };
    // Within both limits, created or changed.
    assert_eq!(policy.check_limits(None, fp(1_000, 3)), Ok(()));
    assert_eq!(policy.check_limits(Some(fp(10, 0)), fp(1_000, 3)), Ok(()));
    // One byte or one attribute over.
    assert_eq!(
        policy.check_limits(Some(fp(900, 1)), fp(1_001, 1)),
        Err(PolicyError::TooLarge { limit: 1_000 })
    );
    assert_eq!(
        policy.check_limits(None, fp(1_001, 0)),
        Err(PolicyError::TooLarge { limit: 1_000 })
    );
    assert_eq!(
        policy.check_limits(Some(fp(100, 3)), fp(120, 4)),
        Err(PolicyError::TooManyAttributes { limit: 3 })
    );
    // Already over (a limit was lowered): a change that makes it smaller is allowed, one that
    // keeps it as large or grows it is not.
    assert_eq!(policy.check_limits(Some(fp(5_000, 9)), fp(4_000, 8)), Ok(()));
    assert_eq!(
        policy.check_limits(Some(fp(5_000, 2)), fp(5_000, 2)),
        Err(PolicyError::TooLarge { limit: 1_000 })
    );
    assert_eq!(
        policy.check_limits(Some(fp(500, 9)), fp(500, 9)),
        Err(PolicyError::TooManyAttributes { limit: 3 })
    );
    // Fewer attributes but more bytes: the byte limit still holds.
    assert_eq!(
        policy.check_limits(Some(fp(5_000, 9)), fp(6_000, 8)),
        Err(PolicyError::TooLarge { limit: 1_000 })
    );
}

#[test]
fn shoppers_may_not_change_protected_or_hidden_attributes() {
    let policy = policy(&["b2b.*", "priceList"], &["risk*"]);
    let before = session(json!({"b2b.legalEntity": "LE1", "priceList": "P1", "riskScore": 7, "colour": "red"}));
    let change = |after: serde_json::Value| policy.check_shopper_change(Some(&before), &session(after));
    let refused = |key: &str| Err(PolicyError::Protected { key: key.into() });
    // Free attributes: anything goes.
    assert_eq!(
        change(json!({"b2b.legalEntity": "LE1", "priceList": "P1", "riskScore": 7, "colour": "blue", "size": 4})),
        Ok(())
    );
    // Sending back protected values unchanged is not a change.
    assert_eq!(
        change(json!({"b2b.legalEntity": "LE1", "priceList": "P1", "riskScore": 7})),
        Ok(())
    );
    // Changing, removing or adding a protected or hidden key is.
    assert_eq!(
        change(json!({"b2b.legalEntity": "LE2", "priceList": "P1", "riskScore": 7})),
        refused("b2b.legalEntity")
    );
    assert_eq!(
        change(json!({"b2b.legalEntity": "LE1", "riskScore": 7})),
        refused("priceList")
    );
    assert_eq!(
        change(json!({"b2b.legalEntity": "LE1", "priceList": "P1", "riskScore": 7, "b2b.new": 1})),
        refused("b2b.new")
    );
    assert_eq!(
        change(json!({"b2b.legalEntity": "LE1", "priceList": "P1", "riskScore": 8})),
        refused("riskScore")
    );
    // Creating a session with a protected key is a change too.
    assert_eq!(
        policy.check_shopper_change(None, &session(json!({"priceList": "P9"}))),
        refused("priceList")
    );
    // A value that only looks the same is not: 1 and 1.0, "1" and 1.
    let numbers = session(json!({"priceList": 1}));
    assert_eq!(
        policy.check_shopper_change(Some(&numbers), &session(json!({"priceList": "1"}))),
        refused("priceList")
    );
}

#[test]
fn hidden_attributes_are_refused_by_name_and_left_out_of_the_shopper_view() {
    let policy = policy(&[], &["internal.*"]);
    assert_eq!(
        policy.check_shopper_key("internal.score"),
        Err(PolicyError::Protected {
            key: "internal.score".into()
        })
    );
    assert_eq!(policy.check_shopper_key("colour"), Ok(()));
    let mut view = session(json!({"internal.score": 3, "internal.x": {}, "colour": "red"}));
    policy.shopper_view(&mut view);
    assert_eq!(serde_json::Value::Object(view.context), json!({"colour": "red"}));
    // Clearing the context as a shopper keeps the hidden attributes.
    let before = session(json!({"internal.score": 3, "colour": "red"}));
    let mut after = session(json!({}));
    policy.keep_hidden(Some(&before), &mut after);
    assert_eq!(serde_json::Value::Object(after.context), json!({"internal.score": 3}));
}

#[test]
fn without_patterns_the_shopper_sees_and_writes_everything() {
    let policy = TenantPolicy::default();
    let before = session(json!({"a": 1}));
    assert_eq!(policy.check_shopper_change(Some(&before), &session(json!({}))), Ok(()));
    let mut view = before.clone();
    policy.shopper_view(&mut view);
    assert_eq!(view, before);
}

#[test]
fn allowed_values_refuse_new_values_outside_the_lists() {
    let allowed = AllowedValues {
        currency: vec!["EUR".into(), "USD".into()],
        site_code: vec!["main".into()],
        language: vec!["de".into(), "en-US".into()],
        target_location: vec![],
    };
    let with = |f: &dyn Fn(&mut SessionContext)| {
        let mut s = SessionContext::new("s1", 1);
        f(&mut s);
        s
    };
    let after = with(&|s| s.currency = Some("GBP".into()));
    let err = allowed.check(None, &after).unwrap_err();
    assert_eq!((err.field.as_str(), err.kind), ("currency", "not_allowed"));
    assert!(err.message.contains("EUR, USD"), "{}", err.message);
    assert!(allowed.check(None, &with(&|s| s.currency = Some("USD".into()))).is_ok());
    assert_eq!(
        allowed
            .check(None, &with(&|s| s.site_code = Some("outlet".into())))
            .unwrap_err()
            .field,
        "siteCode"
    );
    // Any target location: its list is empty.
    assert!(
        allowed
            .check(None, &with(&|s| s.target_location = Some("FR".into())))
            .is_ok()
    );
    // Language tags compare without case, and `_` is `-`.
    for ok in ["de", "DE", "en-us", "en_US"] {
        assert!(
            allowed.check(None, &with(&|s| s.language = Some(ok.into()))).is_ok(),
            "{ok}"
        );
    }
    for bad in ["fr", "en", "de-DE", "en-USx"] {
        assert!(
            allowed.check(None, &with(&|s| s.language = Some(bad.into()))).is_err(),
            "{bad}"
        );
    }
    // A value already stored stays acceptable (the list changed since): other changes go on.
    let stored = with(&|s| s.currency = Some("GBP".into()));
    let mut changed = stored.clone();
    changed.site_code = Some("main".into());
    assert!(allowed.check(Some(&stored), &changed).is_ok());
    // Removing a value is always allowed.
    assert!(allowed.check(Some(&stored), &with(&|_| {})).is_ok());
}

#[test]
fn each_tenant_gets_its_own_policy_or_the_default() {
    let strict = TenantPolicy {
        max_attributes: 5,
        ..TenantPolicy::default()
    };
    let mut policies = TenantPolicies::uniform(TenantPolicy::default());
    policies.tenants.insert("strict".into(), strict.clone());
    assert_eq!(policies.of("strict"), &strict);
    assert_eq!(policies.of("other"), &TenantPolicy::default());
}
