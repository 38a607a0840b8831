//! The relying party against the real provider: discovery, the code flow driven over HTTP,
//! and each way a sign-in must fail.

use std::time::{Duration, Instant};

use poolgate::auth::oidc::{Callback, OidcClient, OidcError, OidcSettings, VerifiedIdentity};

use crate::agent::Agent;
use poolgate_test_common::oidc_provider::{
    ADMIN, CLIENT_SECRET, Client, MFA_USER, Options, PUBLIC_URL, Provider, SOLO, USER,
};

async fn discover(settings: &OidcSettings) -> OidcClient {
    OidcClient::discover(settings, PUBLIC_URL)
        .await
        .unwrap_or_else(|e| panic!("discovery fails: {e}"))
}

/// One whole sign-in as `who`: begin, the provider's login, finish.
async fn sign_in(client: &OidcClient, who: (&str, &str)) -> Result<VerifiedIdentity, OidcError> {
    let (url, pending) = client.begin(false);
    let query = Agent::new().sign_in(&url, who.0, who.1).await;
    client.finish(&pending, &Callback::from_query(&query)).await
}

pub async fn discovery_finds_the_endpoints_and_the_algorithms_each_client_may_accept() {
    let provider = Provider::start().await;
    let confidential = discover(&provider.settings(Client::Confidential)).await;
    let found = confidential.discovered();
    assert_eq!(found.issuer, provider.issuer);
    assert_eq!(found.token_endpoint, format!("{}/token", provider.issuer));
    assert_eq!(found.jwks_uri, format!("{}/jwks", provider.issuer));
    assert_eq!(
        found.end_session_endpoint.as_deref(),
        Some(format!("{}/session/end", provider.issuer).as_str())
    );
    assert_eq!(found.keys, 1);
    assert!(!found.public_client);
    // The provider advertises HS256 and RS256: a client with a secret may check either; a
    // public client has no secret to check HS256 with.
    assert_eq!(found.algorithms, ["HS256", "RS256"]);
    let public = discover(&provider.settings(Client::Public)).await;
    assert_eq!(public.discovered().algorithms, ["RS256"]);
    assert!(public.discovered().public_client);
}

pub async fn the_code_flow_gives_the_username_groups_and_admin_from_the_id_token() {
    let provider = Provider::start().await;
    let client = discover(&provider.settings(Client::Confidential)).await;
    let (url, pending) = client.begin(false);
    assert!(
        url.starts_with(&format!("{}/auth?", provider.issuer)),
        "{url}"
    );
    for part in [
        "response_type=code",
        "client_id=poolgate",
        "code_challenge_method=S256",
        "scope=openid+profile+email",
        "redirect_uri=http%3A%2F%2Flocalhost%3A9%2Foidc%2Fcallback",
    ] {
        assert!(url.contains(part), "{part} not in {url}");
    }
    assert!(
        !url.contains(&pending.pkce_verifier),
        "the verifier stays here"
    );
    let query = Agent::new().sign_in(&url, USER.0, USER.1).await;
    assert!(
        !query.contains("id_token") && !query.contains("access_token"),
        "{query}"
    );
    let user = client
        .finish(&pending, &Callback::from_query(&query))
        .await
        .unwrap();
    assert_eq!(user.issuer, provider.issuer);
    assert_eq!(user.subject, "sub-user-5");
    assert_eq!(user.username, "user-5");
    assert_eq!(user.groups, ["vdi-users"]);
    assert!(!user.admin);
    assert_eq!(user.amr, ["pwd"]);
    assert!(!format!("{user:?}").contains(user.id_token_hint.as_deref().unwrap()));
    // PendingLogin goes to the store and comes back.
    let stored = serde_json::to_string(&pending).unwrap();
    let back: poolgate::auth::oidc::PendingLogin = serde_json::from_str(&stored).unwrap();
    assert_eq!(back.state, pending.state);

    let admin = sign_in(&client, ADMIN).await.unwrap();
    assert_eq!((admin.username.as_str(), admin.admin), ("admin-1", true));
    assert_eq!(admin.groups, ["vdi-admins", "vdi-users"]);

    // RP-initiated logout, as the provider advertises it.
    let logout = client
        .end_session_url(
            admin.id_token_hint.as_deref(),
            Some(&format!("{PUBLIC_URL}/")),
            Some("after-logout"),
        )
        .unwrap();
    assert!(logout.starts_with(&format!("{}/session/end?", provider.issuer)));
    for part in ["id_token_hint=", "client_id=poolgate", "state=after-logout"] {
        assert!(logout.contains(part), "{part} not in {logout}");
    }
}

pub async fn a_public_client_signs_in_with_pkce_and_groups_may_be_one_string() {
    let provider = Provider::start().await;
    let mut settings = provider.settings(Client::Public);
    settings.trust_provider_mfa = true;
    let client = discover(&settings).await;
    let solo = sign_in(&client, SOLO).await.unwrap();
    assert_eq!(solo.username, "solo");
    assert_eq!(solo.groups, ["vdi-users"], "a string claim is one group");
    assert!(!solo.provider_mfa);
    let mfa = sign_in(&client, MFA_USER).await.unwrap();
    assert_eq!(mfa.amr, ["pwd", "mfa"]);
    assert!(mfa.provider_mfa, "trust_provider_mfa and amr mfa");
    // The PKCE verifier is what proves the code is this client's: another one is refused.
    let (url, mut pending) = client.begin(false);
    let query = Agent::new().sign_in(&url, USER.0, USER.1).await;
    pending.pkce_verifier = "x".repeat(64);
    let e = client
        .finish(&pending, &Callback::from_query(&query))
        .await
        .unwrap_err();
    assert!(matches!(e, OidcError::CodeRejected(_)), "{e:?}");
}

pub async fn a_wrong_state_or_nonce_and_a_replayed_code_are_refused() {
    let provider = Provider::start().await;
    let client = discover(&provider.settings(Client::Confidential)).await;

    // Another sign-in's answer (its state) is not this sign-in's.
    let (url, pending) = client.begin(false);
    let query = Agent::new().sign_in(&url, USER.0, USER.1).await;
    let (_, other) = client.begin(false);
    let e = client
        .finish(&other, &Callback::from_query(&query))
        .await
        .unwrap_err();
    assert_eq!(e, OidcError::StateMismatch);
    let mut no_state = Callback::from_query(&query);
    no_state.state = None;
    assert_eq!(
        client.finish(&pending, &no_state).await.unwrap_err(),
        OidcError::StateMismatch
    );

    // A sign-in left at the provider for longer than PENDING_TTL is over.
    let mut stale = pending.clone();
    stale.created -= chrono::Duration::minutes(11);
    let e = client
        .finish(&stale, &Callback::from_query(&query))
        .await
        .unwrap_err();
    assert_eq!(e, OidcError::LoginExpired);

    // A nonce that is not the one sent (the token was issued for another sign-in).
    let mut forged = pending.clone();
    forged.nonce = "another-nonce".into();
    let e = client
        .finish(&forged, &Callback::from_query(&query))
        .await
        .unwrap_err();
    assert_eq!(e, OidcError::NonceMismatch);
    assert_eq!(
        e.to_string(),
        "the ID token does not belong to this sign-in (nonce mismatch)"
    );

    // That exchange used the code: the provider refuses it now.
    let e = client
        .finish(&pending, &Callback::from_query(&query))
        .await
        .unwrap_err();
    let OidcError::CodeRejected(message) = &e else {
        panic!("{e:?}")
    };
    assert!(message.contains("invalid_grant"), "{message}");
    let code = Callback::from_query(&query).code.unwrap();
    assert!(
        !e.to_string().contains(&code),
        "no code in the message: {e}"
    );

    // A fresh sign-in's code works once and only once.
    let (url, pending) = client.begin(false);
    let query = Agent::new().sign_in(&url, USER.0, USER.1).await;
    let callback = Callback::from_query(&query);
    client.finish(&pending, &callback).await.unwrap();
    let e = client.finish(&pending, &callback).await.unwrap_err();
    assert!(matches!(e, OidcError::CodeRejected(_)), "{e:?}");
}

pub async fn expired_and_future_dated_id_tokens_are_refused() {
    let provider = Provider::start().await;
    let client = discover(&provider.settings(Client::Confidential)).await;
    // The provider's clock two hours behind: its tokens (an hour long) expired an hour ago.
    provider.set_clock(-7200).await;
    let e = sign_in(&client, USER).await.unwrap_err();
    assert!(matches!(e, OidcError::Expired(_)), "{e:?}");
    // Ten minutes ahead: issued in the future, beyond the minute of skew allowed.
    provider.set_clock(600).await;
    let e = sign_in(&client, USER).await.unwrap_err();
    assert!(matches!(e, OidcError::NotYetValid(_)), "{e:?}");
    // Thirty seconds ahead is within the skew.
    provider.set_clock(30).await;
    sign_in(&client, USER).await.unwrap();
}

pub async fn a_rotated_key_is_fetched_once_then_at_most_once_a_minute() {
    let provider = Provider::start().await;
    let client = discover(&provider.settings(Client::Confidential)).await;
    sign_in(&client, USER).await.unwrap();
    assert_eq!(
        provider.requests("/jwks").await,
        1,
        "discovery fetched the keys"
    );
    provider.rotate_keys().await;
    let user = sign_in(&client, USER).await.unwrap();
    assert_eq!(user.username, "user-5");
    assert_eq!(
        provider.requests("/jwks").await,
        2,
        "fetched again for the new kid"
    );
    sign_in(&client, ADMIN).await.unwrap();
    assert_eq!(
        provider.requests("/jwks").await,
        2,
        "a known kid fetches nothing"
    );
    // Another rotation within the minute: not fetched again (an attacker's made-up kids
    // cannot make poolgate hammer the provider), the token refused as of an unknown key.
    provider.rotate_keys().await;
    let e = sign_in(&client, USER).await.unwrap_err();
    assert_eq!(e, OidcError::UnknownKid);
    assert_eq!(provider.requests("/jwks").await, 2);
}

pub async fn tokens_of_another_issuer_or_audience_are_refused() {
    // The provider's discovery document says one issuer, its tokens another.
    let provider = Provider::start_with(Options {
        token_issuer_path: Some("/elsewhere"),
        ..Options::default()
    })
    .await;
    let client = discover(&provider.settings(Client::Confidential)).await;
    let (url, pending) = client.begin(false);
    let query = Agent::new().sign_in(&url, USER.0, USER.1).await;
    let mut callback = Callback::from_query(&query);
    // RFC 9207: the callback's iss names the other issuer (a mix-up) before any exchange.
    assert!(callback.iss.as_deref().unwrap().ends_with("/elsewhere"));
    let e = client.finish(&pending, &callback).await.unwrap_err();
    assert!(matches!(e, OidcError::WrongIssuer(_)), "{e:?}");
    // Without it, the ID token's iss is refused.
    callback.iss = None;
    let e = client.finish(&pending, &callback).await.unwrap_err();
    let OidcError::WrongIssuer(message) = &e else {
        panic!("{e:?}")
    };
    assert!(message.contains("/elsewhere"), "{message}");
    drop(provider);

    let provider = Provider::start_with(Options {
        id_token_audience: Some("someone-else"),
        ..Options::default()
    })
    .await;
    let client = discover(&provider.settings(Client::Confidential)).await;
    let e = sign_in(&client, USER).await.unwrap_err();
    let OidcError::WrongAudience(message) = &e else {
        panic!("{e:?}")
    };
    assert!(message.contains("someone-else"), "{message}");
}

pub async fn hs256_is_accepted_only_when_advertised() {
    // Advertised (and the client has the secret): accepted.
    let provider = Provider::start().await;
    let client = discover(&provider.settings(Client::Hs256)).await;
    assert_eq!(sign_in(&client, USER).await.unwrap().username, "user-5");
    drop(provider);
    // Not advertised: an HS256 token (signed with the client secret, which the client knows)
    // is refused.
    let provider = Provider::start_with(Options {
        advertise_algs: Some(vec!["RS256"]),
        ..Options::default()
    })
    .await;
    let client = discover(&provider.settings(Client::Hs256)).await;
    assert_eq!(client.discovered().algorithms, ["RS256"]);
    let e = sign_in(&client, USER).await.unwrap_err();
    let OidcError::DisallowedAlg(message) = &e else {
        panic!("{e:?}")
    };
    assert!(message.contains("HS256"), "{message}");
    assert!(!e.to_string().contains(CLIENT_SECRET));
    // A provider that advertises only `none` is not one poolgate can use.
    drop(provider);
    let provider = Provider::start_with(Options {
        advertise_algs: Some(vec!["none"]),
        ..Options::default()
    })
    .await;
    let e = OidcClient::discover(&provider.settings(Client::Confidential), PUBLIC_URL)
        .await
        .unwrap_err();
    let OidcError::BadDiscovery(message) = &e else {
        panic!("{e:?}")
    };
    assert!(
        message.contains("no ID token signing algorithm"),
        "{message}"
    );
}

pub async fn access_denied_at_the_provider_is_said_as_such() {
    let provider = Provider::start().await;
    let client = discover(&provider.settings(Client::Confidential)).await;
    let (url, pending) = client.begin(false);
    let query = Agent::new().cancel(&url).await;
    let e = client
        .finish(&pending, &Callback::from_query(&query))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        OidcError::AccessDenied(Some("End-User aborted interaction".into()))
    );
    assert_eq!(
        e.to_string(),
        "sign-in was refused at the provider (access_denied): End-User aborted interaction"
    );
}

pub async fn a_provider_down_or_silent_fails_within_the_timeout() {
    let mut provider = Provider::start().await;
    let settings = provider.settings(Client::Confidential);
    let client = discover(&settings).await;
    let (url, pending) = client.begin(false);
    let query = Agent::new().sign_in(&url, USER.0, USER.1).await;
    provider.stop().await;
    let started = Instant::now();
    let e = client
        .finish(&pending, &Callback::from_query(&query))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OidcError::Unreachable { what: "token endpoint", reason } if reason.contains("cannot connect")),
        "{e:?}"
    );
    assert!(e.is_provider_fault());
    assert!(started.elapsed() < Duration::from_secs(2));
    let e = OidcClient::discover(&settings, PUBLIC_URL)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            OidcError::Unreachable {
                what: "discovery",
                ..
            }
        ),
        "{e:?}"
    );

    // A provider that accepts and never answers: the timeout (2 s here), not a hang.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let mut silent_settings = settings.clone();
    silent_settings.issuer = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let e = OidcClient::discover(&silent_settings, PUBLIC_URL)
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(
        e,
        OidcError::Unreachable {
            what: "discovery",
            reason: "it did not answer in time".into()
        }
    );
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    held.abort();
}

pub async fn a_bad_discovery_document_is_said_plainly() {
    let provider = Provider::start().await;
    // An issuer whose discovery document is not there.
    let mut settings = provider.settings(Client::Confidential);
    settings.issuer = format!("{}/nowhere", provider.issuer);
    let e = OidcClient::discover(&settings, PUBLIC_URL)
        .await
        .unwrap_err();
    assert_eq!(
        e,
        OidcError::BadDiscovery("the discovery request was answered HTTP 404 Not Found".into())
    );
    // A server that redirects, answers something that is not a discovery document, or
    // names another issuer.
    for (answer, says) in [
        (
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
            "answered with a redirect (HTTP 302 Found), which poolgate does not follow",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\": true}",
            "is not valid JSON of the expected form",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 6\r\n\r\n<html>",
            "HTTP 200 OK, but",
        ),
    ] {
        let port = answer_once(answer).await;
        settings.issuer = format!("http://127.0.0.1:{port}");
        let e = OidcClient::discover(&settings, PUBLIC_URL)
            .await
            .unwrap_err();
        let OidcError::BadDiscovery(message) = &e else {
            panic!("{e:?}")
        };
        assert!(message.contains(says), "{message}");
    }
    // The provider's own document, fetched under another name of it (localhost): the
    // issuer it states is not the one configured.
    settings.issuer = format!("http://localhost:{}", provider.port);
    let e = OidcClient::discover(&settings, PUBLIC_URL)
        .await
        .unwrap_err();
    let OidcError::BadDiscovery(message) = &e else {
        panic!("{e:?}")
    };
    assert!(message.contains("issuer"), "{message}");
}

/// A server on a free port answering its first request with `answer`.
async fn answer_once(answer: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        if let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(answer.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    port
}

pub async fn check_config_connect_reports_what_the_provider_offers() {
    let provider = Provider::start().await;
    let settings = provider.settings(Client::Confidential);
    let dir = tempfile::tempdir().unwrap();
    let write = |issuer: &str| {
        let file = dir.path().join("poolgate.toml");
        std::fs::write(
            &file,
            format!(
                "data_dir = {data:?}\nstate = \"memory\"\npublic_url = \"{PUBLIC_URL}\"\n\n\
                 [oidc]\nissuer = \"{issuer}\"\nclient_id = \"poolgate\"\n\
                 client_secret_file = {secret:?}\ndisplay_name = \"Test sign-in\"\n",
                data = dir.path().join("data"),
                secret = settings.client_secret_file.as_ref().unwrap(),
            ),
        )
        .unwrap();
        file
    };
    let run = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_poolgate"))
            .args(["check-config", "--connect"])
            .arg(file)
            .env_remove("POOLGATE_OIDC_CLIENT_SECRET")
            .output()
            .unwrap()
    };
    let file = write(&provider.issuer);
    let out = tokio::task::spawn_blocking(move || run(&file))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        format!("oidc: issuer {}", provider.issuer),
        format!("oidc: token endpoint {}/token", provider.issuer),
        "oidc: ID token algorithms accepted: HS256, RS256".into(),
        format!(
            "oidc: sign-out at the provider: {}/session/end",
            provider.issuer
        ),
        format!("register the redirect URI {PUBLIC_URL}/oidc/callback"),
    ] {
        assert!(stdout.contains(&line), "{line:?} not in:\n{stdout}");
    }
    assert!(!stdout.contains(CLIENT_SECRET));

    let file = write(&format!("{}/nowhere", provider.issuer));
    let out = tokio::task::spawn_blocking(move || run(&file))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("oidc.issuer: the sign-in provider's discovery document is unusable"),
        "{stderr}"
    );
}
