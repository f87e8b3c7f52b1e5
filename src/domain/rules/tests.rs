use super::*;
use crate::domain::request::{ContextPatch, FieldChange, PatchRequest, PutRequest};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn stored() -> SessionContext {
    let mut s = SessionContext::new("s1", 1_000);
    s.site_code = Some("main".into());
    s.cart_id = Some("cart1".into());
    s.context.insert("a".into(), json!(1));
    s.context.insert("b".into(), json!({"x": true}));
    s
}

#[test]
fn put_on_existing_session_bumps_version_and_keeps_absent_fields() {
    let req = PutRequest {
        fields: vec![
            (TextField::Currency, FieldChange::Set("EUR".into())),
            (TextField::CartId, FieldChange::Remove),
        ],
        context: None,
        version: Some(1),
    };
    let next = apply_put(Some(stored()), "s1", &req, 2_000);
    assert_eq!(next.metadata.version, 2);
    assert_eq!(next.metadata.created_at, 1_000);
    assert_eq!(next.metadata.modified_at, 2_000);
    assert_eq!(next.site_code.as_deref(), Some("main"));
    assert_eq!(next.currency.as_deref(), Some("EUR"));
    assert_eq!(next.cart_id, None);
    assert_eq!(next.context, stored().context);
}

#[test]
fn put_context_replaces_the_whole_map() {
    let mut context = Map::new();
    context.insert("z".into(), json!("new"));
    let req = PutRequest {
        context: Some(context.clone()),
        ..Default::default()
    };
    assert_eq!(apply_put(Some(stored()), "s1", &req, 2_000).context, context);
}

#[test]
fn put_creates_at_version_one() {
    let req = PutRequest {
        fields: vec![(TextField::CustomerId, FieldChange::Set("C1".into()))],
        version: Some(42),
        ..Default::default()
    };
    let created = apply_put(None, "new", &req, 5_000);
    assert_eq!(created.session_id, "new");
    assert_eq!(created.metadata.version, 1);
    assert_eq!(created.metadata.created_at, 5_000);
    assert_eq!(created.customer_id.as_deref(), Some("C1"));
}

#[test]
fn patch_merges_context_key_by_key() {
    let mut patch = Map::new();
    patch.insert("a".into(), Value::Null);
    patch.insert("c".into(), json!([1, 2]));
    let req = PatchRequest {
        context: Some(ContextPatch::Merge(patch)),
        ..Default::default()
    };
    let next = apply_patch(Some(stored()), "s1", None, &req, 2_000);
    assert_eq!(Value::Object(next.context), json!({"b": {"x": true}, "c": [1, 2]}));
    assert_eq!(next.metadata.version, 2);
}

#[test]
fn patch_with_null_context_clears_it() {
    let req = PatchRequest {
        context: Some(ContextPatch::Clear),
        ..Default::default()
    };
    assert!(apply_patch(Some(stored()), "s1", None, &req, 2_000).context.is_empty());
}

#[test]
fn patch_creation_takes_the_tokens_customer() {
    let created = apply_patch(None, "s9", Some("C7"), &PatchRequest::default(), 3_000);
    assert_eq!(created.customer_id.as_deref(), Some("C7"));
    assert_eq!(created.metadata.version, 1);
}

#[test]
fn removing_a_missing_attribute_changes_nothing() {
    assert_eq!(remove_attribute(stored(), "nope", 2_000), None);
    let next = remove_attribute(stored(), "a", 2_000).unwrap();
    assert!(!next.context.contains_key("a"));
    assert_eq!(next.metadata.version, 2);
}

#[test]
fn version_check_reports_the_stored_version() {
    assert_eq!(check_version(&stored(), 1), Ok(()));
    assert_eq!(check_version(&stored(), 2), Err(VersionMismatch { current: 1 }));
}

#[test]
fn saas_customer_is_the_bodys_else_the_stored_one() {
    let mut customer_session = stored();
    customer_session.customer_id = Some("C1".into());
    let set = PutRequest {
        fields: vec![(TextField::CustomerId, FieldChange::Set("C2".into()))],
        ..Default::default()
    };
    let remove = PutRequest {
        fields: vec![(TextField::CustomerId, FieldChange::Remove)],
        ..Default::default()
    };
    let untouched = PutRequest::default();
    assert_eq!(saas_customer(Some(&customer_session), &set), Some("C2"));
    assert_eq!(saas_customer(Some(&customer_session), &remove), Some("C1"));
    assert_eq!(saas_customer(Some(&customer_session), &untouched), Some("C1"));
    assert_eq!(saas_customer(Some(&stored()), &untouched), None);
    assert_eq!(saas_customer(None, &set), Some("C2"));
}

#[test]
fn adoption_makes_the_session_the_customers_as_one_change() {
    let anonymous = stored();
    let adopted = adopt(anonymous.clone(), "C1", 9_000_000_000_000);
    assert_eq!(adopted.customer_id.as_deref(), Some("C1"));
    assert_eq!(adopted.metadata.version, anonymous.metadata.version + 1);
    assert_eq!(adopted.metadata.modified_at, 9_000_000_000_000);
    assert_eq!(adopted.context, anonymous.context, "nothing else changes");
}

#[test]
fn a_session_created_on_first_use_takes_the_token_defaults() {
    let defaults = vec![
        (TextField::Currency, "EUR".to_owned()),
        (TextField::Language, "de_DE".to_owned()),
    ];
    let created = create_for_shopper("s1", Some("C1"), &defaults, 5_000);
    assert_eq!(created.metadata.version, 1);
    assert_eq!(created.customer_id.as_deref(), Some("C1"));
    assert_eq!(created.currency.as_deref(), Some("EUR"));
    assert_eq!(created.language.as_deref(), Some("de_DE"));
    assert_eq!(created.site_code, None);
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z]{0,6}".prop_map(Value::String),
    ]
}

fn small_map() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-e]", json_leaf(), 0..5).prop_map(|m| m.into_iter().collect())
}

fn field_change() -> impl Strategy<Value = Option<FieldChange>> {
    prop_oneof![
        Just(None),
        Just(Some(FieldChange::Remove)),
        "[A-Z]{2}".prop_map(|s| Some(FieldChange::Set(s))),
    ]
}

proptest! {
    #[test]
    fn put_sets_named_fields_and_keeps_the_rest(
        changes in prop::collection::vec(field_change(), 6),
        context in prop::option::of(small_map()),
        base_context in small_map(),
    ) {
        let mut base = stored();
        base.context = base_context;
        let fields: Vec<_> = TextField::ALL.iter().zip(&changes)
            .filter_map(|(f, c)| c.clone().map(|c| (*f, c))).collect();
        let req = PutRequest { fields, context: context.clone(), version: Some(1) };
        let next = apply_put(Some(base.clone()), "s1", &req, 9_000);
        prop_assert_eq!(next.metadata.version, base.metadata.version + 1);
        prop_assert_eq!(next.metadata.created_at, base.metadata.created_at);
        for (field, change) in TextField::ALL.iter().zip(&changes) {
            let expected = match change {
                None => base.clone().text_mut(*field).clone(),
                Some(FieldChange::Remove) => None,
                Some(FieldChange::Set(v)) => Some(v.clone()),
            };
            prop_assert_eq!(next.clone().text_mut(*field).clone(), expected);
        }
        prop_assert_eq!(next.context, context.unwrap_or(base.context));
    }

    #[test]
    fn patch_merge_is_rfc7386_at_the_first_level(base_context in small_map(), patch in small_map()) {
        let mut base = stored();
        base.context = base_context.clone();
        let req = PatchRequest { context: Some(ContextPatch::Merge(patch.clone())), ..Default::default() };
        let next = apply_patch(Some(base.clone()), "s1", None, &req, 9_000);
        for (key, value) in &patch {
            if value.is_null() {
                prop_assert!(!next.context.contains_key(key));
            } else {
                prop_assert_eq!(next.context.get(key), Some(value));
            }
        }
        for (key, value) in &base_context {
            if !patch.contains_key(key) {
                prop_assert_eq!(next.context.get(key), Some(value));
            }
        }
        prop_assert_eq!(next.customer_id, base.customer_id);
        prop_assert_eq!(next.cart_id, base.cart_id);
        prop_assert_eq!(next.metadata.version, base.metadata.version + 1);
    }

    #[test]
    fn set_then_remove_attribute_restores_the_map(base_context in small_map(), key in "[a-z]{1,3}", value in json_leaf()) {
        prop_assume!(!value.is_null() && !base_context.contains_key(&key));
        let mut base = stored();
        base.context = base_context.clone();
        let with = set_attribute(base.clone(), &key, &value, 9_000);
        prop_assert_eq!(with.context.get(&key), Some(&value));
        let without = remove_attribute(with.clone(), &key, 9_001).unwrap();
        prop_assert_eq!(without.context, base_context);
        prop_assert_eq!(without.metadata.version, base.metadata.version + 2);
    }
}

#[test]
fn only_adopts_is_a_customer_given_and_nothing_else() {
    let mut before = SessionContext::new("s1", 1_000);
    before.currency = Some("EUR".into());
    let mut adopted = adopt(before.clone(), "C1", 2_000);
    assert!(only_adopts(&before, &adopted));
    adopted.site_code = Some("main".into());
    assert!(!only_adopts(&before, &adopted), "and another change");
    let customer = adopt(before.clone(), "C1", 2_000);
    assert!(
        !only_adopts(&customer, &adopt(customer.clone(), "C2", 3_000)),
        "not anonymous before"
    );
    assert!(!only_adopts(&before, &before), "no customer after");
}
