//! Cases from a hostile review of commit 41406fa ("a directory user is their entry":
//! entryUUID / objectGUID, else the DN). Each case states what must hold; those that fail at
//! 41406fa are the defects the review found. The last one collects probes that held.

use serde_json::{Value, json};

use crate::app::{app_with_directory, ws_auth};
use crate::helpers::*;
use crate::slapd::*;
use crate::totp::{admin, code, enrol, rest_login};

/// An error reply's code, or `None` for a response (never panics, unlike `error_code`).
fn err(reply: &Value) -> Option<u64> {
    (reply["name"] == "error").then(|| reply["args"]["code"].as_u64().unwrap_or(0))
}

async fn token_of(app: &TestApp, name: &str, password: &str) -> String {
    let mut c = app.connect().await;
    let reply = ws_auth(&mut c, name, password, Some(true)).await;
    reply["args"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: {reply}"))
        .to_owned()
}

/// Whether a saved session token still signs in (`auth_token`).
async fn resumes(app: &TestApp, token: &str) -> Value {
    let mut c = app.connect().await;
    c.rpc("auth_token", json!({"token": token})).await
}

/// tests/ldap/slapd.conf with an AD-like `objectGUID` (octet string) in the schema and,
/// optionally, `entryUUID` hidden from the service account by an ACL (as a directory that
/// hides operational attributes does).
fn ad_like(hide_entry_uuid: bool) -> impl Fn(String) -> String {
    move |conf| {
        let conf = conf.replace(
            "modulepath ",
            "attributetype ( 1.2.840.113556.1.4.2 NAME 'objectGUID'\n  \
             EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )\n\
             modulepath ",
        );
        if hide_entry_uuid {
            conf.replacen(
                "access to attrs=userPassword",
                "access to attrs=entryUUID by * none\naccess to attrs=userPassword",
                1,
            )
        } else {
            conf
        }
    }
}

/// Moves alice's entry to ou=staff under user_base (same uid, still found by the filter).
fn move_alice(modify: impl Fn(&str)) {
    modify(&format!(
        "dn: ou=staff,{PEOPLE}\nchangetype: add\nobjectClass: organizationalUnit\nou: staff\n\n\
         dn: uid=alice,{PEOPLE}\nchangetype: modrdn\nnewrdn: uid=alice\ndeleteoldrdn: 1\n\
         newsuperior: ou=staff,{PEOPLE}\n"
    ));
}

/// Was: an employee is removed from the directory (their entry deleted), and the admin
/// ends their sessions by name. `named_user` now asks the directory who the name is; the
/// entry is gone, so admin_revoke answers 404 — while the sessions, resolved from the state
/// store by id, keep working. No other method takes a user id: the sessions of a deleted
/// (or moved out of user_base, or renamed) person cannot be revoked at all. (At 499bcc9 the
/// id was derived from the name, and this worked.)
pub async fn a_deleted_directory_users_sessions_can_still_be_revoked() {
    let (revoked, after) = revoke_alice_after(|slapd| {
        slapd.modify(&format!("dn: uid=alice,{PEOPLE}\nchangetype: delete\n"))
    })
    .await;
    assert_eq!(
        revoked["args"]["revoked_sessions"], 1,
        "alice's entry is deleted; admin_revoke answers {revoked}, and her token still \
         signs in: {after}"
    );
    assert_eq!(err(&after), Some(401), "{after}");
}

/// alice signs in, then `disrupt` (the directory loses her, or goes away), then bob revokes
/// her by name: the answer, and what her token then gets.
async fn revoke_alice_after(disrupt: impl FnOnce(&mut Slapd)) -> (Value, Value) {
    let mut slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let token = token_of(&app, "alice", "alice-pw").await;
    let mut bob = admin(&app).await;
    disrupt(&mut slapd);
    let revoked = bob
        .rpc(
            "admin_revoke",
            json!({"username": "alice", "directory": true}),
        )
        .await;
    let after = resumes(&app, &token).await;
    app.stop().await;
    (revoked, after)
}

/// Was: while the directory is down, a directory user's sessions keep working (they
/// resolve from the state store), but admin_revoke of that user answers 503 — the admin
/// cannot end a compromised directory account's sessions during an outage (or while an
/// attacker keeps the directory unreachable). At 499bcc9 it did not need the directory.
pub async fn a_directory_users_sessions_can_be_revoked_while_the_directory_is_down() {
    let (revoked, after) = revoke_alice_after(Slapd::stop).await;
    assert_eq!(
        revoked["args"]["revoked_sessions"], 1,
        "directory down: admin_revoke alice answers {revoked}, and her token still signs \
         in: {after}"
    );
}

/// Was: the defect review.rs fixed (a name shared by a local and a directory user taken
/// for the local one) comes back during an outage. With the directory up, admin_revoke
/// {"username": "astravdi"} is refused as ambiguous (422); with it down, `named_user`'s
/// fallback silently picks the local astravdi, revokes *their* sessions and answers success,
/// while the directory astravdi's sessions survive.
pub async fn during_an_outage_a_shared_name_is_never_taken_for_the_local_user() {
    let mut slapd = Slapd::start();
    slapd.modify(&format!(
        "dn: uid=astravdi,{PEOPLE}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: astravdi\n\
         cn: Directory Astra\nsn: Astra\nuserPassword: dir-astra-pw\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let dir_token = token_of(&app, "astravdi", "dir-astra-pw").await;
    let (_local, local_token) = app.login("astravdi").await;
    let mut bob = admin(&app).await;
    let up = bob
        .rpc("admin_revoke", json!({"username": "astravdi"}))
        .await;
    assert_eq!(err(&up), Some(422), "directory up: {up}");
    slapd.stop();
    let down = bob
        .rpc("admin_revoke", json!({"username": "astravdi"}))
        .await;
    let dir_after = resumes(&app, &dir_token).await;
    let local_after = resumes(&app, &local_token).await;
    app.stop().await;
    assert!(
        err(&down).is_some(),
        "directory down: the ambiguous name was taken for the local user: {down}; the \
         local astravdi's token now {local_after}; the directory astravdi's token still \
         {dir_after}"
    );
}

/// Was: the lockout counts per name as typed (trimmed, lower-cased), while the directory
/// finds one entry under many names — RFC 4518 preparation in slapd folds full-width,
/// mathematical and circled letters ("ａlice", "𝐚lice", "ⓐlice" all find uid=alice), and
/// an entry may have several uid values. Each variant is a fresh per-user counter for the
/// same person (one id since 41406fa): the per-account lockout does not bound guesses at a
/// directory user's password, and after the lockout a variant signs in with the password.
pub async fn name_variants_of_one_entry_share_its_lockout() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |c| c.lockout_attempts = 2).await;
    let mut c = app.connect().await;
    for _ in 0..2 {
        assert_eq!(
            err(&ws_auth(&mut c, "alice", "wrong", Some(true)).await),
            Some(401)
        );
    }
    let mut c = app.connect().await;
    assert_eq!(
        err(&ws_auth(&mut c, "alice", "alice-pw", Some(true)).await),
        Some(429)
    );
    let mut got_through = Vec::new();
    for variant in ["ａlice", "𝐚lice", "ⓐlice", "aｌice"] {
        let mut c = app.connect().await;
        let reply = ws_auth(&mut c, variant, "alice-pw", Some(true)).await;
        if err(&reply) != Some(429) {
            got_through.push(format!("{variant:?}: {reply}"));
        }
    }
    app.stop().await;
    assert!(
        got_through.is_empty(),
        "alice is locked out, yet these names of her entry are fresh counters: {got_through:#?}"
    );
}

/// Was: "a wrong password of an MFA user gets the same challenge as a right one (the factor
/// that failed is not revealed)" — but the lockout tells them apart. A right password
/// answered with the challenge is `NotAGuess` (its count undone), a wrong one is a `Guess`.
/// So with lockout_attempts = 2: [wrong, candidate, wrong] answers 428, 428, 428 when the
/// candidate is the password and 428, 428, 429 when it is not — the password is confirmed
/// without the code. (The same holds for an enrolled *disabled* account, and for local MFA
/// users: `login_with_password` has the same verdicts.)
pub async fn the_lockout_does_not_tell_an_enrolled_users_right_password_from_a_wrong_one() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |c| c.lockout_attempts = 2).await;
    let mut bob = admin(&app).await;
    enrol(&mut bob, json!({"username": "alice"})).await;
    enrol(&mut bob, json!({"username": "carol"})).await;
    let mut answers = Vec::new();
    for (name, candidate) in [("alice", "alice-pw"), ("carol", "not-carols-pw")] {
        let mut seq = Vec::new();
        for password in ["wrong-1", candidate, "wrong-2"] {
            let mut c = app.connect().await;
            seq.push(err(&ws_auth(&mut c, name, password, Some(true)).await));
        }
        answers.push(seq);
    }
    app.stop().await;
    assert_eq!(
        answers[0], answers[1],
        "[wrong, right, wrong] vs [wrong, wrong, wrong] for two enrolled users: the \
         lockout confirms the password without the code"
    );
}

/// Was: `entry_key` read objectGUID only from `bin_attrs`, but ldap3 puts a value that is
/// valid UTF-8 in `attrs` (`SearchEntry::construct`). An AD objectGUID is 16 random bytes:
/// a share of them (every one whose bytes happen to be UTF-8, e.g. all below 0x80) is
/// ignored, and the person's id is their DN. A move then drops their enrolment — they sign
/// in with the password alone — and their sessions/tasks are left under the old id.
/// (Simulated here: slapd with an AD-like octet-string objectGUID and entryUUID hidden from
/// the service account, as AD has no entryUUID.)
pub async fn a_utf8_valid_objectguid_is_the_identity_not_the_dn() {
    let slapd = Slapd::start_with(ad_like(true));
    // "ABCDEFGHIJKLMNOP": 16 bytes, all ASCII.
    slapd.modify(&format!(
        "dn: uid=alice,{PEOPLE}\nchangetype: modify\nadd: objectClass\nobjectClass: \
         extensibleObject\n-\nadd: objectGUID\nobjectGUID:: QUJDREVGR0hJSktMTU5PUA==\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    // bob has no readable uuid here: the local admin enrols.
    let (mut admin, _) = app.login("astravdi").await;
    enrol(&mut admin, json!({"username": "alice"})).await;
    let mut c = app.connect().await;
    assert_eq!(
        err(&ws_auth(&mut c, "alice", "alice-pw", Some(true)).await),
        Some(428)
    );
    move_alice(|l| slapd.modify(l));
    let mut c = app.connect().await;
    let reply = ws_auth(&mut c, "alice", "alice-pw", Some(true)).await;
    app.stop().await;
    assert_eq!(
        err(&reply),
        Some(428),
        "alice (objectGUID \"ABCDEFGHIJKLMNOP\") moved within user_base and signs in \
         without a code: {reply}"
    );
}

/// Was: which key a person had depended on what the service account may read. With
/// entryUUID hidden (an ACL), an enrolled person's id was their DN; once the directory admin
/// let the service account read entryUUID (or the reverse), the id changed — the enrolment
/// stayed under the old id and the person signed in with the password alone. Now an entry
/// without a readable entryUUID or objectGUID is refused (503, logged): no identity, no
/// sign-in and no enrolment, until the ACL lets the service account read it.
pub async fn an_entry_without_a_readable_uuid_is_refused_not_identified_by_its_dn() {
    let mut slapd = Slapd::start_with(ad_like(true));
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let (mut admin, _) = app.login("astravdi").await;
    let reply = admin.rpc("admin_totp", json!({"username": "alice"})).await;
    assert_eq!(err(&reply), Some(503), "{reply}");
    let mut c = app.connect().await;
    assert_eq!(
        err(&ws_auth(&mut c, "alice", "alice-pw", Some(true)).await),
        Some(503),
        "no identity: refused, even with the right password"
    );
    slapd.stop();
    slapd.rewrite_config(ad_like(false));
    slapd.resume();
    // The pool may hold a connection to the old slapd: a 503 once, then the answer.
    let mut reply = admin.rpc("admin_totp", json!({"username": "alice"})).await;
    if err(&reply) == Some(503) {
        reply = admin.rpc("admin_totp", json!({"username": "alice"})).await;
    }
    assert_eq!(err(&reply), None, "{reply}");
    let mut c = app.connect().await;
    let reply = ws_auth(&mut c, "alice", "alice-pw", Some(true)).await;
    app.stop().await;
    assert_eq!(err(&reply), Some(428), "enrolled once readable: {reply}");
}

/// Was: one entry, two names (uid carol and carol2) — one user since 41406fa, whose record
/// keeps the name of the last sign-in. `verify_jwt` refuses a JWT whose username is not the
/// record's ("renamed since it was issued"), so carol's JWT dies as soon as she signs in as
/// carol2 anywhere (and back).
pub async fn signing_in_under_another_name_of_the_entry_keeps_the_first_names_jwt() {
    let slapd = Slapd::start();
    slapd.modify(&format!(
        "dn: uid=carol,{PEOPLE}\nchangetype: modify\nadd: uid\nuid: carol2\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let (status, body) = rest_login(
        &app,
        json!({"username": "carol", "password": "carol-pw", "ldap": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let jwt = body["data"]["access_token"].as_str().unwrap().to_owned();
    let pools = |jwt: String| {
        let url = app.url("/api/v2/pools/");
        async move {
            reqwest::Client::new()
                .get(url)
                .header("Authorization", format!("JWT {jwt}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(pools(jwt.clone()).await, 200);
    token_of(&app, "carol2", "carol-pw").await;
    let after = pools(jwt).await;
    app.stop().await;
    assert_eq!(
        after, 200,
        "carol's JWT is refused once she signed in as carol2 (same entry, same user)"
    );
}

/// Probes that held: with entryUUID readable, a move and a rename keep the enrolment and the
/// sessions, and admin_revoke finds the person under the new name; two entries never share
/// an id; an enrolled user's code is asked under a second uid; the local fallback during an
/// outage reaches a local-only name; the v2 password-less step says nothing of directory
/// names; `entry_key` does not panic on odd objectGUIDs.
pub async fn identity_probes_that_held() {
    use poolgate::auth::directory::entry_key;
    use std::collections::HashMap;
    // entry_key on odd values: no panic; without a readable entryUUID or 16-byte objectGUID
    // the entry is refused (never identified by its DN).
    for (attrs, bin) in [
        (vec![("entryUUID", "not a uuid")], vec![]),
        (vec![], vec![("objectGUID", vec![0xffu8; 15])]),
        (vec![], vec![("objectGUID", vec![0xffu8; 17])]),
        (vec![], vec![("objectGUID", vec![])]),
    ] {
        let e = ldap3::SearchEntry {
            dn: "uid=x,dc=y".into(),
            attrs: attrs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), vec![v.to_owned()]))
                .collect::<HashMap<_, _>>(),
            bin_attrs: bin
                .into_iter()
                .map(|(k, v)| (k.to_owned(), vec![v]))
                .collect::<HashMap<_, _>>(),
        };
        assert!(
            matches!(
                entry_key(&e),
                Err(poolgate::auth::directory::DirectoryError::Unavailable(_))
            ),
            "{:?}",
            entry_key(&e)
        );
    }

    let mut slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let mut bob = admin(&app).await;
    let (secret, _) = enrol(&mut bob, json!({"username": "alice"})).await;
    let mut c = app.connect().await;
    let reply = c
        .rpc(
            "auth",
            json!({"username": "alice", "password": "alice-pw", "ldap": true, "otp_code": code(&secret, 0)}),
        )
        .await;
    let token = reply["args"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"))
        .to_owned();
    // A move keeps the enrolment and the session.
    move_alice(|l| slapd.modify(l));
    let mut c = app.connect().await;
    assert_eq!(
        err(&ws_auth(&mut c, "alice", "alice-pw", Some(true)).await),
        Some(428)
    );
    assert_eq!(resumes(&app, &token).await["name"], "response");
    // A rename (uid alice -> alicia): still asked for the code; revoked by the new name.
    slapd.modify(&format!(
        "dn: uid=alice,ou=staff,{PEOPLE}\nchangetype: modrdn\nnewrdn: uid=alicia\ndeleteoldrdn: 1\n"
    ));
    let mut c = app.connect().await;
    assert_eq!(
        err(&ws_auth(&mut c, "alicia", "alice-pw", Some(true)).await),
        Some(428)
    );
    let mut c = app.connect().await;
    assert_eq!(
        err(&ws_auth(&mut c, "alice", "alice-pw", Some(true)).await),
        Some(401)
    );
    let revoked = bob
        .rpc(
            "admin_revoke",
            json!({"username": "alicia", "directory": true}),
        )
        .await;
    assert_eq!(revoked["args"]["revoked_sessions"], 1, "{revoked}");
    assert_eq!(err(&resumes(&app, &token).await), Some(401));
    // Two entries, two ids (bob and carol, both signed in).
    let carol = token_of(&app, "carol", "carol-pw").await;
    let sessions = bob.rpc("admin_sessions", json!({})).await;
    let ids: std::collections::HashSet<_> = sessions["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["user_id"].to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{sessions}");
    drop(carol);
    // Password-less v2 step: 401 for directory names, enrolled or not.
    for name in ["alicia", "carol", "nobody"] {
        let (status, _) = rest_login(
            &app,
            json!({"username": name, "password": null, "ldap": true}),
        )
        .await;
        assert_eq!(status, 401, "{name}");
    }
    // Outage: a local-only name still reachable, and a directory name.
    let (_u1, _) = app.login("user-2").await;
    slapd.stop();
    let local = bob.rpc("admin_revoke", json!({"username": "user-2"})).await;
    assert_eq!(local["args"]["revoked_sessions"], 1, "{local}");
    // A directory name is known from past sign-ins: its sessions can be ended.
    let remote = bob.rpc("admin_revoke", json!({"username": "carol"})).await;
    assert_eq!(err(&remote), None, "{remote}");
    app.stop().await;
}
