//! The `session-context` binary: parse the command line and hand over to the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use session_context::auth::mint::{TokenSpec, mint_hs256};
use session_context::cli::{Command, SessionsCommand};
use session_context::config::{CommandLineError, Settings, parse_command_line};
use session_context::operator;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: allocation was about a third of the instructions
/// per request in profiles (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match parse_command_line(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(CommandLineError::Usage(usage)) => usage.exit(),
        Err(CommandLineError::Config(message)) => {
            eprintln!("session-context: {message}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Token(args) => mint_hs256(
            args.secret.as_bytes(),
            &TokenSpec {
                tenant: Some(args.tenant),
                scope: args.scope,
                session_id: args.session_id,
                customer_id: args.customer_id,
                subject: args.subject,
                ttl: args.ttl,
            },
        )
        .map(|token| println!("{token}")),
        Command::Seed(args) => seed(args),
        Command::Sessions(command) => sessions(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("session-context: {message}");
            ExitCode::FAILURE
        }
    }
}

fn seed(args: session_context::cli::SeedArgs) -> Result<(), String> {
    let runtime = runtime()?;
    let written = runtime.block_on(session_context::seed::seed(
        &args.store,
        &args.tenant,
        &args.prefix,
        args.count,
        args.bytes,
        args.customer.as_deref(),
    ))?;
    println!("seeded {written} sessions ({} already there)", args.count - written);
    Ok(())
}

/// `sessions list|delete`: a customer's sessions straight on a store.
fn sessions(command: SessionsCommand) -> Result<(), String> {
    let runtime = runtime()?;
    match command {
        SessionsCommand::List(who) => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let listed = runtime.block_on(operator::list(&who.store, &who.tenant, &who.customer, &mut out))?;
            std::io::Write::flush(&mut out).map_err(|e| format!("cannot write: {e}"))?;
            eprintln!(
                "{listed} sessions of customer {} in tenant {}",
                who.customer, who.tenant
            );
        }
        SessionsCommand::Delete(args) => {
            let who = &args.customer;
            let urls = args.webhook_url.iter().filter(|u| !u.trim().is_empty()).count();
            let destinations = u16::try_from(urls).map_err(|_| "too many --webhook-url")?;
            let deleted = runtime.block_on(operator::delete(
                &who.store,
                &who.tenant,
                &who.customer,
                args.except.as_deref(),
                destinations,
            ))?;
            println!("{}", serde_json::json!({ "deleted": deleted }));
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn serve(args: session_context::cli::ServeArgs) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let settings = Settings::from_args(args)?;
    runtime()?.block_on(session_context::startup::run(settings))
}
