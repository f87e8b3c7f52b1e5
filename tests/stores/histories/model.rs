//! The contract of one session, as a sequential model for the checker: what each operation
//! answers and how it changes the session. Written from CONTRACT.md, independently of `src/`.

use std::collections::BTreeMap;

use super::checker::Model;

/// Attribute name → the value's JSON text.
pub type Context = BTreeMap<String, String>;

/// A live session's version, context and whether it is customer C1's (adopted), or none.
pub type State = Option<(u64, Context, bool)>;

#[derive(Debug, Clone)]
pub enum Input {
    /// `GET /context/{id}`, or with `me` `GET /me/context` with the session's anonymous token
    /// (a read that may extend the expiry: not a change).
    Get { me: bool },
    /// `GET /me/context` with a customer token for C1: the login, adopting an anonymous
    /// session (one change of its own) and reading it.
    Login,
    /// `PUT /context/{id}?upsert=…` replacing the context, with `metadata.version`.
    Put {
        version: u64,
        upsert: bool,
        context: Context,
    },
    /// `PATCH /me/context?upsert=…` merging `changes` (`None` removes the key), with a version.
    Patch {
        version: u64,
        upsert: bool,
        changes: BTreeMap<String, Option<String>>,
    },
    /// `POST /context/{id}/attributes`, or with `me` through `/me` with the anonymous token.
    SetAttribute { key: String, value: String, me: bool },
    /// `DELETE /context/{id}/attributes/{key}`, or with `me` through `/me` (anonymous token).
    RemoveAttribute { key: String, me: bool },
    /// `DELETE /context/{id}` (with C1's saas-token, as PUT).
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// 200 with this version and context.
    Found { version: u64, context: Context },
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
    /// 403: an anonymous token on the customer's session.
    Forbidden,
    /// No definite answer (a transport error or a 5xx): it may or may not have happened.
    Unknown,
}

pub struct Session;

/// What `input` answers on `state` and the state after it, by the contract.
pub fn apply(state: &State, input: &Input) -> (Output, State) {
    let unchanged = |output| (output, state.clone());
    // Every request but the login and the management ones uses the session's anonymous token:
    // once the session is the customer's, they are refused and change nothing.
    let anonymous = match input {
        Input::Get { me } | Input::SetAttribute { me, .. } | Input::RemoveAttribute { me, .. } => *me,
        Input::Patch { .. } => true,
        Input::Login | Input::Put { .. } | Input::Delete => false,
    };
    if anonymous && matches!(state, Some((_, _, true))) {
        return unchanged(Output::Forbidden);
    }
    match (input, state) {
        (Input::Get { .. }, Some((version, context, _))) => unchanged(Output::Found {
            version: *version,
            context: context.clone(),
        }),
        (Input::Login, Some((version, context, true))) => unchanged(Output::Found {
            version: *version,
            context: context.clone(),
        }),
        (Input::Login, Some((version, context, false))) => (
            Output::Found {
                version: version + 1,
                context: context.clone(),
            },
            Some((version + 1, context.clone(), true)),
        ),
        (Input::Get { .. } | Input::Login, None) => unchanged(Output::Missing),
        (Input::Put { upsert: false, .. } | Input::Patch { upsert: false, .. }, None) => unchanged(Output::Missing),
        (Input::Put { context, .. }, None) => (Output::Created { version: 1 }, Some((1, context.clone(), false))),
        (Input::Patch { changes, .. }, None) => (
            Output::Created { version: 1 },
            Some((1, merge(&Context::new(), changes), false)),
        ),
        (Input::Put { version, .. } | Input::Patch { version, .. }, Some((current, _, _))) if version != current => {
            unchanged(Output::Conflict { current: *current })
        }
        (Input::Put { context, .. }, Some((current, _, customer))) => (
            Output::Updated { version: current + 1 },
            Some((current + 1, context.clone(), *customer)),
        ),
        (Input::Patch { changes, .. }, Some((current, stored, customer))) => (
            Output::Updated { version: current + 1 },
            Some((current + 1, merge(stored, changes), *customer)),
        ),
        (Input::SetAttribute { key, value, .. }, Some((current, stored, customer))) => {
            let mut next = stored.clone();
            next.insert(key.clone(), value.clone());
            (
                Output::Updated { version: current + 1 },
                Some((current + 1, next, *customer)),
            )
        }
        (Input::RemoveAttribute { key, .. }, Some((current, stored, customer))) if stored.contains_key(key) => {
            let mut next = stored.clone();
            next.remove(key);
            (
                Output::Updated { version: current + 1 },
                Some((current + 1, next, *customer)),
            )
        }
        (Input::RemoveAttribute { .. }, Some(_)) => unchanged(Output::Unchanged),
        (Input::Delete, Some(_)) => (Output::Deleted, None),
        (Input::SetAttribute { .. } | Input::RemoveAttribute { .. } | Input::Delete, None) => {
            unchanged(Output::Missing)
        }
    }
}

/// JSON Merge Patch at the first level.
fn merge(stored: &Context, changes: &BTreeMap<String, Option<String>>) -> Context {
    let mut next = stored.clone();
    for (key, value) in changes {
        match value {
            Some(value) => next.insert(key.clone(), value.clone()),
            None => next.remove(key),
        };
    }
    next
}

impl Model for Session {
    type State = State;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> State {
        None
    }

    fn step(&self, state: &State, input: &Input, output: &Output) -> Vec<State> {
        let (expected, next) = apply(state, input);
        match output {
            Output::Unknown if next != *state => vec![state.clone(), next],
            _ if *output == expected || *output == Output::Unknown => vec![next],
            _ => vec![],
        }
    }
}
