//! `poolgate hash-password`: an argon2id PHC string for a users file.

/// Reads a password (prompt or stdin) and prints its hash.
pub fn run() -> anyhow::Result<()> {
    let password = super::read_password()?;
    println!("{}", crate::auth::password::hash_password(&password)?);
    Ok(())
}
