//! Single sign-on with OpenID Connect: poolgate as a relying party of the organisation's
//! provider (ADFS, Entra ID, Keycloak…), and the codes of the browser hand-off that signs in
//! thin clients.
//!
//! The flow is the authorization code flow with PKCE (S256): [`OidcClient::begin`] gives the
//! URL to send the browser to and a [`PendingLogin`] (random `state` and `nonce`, the PKCE
//! verifier) that the caller keeps server-side and uses once; [`OidcClient::finish`] checks
//! the callback (`state`, the provider's error, RFC 9207's `iss`), exchanges the code and
//! verifies the ID token — its signature with an algorithm the provider advertised (never
//! `none`; HS* only with a client secret), `iss`, `aud`, `exp`, an `iat` not in the future
//! beyond [`client::CLOCK_SKEW`], `nonce` — and reads the identity from it (ADFS's userinfo
//! holds only `sub`). An unknown `kid` fetches the provider's keys again, at most once per
//! [`client::JWKS_REFETCH_EVERY`] (key rollover). The HTTP client never follows redirects
//! and every request ends within `oidc.timeout`.
//!
//! Every refusal is an [`OidcError`] whose message names the cause and holds no secret, code
//! or token.

mod claims;
mod client;
mod error;
mod http;
mod settings;
pub mod user_code;

pub use claims::VerifiedIdentity;
pub use client::{
    CLOCK_SKEW, Callback, Discovered, JWKS_REFETCH_EVERY, OidcClient, PENDING_TTL, PendingLogin,
};
pub use error::OidcError;
pub use http::client as http_client;
pub use settings::{
    CALLBACK_PATH, CLIENT_SECRET_ENV, HandoffSettings, OidcSettings, validate_issuer,
    validate_public_url,
};
