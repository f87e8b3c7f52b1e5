//! The session context and every rule of the contract about it, as pure functions: no I/O,
//! no HTTP, no SQL. The HTTP layer reads requests into these types; the stores only keep
//! what these functions produce.

pub mod json;
pub mod lifetime;
pub mod policy;
pub mod request;
pub mod rules;
pub mod session;
pub mod validate;

pub use lifetime::{Lifetime, MeAccess};
pub use policy::{PolicyError, TenantPolicies, TenantPolicy};
pub use request::{ContextPatch, FieldChange, PatchRequest, PutRequest};
pub use rules::VersionMismatch;
pub use session::{Metadata, SessionContext, SessionKey, TextField};
pub use validate::FieldError;
