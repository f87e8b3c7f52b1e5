//! The contract's semantics as pure functions: how PUT, PATCH and the attribute operations
//! turn a stored session (or none) into the next one, and who may make the change.

use serde_json::Value;

use super::request::{ContextPatch, FieldChange, PatchRequest, PutRequest};
use super::session::{SessionContext, TextField};
use crate::clock::Millis;

/// The stored version differs from the one the client expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionMismatch {
    pub current: u64,
}

/// Checks an expected version against the stored one.
pub fn check_version(stored: &SessionContext, expected: u64) -> Result<(), VersionMismatch> {
    if stored.metadata.version == expected {
        Ok(())
    } else {
        Err(VersionMismatch {
            current: stored.metadata.version,
        })
    }
}

/// Applies a PUT to `current` (or creates the session when `current` is `None`).
pub fn apply_put(current: Option<SessionContext>, session_id: &str, req: &PutRequest, now: Millis) -> SessionContext {
    let mut next = match current {
        Some(mut next) => {
            next.touch(now);
            next
        }
        None => SessionContext::new(session_id, now),
    };
    for (field, change) in &req.fields {
        apply_field(&mut next, *field, change);
    }
    if let Some(context) = &req.context {
        next.context = context.clone();
    }
    next
}

/// Applies a PATCH to `current`, or creates the session for a `/me` caller with
/// `customer_id` when `current` is `None`.
pub fn apply_patch(
    current: Option<SessionContext>,
    session_id: &str,
    customer_id: Option<&str>,
    req: &PatchRequest,
    now: Millis,
) -> SessionContext {
    let mut next = match current {
        Some(mut next) => {
            next.touch(now);
            next
        }
        None => {
            let mut created = SessionContext::new(session_id, now);
            created.customer_id = customer_id.map(str::to_owned);
            created
        }
    };
    for (field, change) in &req.fields {
        apply_field(&mut next, *field, change);
    }
    match &req.context {
        None => {}
        Some(ContextPatch::Clear) => next.context.clear(),
        Some(ContextPatch::Merge(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    next.context.remove(key);
                } else {
                    next.context.insert(key.clone(), value.clone());
                }
            }
        }
    }
    next
}

/// Sets attribute `key` to `value`, overwriting an existing one.
pub fn set_attribute(mut next: SessionContext, key: &str, value: &Value, now: Millis) -> SessionContext {
    next.context.insert(key.to_owned(), value.clone());
    next.touch(now);
    next
}

/// Removes attribute `key`; `None` when there was no such attribute (nothing changes).
pub fn remove_attribute(mut next: SessionContext, key: &str, now: Millis) -> Option<SessionContext> {
    next.context.remove(key)?;
    next.touch(now);
    Some(next)
}

/// The customer whose saas-token a PUT needs: the body's `customerId` if it sets one, else the
/// stored one; `None` when neither the stored session nor the request has a customer.
pub fn saas_customer<'a>(stored: Option<&'a SessionContext>, req: &'a PutRequest) -> Option<&'a str> {
    match req.field(TextField::CustomerId) {
        Some(FieldChange::Set(customer)) => Some(customer),
        _ => stored.and_then(|s| s.customer_id.as_deref()),
    }
}

/// A login adopting an anonymous session: it becomes `customer`'s, as one change of its own.
pub fn adopt(mut session: SessionContext, customer: &str, now: Millis) -> SessionContext {
    session.customer_id = Some(customer.to_owned());
    session.touch(now);
    session
}

/// Whether `next` is `before` adopted by a login and nothing else: an anonymous session given
/// a customer, every other field as it was (the version and `modifiedAt` aside). Such a change
/// is never refused for size (the contract's "Tenant policy").
pub fn only_adopts(before: &SessionContext, next: &SessionContext) -> bool {
    if before.customer_id.is_some() || next.customer_id.is_none() {
        return false;
    }
    let mut undone = next.clone();
    undone.customer_id = None;
    undone.metadata = before.metadata;
    undone == *before
}

/// A session created on a storefront's first use (`--create-on-first-use`): the token's
/// customer, and the field values its claims carry (already checked by the caller).
pub fn create_for_shopper(
    session_id: &str,
    customer: Option<&str>,
    defaults: &[(TextField, String)],
    now: Millis,
) -> SessionContext {
    let mut created = SessionContext::new(session_id, now);
    created.customer_id = customer.map(str::to_owned);
    for (field, value) in defaults {
        *created.text_mut(*field) = Some(value.clone());
    }
    created
}

fn apply_field(session: &mut SessionContext, field: TextField, change: &FieldChange) {
    *session.text_mut(field) = match change {
        FieldChange::Remove => None,
        FieldChange::Set(value) => Some(value.clone()),
    };
}

#[cfg(test)]
mod tests;
