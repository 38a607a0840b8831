//! Cases from a hostile review of TOTP for directory users (commit 499bcc9). Those marked
//! "Was:" failed there — an enrolment was a list of names, each name its own user — and hold
//! since a directory user is their entry (entryUUID / objectGUID); the last one held
//! already.

use serde_json::{Value, json};

use crate::app::{app_with_directory, ws_auth};
use crate::helpers::*;
use crate::slapd::*;
use crate::totp::{admin, code, enrol, rest_login};

/// Was: OpenLDAP's caseIgnoreMatch (RFC 4518 string preparation: NFKC, Unicode case
/// folding) finds uid=alice for "ａｌｉｃｅ" (full-width) and "ALİCE" (dotted capital I), while
/// `account_name` only compares ASCII-case-insensitively: the sign-in gets the typed name, a
/// user id of its own (not enrolled), and alice's entry, groups and pools — with the password
/// alone. (The lockout is keyed by that same typed name, so it is a fresh counter too.)
pub async fn a_unicode_variant_of_an_enrolled_name_is_asked_for_the_code() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |c| c.lockout_attempts = 50).await;
    let mut bob = admin(&app).await;
    enrol(&mut bob, json!({"username": "alice"})).await;
    // The plain name is challenged (what the feature promises).
    let mut c = app.connect().await;
    assert_eq!(
        error_code(&ws_auth(&mut c, "alice", "alice-pw", Some(true)).await),
        428
    );
    let mut bypassed = Vec::new();
    for variant in ["ａｌｉｃｅ", "ALİCE"] {
        let mut c = app.connect().await;
        let reply = ws_auth(&mut c, variant, "alice-pw", Some(true)).await;
        if reply["name"] == "response" {
            let pools = c.rpc("pools", json!({})).await;
            bypassed.push(format!(
                "ws {variant:?}: signed in without a code ({reply}); pools {pools}"
            ));
        }
        let (status, body) = rest_login(
            &app,
            json!({"username": variant, "password": "alice-pw", "ldap": true}),
        )
        .await;
        if status == 200 {
            bypassed.push(format!("REST {variant:?}: 200 {body}"));
        }
    }
    app.stop().await;
    assert!(bypassed.is_empty(), "{bypassed:#?}");
}

/// Was: the replay guard (`totp_advance`) is keyed by the user id, and each name of one
/// entry has its own id: a code accepted for "carol" is accepted again for "carol2" (same
/// person, same secret) — RFC 6238 §5.2, which the protocol README promises.
pub async fn a_code_used_under_one_name_is_refused_under_another_name_of_the_entry() {
    let slapd = Slapd::start();
    slapd.modify(&format!(
        "dn: uid=carol,{PEOPLE}\nchangetype: modify\nadd: uid\nuid: carol2\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let mut bob = admin(&app).await;
    let (secret, names) = enrol(&mut bob, json!({"dn": format!("uid=carol,{PEOPLE}")})).await;
    assert_eq!(names, "carol");
    let now = code(&secret, 0);
    let mut c = app.connect().await;
    let first = c
        .rpc(
            "auth",
            json!({"username": "carol", "password": "carol-pw", "ldap": true, "otp_code": now}),
        )
        .await;
    assert_eq!(first["name"], "response", "{first}");
    // Replay under the same name: refused (held).
    let mut c = app.connect().await;
    let same = c
        .rpc(
            "auth",
            json!({"username": "CAROL", "password": "carol-pw", "ldap": true, "otp_code": now}),
        )
        .await;
    assert_eq!(same["args"]["err_code"], 103, "{same}");
    // Replay under the entry's other name.
    let mut c = app.connect().await;
    let replay = c
        .rpc(
            "auth",
            json!({"username": "carol2", "password": "carol-pw", "ldap": true, "otp_code": now}),
        )
        .await;
    app.stop().await;
    assert_eq!(
        replay["args"]["err_code"], 103,
        "the code carol just used is accepted again as carol2: {replay}"
    );
}

/// Was: the enrolment is a snapshot of the entry's names at enrolment time (keyed by each
/// name's id, not by the entry): a uid added later (or a rename) signs in with the password
/// alone, as the same person with the same groups.
pub async fn a_name_added_to_an_enrolled_entry_later_is_asked_for_the_code() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let mut bob = admin(&app).await;
    enrol(&mut bob, json!({"username": "alice"})).await;
    slapd.modify(&format!(
        "dn: uid=alice,{PEOPLE}\nchangetype: modify\nadd: uid\nuid: alice.l\n"
    ));
    let mut c = app.connect().await;
    let reply = ws_auth(&mut c, "alice.l", "alice-pw", Some(true)).await;
    let pools = if reply["name"] == "response" {
        c.rpc("pools", json!({})).await
    } else {
        Value::Null
    };
    app.stop().await;
    assert_eq!(
        error_code(&reply),
        428,
        "alice's entry, enrolled, signs in as alice.l without a code: {reply}, pools {pools}"
    );
}

/// Was (documented as intended then, but a password oracle): an enrolled
/// user whose directory account is disabled gets 428 for a wrong password and 403 for the
/// right one — the password is confirmed without the code, and without counting as a guess.
/// A local MFA user who is disabled gets 428 either way (403 only after the code).
pub async fn an_enrolled_disabled_account_gets_the_challenge_whatever_the_password() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let mut bob = admin(&app).await;
    enrol(&mut bob, json!({"username": "disabled"})).await;
    let mut c = app.connect().await;
    let wrong = ws_auth(&mut c, "disabled", "wrong", Some(true)).await;
    let right = ws_auth(&mut c, "disabled", "disabled-pw", Some(true)).await;
    let (wrong_rest, _) = rest_login(
        &app,
        json!({"username": "disabled", "password": "wrong", "ldap": true}),
    )
    .await;
    let (right_rest, _) = rest_login(
        &app,
        json!({"username": "disabled", "password": "disabled-pw", "ldap": true}),
    )
    .await;
    app.stop().await;
    assert_eq!(error_code(&wrong), 428, "{wrong}");
    assert_eq!(wrong_rest, 428);
    assert_eq!(
        (error_code(&right), right_rest),
        (428, 428),
        "the right password of an enrolled, disabled user is told apart: {right}"
    );
}

/// Probes that held: case and space variants, "ldap": false, the v2 login and its
/// password-less step, a challenge for someone else, a wrong password's challenge with the
/// right code, a broken stored secret, a DN outside user_base, filter metacharacters in a DN,
/// a non-admin, and the secret in no log line.
pub async fn the_other_paths_ask_for_the_code_and_fail_closed() {
    let slapd = Slapd::start();
    // An entry outside user_base carrying alice's uid and bob's (admin) mail.
    slapd.modify(
        "dn: uid=alice,ou=services,dc=example,dc=org\nchangetype: add\n\
         objectClass: inetOrgPerson\nuid: alice\ncn: Outside\nsn: Outside\n\
         mail: bob@example.org\nuserPassword: outside-pw\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |c| c.lockout_attempts = 100).await;
    let mut bob = admin(&app).await;
    let (secret, _) = enrol(&mut bob, json!({"username": "alice"})).await;

    for (name, ldap) in [
        ("ALICE", Some(true)),
        (" alice ", Some(true)),
        ("alice\t", Some(true)),
        ("carol\u{2003}", Some(true)),
        ("alice", Some(false)),
        ("alice", None),
    ] {
        let mut c = app.connect().await;
        let password = if name.starts_with("carol") {
            "carol-pw"
        } else {
            "alice-pw"
        };
        let reply = ws_auth(&mut c, name, password, ldap).await;
        // carol is not enrolled (yet): her variant signs in, as carol.
        if name.starts_with("carol") {
            assert_eq!(reply["name"], "response", "{name:?}: {reply}");
            continue;
        }
        // A tab is no space to slapd: "alice\t" is nobody, right password or not.
        let expected = if name.contains('\t') { 401 } else { 428 };
        assert_eq!(error_code(&reply), expected, "{name:?} {ldap:?}: {reply}");
    }
    for (name, ldap) in [("ALICE ", true), ("alice", false)] {
        let (status, body) = rest_login(
            &app,
            json!({"username": name, "password": "alice-pw", "ldap": ldap}),
        )
        .await;
        assert_eq!(status, 428, "{name:?}: {body}");
        // The password-less first step is for the server's own users: 401, never a session.
        let (status, _) = rest_login(
            &app,
            json!({"username": name, "password": null, "ldap": ldap}),
        )
        .await;
        assert_eq!(status, 401, "{name:?} password-less");
    }

    // A challenge issued for carol (she is enrolled too, with her own secret) completed with
    // alice's code: refused; and alice's challenge with carol's code.
    let (carol_secret, _) = enrol(&mut bob, json!({"username": "carol"})).await;
    let mut c = app.connect().await;
    let reply = ws_auth(&mut c, "carol", "carol-pw", Some(true)).await;
    let carol_mfa = reply["args"]["mfa_token"].as_str().unwrap().to_owned();
    let reply = c
        .rpc(
            "otp_verify",
            json!({"mfa_token": carol_mfa, "otp_code": code(&secret, 0)}),
        )
        .await;
    assert_eq!(reply["args"]["err_code"], 103, "{reply}");
    // A wrong password's challenge with the right code: 401 (999), never a session.
    let reply = ws_auth(&mut c, "carol", "nope", Some(true)).await;
    let bad = reply["args"]["mfa_token"].as_str().unwrap().to_owned();
    let reply = c
        .rpc(
            "otp_verify",
            json!({"mfa_token": bad, "otp_code": code(&carol_secret, 0)}),
        )
        .await;
    assert_eq!(reply["args"]["err_code"], 999, "{reply}");

    // A broken stored secret: still challenged, and no code completes.
    let id = app
        .state
        .auth
        .directory_user_named("alice")
        .await
        .unwrap()
        .expect("alice is known")
        .id;
    app.state
        .store
        .directory_totp_put(id, Some("not base32 !!"))
        .await
        .unwrap();
    let mut c = app.connect().await;
    let reply = ws_auth(&mut c, "alice", "alice-pw", Some(true)).await;
    assert_eq!(error_code(&reply), 428, "{reply}");
    for guess in ["000000", "123456", &code(&secret, 0), ""] {
        let reply = c
            .rpc(
                "auth",
                json!({"username": "alice", "password": "alice-pw", "ldap": true, "otp_code": guess}),
            )
            .await;
        assert_ne!(reply["name"], "response", "{guess:?}: {reply}");
    }
    app.state
        .store
        .directory_totp_put(id, Some(""))
        .await
        .unwrap();
    let reply = c
        .rpc(
            "auth",
            json!({"username": "alice", "password": "alice-pw", "ldap": true}),
        )
        .await;
    assert_eq!(error_code(&reply), 428, "an empty stored secret: {reply}");

    // The enrolment cannot be pointed outside user_base, nor through filter syntax.
    for dn in [
        "uid=alice,ou=services,dc=example,dc=org".to_owned(),
        SERVICE_DN.to_owned(),
        format!("uid=alice,{PEOPLE})(uid=*"),
        "".to_owned(),
        "cn=Subschema".to_owned(),
    ] {
        let reply = bob.rpc("admin_totp", json!({"dn": dn})).await;
        assert!(matches!(error_code(&reply), 400 | 404), "{dn:?}: {reply}");
    }
    for name in ["*", "alice)(uid=*", "al\\2a", "bob@example.org"] {
        let reply = bob.rpc("admin_totp", json!({"username": name})).await;
        assert_eq!(error_code(&reply), 404, "{name:?}: {reply}");
    }
    // A non-admin, and an unauthenticated socket.
    let mut carol = app.connect().await;
    let reply = carol
        .rpc(
            "auth",
            json!({"username": "carol", "password": "carol-pw", "ldap": true, "otp_code": code(&carol_secret, 1)}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    for args in [
        json!({"username": "carol", "disable": true}),
        json!({"dn": format!("uid=alice,{PEOPLE}"), "disable": true}),
    ] {
        assert_eq!(error_code(&carol.rpc("admin_totp", args).await), 403);
    }
    let mut anon = app.connect().await;
    assert_eq!(
        error_code(&anon.rpc("admin_totp", json!({"username": "alice"})).await),
        401
    );
    app.stop().await;
}
