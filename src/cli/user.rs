//! `poolgate user`: edits the `[[users]]` of a users file (or of a config file) in place.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::auth::otp::TotpSecret;
use crate::auth::password::hash_password;
use crate::users_file::UsersFile;

#[derive(Args)]
pub struct UserArgs {
    /// The TOML file holding the [[users]] tables.
    #[arg(long, short, env = "POOLGATE_USERS_FILE", default_value = "users.toml")]
    file: PathBuf,
    #[command(subcommand)]
    action: UserAction,
}

#[derive(Subcommand)]
enum UserAction {
    /// Add a user (the password is read from stdin or prompted for).
    Add {
        username: String,
        /// Roles (repeatable); default: user.
        #[arg(long = "role", default_values_t = vec!["user".to_owned()])]
        roles: Vec<String>,
        #[arg(long)]
        full_name: Option<String>,
        #[arg(long)]
        email: Option<String>,
    },
    /// Set a user's password (read from stdin or prompted for).
    Passwd { username: String },
    /// Disable a user (or enable again with --enable).
    Disable {
        username: String,
        #[arg(long)]
        enable: bool,
    },
    /// List the users.
    List,
    /// Give a user a new TOTP secret; prints the otpauth:// URI and a QR code to scan.
    Totp { username: String },
}

/// Applies one action to the file and saves it (listing only reads).
pub fn run(args: UserArgs) -> anyhow::Result<()> {
    let mut users = UsersFile::open(&args.file)?;
    match args.action {
        UserAction::Add {
            username,
            roles,
            full_name,
            email,
        } => {
            let hash = hash_password(&super::read_password()?)?;
            let id = users.add(
                &username,
                &hash,
                &roles,
                full_name.as_deref(),
                email.as_deref(),
            )?;
            users.save()?;
            println!("added {username} ({id})");
        }
        UserAction::Passwd { username } => {
            let hash = hash_password(&super::read_password()?)?;
            users.set_password(&username, &hash)?;
            users.save()?;
            println!("password changed for {username}");
        }
        UserAction::Disable { username, enable } => {
            users.set_disabled(&username, !enable)?;
            users.save()?;
            println!("{username} {}", if enable { "enabled" } else { "disabled" });
        }
        UserAction::List => list(&mut users)?,
        UserAction::Totp { username } => {
            let secret = TotpSecret::generate_base32();
            let url = TotpSecret::from_base32(&secret, &username)?.otpauth_url()?;
            users.set_totp(&username, &secret)?;
            users.save()?;
            let qr = qrcode::QrCode::new(url.as_bytes())?;
            let art = qr
                .render::<qrcode::render::unicode::Dense1x2>()
                .quiet_zone(true)
                .build();
            println!(
                "TOTP enabled for {username}. Scan with an authenticator app:\n\n{art}\n{url}"
            );
        }
    }
    Ok(())
}

fn list(users: &mut UsersFile) -> anyhow::Result<()> {
    println!(
        "{:<20} {:<36} {:<8} {:<15} roles",
        "username", "id", "status", "mfa"
    );
    for u in users.list()? {
        let status = if u.disabled { "disabled" } else { "active" };
        println!(
            "{:<20} {:<36} {:<8} {:<15} {}",
            u.username,
            u.id,
            status,
            u.mfa,
            u.roles.join(",")
        );
    }
    Ok(())
}
