//! The command line: `serve`, `token` and `seed`, every `serve` flag also settable by an
//! environment variable. Operators script against these names; keep them stable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::clock::parse_duration;
use crate::store::StoreUrl;

/// A self-hostable service that speaks the Emporix Session-context API.
#[derive(Debug, Parser)]
#[command(name = "session-context", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve(Box<ServeArgs>),
    /// Print a signed HS256 token (for tests, demos and scripts).
    Token(TokenArgs),
    /// Fill a store with generated sessions (for benchmarks and load tests).
    Seed(SeedArgs),
    /// List or end a customer's sessions straight on a store (also when the service is down).
    #[command(subcommand)]
    Sessions(SessionsCommand),
}

/// `session-context sessions list|delete`.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Print every live session of a customer, newest change first, one JSON object per line.
    List(CustomerArgs),
    /// End every session of a customer (sign out everywhere, or erase what is held about them).
    Delete(DeleteCustomerArgs),
}

/// Which customer, on which store.
#[derive(Debug, Args)]
pub struct CustomerArgs {
    /// The store, as for `serve --store`.
    #[arg(
        long,
        env = "SESSION_CONTEXT_STORE",
        default_value = "sqlite://./data/session-context.db"
    )]
    pub store: StoreUrl,

    /// The tenant.
    #[arg(long)]
    pub tenant: String,

    /// The customer id (the same id in another tenant is another customer).
    #[arg(long)]
    pub customer: String,
}

/// Flags of `session-context sessions delete`.
#[derive(Debug, Args)]
pub struct DeleteCustomerArgs {
    #[command(flatten)]
    pub customer: CustomerArgs,

    /// A session id to keep.
    #[arg(long)]
    pub except: Option<String>,

    /// The service's `--webhook-url`s, the same list in the same order: each session ended is
    /// recorded as a `deleted` event for them, which the running service then delivers. Without
    /// them, nothing is announced.
    #[arg(long, env = "SESSION_CONTEXT_WEBHOOK_URL", value_name = "URL", value_delimiter = ',')]
    pub webhook_url: Vec<String>,
}

/// Flags of `session-context seed`.
#[derive(Debug, Args)]
pub struct SeedArgs {
    /// The store to fill, as for `serve --store`.
    #[arg(
        long,
        env = "SESSION_CONTEXT_STORE",
        default_value = "sqlite://./data/session-context.db"
    )]
    pub store: StoreUrl,

    /// The tenant of the sessions.
    #[arg(long)]
    pub tenant: String,

    /// How many sessions: PREFIX1 to PREFIX<count>; existing ones are left alone.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,

    /// Session ids start with this.
    #[arg(long, default_value = "bench-")]
    pub prefix: String,

    /// About how large each session's JSON is, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub bytes: usize,

    /// Make every session this customer's (else they are anonymous and never expire).
    #[arg(long)]
    pub customer: Option<String>,
}

/// Flags of `session-context serve`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("key").args(["jwt_secret", "jwt_public_key", "jwks"]).multiple(false)))]
pub struct ServeArgs {
    /// A TOML file with any of these flags (by name, without the dashes) and per-tenant
    /// `[tenants.<name>]` tables; flags and environment variables win over its top level.
    #[arg(long, env = "SESSION_CONTEXT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address and port to listen on.
    #[arg(long, env = "SESSION_CONTEXT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Where sessions are stored: sqlite://PATH, memory://, postgres://..., redis://...,
    /// redis-cluster://... (rediss:// and rediss-cluster:// for TLS).
    #[arg(
        long,
        env = "SESSION_CONTEXT_STORE",
        default_value = "sqlite://./data/session-context.db"
    )]
    pub store: StoreUrl,

    /// HS256 shared secret for access tokens (at least 32 bytes).
    #[arg(long, env = "SESSION_CONTEXT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key file for RS256 (RSA) or ES256 (P-256) access tokens.
    #[arg(long, env = "SESSION_CONTEXT_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,

    /// JWKS file with RS256/ES256 keys; a token's key is picked by its `kid`.
    #[arg(long, env = "SESSION_CONTEXT_JWKS", value_name = "FILE")]
    pub jwks: Option<PathBuf>,

    /// Required `iss` of access tokens.
    #[arg(long, env = "SESSION_CONTEXT_ISSUER")]
    pub issuer: Option<String>,

    /// Required `aud` of access tokens.
    #[arg(long, env = "SESSION_CONTEXT_AUDIENCE")]
    pub audience: Option<String>,

    /// HS256 secret for saas-tokens (default: the access-token key).
    #[arg(
        long,
        env = "SESSION_CONTEXT_SAAS_TOKEN_SECRET",
        hide_env_values = true,
        conflicts_with = "saas_token_public_key"
    )]
    pub saas_token_secret: Option<String>,

    /// PEM public key file for saas-tokens (default: the access-token key).
    #[arg(long, env = "SESSION_CONTEXT_SAAS_TOKEN_PUBLIC_KEY", value_name = "FILE")]
    pub saas_token_public_key: Option<PathBuf>,

    /// Claim that names the token's tenant.
    #[arg(long, env = "SESSION_CONTEXT_CLAIM_TENANT", default_value = "tenant")]
    pub claim_tenant: String,

    /// Claim that holds the token's scopes.
    #[arg(long, env = "SESSION_CONTEXT_CLAIM_SCOPE", default_value = "scope")]
    pub claim_scope: String,

    /// Claim that names the session of customer and anonymous tokens.
    #[arg(long, env = "SESSION_CONTEXT_CLAIM_SESSION_ID", default_value = "sessionId")]
    pub claim_session_id: String,

    /// Claim that names the customer of customer tokens (else `sub`).
    #[arg(long, env = "SESSION_CONTEXT_CLAIM_CUSTOMER_ID", default_value = "customerId")]
    pub claim_customer_id: String,

    /// Idle timeout of anonymous sessions, from their last use (reads included): 2s, 30m, 1h,
    /// ... (0 = never).
    #[arg(long, env = "SESSION_CONTEXT_ANONYMOUS_TTL", default_value = "1h", value_parser = parse_duration)]
    pub anonymous_ttl: Duration,

    /// Absolute cap of anonymous sessions, from their creation, however much they are used
    /// (0 = none).
    #[arg(long, env = "SESSION_CONTEXT_ANONYMOUS_MAX_AGE", default_value = "0", value_parser = parse_duration)]
    pub anonymous_max_age: Duration,

    /// Idle timeout of customer sessions, from their last use (0 = never).
    #[arg(long, env = "SESSION_CONTEXT_CUSTOMER_TTL", default_value = "0", value_parser = parse_duration)]
    pub customer_ttl: Duration,

    /// A `/me` request for a missing session creates it first (with the token's customer and
    /// its siteCode, currency, language and targetLocation claims).
    #[arg(long, env = "SESSION_CONTEXT_CREATE_ON_FIRST_USE")]
    pub create_on_first_use: bool,

    /// Largest a session may grow, in bytes of its JSON (413 `session_too_large` beyond).
    #[arg(long, env = "SESSION_CONTEXT_MAX_SESSION_BYTES", default_value_t = crate::domain::policy::DEFAULT_MAX_SESSION_BYTES)]
    pub max_session_bytes: usize,

    /// Most attributes (keys of `context`) a session may hold (400 `too_many_attributes` beyond).
    #[arg(long, env = "SESSION_CONTEXT_MAX_ATTRIBUTES", default_value_t = crate::domain::policy::DEFAULT_MAX_ATTRIBUTES)]
    pub max_attributes: usize,

    /// Attributes a storefront token (`/me`) may not change: a pattern of the whole key, `*`
    /// for any run of characters (`b2b.*`, `priceList`); repeatable, comma-separated in the
    /// environment.
    #[arg(
        long,
        env = "SESSION_CONTEXT_PROTECTED_ATTRIBUTE",
        value_name = "PATTERN",
        value_delimiter = ','
    )]
    pub protected_attribute: Vec<String>,

    /// Attributes a storefront token (`/me`) may neither see nor change (patterns as for
    /// --protected-attribute); management endpoints see them.
    #[arg(
        long,
        env = "SESSION_CONTEXT_HIDDEN_ATTRIBUTE",
        value_name = "PATTERN",
        value_delimiter = ','
    )]
    pub hidden_attribute: Vec<String>,

    /// The currencies a session may take (comma-separated; none = any valid code).
    #[arg(long, env = "SESSION_CONTEXT_ALLOWED_CURRENCY", value_name = "CODES", value_delimiter = ',', value_parser = allowed::currency)]
    pub allowed_currency: Vec<String>,

    /// The site codes a session may take (comma-separated; none = any).
    #[arg(long, env = "SESSION_CONTEXT_ALLOWED_SITE", value_name = "CODES", value_delimiter = ',', value_parser = allowed::site_code)]
    pub allowed_site: Vec<String>,

    /// The languages a session may take (comma-separated; none = any valid tag; compared
    /// without case, `de_DE` = `de-DE`).
    #[arg(long, env = "SESSION_CONTEXT_ALLOWED_LANGUAGE", value_name = "TAGS", value_delimiter = ',', value_parser = allowed::language)]
    pub allowed_language: Vec<String>,

    /// The target locations a session may take (comma-separated; none = any valid code).
    #[arg(
        long,
        env = "SESSION_CONTEXT_ALLOWED_TARGET_LOCATION",
        value_name = "CODES",
        value_delimiter = ',', value_parser = allowed::target_location
    )]
    pub allowed_target_location: Vec<String>,

    /// The `[tenants.<name>]` tables of the --config file (not a flag).
    #[arg(skip)]
    pub tenant_tables: Vec<crate::config::TenantTable>,

    /// Largest accepted request body in bytes (413 beyond).
    #[arg(long, env = "SESSION_CONTEXT_MAX_BODY_BYTES", default_value_t = 65_536)]
    pub max_body_bytes: usize,

    /// Most bytes of request bodies held at once, service-wide (503 with Retry-After beyond).
    #[arg(long, env = "SESSION_CONTEXT_MAX_INFLIGHT_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_inflight_body_bytes: usize,

    /// Most bytes of request headers in all (431 beyond).
    #[arg(long, env = "SESSION_CONTEXT_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// Most connections open at once; at the cap, the one idle the longest makes room.
    #[arg(long, env = "SESSION_CONTEXT_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Longest a client may take to send a complete request head before it is disconnected.
    #[arg(long, env = "SESSION_CONTEXT_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Longest a connection (HTTP/1 keep-alive or HTTP/2) stays open with no request in flight.
    #[arg(long, env = "SESSION_CONTEXT_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Most concurrent streams on one HTTP/2 connection.
    #[arg(long, env = "SESSION_CONTEXT_MAX_CONCURRENT_STREAMS", default_value_t = 16)]
    pub max_concurrent_streams: u32,

    /// Longest one request may take, body upload included (408 beyond).
    #[arg(long, env = "SESSION_CONTEXT_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// How often expired sessions are swept from storage.
    #[arg(long, env = "SESSION_CONTEXT_SWEEP_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// A browser origin (scheme://host[:port]) whose storefront may call the API, `*` for any;
    /// repeatable, comma-separated in the environment. Without it, no CORS headers at all.
    #[arg(
        long,
        env = "SESSION_CONTEXT_CORS_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origin: Vec<String>,

    /// A receiver of events: every change of a session is POSTed to it as a signed
    /// CloudEvent (Standard Webhooks); repeatable, comma-separated in the environment. Events
    /// are off without one.
    #[arg(long, env = "SESSION_CONTEXT_WEBHOOK_URL", value_name = "URL", value_delimiter = ',')]
    pub webhook_url: Vec<String>,

    /// The key events are signed with (`whsec_<base64>`, or any other string as its bytes).
    #[arg(long, env = "SESSION_CONTEXT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Longest wait between two attempts to deliver an event.
    #[arg(long, env = "SESSION_CONTEXT_WEBHOOK_MAX_BACKOFF", default_value = "5m", value_parser = parse_duration)]
    pub webhook_max_backoff: Duration,

    /// How long an event is retried before it is dropped (and counted).
    #[arg(long, env = "SESSION_CONTEXT_WEBHOOK_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub webhook_retention: Duration,

    /// Try it out: use a random secret (unless one is given) and print ready-to-use tokens.
    #[arg(long, env = "SESSION_CONTEXT_DEV")]
    pub dev: bool,
}

/// The parsers of the `--allowed-*` lists: each value must pass the field's input rule (a
/// value no request could set is surely a typo), so the command line and a config file
/// refuse it at start.
mod allowed {
    use crate::domain::TextField;
    use crate::domain::validate::text_field;

    fn check(field: TextField, value: &str) -> Result<String, String> {
        text_field(field, value)
            .map(|()| value.to_owned())
            .map_err(|e| e.message)
    }
    pub fn currency(value: &str) -> Result<String, String> {
        check(TextField::Currency, value)
    }
    pub fn site_code(value: &str) -> Result<String, String> {
        check(TextField::SiteCode, value)
    }
    pub fn language(value: &str) -> Result<String, String> {
        check(TextField::Language, value)
    }
    pub fn target_location(value: &str) -> Result<String, String> {
        check(TextField::TargetLocation, value)
    }
}

/// Flags of `session-context token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The HS256 secret the service verifies with (at least 32 bytes).
    #[arg(long, env = "SESSION_CONTEXT_JWT_SECRET", hide_env_values = true)]
    pub secret: String,

    /// The tenant the token is for.
    #[arg(long)]
    pub tenant: String,

    /// Space-separated scopes, e.g. session_context.context_manage.
    #[arg(long)]
    pub scope: Option<String>,

    /// The session `/me` addresses (customer and anonymous tokens).
    #[arg(long)]
    pub session_id: Option<String>,

    /// The customer (customer tokens).
    #[arg(long)]
    pub customer_id: Option<String>,

    /// The `sub` claim (saas-tokens carry the customer here).
    #[arg(long)]
    pub subject: Option<String>,

    /// How long the token is valid: 30m, 1h, 7d, ...
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn key_flags_exclude_each_other() {
        let parsed = Cli::try_parse_from(["session-context", "serve", "--jwt-secret", "x", "--jwks", "k.json"]);
        assert!(parsed.is_err());
    }
}
