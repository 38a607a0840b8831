//! `poolgate connect`: the thin client (`crate::client`) from the command line.

use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct ConnectArgs {
    /// Server WebSocket URL, e.g. wss://broker.example.com/
    #[arg(long, env = "POOLGATE_SERVER")]
    server: String,
    #[arg(long)]
    user: String,
    /// Pool name or id.
    #[arg(long)]
    pool: String,
    /// Where the token is kept for the next run (0600).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Directory for the .rdp/.vv launcher file.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Read the password (and one-time code) from stdin, one per line.
    #[arg(long)]
    password_stdin: bool,
    /// Sign in at the organisation's provider (single sign-on) on another device, a phone:
    /// prints the link and its QR code, and waits (no password asked).
    #[arg(long)]
    sso: bool,
    /// Open the launcher with the system's viewer.
    #[arg(long)]
    open: bool,
    /// Trust this CA certificate file (PEM) too, for a wss:// server with a private CA.
    #[arg(long, env = "POOLGATE_CA_FILE")]
    ca_file: Option<PathBuf>,
}

/// Signs in, runs both steps with live progress and writes the launcher file.
pub fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let token_file = args
        .token_file
        .unwrap_or_else(|| super::default_token_file(&args.server, &args.user));
    super::runtime()?.block_on(crate::client::run(crate::client::Options {
        server: args.server,
        user: args.user,
        pool: args.pool,
        token_file,
        out_dir: args.out,
        password_stdin: args.password_stdin,
        sso: args.sso,
        open: args.open,
        ca_file: args.ca_file,
    }))
}
