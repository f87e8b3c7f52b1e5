//! How long a session lives (the contract's "Lifetime"): an idle timeout counted from the last
//! *use*, reads included, for anonymous sessions (`--anonymous-ttl`) and for customer sessions
//! (`--customer-ttl`, none by default), and an absolute cap from creation for anonymous sessions
//! (`--anonymous-max-age`). Also who may use a session through `/me`, and how a login adopts an
//! anonymous session.

use crate::clock::Millis;

/// How far a customer token's `iat` may lag behind the creation of the session it adopts
/// (clocks of the identity provider and of the service differ a little).
pub const ADOPTION_SKEW: Millis = 60_000;

/// The lifetime settings; `None` = no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifetime {
    /// Idle timeout of anonymous sessions.
    pub anonymous_ttl: Option<Millis>,
    /// Absolute cap of anonymous sessions, from their creation.
    pub anonymous_max_age: Option<Millis>,
    /// Idle timeout of customer sessions.
    pub customer_ttl: Option<Millis>,
}

impl Lifetime {
    /// Anonymous sessions idle out after `ttl`; no cap; customer sessions never expire.
    pub fn anonymous(ttl: Option<Millis>) -> Self {
        Lifetime {
            anonymous_ttl: ttl,
            ..Lifetime::default()
        }
    }

    fn idle(&self, customer: bool) -> Option<Millis> {
        if customer {
            self.customer_ttl
        } else {
            self.anonymous_ttl
        }
    }

    /// When a session (a customer's or not, created at `created_at`) that is used at `now`
    /// expires; `None` = never.
    pub fn expires_at(&self, customer: bool, created_at: Millis, now: Millis) -> Option<Millis> {
        let idle = self.idle(customer).map(|ttl| now.saturating_add(ttl));
        let cap = match customer {
            true => None,
            false => self.anonymous_max_age.map(|age| created_at.saturating_add(age)),
        };
        match (idle, cap) {
            (Some(idle), Some(cap)) => Some(idle.min(cap)),
            (idle, cap) => idle.or(cap),
        }
    }

    /// Whether a use at `now` that changes nothing (a read, an unchanged write) should move the
    /// expiry `current` of a session: only when less than half of its idle timeout is left, so
    /// that reads stay cheap, and only to a later time. Returns the new expiry, or `None` to
    /// leave it alone.
    pub fn extension(&self, customer: bool, created_at: Millis, current: Millis, now: Millis) -> Option<Millis> {
        let idle = self.idle(customer)?;
        let left = current.saturating_sub(now);
        if left.saturating_mul(2) >= idle {
            return None;
        }
        self.expires_at(customer, created_at, now)
            .filter(|&next| next > current)
    }

    /// The longest idle timeout of any session: a record that expires later than half of it
    /// from now needs no extension, whoever it belongs to (a read can skip looking inside it).
    pub fn longest_idle(&self) -> Option<Millis> {
        match (self.anonymous_ttl, self.customer_ttl) {
            (Some(a), Some(c)) => Some(a.max(c)),
            (a, c) => a.or(c),
        }
    }
}

/// What a `/me` caller may do with a stored session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeAccess {
    /// Use it as it is.
    Allowed,
    /// A customer token on an anonymous session made before its login: the session becomes
    /// that customer's first (one change of its own), then the request runs on it.
    Adopt,
    /// Someone else's session.
    Forbidden,
    /// An anonymous session made after the customer's login: by someone else, for example
    /// re-created after the customer's sessions were deleted. Not adopted.
    CreatedAfterLogin,
}

/// Who may use a session owned by `owner` (its `customerId`) and created at `created_at`
/// through `/me` with a token for `customer` (`None` = anonymous) issued at `issued_at`:
/// a customer session belongs to its customer alone; an anonymous session to whoever holds its
/// session token, and a customer token adopts it when the session is older than the login (a
/// younger one was made after the login by someone else). A token without `iat` cannot tell,
/// and adopts.
pub fn me_access(
    owner: Option<&str>,
    created_at: Millis,
    customer: Option<&str>,
    issued_at: Option<Millis>,
) -> MeAccess {
    match (owner, customer) {
        (Some(owner), Some(customer)) if owner == customer => MeAccess::Allowed,
        (Some(_), _) => MeAccess::Forbidden,
        (None, None) => MeAccess::Allowed,
        (None, Some(_)) => match issued_at {
            Some(iat) if created_at > iat.saturating_add(ADOPTION_SKEW) => MeAccess::CreatedAfterLogin,
            _ => MeAccess::Adopt,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Millis = 60_000;

    fn lifetime() -> Lifetime {
        Lifetime {
            anonymous_ttl: Some(60 * MIN),
            anonymous_max_age: Some(240 * MIN),
            customer_ttl: None,
        }
    }

    #[test]
    fn anonymous_sessions_idle_out_from_the_last_use_within_their_cap() {
        let l = lifetime();
        assert_eq!(l.expires_at(false, 0, 10 * MIN), Some(70 * MIN));
        assert_eq!(l.expires_at(false, 0, 200 * MIN), Some(240 * MIN), "the cap wins");
        assert_eq!(
            l.expires_at(true, 0, 10 * MIN),
            None,
            "customers never expire by default"
        );
        let customers = Lifetime {
            customer_ttl: Some(30 * MIN),
            ..l
        };
        assert_eq!(
            customers.expires_at(true, 0, 10 * MIN),
            Some(40 * MIN),
            "and have no cap"
        );
        assert_eq!(Lifetime::default().expires_at(false, 0, 5), None);
        let only_cap = Lifetime {
            anonymous_max_age: Some(MIN),
            ..Lifetime::default()
        };
        assert_eq!(only_cap.expires_at(false, 7, 500), Some(7 + MIN));
    }

    #[test]
    fn a_use_extends_only_when_less_than_half_is_left_and_only_forwards() {
        let l = lifetime();
        // Expires at 70: at 30 (40 left of 60) nothing; at 41 (29 left) extend to 101.
        assert_eq!(l.extension(false, 0, 70 * MIN, 30 * MIN), None);
        assert_eq!(l.extension(false, 0, 70 * MIN, 40 * MIN), None, "exactly half left");
        assert_eq!(l.extension(false, 0, 70 * MIN, 41 * MIN), Some(101 * MIN));
        // Near the cap nothing can move forward.
        assert_eq!(l.extension(false, 0, 240 * MIN, 235 * MIN), None);
        assert_eq!(
            l.extension(true, 0, 70 * MIN, 69 * MIN),
            None,
            "no customer idle timeout"
        );
        assert_eq!(l.longest_idle(), Some(60 * MIN));
    }

    #[test]
    fn login_adopts_only_anonymous_sessions_older_than_the_token() {
        use MeAccess::*;
        assert_eq!(me_access(None, 0, None, None), Allowed);
        assert_eq!(me_access(Some("C1"), 0, Some("C1"), Some(0)), Allowed);
        assert_eq!(me_access(Some("C1"), 0, Some("C2"), Some(0)), Forbidden);
        assert_eq!(me_access(Some("C1"), 0, None, None), Forbidden);
        assert_eq!(me_access(None, 1_000, Some("C1"), Some(5_000)), Adopt);
        assert_eq!(
            me_access(None, 5_000 + ADOPTION_SKEW, Some("C1"), Some(5_000)),
            Adopt,
            "skew"
        );
        assert_eq!(
            me_access(None, 5_001 + ADOPTION_SKEW, Some("C1"), Some(5_000)),
            CreatedAfterLogin
        );
        assert_eq!(me_access(None, Millis::MAX, Some("C1"), None), Adopt, "no iat");
    }
}
