//! The `poolgate` command: parses the command line and calls the subcommand's function in
//! `poolgate::cli` (serving itself is `poolgate::app::Application`, shared with the tests).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use poolgate::cli;

#[derive(Parser)]
#[command(
    name = "poolgate",
    version,
    about = "A remote-desktop connection broker"
)]
struct Cli {
    /// On an error, print where it came from too (a backtrace, with RUST_BACKTRACE=1).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve(cli::serve::ServeArgs),
    /// Print an argon2id PHC string for the users file (password read from stdin or a prompt).
    HashPassword,
    /// Run every check `serve` runs on a config file, without serving, and exit: syntax,
    /// values, users and pools, and every file the config names. Writes nothing.
    CheckConfig(cli::check::CheckArgs),
    /// Get a desktop: sign in, run both steps with live progress, write a launcher file.
    Connect(cli::connect::ConnectArgs),
    /// Run an admin method on a running server (signs in like `connect`; role admin).
    Admin(cli::admin::AdminArgs),
    /// Manage users in a users file (or a config file with inline [[users]]).
    User(cli::user::UserArgs),
    /// Copy the SQLite state to a file while the server runs (SQLite's online backup).
    Backup(cli::backup::BackupArgs),
}

fn main() -> ExitCode {
    // SAFETY: the first thing the process does: no other thread exists yet (every runtime is
    // built later, by the subcommand), so taking variables out of the environment is sound.
    unsafe { poolgate::process::harden() };
    poolgate::tls::install_crypto_provider();
    let cli = Cli::parse();
    let verbose = cli.verbose || std::env::var_os("RUST_LOG").is_some();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", poolgate::cli::error_report(&error, verbose));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Option<Command>) -> anyhow::Result<()> {
    match command {
        None => cli::serve::run(Default::default()),
        Some(Command::Serve(args)) => cli::serve::run(args),
        Some(Command::HashPassword) => cli::hash_password::run(),
        Some(Command::CheckConfig(args)) => cli::check::run(args),
        Some(Command::Connect(args)) => cli::connect::run(args),
        Some(Command::Admin(args)) => cli::admin::run(args),
        Some(Command::User(args)) => cli::user::run(args),
        Some(Command::Backup(args)) => cli::backup::run(args),
    }
}
