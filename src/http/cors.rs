//! Browser storefronts on other origins (CORS), as the contract's "Browser storefronts" section
//! says: off unless `--cors-origin` names origins, then tower-http's `CorsLayer` answers
//! preflights and marks every other answer to an allowed origin. Tokens travel in headers, so
//! credentials mode is never enabled.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Which browser origins may call the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No CORS at all: no headers, and `OPTIONS` is a 405 like any other unknown method.
    #[default]
    Off,
    /// Any origin (`*` among the flags): `Access-Control-Allow-Origin: *`.
    Any,
    /// These origins, each echoed back to itself with `Vary: Origin`; any other gets nothing.
    List(Vec<HeaderValue>),
}

/// The request headers a storefront may send, besides the ones browsers always allow.
const ALLOWED_HEADERS: [&str; 8] = [
    "authorization",
    "content-type",
    "saas-token",
    "if-match",
    "if-none-match",
    "emporix-tenant",
    "accept-language",
    "content-language",
];

/// How long a browser may reuse a preflight's answer (Chromium caps it at 2 h).
pub const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

impl CorsOrigins {
    /// Reads the values of `--cors-origin`: each `*` or `scheme://host[:port]`, surrounding
    /// spaces and blank entries ignored. The error names the flag and the bad value.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, String> {
        let mut origins = Vec::new();
        for value in values.iter().map(|v| v.as_ref().trim()).filter(|v| !v.is_empty()) {
            if value == "*" {
                return Ok(CorsOrigins::Any);
            }
            let origin = serialized_origin(value)
                .ok_or_else(|| format!("--cors-origin `{value}` is not `*` or an origin like https://shop.example:8443 (scheme://host[:port], no path)"))?;
            let origin = HeaderValue::from_str(&origin)
                .map_err(|_| format!("--cors-origin `{value}` is not a valid header value"))?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        Ok(if origins.is_empty() {
            CorsOrigins::Off
        } else {
            CorsOrigins::List(origins)
        })
    }

    /// The layer that serves these origins, or `None` when CORS is off.
    pub fn layer(&self) -> Option<CorsLayer> {
        let allow_origin = match self {
            CorsOrigins::Off => return None,
            CorsOrigins::Any => AllowOrigin::any(),
            CorsOrigins::List(origins) => AllowOrigin::list(origins.iter().cloned()),
        };
        Some(layer(allow_origin))
    }

    /// Whether a browser on `origin` may call.
    fn allows(&self, origin: &HeaderValue) -> bool {
        match self {
            CorsOrigins::Off => false,
            CorsOrigins::Any => true,
            CorsOrigins::List(origins) => origins.contains(origin),
        }
    }
}

/// The CORS layer for the top-level origins and the tenants with origins of their own
/// (`cors-origins` in a `[tenants.<name>]` table, which replaces the top-level list for
/// requests under `/session-context/<name>/`). Without tenant lists, exactly
/// [`CorsOrigins::layer`]; with them, the origin is looked up per request, and an allowed
/// origin is answered with itself (and `Vary: Origin`) even where any origin is allowed.
pub fn tenant_layer(default: &CorsOrigins, tenants: &HashMap<String, CorsOrigins>) -> Option<CorsLayer> {
    if tenants.is_empty() {
        return default.layer();
    }
    if *default == CorsOrigins::Off && tenants.values().all(|t| *t == CorsOrigins::Off) {
        return None;
    }
    let (default, tenants) = (default.clone(), tenants.clone());
    Some(layer(AllowOrigin::predicate(move |origin, parts| {
        let tenant = parts
            .uri
            .path()
            .strip_prefix("/session-context/")
            .and_then(|rest| rest.split('/').next());
        tenant.and_then(|t| tenants.get(t)).unwrap_or(&default).allows(origin)
    })))
}

fn layer(allow_origin: AllowOrigin) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::PUT, Method::PATCH, Method::POST, Method::DELETE])
        .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
        .expose_headers([header::ETAG])
        .max_age(PREFLIGHT_MAX_AGE)
}

/// `value` as a browser would send it in `Origin` (lowercase host, no default port), if it is
/// `scheme://host[:port]` with nothing else: no user, path, query or fragment.
fn serialized_origin(value: &str) -> Option<String> {
    let url = url::Url::parse(value).ok()?;
    let host = url.host_str().filter(|h| !h.is_empty())?;
    let bare = url.username().is_empty()
        && url.password().is_none()
        && matches!(url.path(), "" | "/")
        && url.query().is_none()
        && url.fragment().is_none()
        && !value.ends_with('?')
        && !value.ends_with('#');
    if !bare {
        return None;
    }
    Some(match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(values: &[&str]) -> Vec<HeaderValue> {
        values.iter().map(|v| HeaderValue::from_str(v).unwrap()).collect()
    }

    #[test]
    fn no_values_is_off_and_a_star_is_any() {
        assert_eq!(CorsOrigins::parse::<&str>(&[]), Ok(CorsOrigins::Off));
        assert_eq!(CorsOrigins::parse(&["", " "]), Ok(CorsOrigins::Off));
        assert_eq!(CorsOrigins::parse(&["*"]), Ok(CorsOrigins::Any));
        assert_eq!(CorsOrigins::parse(&["https://a.example", "*"]), Ok(CorsOrigins::Any));
        assert!(CorsOrigins::Off.layer().is_none());
        assert!(CorsOrigins::Any.layer().is_some());
    }

    #[test]
    fn origins_are_kept_as_browsers_send_them() {
        assert_eq!(
            CorsOrigins::parse(&[
                " https://Shop.Example ",
                "https://shop.example:443",
                "http://localhost:3000/",
                "capacitor://localhost",
            ]),
            Ok(CorsOrigins::List(list(&[
                "https://shop.example",
                "http://localhost:3000",
                "capacitor://localhost",
            ])))
        );
    }

    #[test]
    fn anything_but_an_origin_stops_the_service_naming_the_flag() {
        for bad in [
            "shop.example",
            "https://shop.example/path",
            "https://shop.example?x=1",
            "https://shop.example/?",
            "https://shop.example#top",
            "https://user@shop.example",
            "https://",
            "file:///tmp/x",
            "null",
            "**",
        ] {
            let err = CorsOrigins::parse(&[bad]).unwrap_err();
            assert!(err.contains("--cors-origin") && err.contains(bad), "{bad}: {err}");
        }
    }
}
