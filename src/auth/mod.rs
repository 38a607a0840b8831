//! Authentication: who may sign in, and how. The login rules live here once and are called by
//! both the WebSocket RPCs and the REST shim.
//!
//! Order of checks: the username's length → the lockout's reservation → one password
//! verification (a dummy one for an unknown user) → the second factor → disabled. An unknown
//! user and a wrong password give the same answer after the same work; an MFA user gets the
//! mock's 428 after that same work, whether the password was right or not.

pub mod directory;
pub mod federated;
pub mod jwt;
pub mod lockout;
pub mod oidc;
pub mod otp;
pub mod password;
pub mod recheck;
pub mod sso;
pub mod tokens;
pub mod users;
pub mod webauthn;

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::error::{Error, MfaKind};
use crate::store::{SessionRecord, Store, StoreResult, now_ms};
use crate::telemetry::RateLimitedLog;
use jwt::{Claims, JwtKeys};
use lockout::Lockout;
use otp::OtpGuard;
use password::{Lane, PasswordChecker};
use tokens::{MfaStore, TokenStore};
use users::{User, UserDirectory};

/// A first-step login attempt.
pub struct Credentials<'a> {
    pub username: &'a str,
    /// `None` is allowed for the mock's first MFA step (it answers 428 without a password).
    pub password: Option<&'a str>,
    pub otp_code: Option<&'a str>,
    /// Where the attempt comes from (for the per-address limit).
    pub peer: IpAddr,
    /// The browser it comes from, if the portal's device cookie came with it (a known one
    /// skips the username's back-off; see [`lockout`]).
    pub device: Option<lockout::DeviceId>,
    /// The client asked for the directory (`"ldap": true`): with a directory configured, the
    /// local users are not looked at. See [`Authenticator::login`].
    pub directory: bool,
}

pub struct Authenticator {
    pub users: UserDirectory,
    pub tokens: TokenStore,
    pub mfa: MfaStore,
    pub otp: OtpGuard,
    pub passwords: PasswordChecker,
    pub lockout: Lockout,
    /// Tags and checks the portal's device cookies.
    pub devices: tokens::TagKey,
    /// Signs and checks the v2 REST shim's JWTs.
    pub jwt: JwtKeys,
    /// The LDAP / Active Directory people may sign in against, if one is configured.
    pub directory: Option<directory::Directory>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Directory users' sessions checked again, and `session_max_age` ([`recheck`]).
    pub recheck: recheck::Recheck,
    /// Single sign-on at an OpenID provider, when `[oidc]` is configured ([`federated`]).
    pub sso: Option<sso::Sso>,
    /// Security keys and passkeys ([`webauthn`]).
    pub keys: webauthn::Keys,
}

/// At most one "directory unavailable" line per period for failed directory sign-ins.
const DIRECTORY_DOWN_LOG_EVERY: Duration = Duration::from_secs(10);

/// Longest username looked at; longer ones are refused before any other work (and never
/// reach a log line or a store key).
pub const MAX_USERNAME_BYTES: usize = 256;

/// How a verification ended, for the lockout.
enum Verdict {
    /// The credentials were right and the sign-in is complete.
    Success,
    /// A wrong password or code.
    Guess,
    /// Nothing wrong was presented (a right password answered with a challenge, a disabled
    /// account's right password, a store error).
    NotAGuess,
}

impl Authenticator {
    /// Checks credentials; on success the caller issues a token for the returned user.
    /// Every verification is reserved with the lockout first; a refused attempt costs no
    /// argon2 work (and no directory bind). Unknown users, wrong passwords and MFA users cost
    /// the same one verification whenever a password is given.
    ///
    /// Who checks the password: with no directory configured, the settings file's users.
    /// With one, `directory` (`"ldap": true`) sends the attempt to the directory alone;
    /// otherwise a local user of that name is checked locally, and any other name goes to
    /// the directory.
    pub async fn login(&self, creds: Credentials<'_>) -> Result<Arc<User>, Error> {
        check_username(creds.username)?;
        let Some(password) = creds.password else {
            // The mock's first MFA step (no password yet): nothing is verified, but it counts
            // against the address until a sign-in of this pair completes.
            self.lockout.first_step(creds.username, creds.peer).await?;
            return self.record(self.login_without_password(&creds).await);
        };
        let attempt = self
            .lockout
            .begin(creds.username, creds.peer, creds.device.as_ref())
            .await?;
        let lane = match attempt.known() {
            true => Lane::Known,
            false => Lane::Stranger(creds.peer),
        };
        let local = match &self.directory {
            Some(_) if creds.directory => None,
            _ => self.users.by_name(creds.username).cloned(),
        };
        let (verdict, result) = match (local, &self.directory) {
            (None, Some(directory)) => {
                self.login_with_directory(directory, creds.username, password, creds.otp_code, lane)
                    .await
            }
            (local, _) => {
                self.login_with_password(local, password, creds.otp_code, lane)
                    .await
            }
        };
        match (verdict, &result) {
            // The code given with the password (the v2 login's second call, after its 428):
            // the challenge's count is taken back as `otp_verify` does.
            (Verdict::Success, Ok(user)) if mfa_kind(user).is_some() => {
                attempt.challenge_completed().await?
            }
            (verdict, _) => self.settle(attempt, verdict).await?,
        }
        self.record(result)
    }

    /// Updates the lockout counters once the verification's verdict is known.
    async fn settle(&self, attempt: lockout::Attempt<'_>, verdict: Verdict) -> Result<(), Error> {
        match verdict {
            Verdict::Success => attempt.succeeded().await,
            Verdict::Guess => {
                attempt.failed();
                Ok(())
            }
            Verdict::NotAGuess => attempt.not_a_guess().await,
        }
    }

    /// Counts the outcome in the metrics.
    fn record(&self, result: Result<Arc<User>, Error>) -> Result<Arc<User>, Error> {
        self.metrics.login(match &result {
            Ok(_) => "ok",
            Err(
                Error::InvalidCredentials
                | Error::InvalidOtp
                | Error::InvalidSsoCode
                | Error::KeyRefused,
            ) => "denied",
            Err(Error::MfaRequired { .. } | Error::SsoRequired(_) | Error::KeyRequired(_)) => {
                "mfa_required"
            }
            Err(Error::Disabled) => "disabled",
            Err(_) => "error",
        });
        result
    }

    async fn login_without_password(&self, creds: &Credentials<'_>) -> Result<Arc<User>, Error> {
        let local = match &self.directory {
            Some(_) if creds.directory => None,
            _ => self.users.by_name(creds.username).cloned(),
        };
        // The mock's password-less first step is for the server's own users: which person a
        // name is in the directory is not asked for without a password.
        let Some(user) = local else {
            return Err(Error::InvalidCredentials);
        };
        match mfa_kind(&user) {
            Some(MfaKind::Otp) => Err(Error::MfaRequired {
                kind: MfaKind::Otp,
                mfa_token: Some(self.mfa.issue(&user, false).await?),
            }),
            Some(kind) => Err(Error::MfaRequired {
                kind,
                mfa_token: None,
            }),
            None => Err(Error::InvalidCredentials),
        }
    }

    /// One verification of the password, whoever the user is; then the second factor. A
    /// wrong password of an MFA user gets the same challenge as a right one (the factor that
    /// failed is not revealed) but counts as a guess and can never complete.
    async fn login_with_password(
        &self,
        user: Option<Arc<User>>,
        password: &str,
        otp_code: Option<&str>,
        lane: Lane,
    ) -> (Verdict, Result<Arc<User>, Error>) {
        let Some(user) = user else {
            return match self.passwords.verify_dummy(password, lane).await {
                Ok(_) => (Verdict::Guess, Err(Error::InvalidCredentials)),
                Err(e) => (Verdict::NotAGuess, Err(e)),
            };
        };
        let password_ok = match self
            .passwords
            .verify(&user.password_hash, password, lane)
            .await
        {
            Ok(ok) => ok,
            Err(e) => return (Verdict::NotAGuess, Err(e)),
        };
        self.second_factor(user, password_ok, otp_code).await
    }

    /// The second step of every sign-in whose password was checked (locally or by the
    /// directory): the one-time code if the user has one, then [`finish`].
    async fn second_factor(
        &self,
        user: Arc<User>,
        password_ok: bool,
        otp_code: Option<&str>,
    ) -> (Verdict, Result<Arc<User>, Error>) {
        // A challenge counts against the lockout whether the password was right or not (the
        // code completing the sign-in clears the count): otherwise the lockout would tell
        // someone without the code which password was right. A security key comes first.
        match self.key_factor(&user).await {
            Ok(Some(keys)) => {
                return match self.key_challenge(&user, password_ok, &keys).await {
                    Ok(challenge) => (Verdict::Guess, Err(challenge)),
                    Err(e) => (Verdict::NotAGuess, Err(e)),
                };
            }
            Ok(None) => {}
            Err(e) => return (Verdict::NotAGuess, Err(e)),
        }
        match (mfa_kind(&user), otp_code) {
            (None, _) => finish(user, password_ok),
            (Some(MfaKind::Otp), None) => match self.mfa.issue(&user, password_ok).await {
                Ok(token) => (
                    Verdict::Guess,
                    Err(Error::MfaRequired {
                        kind: MfaKind::Otp,
                        mfa_token: Some(token),
                    }),
                ),
                Err(e) => (Verdict::NotAGuess, Err(e.into())),
            },
            (Some(MfaKind::Otp), Some(code)) => {
                match self.otp.verify(user.id, user.otp.as_ref(), code).await {
                    Ok(true) => finish(user, password_ok),
                    Ok(false) => (Verdict::Guess, Err(Error::InvalidOtp)),
                    Err(e) => (Verdict::NotAGuess, Err(e.into())),
                }
            }
            // A single sign-on user with `[oidc]` set: the 428 leads to the provider, where
            // the password typed here plays no part; it is no guess (the hand-off that follows
            // counts against the address until it is used, see `sso_handoff`).
            (Some(MfaKind::Adfs), _) if self.sso.is_some() => (
                Verdict::NotAGuess,
                Err(Error::MfaRequired {
                    kind: MfaKind::Adfs,
                    mfa_token: None,
                }),
            ),
            // A method this server cannot complete: the mock's 428, after the same work.
            (Some(kind), _) => (
                Verdict::Guess,
                Err(Error::MfaRequired {
                    kind,
                    mfa_token: None,
                }),
            ),
        }
    }

    /// The directory checks the password; a person it knows is kept in the state store (for
    /// every instance to resolve their sessions), refreshed — name, mail, groups, admin — at
    /// each sign-in. Then the one-time code of a user enrolled in TOTP (`admin_totp`), exactly
    /// as for a local user: a wrong password of an enrolled user gets the same challenge.
    async fn login_with_directory(
        &self,
        directory: &directory::Directory,
        username: &str,
        password: &str,
        otp_code: Option<&str>,
        lane: Lane,
    ) -> (Verdict, Result<Arc<User>, Error>) {
        // The same argon2id work as a local sign-in, alongside the directory's: reply times
        // must not tell a local username from a directory one (or from no one).
        let (dummy, answer) = tokio::join!(
            self.passwords.verify_dummy(password, lane),
            directory.authenticate(username, password)
        );
        if let Err(e) = dummy {
            return (Verdict::NotAGuess, Err(e));
        }
        let entry = match answer {
            Ok(entry) => entry,
            Err(directory::DirectoryError::InvalidCredentials) => {
                return (Verdict::Guess, Err(Error::InvalidCredentials));
            }
            // A person with a second factor gets its challenge whether the password was wrong
            // or their account is disabled, as for a right password: neither is told to
            // someone without the code. Such a challenge never completes.
            Err(directory::DirectoryError::WrongPassword(key)) => {
                return match self.enrolled_directory_user(&key).await {
                    Ok(Some(user)) => self.second_factor(user, false, otp_code).await,
                    Ok(None) => (Verdict::Guess, Err(Error::InvalidCredentials)),
                    Err(e) => (Verdict::NotAGuess, Err(e)),
                };
            }
            Err(directory::DirectoryError::Disabled(key)) => {
                return match self.enrolled_directory_user(&key).await {
                    Ok(Some(user)) => self.second_factor(user, false, otp_code).await,
                    Ok(None) => (Verdict::NotAGuess, Err(Error::Disabled)),
                    Err(e) => (Verdict::NotAGuess, Err(e)),
                };
            }
            Err(directory::DirectoryError::Unavailable(why)) => {
                self.directory_down(&why);
                return (Verdict::NotAGuess, Err(Error::DirectoryUnavailable));
            }
        };
        match self.directory_user(&entry).await {
            Ok(user) => self.second_factor(user, true, otp_code).await,
            Err(e) => (Verdict::NotAGuess, Err(e)),
        }
    }

    /// A directory that could not be asked, by a password or a passkey sign-in: counted, and
    /// logged once per period with the count, not once per attempt (every sign-in of a
    /// directory user fails while it is down).
    fn directory_down(&self, why: &dyn std::fmt::Display) {
        self.metrics.directory_errors.inc();
        static DOWN: LazyLock<RateLimitedLog> =
            LazyLock::new(|| RateLimitedLog::new(DIRECTORY_DOWN_LOG_EVERY));
        if let Some(failed) = DOWN.hit() {
            tracing::warn!(error = %why, also_answered_503_since_last_line = failed - 1, "directory unavailable: a directory sign-in was answered 503");
        }
    }

    /// The person an entry the directory just gave stands for: their record kept (see
    /// [`Authenticator::remember`]) and their one-time-code enrolment.
    async fn directory_user(&self, entry: &directory::DirectoryEntry) -> Result<Arc<User>, Error> {
        let record = self.remember(entry).await?;
        let secret = self.store.directory_totp_get(record.id).await?;
        Ok(Arc::new(User::from_directory(&record, secret.as_deref())))
    }

    /// Keeps what the directory says of a person: their record, for every instance to resolve
    /// their sessions, challenges and tasks, and the name index of the admin methods.
    async fn remember(
        &self,
        entry: &directory::DirectoryEntry,
    ) -> StoreResult<crate::store::DirectoryUser> {
        let record = crate::store::DirectoryUser {
            id: users::directory_user_id(&entry.key),
            dn: entry.dn.clone(),
            username: entry.username.clone(),
            full_name: entry.full_name.clone(),
            email: entry.email.clone(),
            groups: entry.groups.clone(),
            admin: entry.admin,
            updated_ms: now_ms(),
        };
        self.store.directory_user_put(&record).await?;
        self.store
            .directory_name_put(&folded_name(&record.username), record.id)
            .await?;
        // The directory just described them: their sessions need no re-check for a period.
        self.recheck.saw(record.id);
        Ok(record)
    }

    /// Enrols a directory user in TOTP with a new secret (`enable`), replacing any earlier one,
    /// or ends their enrolment. The person is found by the service account — by sign-in name,
    /// or by their entry's DN (`by_dn`) — so this works before their first sign-in; the
    /// enrolment is their entry's, so it holds under every name that signs in to it. Returns
    /// the person and the new secret (base32).
    pub async fn directory_totp(
        &self,
        name: &str,
        by_dn: bool,
        enable: bool,
    ) -> Result<(directory::DirectoryEntry, Option<String>), Error> {
        let entry = self.directory_lookup(name, by_dn).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "The directory has no user who signs in as {name:?}."
            ))
        })?;
        let secret = enable.then(otp::TotpSecret::generate_base32);
        // The record too: an enrolled user's wrong password is then challenged like a right
        // one even before their first sign-in.
        let record = self.remember(&entry).await?;
        self.store
            .directory_totp_put(record.id, secret.as_deref())
            .await?;
        Ok((entry, secret))
    }

    /// The directory user who signs in as `name`, if they have signed in (or been enrolled)
    /// before: the directory says whose entry the name is (a person's id is their entry's);
    /// when it cannot — down, or the person gone from it — the name index kept at each
    /// sign-in says whom the name last signed in as, so an admin can still end the sessions
    /// of someone the directory no longer knows.
    pub async fn directory_user_named(&self, name: &str) -> Result<Option<Arc<User>>, Error> {
        let Some(directory) = &self.directory else {
            return Ok(None);
        };
        let id = match directory.lookup(name, false).await {
            Ok(Some(entry)) => Some(users::directory_user_id(&entry.key)),
            Ok(None) => None,
            Err(e) => {
                self.metrics.directory_errors.inc();
                tracing::warn!(error = %e, "directory unavailable: an admin's lookup used the names of past sign-ins");
                None
            }
        };
        let id = match id {
            Some(id) => Some(id),
            None => self.store.directory_name_get(&folded_name(name)).await?,
        };
        let Some(id) = id else {
            return Ok(None);
        };
        Ok(self.users.resolve(&id).await?.filter(|u| u.dn.is_some()))
    }

    /// A directory person by sign-in name, found by the service account and remembered (so an
    /// admin can act for them before their first sign-in, as `directory_totp` does); `None`
    /// without a directory or when it has no such person.
    pub async fn directory_person(&self, name: &str) -> Result<Option<Arc<User>>, Error> {
        if self.directory.is_none() {
            return Ok(None);
        }
        let Some(entry) = self.directory_lookup(name, false).await? else {
            return Ok(None);
        };
        let record = self.remember(&entry).await?;
        let secret = self.store.directory_totp_get(record.id).await?;
        Ok(Some(Arc::new(User::from_directory(
            &record,
            secret.as_deref(),
        ))))
    }

    /// A person of the directory found by the service account (422 without a directory,
    /// 503 when it cannot be asked).
    async fn directory_lookup(
        &self,
        name: &str,
        by_dn: bool,
    ) -> Result<Option<directory::DirectoryEntry>, Error> {
        let Some(directory) = &self.directory else {
            return Err(Error::Unprocessable(
                "No directory is configured: a local user's TOTP secret is in the users file \
                 (poolgate user totp)."
                    .into(),
            ));
        };
        match directory.lookup(name, by_dn).await {
            Ok(found) => Ok(found),
            Err(e) => {
                self.metrics.directory_errors.inc();
                tracing::warn!(error = %e, "directory unavailable: an admin's lookup was answered 503");
                Err(Error::DirectoryUnavailable)
            }
        }
    }

    /// The directory user whose entry has this key, if they have a second factor: enrolled in
    /// TOTP, or a security key registered (their wrong password then gets its challenge too).
    async fn enrolled_directory_user(&self, key: &str) -> Result<Option<Arc<User>>, Error> {
        let id = users::directory_user_id(key);
        let Some(user) = self.users.resolve(&id).await?.filter(|u| u.dn.is_some()) else {
            return Ok(None);
        };
        if user.otp_enabled || !self.keys.of(user.id).await?.is_empty() {
            return Ok(Some(user));
        }
        Ok(None)
    }

    /// Completes an OTP challenge issued by [`Authenticator::login`].
    pub async fn otp_verify(
        &self,
        mfa_token: &str,
        otp_code: &str,
        peer: IpAddr,
        device: Option<lockout::DeviceId>,
    ) -> Result<Arc<User>, Error> {
        self.lockout.check_address(peer).await?;
        let Some(challenge) = self.mfa.get(mfa_token, &self.users).await? else {
            // A challenge this server issued (expired, used up) is not a guess.
            if !self.mfa.issued_here(mfa_token) {
                self.lockout.unknown_token(peer).await?;
            }
            return Err(Error::InvalidMfaToken);
        };
        let attempt = self
            .lockout
            .begin(&challenge.user.username, peer, device.as_ref())
            .await?;
        let (verdict, result) = self
            .otp_verify_unlimited(mfa_token, otp_code, challenge)
            .await;
        match verdict {
            Verdict::Success => attempt.challenge_completed().await?,
            verdict => self.settle(attempt, verdict).await?,
        }
        self.record(result)
    }

    async fn otp_verify_unlimited(
        &self,
        mfa_token: &str,
        otp_code: &str,
        challenge: tokens::MfaChallenge,
    ) -> (Verdict, Result<Arc<User>, Error>) {
        match self
            .otp
            .verify(challenge.user.id, challenge.user.otp.as_ref(), otp_code)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                if let Err(e) = self.mfa.fail(mfa_token).await {
                    return (Verdict::Guess, Err(e.into()));
                }
                return (Verdict::Guess, Err(Error::InvalidOtp));
            }
            Err(e) => return (Verdict::NotAGuess, Err(e.into())),
        }
        match self.mfa.take(mfa_token).await {
            Ok(true) => finish(challenge.user, challenge.password_ok),
            // Another request used this challenge a moment ago.
            Ok(false) => (Verdict::NotAGuess, Err(Error::InvalidMfaToken)),
            Err(e) => (Verdict::NotAGuess, Err(e.into())),
        }
    }

    /// A JWT's user and claims, if the token is valid, unexpired and unrevoked and its user
    /// may still sign in (not disabled, not renamed since it was issued).
    pub async fn verify_jwt(&self, token: &str) -> Option<(Arc<User>, Arc<Claims>)> {
        let claims = self.jwt.verify(token)?;
        // A store that cannot answer refuses the token (the request may be retried).
        let user = self.users.resolve(&claims.sub).await.ok()??;
        // A local user renamed in the file is someone else; a directory user is their entry,
        // whichever of its names they signed in with.
        if user.disabled || (user.dn.is_none() && user.username != claims.username) {
            return None;
        }
        // session_max_age, and a directory user's account re-checked when due.
        if !self.jwt_session_holds(&user, &claims).await {
            return None;
        }
        Some((user, claims))
    }

    /// Whether claims verified earlier still hold: not expired, not revoked since. (A socket
    /// authenticated by a JWT checks this while it stays open.)
    pub fn jwt_still_valid(&self, claims: &Claims) -> bool {
        claims.exp > chrono::Utc::now().timestamp()
            && !self.jwt.is_claims_revoked(claims)
            && self.jwt_within_max_age(claims)
    }

    /// Signs one JWT out, here and (by the bus) on every instance.
    pub async fn revoke_jwt(&self, claims: &Claims) -> StoreResult<()> {
        self.jwt.revoke(&*self.store, claims).await
    }

    /// Ends everything a user is signed in with — every session token and every JWT issued
    /// until now — on every instance. Returns how many sessions there were.
    pub async fn revoke_user(&self, user: uuid::Uuid) -> StoreResult<usize> {
        let sessions = self.tokens.revoke_user(&user).await?;
        self.jwt.revoke_user(&*self.store, user).await?;
        Ok(sessions)
    }

    /// Every session still live (active within the token lifetime), on any instance.
    pub async fn live_sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        let ttl = self.tokens.ttl().as_millis() as u64;
        let now = now_ms();
        let mut sessions = self.store.sessions_all().await?;
        sessions.retain(|s| now.saturating_sub(s.last_active_ms) < ttl);
        Ok(sessions)
    }

    /// Re-authentication with a saved token, under the per-address limit. A token this
    /// server issued that has since expired or been revoked is not a guess and counts
    /// nothing (a client sends its saved token first as a matter of course).
    ///
    /// A valid token is never refused for its address's failures (others' guesses from a
    /// shared address must not sign anyone out); the address check comes only for a token
    /// that is not live. A valid token makes its address known for the user (see
    /// [`lockout`]; not its browser: that takes a password or code).
    pub async fn resume(&self, token: &str, peer: IpAddr) -> Result<Arc<tokens::Session>, Error> {
        match self.tokens.lookup(token, &self.users).await? {
            Some(session) if session.user.disabled => Err(Error::Disabled),
            Some(session) => {
                self.lockout
                    .remember(&session.user.username, peer, None)
                    .await?;
                Ok(session)
            }
            None => {
                if !self.tokens.issued_here(token) {
                    self.lockout.check_address(peer).await?;
                    self.lockout.unknown_token(peer).await?;
                }
                Err(Error::InvalidToken)
            }
        }
    }
}

/// A name folded roughly as a directory's string preparation (RFC 4518) matches names:
/// compatibility forms (NFKC: full-width "ａlice", mathematical "𝐚lice", circled "ⓐlice"),
/// case, and insignificant spaces. What the lockout counts names under, and the key of the
/// directory users' name index.
pub fn folded_name(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let folded: String = name.nfkc().collect::<String>().to_lowercase();
    let folded: String = folded.nfkc().collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Refuses an over-long username before anything else looks at it.
pub fn check_username(username: &str) -> Result<(), Error> {
    if username.len() > MAX_USERNAME_BYTES {
        return Err(Error::bad_request(format!(
            "Username too long: at most {MAX_USERNAME_BYTES} bytes."
        )));
    }
    Ok(())
}

fn mfa_kind(user: &User) -> Option<MfaKind> {
    if user.otp_enabled {
        Some(MfaKind::Otp)
    } else if user.adfs_enabled {
        Some(MfaKind::Adfs)
    } else if user.hardware_token_enabled {
        Some(MfaKind::HardwareToken)
    } else {
        None
    }
}

/// The last check of every sign-in: "disabled" is only said once the credentials were right.
fn finish(user: Arc<User>, password_ok: bool) -> (Verdict, Result<Arc<User>, Error>) {
    if !password_ok {
        return (Verdict::Guess, Err(Error::InvalidCredentials));
    }
    if user.disabled {
        return (Verdict::NotAGuess, Err(Error::Disabled));
    }
    (Verdict::Success, Ok(user))
}
