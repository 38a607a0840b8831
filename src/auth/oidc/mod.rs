//! Single sign-on with OpenID Connect: the `[oidc]` settings, and the codes of the browser
//! hand-off that signs in thin clients.

mod settings;
pub mod user_code;

pub use settings::{
    CALLBACK_PATH, CLIENT_SECRET_ENV, HandoffSettings, OidcSettings, validate_issuer,
    validate_public_url,
};
