//! The relying party: discovery, the authorization request, the code exchange and the ID
//! token's checks, on the `openidconnect` crate.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreErrorResponseType, CoreIdToken, CoreIdTokenVerifier,
    CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    AuthType, AuthUrl, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, EndSessionUrl, EndpointNotSet, EndpointSet, HttpClientError, IssuerUrl,
    JsonWebKeySetUrl, LogoutRequest, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    PostLogoutRedirectUrl, ProviderMetadataWithLogout, RedirectUrl, RequestTokenError, Scope,
    SignatureVerificationError, TokenResponse, TokenUrl, reqwest,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::claims::{self, VerifiedIdentity};
use super::error::{OidcError, outside_text};
use super::http;
use super::settings::OidcSettings;

/// How long a sign-in may stay at the provider between [`OidcClient::begin`] and
/// [`OidcClient::finish`].
pub const PENDING_TTL: Duration = Duration::from_secs(10 * 60);

/// How far in the future an ID token's `iat` may lie (clocks differ a little).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The least time between two fetches of the provider's keys for an unknown `kid`.
pub const JWKS_REFETCH_EVERY: Duration = Duration::from_secs(60);

/// Marks the `iat` check's refusal among openidconnect's "expired" errors.
const FUTURE_MARK: &str = "iat in the future: ";

/// The client with the endpoints a code flow needs (authorization and token).
type Rp = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointNotSet,
>;

/// A sign-in begun: what the server keeps (server-side, used once) until the provider sends
/// the browser back. Holds secrets (the PKCE verifier, the nonce): never shown by `Debug`.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingLogin {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub created: DateTime<Utc>,
    /// Whether the person must have signed in at the provider for this very sign-in (a
    /// device's hand-off: `prompt=login`, `max_age=0`, `auth_time` checked).
    #[serde(default)]
    pub fresh: bool,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// The query of the provider's redirect to `{public_url}/oidc/callback`.
#[derive(Default, Clone, Deserialize)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    /// RFC 9207: the issuer that answered (mix-up defence), when the provider sends it.
    pub iss: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl Callback {
    /// Reads a callback's query string (`code=…&state=…`, without the `?`).
    pub fn from_query(query: &str) -> Self {
        let mut callback = Callback::default();
        for (key, value) in openidconnect::url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match &*key {
                "code" => &mut callback.code,
                "state" => &mut callback.state,
                "iss" => &mut callback.iss,
                "error" => &mut callback.error,
                "error_description" => &mut callback.error_description,
                _ => continue,
            };
            slot.get_or_insert_with(|| value.into_owned());
        }
        callback
    }
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// What discovery found, for `check-config --connect` and the logs.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub end_session_endpoint: Option<String>,
    /// The ID token signing algorithms poolgate accepts (those advertised that it can check).
    pub algorithms: Vec<String>,
    pub keys: usize,
    pub public_client: bool,
}

/// The provider people sign in at, discovered and ready.
pub struct OidcClient {
    settings: OidcSettings,
    client: Rp,
    secret: Option<ClientSecret>,
    issuer: IssuerUrl,
    jwks_uri: JsonWebKeySetUrl,
    jwks: std::sync::RwLock<CoreJsonWebKeySet>,
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    algorithms: Vec<CoreJwsSigningAlgorithm>,
    end_session: Option<EndSessionUrl>,
    http: reqwest::Client,
    discovered: Discovered,
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClient")
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

impl OidcClient {
    /// Reads the secret and the CA file, fetches the discovery document and the keys. The
    /// redirect URI is `{public_url}/oidc/callback`.
    pub async fn discover(settings: &OidcSettings, public_url: &str) -> Result<Self, OidcError> {
        settings
            .validate(Some(public_url))
            .map_err(|e| OidcError::BadDiscovery(format!("settings: {e:#}")))?;
        let secret = settings
            .client_secret()
            .map_err(|e| OidcError::BadDiscovery(format!("{e:#}")))?
            .map(ClientSecret::new);
        let http = http::client(settings).map_err(|e| OidcError::BadDiscovery(format!("{e:#}")))?;
        let issuer = IssuerUrl::new(settings.issuer.clone())
            .map_err(|e| OidcError::BadDiscovery(format!("oidc.issuer: {e}")))?;
        let metadata = ProviderMetadataWithLogout::discover_async(issuer.clone(), &http)
            .await
            .map_err(|e| http::discovery_error("discovery", e))?;
        let algorithms = accepted_algorithms(&metadata, secret.is_some())?;
        let token_url = metadata.token_endpoint().cloned().ok_or_else(|| {
            OidcError::BadDiscovery("it names no token_endpoint (the code flow needs one)".into())
        })?;
        let redirect = RedirectUrl::new(OidcSettings::redirect_uri(public_url))
            .map_err(|e| OidcError::BadDiscovery(format!("public_url: {e}")))?;
        let client = build_client(settings, &metadata, token_url.clone(), secret.clone())
            .set_redirect_uri(redirect);
        let end_session = metadata.additional_metadata().end_session_endpoint.clone();
        let discovered = Discovered {
            issuer: metadata.issuer().to_string(),
            authorization_endpoint: metadata.authorization_endpoint().to_string(),
            token_endpoint: token_url.to_string(),
            jwks_uri: metadata.jwks_uri().to_string(),
            end_session_endpoint: end_session.as_ref().map(|u| u.to_string()),
            algorithms: algorithms.iter().map(alg_name).collect(),
            keys: metadata.jwks().keys().len(),
            public_client: secret.is_none(),
        };
        Ok(OidcClient {
            settings: settings.clone(),
            client,
            secret,
            issuer,
            jwks_uri: metadata.jwks_uri().clone(),
            jwks: std::sync::RwLock::new(metadata.jwks().clone()),
            last_refetch: tokio::sync::Mutex::new(None),
            algorithms,
            end_session,
            http,
            discovered,
        })
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    /// What discovery found.
    pub fn discovered(&self) -> &Discovered {
        &self.discovered
    }

    /// Starts a sign-in: the URL to send the browser to, and what to keep until it comes
    /// back (PKCE S256; `state` and `nonce` random).
    ///
    /// With `fresh`, the provider is asked to have the person sign in again even if it has a
    /// session for them (`prompt=login`): a thin client's hand-off is never completed by a
    /// click on a link alone.
    pub fn begin(&self, fresh: bool) -> (String, PendingLogin) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = self
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in self.settings.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        if fresh {
            // Both: not every provider honours `prompt=login`; `max_age=0` makes it say when
            // the person signed in (`auth_time`), which `finish` checks.
            request = request
                .add_prompt(openidconnect::core::CoreAuthPrompt::Login)
                .add_extra_param("max_age", "0");
        }
        let (url, state, nonce) = request.url();
        let pending = PendingLogin {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            created: Utc::now(),
            fresh,
        };
        (url.to_string(), pending)
    }

    /// Completes a sign-in begun with [`OidcClient::begin`] (whose `pending` the caller has
    /// taken out of its store: it is single-use): checks the callback, exchanges the code,
    /// verifies the ID token and reads the identity from it.
    pub async fn finish(
        &self,
        pending: &PendingLogin,
        callback: &Callback,
    ) -> Result<VerifiedIdentity, OidcError> {
        let code = self.check_callback(pending, callback)?;
        let request = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()));
        let response = request
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let id_token = response.id_token().ok_or_else(|| {
            OidcError::Incomplete("the token endpoint returned no ID token".into())
        })?;
        let nonce = Nonce::new(pending.nonce.clone());
        self.verify(id_token, &nonce).await?;
        let identity = claims::identity(&self.settings, &self.issuer, id_token)?;
        // A device's sign-in: the person signed in at the provider after it began (a minute of
        // clock skew allowed).
        let began = pending.created.timestamp() - 60;
        if pending.fresh && identity.auth_time.is_none_or(|at| at < began) {
            return Err(OidcError::NotFresh);
        }
        Ok(identity)
    }

    /// The callback's own checks, before anything is sent: the provider's error, `state`,
    /// `iss`, the sign-in's age. Returns the code.
    fn check_callback<'c>(
        &self,
        pending: &PendingLogin,
        callback: &'c Callback,
    ) -> Result<&'c str, OidcError> {
        let state = callback.state.as_deref().unwrap_or_default();
        if !bool::from(state.as_bytes().ct_eq(pending.state.as_bytes())) || state.is_empty() {
            return Err(OidcError::StateMismatch);
        }
        if let Some(error) = &callback.error {
            let description = callback.error_description.as_deref().map(outside_text);
            return Err(match error.as_str() {
                "access_denied" => OidcError::AccessDenied(description),
                other => OidcError::ProviderError {
                    error: outside_text(other),
                    description,
                },
            });
        }
        if let Some(iss) = &callback.iss
            && iss != self.issuer.as_str()
        {
            return Err(OidcError::WrongIssuer(format!(
                "the callback's iss is {:?}, not {:?} (a mix-up of providers?)",
                outside_text(iss),
                self.issuer.as_str()
            )));
        }
        let age = Utc::now().signed_duration_since(pending.created);
        if age.to_std().is_ok_and(|age| age > PENDING_TTL) {
            return Err(OidcError::LoginExpired);
        }
        callback
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| OidcError::Incomplete("the callback carries no code".into()))
    }

    /// Checks the ID token; a `kid` not in the key set fetches the keys again (at most once per
    /// [`JWKS_REFETCH_EVERY`]) and checks once more.
    async fn verify(&self, id_token: &CoreIdToken, nonce: &Nonce) -> Result<(), OidcError> {
        match self.verify_with_current_keys(id_token, nonce) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {}
            other => return other.map_err(claims_error),
        }
        if !self.refetch_keys().await? {
            return Err(OidcError::UnknownKid);
        }
        self.verify_with_current_keys(id_token, nonce)
            .map_err(claims_error)
    }

    fn verify_with_current_keys(
        &self,
        id_token: &CoreIdToken,
        nonce: &Nonce,
    ) -> Result<(), ClaimsVerificationError> {
        let jwks = self.jwks.read().unwrap_or_else(|e| e.into_inner()).clone();
        let client_id = ClientId::new(self.settings.client_id.clone());
        let verifier = match &self.secret {
            Some(secret) => CoreIdTokenVerifier::new_confidential_client(
                client_id,
                secret.clone(),
                self.issuer.clone(),
                jwks,
            ),
            None => CoreIdTokenVerifier::new_public_client(client_id, self.issuer.clone(), jwks),
        }
        .set_allowed_algs(self.algorithms.clone())
        .set_issue_time_verifier_fn(|iat: DateTime<Utc>| {
            let latest = Utc::now() + CLOCK_SKEW;
            if iat > latest {
                Err(format!(
                    "{FUTURE_MARK}issued at {iat}, later than the {} s of clock skew allowed",
                    CLOCK_SKEW.as_secs()
                ))
            } else {
                Ok(())
            }
        });
        id_token.claims(&verifier, nonce).map(|_| ())
    }

    /// Fetches the provider's keys again, unless that was done less than
    /// [`JWKS_REFETCH_EVERY`] ago. Whether they were fetched.
    async fn refetch_keys(&self) -> Result<bool, OidcError> {
        let mut last = self.last_refetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < JWKS_REFETCH_EVERY) {
            return Ok(false);
        }
        *last = Some(Instant::now());
        let jwks = CoreJsonWebKeySet::fetch_async(&self.jwks_uri, &self.http)
            .await
            .map_err(|e| http::discovery_error("signing keys", e))?;
        tracing::info!(
            issuer = %self.settings.issuer,
            keys = jwks.keys().len(),
            "an ID token named an unknown signing key: the provider's keys were fetched again"
        );
        *self.jwks.write().unwrap_or_else(|e| e.into_inner()) = jwks;
        Ok(true)
    }

    /// Where to send a browser to sign out at the provider too (RP-initiated logout), when it
    /// advertises an `end_session_endpoint`.
    pub fn end_session_url(
        &self,
        id_token_hint: Option<&str>,
        post_logout_redirect_uri: Option<&str>,
        state: Option<&str>,
    ) -> Option<String> {
        let mut request = LogoutRequest::from(self.end_session.clone()?)
            .set_client_id(ClientId::new(self.settings.client_id.clone()));
        if let Some(token) = id_token_hint.and_then(|t| t.parse::<CoreIdToken>().ok()) {
            request = request.set_id_token_hint(&token);
        }
        if let Some(uri) =
            post_logout_redirect_uri.and_then(|u| PostLogoutRedirectUrl::new(u.to_owned()).ok())
        {
            request = request.set_post_logout_redirect_uri(uri);
        }
        if let Some(state) = state {
            request = request.set_state(CsrfToken::new(state.to_owned()));
        }
        Some(request.http_get_url().to_string())
    }
}

/// The client of the code flow, authenticating at the token endpoint the way the provider
/// advertises (`client_secret_basic` unless it lists only `client_secret_post`).
fn build_client(
    settings: &OidcSettings,
    metadata: &ProviderMetadataWithLogout,
    token_url: TokenUrl,
    secret: Option<ClientSecret>,
) -> Rp {
    let methods = metadata.token_endpoint_auth_methods_supported();
    let post_only = methods.is_some_and(|m| {
        let names: Vec<String> = m.iter().map(serde_plain_name).collect();
        names.iter().any(|n| n == "client_secret_post")
            && !names.iter().any(|n| n == "client_secret_basic")
    });
    let client = CoreClient::new(
        ClientId::new(settings.client_id.clone()),
        metadata.issuer().clone(),
        CoreJsonWebKeySet::new(Vec::new()),
    )
    .set_auth_uri(AuthUrl::from_url(
        metadata.authorization_endpoint().url().clone(),
    ))
    .set_token_uri(token_url);
    let client = match secret {
        Some(secret) => client.set_client_secret(secret),
        None => client,
    };
    if post_only {
        client.set_auth_type(AuthType::RequestBody)
    } else {
        client
    }
}

/// The algorithms an ID token may be signed with: those the provider advertises, never
/// `none`, and the shared-secret ones (HS*) only for a client that has a secret.
fn accepted_algorithms(
    metadata: &ProviderMetadataWithLogout,
    has_secret: bool,
) -> Result<Vec<CoreJwsSigningAlgorithm>, OidcError> {
    let advertised = metadata.id_token_signing_alg_values_supported();
    let accepted: Vec<CoreJwsSigningAlgorithm> = advertised
        .iter()
        .filter(|alg| **alg != CoreJwsSigningAlgorithm::None)
        .filter(|alg| has_secret || !is_shared_secret(alg))
        .cloned()
        .collect();
    if accepted.is_empty() {
        return Err(OidcError::BadDiscovery(format!(
            "it advertises no ID token signing algorithm poolgate can check \
             (id_token_signing_alg_values_supported: {})",
            advertised
                .iter()
                .map(alg_name)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(accepted)
}

fn is_shared_secret(alg: &CoreJwsSigningAlgorithm) -> bool {
    matches!(
        alg,
        CoreJwsSigningAlgorithm::HmacSha256
            | CoreJwsSigningAlgorithm::HmacSha384
            | CoreJwsSigningAlgorithm::HmacSha512
    )
}

fn alg_name(alg: &CoreJwsSigningAlgorithm) -> String {
    serde_plain_name(alg)
}

/// A value's JSON string form (`"RS256"` → `RS256`).
fn serde_plain_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// A failed code exchange, in the person's words.
fn token_error(
    error: RequestTokenError<
        HttpClientError<reqwest::Error>,
        openidconnect::StandardErrorResponse<CoreErrorResponseType>,
    >,
) -> OidcError {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let description = response
                .error_description()
                .map(|d| format!(" ({})", outside_text(d)))
                .unwrap_or_default();
            OidcError::CodeRejected(match response.error() {
                CoreErrorResponseType::InvalidGrant => format!(
                    "invalid_grant: the code is wrong, expired or was used already{description}"
                ),
                CoreErrorResponseType::InvalidClient => format!(
                    "invalid_client: the provider does not accept poolgate's client_id and \
                     secret{description}"
                ),
                other => format!("{}{description}", outside_text(other.as_ref())),
            })
        }
        RequestTokenError::Request(e) => http::request_error("token endpoint", e),
        RequestTokenError::Parse(..) => {
            OidcError::Incomplete("the token endpoint's answer is not a token response".into())
        }
        RequestTokenError::Other(m) => OidcError::CodeRejected(outside_text(&m)),
    }
}

/// A refused ID token, by cause.
fn claims_error(error: ClaimsVerificationError) -> OidcError {
    use ClaimsVerificationError as C;
    use SignatureVerificationError as S;
    match error {
        C::Expired(m) => match m.strip_prefix(FUTURE_MARK) {
            Some(m) => OidcError::NotYetValid(m.to_owned()),
            None => OidcError::Expired(m),
        },
        C::InvalidAudience(m) => OidcError::WrongAudience(m),
        C::InvalidIssuer(m) => OidcError::WrongIssuer(m),
        C::InvalidNonce(_) => OidcError::NonceMismatch,
        C::SignatureVerification(S::DisallowedAlg(m) | S::UnsupportedAlg(m)) => {
            OidcError::DisallowedAlg(m)
        }
        C::SignatureVerification(S::NoSignature) => {
            OidcError::DisallowedAlg("the token is unsigned (alg none)".into())
        }
        C::SignatureVerification(S::NoMatchingKey) => OidcError::UnknownKid,
        C::SignatureVerification(e) => OidcError::BadSignature(e.to_string()),
        other => OidcError::BadSignature(other.to_string()),
    }
}
