//! `serve --config FILE`: a TOML file that sets any `serve` flag by its name without the
//! dashes, and `[tenants.<name>]` tables that override the policy for one tenant.
//!
//! The top level is not a second list of settings: each key is turned into the flag of that
//! name and checked by the flag's own parser (so a duration in the file is read exactly as on
//! the command line), and only where neither the command line nor the environment set that
//! flag. A repeatable flag is an array under its plural name (`protected-attributes`,
//! `hidden-attributes`, `cors-origins`), an `allowed-*` list an array under the flag's name.
//! Unknown keys and bad values stop the start with the key and the line named.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use crate::cli::Cli;
use crate::clock::parse_duration;

/// What a `[tenants.<name>]` table may set (the contract's per-tenant policy); absent keys
/// keep the top-level value, a list replaces the top-level list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TenantTable {
    /// The tenant, from the table's name (not a key of the table).
    #[serde(skip)]
    pub tenant: String,
    /// The line of the table's header, for messages about its values.
    #[serde(skip)]
    pub line: usize,
    /// The line of each key of the table, for messages about its value.
    #[serde(skip)]
    pub key_lines: BTreeMap<String, usize>,
    #[serde(default, deserialize_with = "duration")]
    pub anonymous_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub anonymous_max_age: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub customer_ttl: Option<Duration>,
    pub max_session_bytes: Option<usize>,
    pub max_attributes: Option<usize>,
    pub protected_attributes: Option<Vec<String>>,
    pub hidden_attributes: Option<Vec<String>>,
    pub allowed_currency: Option<Vec<String>>,
    pub allowed_site: Option<Vec<String>>,
    pub allowed_language: Option<Vec<String>>,
    pub allowed_target_location: Option<Vec<String>>,
    pub cors_origins: Option<Vec<String>>,
}

fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map(Some).map_err(serde::de::Error::custom)
}

#[derive(Deserialize)]
struct Tenants {
    #[serde(default)]
    tenants: BTreeMap<String, TenantTable>,
}

/// Why the command line cannot be used.
#[derive(Debug)]
pub enum CommandLineError {
    /// clap's own answer: help, the version, or a usage error (exit with it).
    Usage(clap::Error),
    /// The config file cannot be read or has an unknown key or a bad value.
    Config(String),
}

/// Parses the command line (`argv` with the program name first), with the file of
/// `serve --config FILE` read into it.
pub fn parse_command_line(argv: Vec<OsString>) -> Result<Cli, CommandLineError> {
    let command = Cli::command();
    let matches = command
        .clone()
        .try_get_matches_from(&argv)
        .map_err(CommandLineError::Usage)?;
    let (argv, tenants) = merge(&command, argv, &matches).map_err(CommandLineError::Config)?;
    let matches = command.try_get_matches_from(&argv).map_err(CommandLineError::Usage)?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(CommandLineError::Usage)?;
    if let crate::cli::Command::Serve(args) = &mut cli.command {
        args.tenant_tables = tenants;
    }
    Ok(cli)
}

/// The command line after `serve --config FILE` is read: `argv` with the file's top-level
/// settings added as flags where neither the command line nor the environment set them, and
/// the file's tenant tables. Without `--config`, `argv` as it is.
fn merge(
    command: &Command,
    argv: Vec<OsString>,
    matches: &ArgMatches,
) -> Result<(Vec<OsString>, Vec<TenantTable>), String> {
    let Some(("serve", serve_matches)) = matches.subcommand() else {
        return Ok((argv, Vec::new()));
    };
    let Some(path) = serve_matches.get_one::<std::path::PathBuf>("config") else {
        return Ok((argv, Vec::new()));
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read --config {}: {e}", path.display()))?;
    let serve = command
        .find_subcommand("serve")
        .ok_or("the command line has no serve command")?;
    let (flags, tenants) = read(&text, path, serve, serve_matches)?;
    let mut argv = argv;
    argv.extend(flags);
    Ok((argv, tenants))
}

/// Reads a config file's text: the flags its top level adds, and its tenant tables.
fn read(
    text: &str,
    path: &Path,
    serve: &Command,
    given: &ArgMatches,
) -> Result<(Vec<OsString>, Vec<TenantTable>), String> {
    let at = |offset: usize| format!("{}:{}", path.display(), line_of(text, offset));
    let document = DeTable::parse(text).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let mut flags = Vec::new();
    let mut tenant_lines = BTreeMap::new();
    for (key, value) in document.get_ref() {
        let name: &str = key.get_ref();
        let where_ = at(key.span().start);
        if name == "tenants" {
            let DeValue::Table(tables) = value.get_ref() else {
                return Err(format!(
                    "{where_}: `tenants` must be a table of [tenants.<name>] tables"
                ));
            };
            for (tenant, table) in tables {
                crate::domain::validate::tenant(tenant.get_ref()).map_err(|e| {
                    format!(
                        "{}: [tenants.{}]: {}",
                        at(tenant.span().start),
                        tenant.get_ref(),
                        e.message
                    )
                })?;
                let key_lines: BTreeMap<String, usize> = match table.get_ref() {
                    DeValue::Table(keys) => keys
                        .iter()
                        .map(|(k, _)| (k.get_ref().to_string(), line_of(text, k.span().start)))
                        .collect(),
                    _ => BTreeMap::new(),
                };
                tenant_lines.insert(
                    tenant.get_ref().to_string(),
                    (line_of(text, table.span().start), key_lines),
                );
            }
            continue;
        }
        let arg = flag_for(serve, name).ok_or_else(|| format!("{where_}: unknown key `{name}`"))?;
        let id = arg.get_id().as_str();
        if matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue; // the command line and the environment win over the file
        }
        let values = values_of(arg, value.get_ref()).map_err(|e| format!("{where_}: `{name}` {e}"))?;
        let long = arg.get_long().unwrap_or(id);
        let mut these: Vec<OsString> = values.iter().map(|v| format!("--{long}={v}").into()).collect();
        if matches!(arg.get_action(), ArgAction::SetTrue) && matches!(value.get_ref(), DeValue::Boolean(true)) {
            these.push(format!("--{long}").into());
        }
        // The flag's own parser checks the values, here, where the key's line is known.
        serve
            .clone()
            .no_binary_name(true)
            .try_get_matches_from(&these)
            .map_err(|e| format!("{where_}: `{name}`: {}", first_line(&e.to_string())))?;
        flags.extend(these);
    }
    let mut tables = toml::from_str::<Tenants>(text)
        .map_err(|e| format!("--config {}: {}", path.display(), e.to_string().trim_end()))?
        .tenants;
    let tenants = tenant_lines
        .into_iter()
        .map(|(tenant, (line, key_lines))| {
            let mut table = tables.remove(&tenant).unwrap_or_default();
            table.tenant = tenant;
            table.line = line;
            table.key_lines = key_lines;
            table
        })
        .collect();
    Ok((flags, tenants))
}

/// The `serve` flag a top-level key names: the flag's long name, or for a repeatable flag its
/// plural (`cors-origins`), except the `allowed-*` lists, which keep the flag's name.
fn flag_for<'a>(serve: &'a Command, key: &str) -> Option<&'a Arg> {
    serve.get_arguments().find(|arg| {
        let Some(long) = arg.get_long() else { return false };
        if matches!(long, "config" | "help" | "version") {
            return false;
        }
        match arg.get_action() {
            ArgAction::Append if !long.starts_with("allowed-") => key.strip_suffix('s') == Some(long),
            _ => key == long,
        }
    })
}

/// A TOML value as the flag's values (none for a switch, which `read` adds itself).
fn values_of(arg: &Arg, value: &DeValue) -> Result<Vec<String>, String> {
    let scalar = |value: &DeValue| -> Result<String, String> {
        match value {
            DeValue::String(s) => Ok(s.to_string()),
            DeValue::Integer(i) if i.radix() == 10 => Ok(i.as_str().replace('_', "")),
            DeValue::Boolean(_) | DeValue::Integer(_) | DeValue::Float(_) | DeValue::Datetime(_) => {
                Err("expects a string or a decimal number".into())
            }
            DeValue::Array(_) | DeValue::Table(_) => Err("expects one value, not a list or a table".into()),
        }
    };
    match arg.get_action() {
        ArgAction::SetTrue => match value {
            DeValue::Boolean(_) => Ok(Vec::new()),
            _ => Err("expects true or false".into()),
        },
        ArgAction::Append => match value {
            DeValue::Array(items) => items.iter().map(|item| scalar(item.get_ref())).collect(),
            _ => Err("expects an array of values, e.g. [\"a\", \"b\"]".into()),
        },
        _ => scalar(value).map(|v| vec![v]),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The first line of a clap error, without its `error: ` prefix.
fn first_line(message: &str) -> &str {
    let line = message.lines().next().unwrap_or(message);
    line.strip_prefix("error: ").unwrap_or(line)
}
