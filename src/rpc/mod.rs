//! The RPC methods of the WebSocket endpoint and the one table that maps `(namespace, name)`
//! to them. Each method lives in its own file as a `parse` (args → typed request, 400 on
//! mismatch) and an `apply` (run it against the domain). `conn` holds what a connection knows
//! about itself and turns one text frame into one reply; the socket around it (timers, queue,
//! close codes) is `ws`'s, which calls [`handle_text`].

mod admin;
mod auth;
mod auth_clear;
mod auth_sso;
mod auth_token;
mod conn;
mod connect_info;
mod events;
mod identify;
mod keys;
mod launcher;
mod otp_verify;
mod pool_request;
mod pools;
mod record;
mod task;
mod tasks;

pub use conn::{Conn, handle_text, refusal};

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::Error;
use crate::state::AppState;

/// Expands the method table (below) into everything derived from it.
macro_rules! methods {
    (@public public) => { true };
    (@public signed_in) => { false };
    ($(
        $variant:ident = $ns:literal / $name:literal, $access:ident, $request:ty
            => |$command:pat_param, $ctx:ident| $apply:expr
    ),* $(,)?) => {
        /// Every method the endpoint knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Method {
            $($variant,)*
        }

        /// Every method, in table order (for tests and fuzzing).
        pub const METHODS: &[Method] = &[$(Method::$variant,)*];

        /// Every method's `namespace/name`, in table order: the metrics labels, by
        /// [`Method::index`].
        pub const METHOD_NAMES: &[&str] = &[$(concat!($ns, "/", $name),)*];

        impl Method {
            /// The dispatch table.
            pub fn lookup(namespace: &str, name: &str) -> Option<Method> {
                Some(match (namespace, name) {
                    $(($ns, $name) => Method::$variant,)*
                    _ => return None,
                })
            }

            /// `namespace/name`, for logs and metrics labels (no allocation per request).
            pub fn name(self) -> &'static str {
                match self {
                    $(Method::$variant => concat!($ns, "/", $name),)*
                }
            }

            /// The method's position in [`METHODS`] and [`METHOD_NAMES`].
            pub fn index(self) -> usize {
                self as usize
            }

            /// Methods that work on a connection that has not signed in.
            fn is_public(self) -> bool {
                match self {
                    $(Method::$variant => methods!(@public $access),)*
                }
            }
        }

        /// A parsed request, ready to run: one variant per method.
        pub enum Command {
            $($variant($request),)*
        }

        impl Command {
            /// Parses a method's arguments; mismatches are 400. Pure: the fuzz targets call it.
            pub fn parse(method: Method, args: &RawValue) -> Result<Command, Error> {
                Ok(match method {
                    $(Method::$variant => Command::$variant(<$request>::parse(args)?),)*
                })
            }

            /// Each method runs in a future of its own, boxed: inline, every request's future
            /// would be as large as the largest method's (8 KiB, moved into the socket loop's
            /// box on every message), where one small allocation of the method's own size is
            /// all a request needs.
            async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Reply, Error> {
                match self {
                    $(Command::$variant($command) => {
                        Box::pin(async move {
                            let $ctx = ctx;
                            IntoReply::into_reply($apply)
                        })
                        .await
                    })*
                }
            }
        }
    };
}

/// The request of a method without arguments: whatever was sent is ignored.
trait NoArgs: Sized {
    fn parse(args: &RawValue) -> Result<Self, Error>;
}

impl NoArgs for () {
    fn parse(_: &RawValue) -> Result<(), Error> {
        Ok(())
    }
}

/// What a method's `apply` returns: most build a `Value`, serialized here; the hot lookups
/// serialize straight into a [`Reply`].
trait IntoReply {
    fn into_reply(self) -> Result<Reply, Error>;
}

impl IntoReply for Result<Value, Error> {
    fn into_reply(self) -> Result<Reply, Error> {
        to_reply(self?)
    }
}

impl IntoReply for Result<Reply, Error> {
    fn into_reply(self) -> Result<Reply, Error> {
        self
    }
}

/// The context a method runs in.
pub struct Ctx<'a> {
    pub state: &'a AppState,
    pub conn: &'a mut Conn,
}

// The method table: one row per method, and the only place a method is named. Each row gives
// the method's variant, its `namespace/name`, who may call it (`public`: also before sign-in;
// `signed_in`), its request type (parsed from `args` by the type's `parse`; `()` when the
// method takes no arguments, which are then ignored as sysadm does) and how the parsed request
// runs. Lookup, names, the access rule, parsing, dispatch, `METHODS` and `METHOD_NAMES` (the
// metrics labels, by position) are derived from it.
methods! {
    Auth          = "rpc" / "auth",               public,    auth::Auth                => |c, ctx| c.apply(ctx).await,
    AuthToken     = "rpc" / "auth_token",         public,    auth_token::AuthToken     => |c, ctx| c.apply(ctx).await,
    AuthClear     = "rpc" / "auth_clear",         public,    ()                        => |_, ctx| auth_clear::AuthClear.apply(ctx).await,
    OtpVerify     = "rpc" / "otp_verify",         public,    otp_verify::OtpVerify     => |c, ctx| c.apply(ctx).await,
    AuthSso       = "rpc" / "auth_sso",           public,    ()                        => |_, ctx| auth_sso::apply(ctx).await,
    AuthSsoCode   = "rpc" / "auth_sso_code",      public,    auth_sso::AuthSsoCode     => |c, ctx| c.apply(ctx).await,
    Identify      = "rpc" / "identify",           public,    ()                        => |_, ctx| identify::apply(ctx),
    Subscribe     = "events" / "subscribe",       signed_in, events::Subscription      => |c, ctx| c.apply(ctx, true),
    Unsubscribe   = "events" / "unsubscribe",     signed_in, events::Subscription      => |c, ctx| c.apply(ctx, false),
    Pools         = "rpc" / "pools",              signed_in, pools::Pools              => |c, ctx| c.apply(ctx),
    PoolRequest   = "rpc" / "pool_request",       signed_in, pool_request::PoolRequest => |c, ctx| c.apply(ctx).await,
    ConnectInfo   = "rpc" / "connect_info",       signed_in, connect_info::ConnectInfo => |c, ctx| c.apply(ctx).await,
    Launcher      = "rpc" / "launcher",           signed_in, launcher::LauncherRequest => |c, ctx| c.apply(ctx).await,
    Task          = "rpc" / "task",               signed_in, task::TaskLookup          => |c, ctx| c.apply(ctx).await,
    Tasks         = "rpc" / "tasks",              signed_in, ()                        => |_, ctx| tasks::Tasks.apply(ctx).await,
    Me            = "rpc" / "me",                 signed_in, ()                        => |_, ctx| admin::me(ctx),
    AdminSessions = "rpc" / "admin_sessions",     signed_in, ()                        => |_, ctx| admin::sessions(ctx).await,
    AdminRevoke   = "rpc" / "admin_revoke",       signed_in, admin::Revoke             => |c, ctx| c.apply(ctx).await,
    AdminTasks    = "rpc" / "admin_tasks",        signed_in, ()                        => |_, ctx| admin::tasks(ctx).await,
    AdminRelease  = "rpc" / "admin_release",      signed_in, admin::Release            => |c, ctx| c.apply(ctx).await,
    AdminReset    = "rpc" / "admin_reset",        signed_in, admin::Reset              => |c, ctx| c.apply(ctx).await,
    AdminTotp     = "rpc" / "admin_totp",         signed_in, admin::Totp               => |c, ctx| c.apply(ctx).await,
    AdminUnpinSso = "rpc" / "admin_unpin_sso",    signed_in, admin::UnpinSso           => |c, ctx| c.apply(ctx).await,
    AdminAudit    = "rpc" / "admin_audit",        signed_in, admin::AuditQuery         => |c, ctx| c.apply(ctx).await,
    WebauthnBegin = "rpc" / "webauthn_begin",     public,    ()                        => |_, ctx| keys::begin(ctx).await,
    WebauthnVerify = "rpc" / "webauthn_verify",   public,    keys::Verify              => |c, ctx| c.apply(ctx).await,
    KeyRegBegin   = "rpc" / "key_register_begin", public,    keys::RegisterBegin       => |c, ctx| c.apply(ctx).await,
    KeyRegFinish  = "rpc" / "key_register_finish", public,   keys::RegisterFinish      => |c, ctx| c.apply(ctx).await,
    Keys          = "rpc" / "keys",               signed_in, ()                        => |_, ctx| keys::list(ctx).await,
    KeyRemove     = "rpc" / "key_remove",         signed_in, keys::Remove              => |c, ctx| c.apply(ctx).await,
    AdminEnrollKey = "rpc" / "admin_enroll_key",  signed_in, keys::AdminEnroll         => |c, ctx| c.apply(ctx).await,
    AdminKeys     = "rpc" / "admin_keys",         signed_in, keys::AdminKeys           => |c, ctx| c.apply(ctx).await,
    AdminRemoveKey = "rpc" / "admin_remove_key",  signed_in, keys::AdminRemove         => |c, ctx| c.apply(ctx).await,
}

/// Runs one request: lookup (404), authentication (401), argument parsing (400), then the
/// method itself. A successful authenticated request slides the session's inactivity window.
/// `method` is `Method::lookup(namespace, name)`, done once by the caller (which also labels
/// its metrics with it).
pub async fn dispatch(
    ctx: &mut Ctx<'_>,
    method: Option<Method>,
    namespace: &str,
    name: &str,
    args: &RawValue,
) -> Result<Reply, Error> {
    let Some(method) = method else {
        return Err(Error::NotFound(format!(
            "Unknown method {namespace}/{name}."
        )));
    };
    // A hand-off done since the last request signs the socket in first. (This and the two
    // checks below are rare and their futures large — a store or a directory round trip —
    // so each is boxed, keeping every request's own future small.)
    if ctx.conn.sso.is_some() {
        Box::pin(ctx.conn.adopt_sso(ctx.state)).await;
    }
    let ttl = ctx.state.auth.tokens.ttl();
    let auth = &ctx.state.auth;
    // Expired, revoked, past session_max_age, or — a directory user's, when its re-check is
    // due — no longer admitted by the directory.
    let ended = match ctx.conn.session.clone() {
        Some(session) if !session.is_live(ttl) => {
            !Box::pin(auth.tokens.still_live(&session)).await?
        }
        Some(session) if auth.recheck_due(&session) => {
            !Box::pin(auth.session_confirmed(&session)).await
        }
        _ => false,
    };
    if ended {
        ctx.conn.clear_session(ctx.state);
        if !method.is_public() {
            return Err(Error::InvalidToken);
        }
    }
    if !method.is_public() && ctx.conn.session.is_none() {
        return Err(Error::Unauthenticated);
    }
    let before = record::before(ctx, method);
    let result = match Command::parse(method, args) {
        Ok(command) => command.apply(ctx).await,
        Err(e) => Err(e),
    };
    record::after(ctx, method, args, before, &result);
    if result.is_ok()
        && let Some(session) = &ctx.conn.session
    {
        session.touch();
    }
    result
}

/// Deserializes `args` into a method's request type; mismatches are 400 with serde's message.
fn parse_args<T: DeserializeOwned>(args: &RawValue) -> Result<T, Error> {
    serde_json::from_str(args.get()).map_err(|e| Error::bad_request(format!("Invalid args: {e}.")))
}

/// The reply of every successful sign-in: the token and its inactivity lifetime in seconds.
fn token_reply(token: &str, state: &AppState) -> Value {
    let ttl = state.auth.tokens.ttl();
    serde_json::json!([token, ttl.as_secs_f64().ceil() as u64])
}

/// Counts a failed sign-in on this socket, or refuses once the socket has used its allowance.
fn guard_auth_attempt(ctx: &Ctx<'_>) -> Result<(), Error> {
    if ctx.conn.auth_failures >= ctx.state.config.max_auth_failures {
        return Err(Error::RateLimited(
            "Too many failed sign-in attempts on this connection; open a new one later.".into(),
        ));
    }
    Ok(())
}

/// Records the outcome of a sign-in attempt on the connection.
fn record_auth_outcome(ctx: &mut Ctx<'_>, result: &Result<Value, Error>) {
    if let Err(
        Error::InvalidCredentials
        | Error::InvalidOtp
        | Error::InvalidToken
        | Error::InvalidMfaToken
        | Error::InvalidSsoCode
        | Error::KeyRefused
        | Error::InvalidEnrolCode,
    ) = result
    {
        ctx.conn.auth_failures += 1;
    }
}

/// The signed-in user; dispatch guarantees one for non-public methods.
fn user<'a>(ctx: &'a Ctx<'_>) -> Result<&'a Arc<crate::auth::users::User>, Error> {
    ctx.conn
        .session
        .as_ref()
        .map(|s| &s.user)
        .ok_or(Error::Unauthenticated)
}

/// A method's successful result, as the JSON that goes into the reply's `args`: rendered for
/// this request, or shared with the cache it was rendered into once (a `pools` listing, a
/// task, a machine's connection data), which costs a reference count instead of a copy.
pub enum Reply {
    Owned(Box<RawValue>),
    Shared(Arc<RawValue>),
}

impl std::ops::Deref for Reply {
    type Target = RawValue;

    fn deref(&self) -> &RawValue {
        match self {
            Reply::Owned(json) => json,
            Reply::Shared(json) => json,
        }
    }
}

impl From<Arc<RawValue>> for Reply {
    fn from(json: Arc<RawValue>) -> Self {
        Reply::Shared(json)
    }
}

/// Serializes a result; failure here is a bug, reported as a 500.
fn to_reply(v: impl serde::Serialize) -> Result<Reply, Error> {
    serde_json::value::to_raw_value(&v)
        .map(Reply::Owned)
        .map_err(Error::internal)
}

/// Issues a token for a user who just passed authentication and binds it to the connection.
async fn sign_in(ctx: &mut Ctx<'_>, user: Arc<crate::auth::users::User>) -> Result<Value, Error> {
    let peer = ctx.conn.peer.ip().to_string();
    let (token, session) = ctx.state.auth.tokens.issue(user, &peer).await?;
    tracing::info!(conn_id = ctx.conn.id, user = %session.user.username, peer = %ctx.conn.peer, "signed in");
    ctx.conn.set_session(ctx.state, session).await;
    Ok(token_reply(&token, ctx.state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_found_by_its_own_name_at_its_own_position() {
        assert_eq!(METHODS.len(), METHOD_NAMES.len());
        for (index, &method) in METHODS.iter().enumerate() {
            let (namespace, name) = method.name().split_once('/').unwrap();
            assert_eq!(Method::lookup(namespace, name), Some(method));
            assert_eq!(method.index(), index);
            assert_eq!(METHOD_NAMES[index], method.name());
        }
        assert_eq!(Method::lookup("events", "auth"), None);
    }
}

#[cfg(test)]
mod future_sizes {
    /// A request's future is moved into a box for every message a socket sends: the rare,
    /// large parts (a directory re-check, a store round trip, each method's own work) are
    /// boxed inside it, so it stays small. (It was 8 288 bytes before they were.)
    #[tokio::test]
    async fn a_requests_future_stays_small() {
        let mut config = crate::config::Config::demo();
        config.state = "memory".parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        config.data_dir = dir.path().to_path_buf();
        let state = crate::state::AppState::new(config).await.unwrap();
        let mut conn = super::conn::Conn::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            None,
            crate::events::Outbox::new(16),
        );
        let request = super::conn::handle_text(&state, &mut conn, "{}");
        let size = std::mem::size_of_val(&request);
        assert!(size <= 2048, "a request's future is {size} bytes");
    }
}
