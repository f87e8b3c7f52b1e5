//! [`Settings`]: the one typed configuration of a running service, built once from the
//! command line (and its environment variables), checked, and passed down.

mod file;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::auth::{AuthSettings, ClaimNames, KeySource};
use crate::cli::ServeArgs;
use crate::clock::Millis;
use crate::domain::policy::{AllowedValues, Patterns, TenantPolicies, TenantPolicy};
use crate::domain::{Lifetime, TextField};
use crate::events::WebhookSettings;
use crate::http::cors::CorsOrigins;
use crate::service::Policy;
use crate::store::StoreUrl;

pub use file::{CommandLineError, TenantTable, parse_command_line};

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub store: StoreUrl,
    pub auth: AuthSettings,
    /// How sessions live, and whether a storefront's first use creates its session.
    pub policy: Policy,
    pub max_body_bytes: usize,
    pub max_inflight_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub request_timeout: Duration,
    pub sweep_interval: Duration,
    /// Browser origins allowed to call the API (`--cors-origin`).
    pub cors_origins: CorsOrigins,
    /// Tenants whose `[tenants.<name>]` table lists origins of its own.
    pub tenant_cors_origins: HashMap<String, CorsOrigins>,
    /// Where events go (`--webhook-url`); `None` = events off.
    pub webhooks: Option<WebhookSettings>,
    /// In `--dev` mode, the secret to print demo tokens with.
    pub dev_secret: Option<Vec<u8>>,
}

/// What `serve` says when no key is configured.
pub const NO_KEY: &str = "no token key is configured: pass --jwt-secret (HS256, at least 32 bytes), \
--jwt-public-key FILE (RS256/ES256 PEM) or --jwks FILE (or the SESSION_CONTEXT_JWT_SECRET, \
SESSION_CONTEXT_JWT_PUBLIC_KEY or SESSION_CONTEXT_JWKS variables); or run `serve --dev` to try \
the service with a random secret";

impl Settings {
    /// Checks the flags and builds the settings; the error says which flag to fix.
    pub fn from_args(args: ServeArgs) -> Result<Self, String> {
        let access = match (args.jwt_secret, args.jwt_public_key, args.jwks) {
            (Some(secret), None, None) => KeySource::Secret(secret.into_bytes()),
            (None, Some(pem), None) => KeySource::PublicKeyPem(pem),
            (None, None, Some(jwks)) => KeySource::Jwks(jwks),
            (None, None, None) if args.dev => KeySource::Secret(random_secret()?),
            (None, None, None) => return Err(NO_KEY.into()),
            _ => return Err("give only one of --jwt-secret, --jwt-public-key and --jwks".into()),
        };
        let dev_secret = match (&access, args.dev) {
            (KeySource::Secret(secret), true) => Some(secret.clone()),
            (_, true) => {
                return Err("--dev prints HS256 tokens, so it needs --jwt-secret or no key at all".into());
            }
            (_, false) => None,
        };
        let saas = match (args.saas_token_secret, args.saas_token_public_key) {
            (Some(secret), _) => Some(KeySource::Secret(secret.into_bytes())),
            (None, Some(pem)) => Some(KeySource::PublicKeyPem(pem)),
            (None, None) => None,
        };
        if args.max_body_bytes == 0 {
            return Err("--max-body-bytes must be greater than 0".into());
        }
        if args.max_inflight_body_bytes < args.max_body_bytes {
            return Err("--max-inflight-body-bytes must be at least --max-body-bytes".into());
        }
        if args.max_header_bytes < 1024 {
            return Err("--max-header-bytes must be at least 1024".into());
        }
        if args.max_concurrent_streams == 0 {
            return Err("--max-concurrent-streams must be greater than 0".into());
        }
        for (flag, value) in [
            ("--sweep-interval", args.sweep_interval),
            ("--header-timeout", args.header_timeout),
            ("--request-timeout", args.request_timeout),
            ("--idle-timeout", args.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{flag} must be greater than 0"));
            }
        }
        if args.max_connections == 0 {
            return Err("--max-connections must be greater than 0".into());
        }
        let cors_origins = CorsOrigins::parse(&args.cors_origin)?;
        if args.max_session_bytes < MIN_SESSION_BYTES {
            return Err(format!(
                "--max-session-bytes must be at least {MIN_SESSION_BYTES} (an empty session takes about 150)"
            ));
        }
        let default_policy = TenantPolicy {
            lifetime: Lifetime {
                anonymous_ttl: millis(args.anonymous_ttl),
                anonymous_max_age: millis(args.anonymous_max_age),
                customer_ttl: millis(args.customer_ttl),
            },
            max_session_bytes: args.max_session_bytes,
            max_attributes: args.max_attributes,
            protected: patterns("--protected-attribute", &args.protected_attribute)?,
            hidden: patterns("--hidden-attribute", &args.hidden_attribute)?,
            allowed: AllowedValues {
                currency: allowed("--allowed-currency", TextField::Currency, &args.allowed_currency)?,
                site_code: allowed("--allowed-site", TextField::SiteCode, &args.allowed_site)?,
                language: allowed("--allowed-language", TextField::Language, &args.allowed_language)?,
                target_location: allowed(
                    "--allowed-target-location",
                    TextField::TargetLocation,
                    &args.allowed_target_location,
                )?,
            },
        };
        let webhooks = webhooks(
            &args.webhook_url,
            args.webhook_secret.as_deref(),
            args.webhook_max_backoff,
            args.webhook_retention,
        )?;
        let config = args
            .config
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut tenants = HashMap::new();
        let mut tenant_cors_origins = HashMap::new();
        for table in &args.tenant_tables {
            // Each message starts with the key it is about: point at that key's line.
            let at = |e: String| {
                let line = table
                    .key_lines
                    .iter()
                    .find(|(key, _)| e.starts_with(key.as_str()))
                    .map_or(table.line, |(_, line)| *line);
                format!("{config}:{line}: [tenants.{}] {e}", table.tenant)
            };
            tenants.insert(table.tenant.clone(), tenant_policy(&default_policy, table).map_err(at)?);
            if let Some(origins) = &table.cors_origins {
                let origins =
                    CorsOrigins::parse(origins).map_err(|e| at(e.replace("--cors-origin", "cors-origins")))?;
                tenant_cors_origins.insert(table.tenant.clone(), origins);
            }
        }
        Ok(Settings {
            listen: args.listen,
            store: args.store,
            auth: AuthSettings {
                access,
                saas,
                issuer: args.issuer,
                audience: args.audience,
                claims: ClaimNames {
                    tenant: args.claim_tenant,
                    scope: args.claim_scope,
                    session_id: args.claim_session_id,
                    customer_id: args.claim_customer_id,
                },
            },
            policy: Policy {
                tenants: TenantPolicies {
                    default: default_policy,
                    tenants,
                },
                create_on_first_use: args.create_on_first_use,
            },
            max_body_bytes: args.max_body_bytes,
            max_inflight_body_bytes: args.max_inflight_body_bytes,
            max_header_bytes: args.max_header_bytes,
            max_connections: args.max_connections,
            header_timeout: args.header_timeout,
            idle_timeout: args.idle_timeout,
            max_concurrent_streams: args.max_concurrent_streams,
            request_timeout: args.request_timeout,
            sweep_interval: args.sweep_interval,
            cors_origins,
            tenant_cors_origins,
            webhooks,
            dev_secret,
        })
    }
}

/// The events' settings, checked: `None` without a URL; with one, a secret is required.
fn webhooks(
    urls: &[String],
    secret: Option<&str>,
    max_backoff: Duration,
    retention: Duration,
) -> Result<Option<WebhookSettings>, String> {
    let urls: Vec<url::Url> = urls
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .map(|u| {
            url::Url::parse(u)
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
                .ok_or_else(|| format!("--webhook-url `{u}` is not an http:// or https:// URL"))
        })
        .collect::<Result<_, _>>()?;
    if urls.is_empty() {
        return Ok(None);
    }
    if urls.len() > usize::from(u16::MAX) {
        return Err("too many --webhook-url".into());
    }
    let secret = secret
        .filter(|s| !s.is_empty())
        .ok_or("--webhook-url needs --webhook-secret (or SESSION_CONTEXT_WEBHOOK_SECRET): events are signed")?;
    if max_backoff.is_zero() || retention.is_zero() {
        return Err("--webhook-max-backoff and --webhook-retention must be greater than 0".into());
    }
    Ok(Some(WebhookSettings {
        urls,
        key: WebhookSettings::key_of(secret)?,
        max_backoff,
        retention,
    }))
}

/// The smallest `--max-session-bytes`: below it, hardly a session could be stored at all.
const MIN_SESSION_BYTES: usize = 1024;

/// A tenant's policy: the top-level one with what the tenant's table sets instead.
fn tenant_policy(top: &TenantPolicy, table: &TenantTable) -> Result<TenantPolicy, String> {
    let mut policy = top.clone();
    let lifetime = &mut policy.lifetime;
    if let Some(ttl) = table.anonymous_ttl {
        lifetime.anonymous_ttl = millis(ttl);
    }
    if let Some(age) = table.anonymous_max_age {
        lifetime.anonymous_max_age = millis(age);
    }
    if let Some(ttl) = table.customer_ttl {
        lifetime.customer_ttl = millis(ttl);
    }
    if let Some(bytes) = table.max_session_bytes {
        if bytes < MIN_SESSION_BYTES {
            return Err(format!("max-session-bytes must be at least {MIN_SESSION_BYTES}"));
        }
        policy.max_session_bytes = bytes;
    }
    if let Some(attributes) = table.max_attributes {
        policy.max_attributes = attributes;
    }
    if let Some(patterns) = &table.protected_attributes {
        policy.protected = self::patterns("protected-attributes", patterns)?;
    }
    if let Some(patterns) = &table.hidden_attributes {
        policy.hidden = self::patterns("hidden-attributes", patterns)?;
    }
    let lists = [
        (
            "allowed-currency",
            TextField::Currency,
            &table.allowed_currency,
            &mut policy.allowed.currency,
        ),
        (
            "allowed-site",
            TextField::SiteCode,
            &table.allowed_site,
            &mut policy.allowed.site_code,
        ),
        (
            "allowed-language",
            TextField::Language,
            &table.allowed_language,
            &mut policy.allowed.language,
        ),
        (
            "allowed-target-location",
            TextField::TargetLocation,
            &table.allowed_target_location,
            &mut policy.allowed.target_location,
        ),
    ];
    for (name, field, values, slot) in lists {
        if let Some(values) = values {
            *slot = allowed(name, field, values)?;
        }
    }
    Ok(policy)
}

/// Attribute patterns as given, without the blanks around them: `"b2b.*, priceList"` in the
/// environment means `priceList`, not ` priceList` (which would never match, and protect nothing).
fn patterns(flag: &str, values: &[String]) -> Result<Patterns, String> {
    let trimmed: Vec<&str> = values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()).collect();
    Patterns::new(&trimmed).map_err(|e| format!("{flag}: {e}"))
}

/// An `--allowed-*` list, each value checked by the field's input rule (a value no request
/// could set is surely a typo).
fn allowed(flag: &str, field: TextField, values: &[String]) -> Result<Vec<String>, String> {
    let mut list = Vec::new();
    for value in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
        crate::domain::validate::text_field(field, value).map_err(|e| format!("{flag}: `{value}`: {}", e.message))?;
        if !list.iter().any(|v| v == value) {
            list.push(value.to_owned());
        }
    }
    Ok(list)
}

/// A duration flag as milliseconds; 0 = `None` (no limit).
fn millis(duration: Duration) -> Option<Millis> {
    (!duration.is_zero()).then(|| Millis::try_from(duration.as_millis()).unwrap_or(Millis::MAX))
}

/// 32 random bytes as 64 hex characters (usable as a secret on the command line too).
fn random_secret() -> Result<Vec<u8>, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a dev secret: {e}"))?;
    Ok(bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn settings(args: &[&str]) -> Result<Settings, String> {
        let mut argv = vec!["session-context", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).map_err(|e| e.to_string())?.command {
            Command::Serve(a) => Settings::from_args(*a),
            _ => unreachable!("parsed serve"),
        }
    }

    /// `serve --config <a file with text>` plus `flags`, as the binary parses it.
    fn from_file(text: &str, flags: &[&str]) -> Result<Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session-context.toml");
        std::fs::write(&path, text).unwrap();
        let mut argv = vec![
            "session-context".into(),
            "serve".into(),
            "--config".into(),
            path.clone().into(),
        ];
        argv.extend(flags.iter().map(std::ffi::OsString::from));
        let cli = match parse_command_line(argv) {
            Ok(cli) => cli,
            Err(CommandLineError::Usage(e)) => return Err(e.to_string()),
            Err(CommandLineError::Config(e)) => {
                return Err(e.replace(&path.display().to_string(), "FILE"));
            }
        };
        match cli.command {
            Command::Serve(a) => Settings::from_args(*a).map_err(|e| e.replace(&path.display().to_string(), "FILE")),
            _ => unreachable!("parsed serve"),
        }
    }

    const EXAMPLE: &str = r#"
jwt-secret = "0123456789abcdef0123456789abcdef"
max-attributes = 50
max-session-bytes = 32_768
anonymous-ttl = "30m"
create-on-first-use = true
protected-attributes = ["b2b.*", "priceList"]
hidden-attributes = ["internal.*"]
allowed-currency = ["EUR", "CHF"]
cors-origins = ["https://shop.example"]

[tenants.outlet]
max-attributes = 5
anonymous-ttl = "2h"
protected-attributes = []
allowed-currency = ["USD"]
cors-origins = ["https://outlet.example"]
"#;

    #[test]
    fn a_config_file_sets_flags_and_tenant_tables_override_them() {
        let s = from_file(EXAMPLE, &[]).unwrap();
        let top = &s.policy.tenants.default;
        assert_eq!((top.max_attributes, top.max_session_bytes), (50, 32_768));
        assert_eq!(top.lifetime.anonymous_ttl, Some(30 * 60_000));
        assert!(s.policy.create_on_first_use);
        assert!(top.protected.matches("b2b.x") && top.protected.matches("priceList"));
        assert!(top.hidden.matches("internal.score"));
        assert_eq!(top.allowed.currency, ["EUR", "CHF"]);
        assert_eq!(
            s.cors_origins,
            CorsOrigins::List(vec!["https://shop.example".parse().unwrap()])
        );
        let outlet = s.policy.tenants.of("outlet");
        assert_eq!(outlet.max_attributes, 5);
        assert_eq!(outlet.max_session_bytes, 32_768, "not in the table: the top level's");
        assert_eq!(outlet.lifetime.anonymous_ttl, Some(2 * 3_600_000));
        assert!(
            outlet.protected.is_empty(),
            "a tenant's list replaces the top-level one"
        );
        assert!(outlet.hidden.matches("internal.score"));
        assert_eq!(outlet.allowed.currency, ["USD"]);
        assert_eq!(
            s.tenant_cors_origins["outlet"],
            CorsOrigins::List(vec!["https://outlet.example".parse().unwrap()])
        );
        assert_eq!(s.policy.tenants.of("other"), top);
    }

    #[test]
    fn attribute_patterns_are_trimmed_as_the_environment_writes_them() {
        let s = settings(&["--jwt-secret", "x", "--protected-attribute", "b2b.*, priceList ,"]).unwrap();
        let protected = &s.policy.tenants.default.protected;
        assert!(protected.matches("priceList") && protected.matches("b2b.x"));
        assert_eq!(protected.iter().count(), 2);
    }

    #[test]
    fn the_documented_example_file_is_valid() {
        let example = include_str!("../docs/session-context.example.toml");
        let s = from_file(example, &["--jwt-secret", "x"]).unwrap();
        assert_eq!(s.policy.tenants.of("outlet").allowed.currency, ["EUR"]);
        assert_eq!(s.policy.tenants.default.allowed.language, ["de", "fr", "it", "en"]);
    }

    #[test]
    fn flags_win_over_the_file_and_tenant_tables_win_over_both() {
        let s = from_file(EXAMPLE, &["--max-attributes", "7", "--allowed-currency", "GBP"]).unwrap();
        assert_eq!(s.policy.tenants.default.max_attributes, 7);
        assert_eq!(s.policy.tenants.default.allowed.currency, ["GBP"]);
        assert_eq!(s.policy.tenants.of("outlet").max_attributes, 5);
    }

    #[test]
    fn a_bad_file_stops_the_start_naming_the_key_and_the_line() {
        let cases: [(&str, &[&str]); 9] = [
            (
                "listen = \"127.0.0.1:1\"\n\nmax-atributes = 5\n",
                &["FILE:3", "max-atributes"],
            ),
            ("anonymous-ttl = \"2 fortnights\"\n", &["FILE:1", "anonymous-ttl"]),
            ("\n\nmax-attributes = \"many\"\n", &["FILE:3", "max-attributes"]),
            ("max-attributes = [1]\n", &["FILE:1", "max-attributes", "one value"]),
            (
                "protected-attributes = \"a\"\n",
                &["FILE:1", "protected-attributes", "array"],
            ),
            (
                "\nallowed-currency = [\"EUR\", \"eur\"]\n",
                &["FILE:2", "allowed-currency", "eur"],
            ),
            (
                "[tenants.outlet]\nmax-attributes = 5\ncolour = 1\n",
                &["line 3", "colour"],
            ),
            ("[tenants.outlet]\nanonymous-ttl = \"soon\"\n", &["line 2", "soon"]),
            ("\n[tenants.Outlet]\n", &["FILE:2", "tenants.Outlet"]),
        ];
        for (text, expected) in cases {
            let err = from_file(text, &["--jwt-secret", "x"]).unwrap_err();
            for part in expected {
                assert!(err.contains(part), "{text:?}: {err}");
            }
        }
        // Values checked after reading name the key's own line, not the table's.
        let err = from_file(
            "[tenants.outlet]\nmax-attributes = 3\nallowed-currency = [\"eur\"]\n",
            &["--jwt-secret", "x"],
        )
        .unwrap_err();
        assert!(err.contains("FILE:3") && err.contains("allowed-currency"), "{err}");
        let err = from_file("[tenants.outlet]\n\nmax-session-bytes = 10\n", &["--jwt-secret", "x"]).unwrap_err();
        assert!(err.contains("FILE:3") && err.contains("max-session-bytes"), "{err}");
        let err = from_file(
            "[tenants.outlet]\ncors-origins = [\"https://a.example/shop\"]\n",
            &["--jwt-secret", "x"],
        )
        .unwrap_err();
        assert!(err.contains("FILE:2") && err.contains("cors-origins"), "{err}");
    }

    #[test]
    fn cors_origins_are_repeatable_and_checked_at_start() {
        let with = |flags: &[&str]| settings(&[&["--jwt-secret", "x"], flags].concat());
        // Repeated, and comma-separated as in the environment.
        let origins = [
            "--cors-origin",
            "https://a.example",
            "--cors-origin",
            "http://b.example:8080,https://a.example",
        ];
        assert_eq!(
            with(&origins).unwrap().cors_origins,
            CorsOrigins::List(vec![
                "https://a.example".parse().unwrap(),
                "http://b.example:8080".parse().unwrap()
            ])
        );
        assert_eq!(with(&["--cors-origin", "*"]).unwrap().cors_origins, CorsOrigins::Any);
        let err = with(&["--cors-origin", "https://a.example/shop"]).unwrap_err();
        assert!(err.contains("--cors-origin"), "{err}");
    }

    #[test]
    fn without_a_key_serve_names_the_flags() {
        let err = settings(&[]).unwrap_err();
        for flag in ["--jwt-secret", "--jwt-public-key", "--jwks", "--dev"] {
            assert!(err.contains(flag), "{err}");
        }
    }

    #[test]
    fn dev_mode_makes_a_long_random_secret() {
        let a = settings(&["--dev"]).unwrap();
        let b = settings(&["--dev"]).unwrap();
        assert_eq!(a.dev_secret.as_ref().unwrap().len(), 64);
        assert_ne!(a.dev_secret, b.dev_secret);
    }

    #[test]
    fn defaults_follow_the_issue() {
        let s = settings(&["--jwt-secret", "0123456789abcdef0123456789abcdef"]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.store.to_string(), "sqlite://./data/session-context.db");
        assert_eq!(s.policy, Policy::default(), "anonymous sessions idle out after 1h");
        assert_eq!(s.policy.tenants.default.lifetime.anonymous_max_age, None);
        assert_eq!(s.policy.tenants.default.lifetime.customer_ttl, None);
        assert!(!s.policy.create_on_first_use);
        assert_eq!(s.max_body_bytes, 65_536);
        assert_eq!(s.max_inflight_body_bytes, 64 * 1024 * 1024);
        assert_eq!(s.max_header_bytes, 16 * 1024);
        assert_eq!(s.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.max_concurrent_streams, 16);
        assert_eq!(s.dev_secret, None);
        assert_eq!(s.cors_origins, CorsOrigins::Off);
        let never = settings(&["--jwt-secret", "x", "--anonymous-ttl", "0"]).unwrap();
        assert_eq!(never.policy.tenants.default.lifetime.anonymous_ttl, None);
        let journey = settings(&[
            "--jwt-secret",
            "x",
            "--anonymous-ttl",
            "3s",
            "--anonymous-max-age",
            "1d",
            "--customer-ttl",
            "30d",
            "--create-on-first-use",
        ])
        .unwrap();
        assert_eq!(
            journey.policy.tenants.default.lifetime,
            Lifetime {
                anonymous_ttl: Some(3_000),
                anonymous_max_age: Some(86_400_000),
                customer_ttl: Some(30 * 86_400_000),
            }
        );
        assert!(journey.policy.create_on_first_use);
    }
}
