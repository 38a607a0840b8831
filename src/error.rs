//! The one error type of the domain and the RPC layer. Each variant knows its wire `code`
//! (HTTP-like), the mock's `err_code` where it has one, and a message that is safe to show a
//! client. Internal causes are logged at the edge and never put on the wire.

use serde_json::{Map, Value, json};

/// The mock's `err_code` for every failure it has no specific code for (validation items,
/// permission denied, not found, wrong credentials): the REST shim answers with it too.
pub const ERR_CODE_DEFAULT: u32 = 999;

/// Which second factor a user must complete before a token is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MfaKind {
    /// A one-time code (TOTP, or the demo `date` code); completable over this API.
    Otp,
    /// ADFS single sign-on; cannot be completed over this API.
    Adfs,
    /// A security key (WebAuthn): `webauthn_verify` completes it.
    HardwareToken,
}

impl MfaKind {
    /// The mock's `err_code` for this factor.
    pub fn err_code(self) -> u32 {
        match self {
            MfaKind::Otp => 100,
            MfaKind::Adfs => 101,
            MfaKind::HardwareToken => 102,
        }
    }
}

/// Where a thin client's person signs in (the browser hand-off, RFC 8628 style): what a
/// 428 for a single sign-on user carries besides the mock's fields.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SsoHandoff {
    pub verification_uri: String,
    pub verification_uri_complete: String,
    /// As shown to the person: `BCDF-GHJK`.
    pub user_code: String,
    /// Seconds.
    pub expires_in: u64,
    /// Seconds between polls.
    pub interval: u64,
}

/// A security key's sign-in challenge (the second factor after a password, or a passkey
/// sign-in): what a 428/102 carries besides the mock's fields.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KeyChallenge {
    /// Names the ceremony for `webauthn_verify` (single-use, expiring).
    pub mfa_token: String,
    /// The `PublicKeyCredentialRequestOptions` for `navigator.credentials.get` (base64url).
    #[serde(rename = "publicKey")]
    pub public_key: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed request: bad JSON, missing or wrong-typed fields.
    #[error("{0}")]
    BadRequest(String),
    /// A method that needs a signed-in connection was called without one.
    #[error("Authentication required: call rpc/auth or rpc/auth_token first.")]
    Unauthenticated,
    /// Unknown user or wrong password: deliberately one answer for both.
    #[error("Invalid credentials.")]
    InvalidCredentials,
    /// The token is unknown, revoked or expired.
    #[error("Invalid or expired token; authenticate again.")]
    InvalidToken,
    /// The MFA challenge token is unknown, used up or expired.
    #[error("Invalid or expired MFA token; call rpc/auth again.")]
    InvalidMfaToken,
    /// A wrong, reused or malformed one-time code.
    #[error("Invalid one-time code.")]
    InvalidOtp,
    /// The user exists and the credentials are right, but the account is disabled.
    #[error("User is disabled.")]
    Disabled,
    /// The user may not use this pool (the mock's 403, `err_code` 900).
    #[error("Insufficient permissions.")]
    InsufficientPermissions,
    /// An admin method called without the `admin` role (403, `err_code` 900).
    #[error("Admin role required.")]
    AdminRequired,
    /// A method that changes something, called by an auditor (403, `err_code` 900): auditors
    /// look, they change nothing.
    #[error("Admin role required: an auditor may look but change nothing.")]
    AuditorReadOnly,
    /// Step 1 refused: the pool cannot give this user a machine now, e.g. while a failed step
    /// 1 holds it back (the mock's 403, `err_code` 800). `retry_after`: seconds until the pool
    /// may be asked again (`failed_step_retry` after the failure), when that is known.
    #[error("Pool cannot be expanded.")]
    PoolCannotExpand { retry_after: Option<u64> },
    /// Step 1 refused: the pool's `schedule` has it closed now (403, `err_code` 820).
    /// `opens_at`: its next opening (epoch ms), when there is one within a week.
    #[error("The pool is closed now.")]
    PoolClosed { opens_at: Option<u64> },
    /// The pool may not be used from the client's address (`allow_from`; 403, `err_code`
    /// 821).
    #[error("The pool cannot be used from your network.")]
    PoolNotFromHere,
    /// Step 1 refused: the user already holds `max_desktops_per_user` desktops (403,
    /// `err_code` 822).
    #[error("You already hold the most desktops allowed ({limit}); give one back first.")]
    DesktopLimit { limit: usize },
    /// Step 2 asked for without a machine from step 1 (the mock's 409, `err_code` 801).
    #[error("No eligible machine found for user connection.")]
    NoEligibleMachine,
    /// Unknown namespace, method or object.
    #[error("{0}")]
    NotFound(String),
    /// A text frame over the configured limit.
    #[error("Frame too large: the limit is {limit} bytes.")]
    FrameTooLarge { limit: usize },
    /// Semantically invalid arguments (the mock's 422).
    #[error("{0}")]
    Unprocessable(String),
    /// A second factor is needed; `mfa_token` continues the login with rpc/otp_verify.
    #[error("MFA required.")]
    MfaRequired {
        kind: MfaKind,
        mfa_token: Option<String>,
    },
    /// A single sign-on user: the person signs in at the provider through the hand-off (the
    /// mock's 428, `err_code` 101, with where to sign in).
    #[error("MFA required.")]
    SsoRequired(Box<SsoHandoff>),
    /// A user who signs in with a security key after their password: answer the challenge with
    /// `webauthn_verify` (the mock's 428, `err_code` 102, with the request options).
    #[error("MFA required.")]
    KeyRequired(Box<KeyChallenge>),
    /// A security key's answer that does not hold: a wrong signature, origin or relying party,
    /// a key not registered to the user, a sign counter that went back (a cloned key).
    #[error("The security key's answer was refused.")]
    KeyRefused,
    /// A security key challenge that is unknown, used or expired.
    #[error("The security key challenge expired or was already used; sign in again.")]
    ChallengeExpired,
    /// An enrolment link's code that is unknown, used or expired.
    #[error("Invalid, used or expired enrolment link; ask an administrator for a new one.")]
    InvalidEnrolCode,
    /// The request conflicts with what is stored (the mock's 409).
    #[error("{0}")]
    Conflict(String),
    /// A hand-off's user code or the portal's one-time code that is unknown, used or expired.
    #[error("Invalid or expired sign-in code; start the sign-in again.")]
    InvalidSsoCode,
    /// The OpenID provider cannot be reached or answers nonsense; may be retried.
    #[error("The sign-in provider is unavailable; try again shortly.")]
    SsoUnavailable,
    /// Too many attempts.
    #[error("{0}")]
    RateLimited(String),
    /// The state store cannot be reached; the request may be retried.
    #[error("The state store is unavailable; try again shortly.")]
    Unavailable(#[source] crate::store::StoreError),
    /// The directory (LDAP) did not answer a sign-in in time, or failed; may be retried.
    #[error("The directory is unavailable; try again shortly.")]
    DirectoryUnavailable,
    /// Something broke on our side; the cause is logged, never sent.
    #[error("Internal server error.")]
    Internal(#[source] anyhow::Error),
}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        Error::Unavailable(e)
    }
}

impl Error {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Error::BadRequest(msg.into())
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Error::Internal(err.into())
    }

    /// The HTTP-like status code carried in `args.code`.
    pub fn code(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::Unauthenticated
            | Error::InvalidCredentials
            | Error::InvalidToken
            | Error::InvalidMfaToken
            | Error::InvalidOtp
            | Error::InvalidSsoCode
            | Error::KeyRefused
            | Error::ChallengeExpired
            | Error::InvalidEnrolCode => 401,
            Error::Disabled
            | Error::InsufficientPermissions
            | Error::AdminRequired
            | Error::AuditorReadOnly
            | Error::PoolCannotExpand { .. }
            | Error::PoolClosed { .. }
            | Error::PoolNotFromHere
            | Error::DesktopLimit { .. } => 403,
            Error::NotFound(_) => 404,
            Error::NoEligibleMachine | Error::Conflict(_) => 409,
            Error::FrameTooLarge { .. } => 413,
            Error::Unprocessable(_) => 422,
            Error::MfaRequired { .. } | Error::SsoRequired(_) | Error::KeyRequired(_) => 428,
            Error::RateLimited(_) => 429,
            Error::Internal(_) => 500,
            Error::Unavailable(_) | Error::DirectoryUnavailable | Error::SsoUnavailable => 503,
        }
    }

    /// The mock's numeric `err_code`, when the mock has one for this failure.
    pub fn err_code(&self) -> Option<u32> {
        match self {
            Error::InvalidCredentials => Some(ERR_CODE_DEFAULT),
            Error::InsufficientPermissions | Error::AdminRequired | Error::AuditorReadOnly => {
                Some(900)
            }
            Error::PoolCannotExpand { .. } => Some(800),
            Error::NoEligibleMachine => Some(801),
            Error::PoolClosed { .. } => Some(820),
            Error::PoolNotFromHere => Some(821),
            Error::DesktopLimit { .. } => Some(822),
            Error::InvalidOtp => Some(103),
            Error::MfaRequired { kind, .. } => Some(kind.err_code()),
            Error::SsoRequired(_) => Some(MfaKind::Adfs.err_code()),
            Error::KeyRequired(_) => Some(MfaKind::HardwareToken.err_code()),
            _ => None,
        }
    }

    /// The `args` object of an error envelope.
    pub fn to_args(&self) -> Value {
        let mut args = Map::new();
        args.insert("code".into(), json!(self.code()));
        args.insert("message".into(), json!(self.to_string()));
        if let Some(err_code) = self.err_code() {
            args.insert("err_code".into(), json!(err_code));
        }
        if let Error::PoolCannotExpand {
            retry_after: Some(secs),
        } = self
        {
            args.insert("retry_after".into(), json!(secs));
            args.insert(
                "detail".into(),
                json!(format!(
                    "The last request for a machine here failed; the pool can be asked again in {secs} s."
                )),
            );
        }
        if let Error::PoolClosed { opens_at } = self {
            args.extend(closed_fields(*opens_at));
        }
        if let Error::SsoRequired(handoff) = self {
            args.insert(
                "detail".into(),
                json!("Sign in at verification_uri with user_code (or open verification_uri_complete); the token then arrives on this socket."),
            );
            if let Value::Object(fields) = json!(handoff) {
                args.extend(fields);
            }
        }
        if let Error::KeyRequired(challenge) = self {
            args.insert(
                "detail".into(),
                json!("Answer publicKey with a security key (navigator.credentials.get) and send the credential with rpc/webauthn_verify and this mfa_token."),
            );
            if let Value::Object(fields) = json!(challenge) {
                args.extend(fields);
            }
        }
        if let Error::MfaRequired { kind, mfa_token } = self {
            match (kind, mfa_token) {
                (MfaKind::Otp, Some(token)) => {
                    args.insert("mfa_token".into(), json!(token));
                }
                (MfaKind::Adfs, _) => {
                    args.insert(
                        "detail".into(),
                        json!("This user signs in through ADFS, which cannot be completed over this API."),
                    );
                }
                (MfaKind::HardwareToken, _) => {
                    args.insert(
                        "detail".into(),
                        json!("This user signs in with a security key and has none registered yet: an administrator must send them an enrolment link (admin_enroll_key, or poolgate admin enroll-key USER)."),
                    );
                }
                (MfaKind::Otp, None) => {}
            }
        }
        Value::Object(args)
    }
}

/// What a `PoolClosed` refusal adds on both transports: the next opening and a sentence.
pub fn closed_fields(opens_at: Option<u64>) -> Map<String, Value> {
    let mut fields = Map::new();
    match opens_at {
        Some(ms) => {
            let at = crate::domain::clock::rfc3339(ms);
            fields.insert("opens_at".into(), json!(at));
            fields.insert(
                "detail".into(),
                json!(format!(
                    "The pool's schedule has it closed; it opens at {at}."
                )),
            );
        }
        None => {
            fields.insert(
                "detail".into(),
                json!("The pool's schedule has it closed, and it does not open within a week."),
            );
        }
    }
    fields
}
