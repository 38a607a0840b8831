//! `poolgate user`: edits the `[[users]]` of a users file (or of a config file) in place;
//! `user totp --directory` enrols a directory user through the running server instead (their
//! enrolment lives in the state store, which the server owns).

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
        /// Accept a password shorter than 8 characters or easy to guess (for tests only).
        #[arg(long)]
        allow_weak: bool,
    },
    /// Set a user's password (read from stdin or prompted for).
    Passwd {
        username: String,
        /// Accept a password shorter than 8 characters or easy to guess (for tests only).
        #[arg(long)]
        allow_weak: bool,
    },
    /// Disable a user (or enable again with --enable).
    Disable {
        username: String,
        #[arg(long)]
        enable: bool,
    },
    /// List the users.
    List,
    /// Give a user a new TOTP secret; prints the otpauth:// URI and a QR code to scan.
    ///
    /// With --directory, USERNAME is a directory user's sign-in name or their entry's DN (any
    /// name with an '=' is taken as a DN): an admin signs in to the running server, which
    /// finds the person in the directory and keeps the secret in the state store.
    Totp {
        username: String,
        #[command(flatten)]
        directory: DirectoryTotp,
    },
}

#[derive(Args)]
struct DirectoryTotp {
    /// Enrol a user of the [directory] (LDAP / Active Directory) instead of a file's user.
    #[arg(long)]
    directory: bool,
    /// End the directory user's enrolment (they sign in with their password alone again).
    #[arg(long, requires = "directory")]
    disable: bool,
    /// The server's WebSocket URL, e.g. wss://broker.example.com/
    #[arg(long, env = "POOLGATE_SERVER")]
    server: Option<String>,
    /// The admin who signs in to the server.
    #[arg(long, requires = "directory")]
    admin: Option<String>,
    /// Where the admin's token is kept for the next run (0600).
    #[arg(long, requires = "directory")]
    token_file: Option<PathBuf>,
    /// Read the admin's password (and one-time code) from stdin, one per line.
    #[arg(long, requires = "directory")]
    password_stdin: bool,
    /// Trust this CA certificate file (PEM) too, for a wss:// server with a private CA.
    #[arg(long, env = "POOLGATE_CA_FILE")]
    ca_file: Option<PathBuf>,
}

/// Applies one action to the file and saves it (listing only reads).
pub fn run(args: UserArgs) -> anyhow::Result<()> {
    if let UserAction::Totp {
        username,
        directory,
    } = &args.action
        && directory.directory
    {
        return enrol_directory_user(username, directory);
    }
    let mut users = UsersFile::open(&args.file)?;
    match args.action {
        UserAction::Add {
            username,
            roles,
            full_name,
            email,
            allow_weak,
        } => {
            if users.contains(&username)? {
                anyhow::bail!("{username:?} is already a user of {}", args.file.display());
            }
            let hash = hash_password(&new_password(&username, allow_weak)?)?;
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
        UserAction::Passwd {
            username,
            allow_weak,
        } => {
            if !users.contains(&username)? {
                anyhow::bail!(
                    "{username:?} is not a user of {} (`poolgate user list` shows who is)",
                    args.file.display()
                );
            }
            let hash = hash_password(&new_password(&username, allow_weak)?)?;
            users.set_password(&username, &hash)?;
            users.save()?;
            println!("password changed for {username}");
        }
        UserAction::Disable { username, enable } => {
            users.set_disabled(&username, !enable)?;
            users.save()?;
            println!("{username} {}", if enable { "enabled" } else { "disabled" });
        }
        UserAction::List => {
            if !args.file.exists() {
                anyhow::bail!(
                    "there is no users file {} (give --file or POOLGATE_USERS_FILE; `poolgate \
                     user add` makes one)",
                    args.file.display()
                );
            }
            list(&mut users, &args.file)?
        }
        UserAction::Totp { username, .. } => {
            let secret = TotpSecret::generate_base32();
            let url = TotpSecret::from_base32(&secret, &username)?.otpauth_url()?;
            users.set_totp(&username, &secret)?;
            users.save()?;
            print_enrolment(&username, &url)?;
        }
    }
    Ok(())
}

/// The QR code and URI an authenticator app scans.
fn print_enrolment(username: &str, url: &str) -> anyhow::Result<()> {
    let qr = qrcode::QrCode::new(url.as_bytes())?;
    let art = qr
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build();
    println!("TOTP enabled for {username}. Scan with an authenticator app:\n\n{art}\n{url}");
    Ok(())
}

/// `user totp --directory`: the server's `admin_totp`, signed in as an admin.
fn enrol_directory_user(name: &str, o: &DirectoryTotp) -> anyhow::Result<()> {
    let (Some(server), Some(admin)) = (&o.server, &o.admin) else {
        anyhow::bail!(
            "--directory enrols through the running server: give --server (or POOLGATE_SERVER) \
             and --admin"
        );
    };
    let login = crate::client::Login {
        user: admin.clone(),
        token_file: o
            .token_file
            .clone()
            .unwrap_or_else(|| super::default_token_file(server, admin)),
        password_stdin: o.password_stdin,
        sso: false,
        ca_file: o.ca_file.clone(),
    };
    let key = if name.contains('=') { "dn" } else { "username" };
    let args = serde_json::json!({ key: name, "disable": o.disable });
    let reply =
        super::runtime()?.block_on(crate::client::admin(server, &login, "admin_totp", args))?;
    let username = reply["username"].as_str().unwrap_or(name);
    match reply["otpauth_url"].as_str() {
        Some(url) => print_enrolment(username, url)?,
        None => println!("TOTP disabled for {username}."),
    }
    if let Some(dn) = reply["dn"].as_str() {
        println!("(directory entry {dn})");
    }
    Ok(())
}

/// A new password, read as `read_password` does, refused when too short or easy to guess
/// (unless `allow_weak`).
fn new_password(username: &str, allow_weak: bool) -> anyhow::Result<String> {
    let password = super::read_password()?;
    if !allow_weak && let Err(why) = crate::auth::password::check_new_password(&password, username)
    {
        anyhow::bail!("{why}");
    }
    Ok(password)
}

fn list(users: &mut UsersFile, file: &std::path::Path) -> anyhow::Result<()> {
    let listed = users.list()?;
    if listed.is_empty() {
        println!(
            "{} holds no users (`poolgate user add NAME` adds one)",
            file.display()
        );
        return Ok(());
    }
    println!(
        "{:<20} {:<36} {:<8} {:<15} roles",
        "username", "id", "status", "mfa"
    );
    for u in listed {
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
