//! The `--store` URL, parsed in this one place: which backend, where, and its options
//! (pool size, timeouts, key prefix). Our own query parameters are taken out before the rest
//! of the URL is handed to the client crate.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use url::Url;

/// Which backend to use and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory://`: nothing survives a restart; for tests and demos.
    Memory,
    /// `sqlite://PATH`: an embedded database file (folder and file created on first start).
    Sqlite(PathBuf),
    /// `postgres://USER@HOST:PORT/DB?pool_size=16&connect_timeout=3s&statement_timeout=5s&sslmode=require`
    Postgres(PostgresOptions),
    /// `redis://HOST:PORT/DB?prefix=sc&connect_timeout=3s&response_timeout=2s`, or `rediss://`
    /// for TLS (`&ca=PATH` to trust a private CA instead of the system's).
    Redis(RedisOptions),
    /// `redis-cluster://HOST:PORT,HOST:PORT,...?prefix=sc&...`, or `rediss-cluster://` for TLS.
    RedisCluster(RedisOptions),
}

/// A PostgreSQL store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// The connection URL without our own parameters (`sslmode` and the rest stay).
    pub url: String,
    /// Most connections one instance opens.
    pub pool_size: u32,
    /// Longest wait for a connection (also bounds a request while the database is away).
    pub connect_timeout: Duration,
    /// Longest a statement may run, on the server and, as a guard, on the client.
    pub statement_timeout: Duration,
}

/// A Redis or Redis Cluster store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// `redis://` (or `rediss://`) URLs of the server, or of the cluster nodes to discover the
    /// topology from.
    pub nodes: Vec<String>,
    /// With TLS: a PEM file of the certificate authorities to trust instead of the system's.
    pub ca: Option<PathBuf>,
    /// Namespace of every key (`<prefix>:{<tenant>:<sessionId>}`).
    pub prefix: String,
    pub connect_timeout: Duration,
    /// Longest wait for one answer.
    pub response_timeout: Duration,
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!(
                "store URL `{url}` has no scheme (sqlite://PATH, memory://, postgres://, redis://, redis-cluster://, rediss://, rediss-cluster://)"
            )
        })?;
        match scheme {
            "memory" if rest.is_empty() => Ok(StoreUrl::Memory),
            "memory" => Err("memory:// takes nothing after the scheme".into()),
            "sqlite" if rest.is_empty() => {
                Err("sqlite:// needs a file path, e.g. sqlite://./data/session-context.db".into())
            }
            "sqlite" => Ok(StoreUrl::Sqlite(PathBuf::from(rest))),
            "postgres" | "postgresql" => parse_postgres(url).map(StoreUrl::Postgres),
            "redis" => parse_redis(rest, false, false).map(StoreUrl::Redis),
            "rediss" => parse_redis(rest, false, true).map(StoreUrl::Redis),
            "redis-cluster" => parse_redis(rest, true, false).map(StoreUrl::RedisCluster),
            "rediss-cluster" => parse_redis(rest, true, true).map(StoreUrl::RedisCluster),
            _ => Err(format!(
                "unknown store scheme `{scheme}`; use sqlite://, memory://, postgres://, redis://, redis-cluster:// (rediss:// and rediss-cluster:// for TLS)"
            )),
        }
    }
}

fn parse_postgres(text: &str) -> Result<PostgresOptions, String> {
    let mut url = Url::parse(text).map_err(|e| format!("invalid postgres URL: {e}"))?;
    let mut options = PostgresOptions {
        url: String::new(),
        pool_size: 16,
        connect_timeout: Duration::from_secs(3),
        statement_timeout: Duration::from_secs(5),
    };
    let mut kept = Vec::new();
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "pool_size" => {
                options.pool_size = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("pool_size must be a whole number above 0")?
            }
            "connect_timeout" => options.connect_timeout = duration_param("connect_timeout", &value)?,
            "statement_timeout" => options.statement_timeout = duration_param("statement_timeout", &value)?,
            _ => kept.push((key.into_owned(), value.into_owned())),
        }
    }
    url.set_query(None);
    if !kept.is_empty() {
        url.query_pairs_mut().extend_pairs(kept);
    }
    options.url = url.into();
    Ok(options)
}

fn parse_redis(rest: &str, cluster: bool, tls: bool) -> Result<RedisOptions, String> {
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut options = RedisOptions {
        nodes: Vec::new(),
        ca: None,
        prefix: "sc".into(),
        connect_timeout: Duration::from_secs(3),
        response_timeout: Duration::from_secs(2),
    };
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "prefix" if !value.is_empty() && !value.contains(['{', '}']) => options.prefix = value.into_owned(),
            "prefix" => return Err("prefix must be non-empty and without braces".into()),
            "connect_timeout" => options.connect_timeout = duration_param("connect_timeout", &value)?,
            "response_timeout" => options.response_timeout = duration_param("response_timeout", &value)?,
            "ca" if tls && !value.is_empty() => options.ca = Some(PathBuf::from(value.as_ref())),
            "ca" if tls => return Err("ca must name a PEM file".into()),
            "ca" => return Err("ca is for TLS: use rediss:// or rediss-cluster://".into()),
            other => return Err(format!("unknown redis store option `{other}`")),
        }
    }
    let (userinfo, hosts) = match location.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), location),
    };
    let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        return Err("the redis store URL names no host".into());
    }
    if !cluster && hosts.len() > 1 {
        return Err("redis:// takes one host; use redis-cluster:// for several".into());
    }
    let scheme = if tls { "rediss" } else { "redis" };
    for host in hosts {
        let node = format!("{scheme}://{userinfo}{host}");
        Url::parse(&node).map_err(|e| format!("invalid redis address `{host}`: {e}"))?;
        options.nodes.push(node);
    }
    Ok(options)
}

fn duration_param(name: &str, value: &str) -> Result<Duration, String> {
    crate::clock::parse_duration(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{name} must be a duration above 0 like 500ms or 3s"))
}

impl fmt::Display for StoreUrl {
    /// The URL without passwords, for logs and error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Memory => write!(f, "memory://"),
            StoreUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreUrl::Postgres(o) => write!(f, "{}", redact(&o.url)),
            StoreUrl::Redis(o) | StoreUrl::RedisCluster(o) => {
                let nodes: Vec<String> = o.nodes.iter().map(|n| redact(n)).collect();
                write!(f, "{}", nodes.join(","))
            }
        }
    }
}

fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.into()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_embedded_schemes() {
        assert_eq!("memory://".parse(), Ok(StoreUrl::Memory));
        assert_eq!(
            "sqlite://./data/x.db".parse(),
            Ok(StoreUrl::Sqlite(PathBuf::from("./data/x.db")))
        );
        assert_eq!(
            "sqlite:///var/lib/sc.db".parse(),
            Ok(StoreUrl::Sqlite(PathBuf::from("/var/lib/sc.db")))
        );
    }

    #[test]
    fn postgres_options_are_taken_out_of_the_url() {
        let Ok(StoreUrl::Postgres(o)) =
            "postgres://u:pw@db:5432/app?pool_size=4&sslmode=require&statement_timeout=2s".parse::<StoreUrl>()
        else {
            panic!("not postgres")
        };
        assert_eq!(o.pool_size, 4);
        assert_eq!(o.statement_timeout, Duration::from_secs(2));
        assert_eq!(o.connect_timeout, Duration::from_secs(3));
        assert_eq!(o.url, "postgres://u:pw@db:5432/app?sslmode=require");
        let shown = StoreUrl::Postgres(o).to_string();
        assert!(!shown.contains("pw"), "{shown}");
    }

    #[test]
    fn redis_urls_name_one_node_and_cluster_urls_several() {
        let Ok(StoreUrl::Redis(single)) = "redis://127.0.0.1:6379/2?prefix=shop".parse::<StoreUrl>() else {
            panic!("not redis")
        };
        assert_eq!(single.nodes, ["redis://127.0.0.1:6379/2"]);
        assert_eq!(single.prefix, "shop");
        let Ok(StoreUrl::RedisCluster(cluster)) = "redis-cluster://:pw@a:7001,b:7002".parse::<StoreUrl>() else {
            panic!("not a cluster")
        };
        assert_eq!(cluster.nodes, ["redis://:pw@a:7001", "redis://:pw@b:7002"]);
        assert!(!StoreUrl::RedisCluster(cluster).to_string().contains("pw"));
    }

    #[test]
    fn rediss_urls_use_tls_and_may_name_a_ca() {
        let Ok(StoreUrl::Redis(single)) = "rediss://cache:6380/0?ca=/etc/ca.pem".parse::<StoreUrl>() else {
            panic!("not redis")
        };
        assert_eq!(single.nodes, ["rediss://cache:6380/0"]);
        assert_eq!(single.ca, Some(PathBuf::from("/etc/ca.pem")));
        let Ok(StoreUrl::RedisCluster(cluster)) = "rediss-cluster://a:7001,b:7002".parse::<StoreUrl>() else {
            panic!("not a cluster")
        };
        assert_eq!(cluster.nodes, ["rediss://a:7001", "rediss://b:7002"]);
        assert_eq!(cluster.ca, None);
    }

    #[test]
    fn refuses_what_it_cannot_open() {
        for bad in [
            "",
            "sqlite://",
            "file.db",
            "mysql://x",
            "memory://x",
            "redis://",
            "redis://a:1,b:2",
            "redis://a:1?prefix={x}",
            "redis://a:1?unknown=1",
            "redis://a:1?ca=/etc/ca.pem",
            "rediss://a:1?ca=",
            "postgres://h/db?pool_size=0",
            "postgres://h/db?connect_timeout=soon",
        ] {
            assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
        }
    }
}
