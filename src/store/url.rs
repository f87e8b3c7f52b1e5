//! The `--store` URL, parsed in this one place as backends are added.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Which backend to use and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory://`: nothing survives a restart; for tests and demos.
    Memory,
    /// `sqlite://PATH`: an embedded database file (folder and file created on first start).
    Sqlite(PathBuf),
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("store URL `{url}` has no scheme (sqlite://PATH or memory://)")
        })?;
        match scheme {
            "memory" if rest.is_empty() => Ok(StoreUrl::Memory),
            "memory" => Err("memory:// takes nothing after the scheme".into()),
            "sqlite" if rest.is_empty() => {
                Err("sqlite:// needs a file path, e.g. sqlite://./data/session-context.db".into())
            }
            "sqlite" => Ok(StoreUrl::Sqlite(PathBuf::from(rest))),
            "postgres" | "postgresql" | "redis" | "redis-cluster" => Err(format!(
                "the {scheme}:// store is not available in this version; use sqlite://PATH or memory://"
            )),
            _ => Err(format!(
                "unknown store scheme `{scheme}`; use sqlite://PATH or memory://"
            )),
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Memory => write!(f, "memory://"),
            StoreUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_schemes() {
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
    fn refuses_what_it_cannot_open() {
        for bad in [
            "",
            "sqlite://",
            "file.db",
            "mysql://x",
            "memory://x",
            "postgres://u@h/db",
        ] {
            assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
        }
    }
}
