//! The contract of one session as one sequential model: what each operation answers at a given
//! time and how it changes the session. Written from the contract (the README's API and the
//! shopper's journey, docs/DECISIONS.md), independently of `src/`.
//!
//! Two suites check the service against it:
//! - `model_based`: random operation sequences through the use cases, with a clock that moves
//!   past idle timeouts and the anonymous cap, compared with [`Contract::apply`] step by step;
//! - `histories`: concurrent clients against real processes, each session's recorded history
//!   searched for an order that [`Contract::apply`] explains. Their runs last seconds, so the
//!   model's clock stands still for them and nothing expires.

use std::collections::BTreeMap;

use session_context::clock::Millis;

/// Attribute name → the value's JSON text.
pub type Context = BTreeMap<String, String>;

/// A field of a PUT body: `None` leaves it as it is, `Some(None)` (a JSON `null`) removes it,
/// `Some(Some(value))` sets it.
pub type FieldChange = Option<Option<String>>;

/// The customer whose tokens the suites use.
pub const CUSTOMER: &str = "C1";

/// A live session as the contract sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Session {
    pub version: u64,
    pub currency: Option<String>,
    /// `customerId`: whose session it is; `None` while it is anonymous.
    pub customer: Option<String>,
    pub context: Context,
    pub created_at: Millis,
    /// When it ends unless it is used again; `None`: never (customer sessions).
    pub expires_at: Option<Millis>,
}

/// One session: live, or not there (never created, deleted or expired).
pub type State = Option<Session>;

/// What a read shows of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub version: u64,
    pub currency: Option<String>,
    pub customer: Option<String>,
    pub context: Context,
}

#[derive(Debug, Clone)]
pub enum Input {
    /// `GET /context/{id}`, or with `me` `GET /me/context` with the session's anonymous token:
    /// a use, which may extend the expiry, never a change.
    Get { me: bool },
    /// `GET /me/context` with a customer token for [`CUSTOMER`]: the login, adopting an
    /// anonymous session (one change of its own) and reading it.
    Login,
    /// `PUT /context/{id}?upsert=…` with `metadata.version` (and the customer's saas-token):
    /// the fields named, and the context when given, replaced.
    Put {
        version: u64,
        upsert: bool,
        currency: FieldChange,
        customer: FieldChange,
        context: Option<Context>,
    },
    /// `PATCH /me/context?upsert=…` with the anonymous token, merging `changes` into the
    /// context (`None` removes the key), with a version.
    Patch {
        version: u64,
        upsert: bool,
        changes: BTreeMap<String, Option<String>>,
    },
    /// `POST /context/{id}/attributes`, or with `me` through `/me` with the anonymous token.
    SetAttribute { key: String, value: String, me: bool },
    /// `DELETE /context/{id}/attributes/{key}`, or with `me` through `/me` (anonymous token).
    RemoveAttribute { key: String, me: bool },
    /// `DELETE /context/{id}` (with the customer's saas-token, as PUT).
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// 200 with the session.
    Found(View),
    /// 404.
    Missing,
    /// 201 with this ETag.
    Created { version: u64 },
    /// 204 with this ETag.
    Updated { version: u64 },
    /// 204 without an ETag: nothing changed.
    Unchanged,
    /// 204 from DELETE of the session.
    Deleted,
    /// 409 with this `currentVersion`.
    Conflict { current: u64 },
    /// 403: an anonymous token on a customer's session, or another customer's login.
    Forbidden,
    /// No definite answer (a transport error or a 5xx): it may or may not have happened.
    Unknown,
}

/// The lifetime rules the service runs with: anonymous sessions end `idle` after their last
/// use (a change, or a read when less than half of `idle` is left), and never later than
/// `max_age` after they were created; customer sessions do not expire.
#[derive(Debug, Clone, Copy)]
pub struct Contract {
    pub idle: Option<Millis>,
    pub max_age: Option<Millis>,
}

impl Contract {
    /// What `input` answers on `state` at `now`, and the state after it.
    pub fn apply(&self, state: &State, input: &Input, now: Millis) -> (Output, State) {
        // An expired session is gone.
        let state = self.live(state, now).cloned();
        let unchanged = |output| (output, state.clone());
        // Every request but the login and the management ones uses the session's anonymous
        // token: once the session is a customer's, they are refused and change nothing.
        let anonymous = match input {
            Input::Get { me } | Input::SetAttribute { me, .. } | Input::RemoveAttribute { me, .. } => *me,
            Input::Patch { .. } => true,
            Input::Login | Input::Put { .. } | Input::Delete => false,
        };
        if anonymous && state.as_ref().is_some_and(|s| s.customer.is_some()) {
            return unchanged(Output::Forbidden);
        }
        let Some(mut session) = state.clone() else {
            return match input {
                Input::Put {
                    upsert: true,
                    currency,
                    customer,
                    context,
                    ..
                } => {
                    let mut session = self.created(now);
                    change(&mut session.currency, currency);
                    change(&mut session.customer, customer);
                    session.context = context.clone().unwrap_or_default();
                    session.expires_at = self.expiry(&session, now);
                    (Output::Created { version: 1 }, Some(session))
                }
                Input::Patch {
                    upsert: true, changes, ..
                } => {
                    let mut session = self.created(now);
                    merge(&mut session.context, changes);
                    (Output::Created { version: 1 }, Some(session))
                }
                _ => unchanged(Output::Missing),
            };
        };
        match input {
            Input::Get { .. } => {
                self.used(&mut session, now);
                (Output::Found(view(&session)), Some(session))
            }
            Input::Login => match session.customer.as_deref() {
                None => {
                    session.customer = Some(CUSTOMER.into());
                    self.changed(&mut session, now);
                    (Output::Found(view(&session)), Some(session))
                }
                Some(CUSTOMER) => {
                    self.used(&mut session, now);
                    (Output::Found(view(&session)), Some(session))
                }
                Some(_) => unchanged(Output::Forbidden),
            },
            Input::Put { version, .. } | Input::Patch { version, .. } if *version != session.version => {
                unchanged(Output::Conflict {
                    current: session.version,
                })
            }
            Input::Put {
                currency,
                customer,
                context,
                ..
            } => {
                change(&mut session.currency, currency);
                change(&mut session.customer, customer);
                if let Some(context) = context {
                    session.context = context.clone();
                }
                self.changed(&mut session, now);
                (
                    Output::Updated {
                        version: session.version,
                    },
                    Some(session),
                )
            }
            Input::Patch { changes, .. } => {
                merge(&mut session.context, changes);
                self.changed(&mut session, now);
                (
                    Output::Updated {
                        version: session.version,
                    },
                    Some(session),
                )
            }
            Input::SetAttribute { key, value, .. } => {
                session.context.insert(key.clone(), value.clone());
                self.changed(&mut session, now);
                (
                    Output::Updated {
                        version: session.version,
                    },
                    Some(session),
                )
            }
            Input::RemoveAttribute { key, .. } => {
                if session.context.remove(key).is_none() {
                    // Nothing to remove: no change, but a use.
                    self.used(&mut session, now);
                    return (Output::Unchanged, Some(session));
                }
                self.changed(&mut session, now);
                (
                    Output::Updated {
                        version: session.version,
                    },
                    Some(session),
                )
            }
            Input::Delete => (Output::Deleted, None),
        }
    }

    /// The session in `state` if it is still live at `now`.
    pub fn live<'a>(&self, state: &'a State, now: Millis) -> Option<&'a Session> {
        state.as_ref().filter(|s| s.expires_at.is_none_or(|at| at > now))
    }

    /// A new, empty anonymous session at version 1.
    fn created(&self, now: Millis) -> Session {
        let mut session = Session {
            version: 1,
            currency: None,
            customer: None,
            context: Context::new(),
            created_at: now,
            expires_at: None,
        };
        session.expires_at = self.expiry(&session, now);
        session
    }

    /// When `session` ends if its last use is at `now`: within the anonymous cap; customer
    /// sessions never.
    fn expiry(&self, session: &Session, now: Millis) -> Option<Millis> {
        if session.customer.is_some() {
            return None;
        }
        let idle = self.idle.map(|idle| now + idle);
        let cap = self.max_age.map(|max_age| session.created_at + max_age);
        match (idle, cap) {
            (Some(idle), Some(cap)) => Some(idle.min(cap)),
            (idle, cap) => idle.or(cap),
        }
    }

    /// A change at `now`: the next version, and the expiry starts over.
    fn changed(&self, session: &mut Session, now: Millis) {
        session.version += 1;
        session.expires_at = self.expiry(session, now);
    }

    /// A use at `now` that changes nothing: the expiry moves on only when less than half of the
    /// idle timeout is left, and only forwards.
    fn used(&self, session: &mut Session, now: Millis) {
        if let (Some(current), Some(next), Some(idle)) = (session.expires_at, self.expiry(session, now), self.idle)
            && (current - now) * 2 < idle
            && next > current
        {
            session.expires_at = Some(next);
        }
    }
}

fn view(session: &Session) -> View {
    View {
        version: session.version,
        currency: session.currency.clone(),
        customer: session.customer.clone(),
        context: session.context.clone(),
    }
}

fn change(field: &mut Option<String>, change: &FieldChange) {
    if let Some(value) = change {
        field.clone_from(value);
    }
}

/// JSON Merge Patch at the first level.
fn merge(context: &mut Context, changes: &BTreeMap<String, Option<String>>) {
    for (key, value) in changes {
        match value {
            Some(value) => context.insert(key.clone(), value.clone()),
            None => context.remove(key),
        };
    }
}
