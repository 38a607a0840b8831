//! Cases a hostile review wrote against directory sign-in: the probes that held, and the
//! defects it found (each fixed; the cases say what must hold now).

use serde_json::{Value, json};

use poolgate::auth::directory::{Directory, DirectoryError, same_dn};

use crate::helpers::*;
use crate::slapd::*;

async fn app(slapd: &Slapd, dir: &std::path::Path, attempts: u32) -> TestApp {
    let config = directory_config(slapd, dir);
    TestApp::spawn_with(move |c| {
        fast_sim(c, OK, OK);
        c.directory = Some(config);
        c.lockout_attempts = attempts;
    })
    .await
}

async fn ws_auth(c: &mut Client, username: &str, password: &str) -> Value {
    c.rpc(
        "auth",
        json!({"username": username, "password": password, "ldap": true}),
    )
    .await
}

/// Odd passwords and names, case variants, escaped DNs: what held.
pub async fn odd_passwords_names_and_dns_are_handled() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = directory_config(&slapd, dir.path());
    config.group_base = Some(GROUPS.into());
    let d = Directory::new(config).unwrap();
    let refused = |r: &Result<_, DirectoryError>| {
        matches!(
            r,
            Err(DirectoryError::InvalidCredentials | DirectoryError::WrongPassword(_))
        )
    };
    for pw in [" ", "\0", "\t", "\0alice-pw"] {
        assert!(
            refused(&d.authenticate("alice", pw).await),
            "password {pw:?}"
        );
    }
    for name in ["alice\0", "\0alice", "alice\0*", "ALICE\0"] {
        assert!(
            refused(&d.authenticate(name, "alice-pw").await),
            "name {name:?}"
        );
    }
    // Case and whitespace variants reach the same entry, and the id comes from its uid.
    for name in ["ALICE", " alice", "alice  ", "aLiCe"] {
        let e = d.authenticate(name, "alice-pw").await.unwrap();
        assert_eq!(e.username, "alice", "{name:?}");
    }
    // The odd entry's DN (with `*()\`) goes into the group filter escaped.
    let odd = d.authenticate(ODD_NAME, "odd-pw").await.unwrap();
    assert_eq!(odd.groups, vec![USERS_GROUP.to_owned()]);
    assert!(!same_dn(USERS_GROUP, &format!("{USERS_GROUP},dc=evil")));
    assert!(!same_dn(USERS_GROUP, &format!("cn=x,{USERS_GROUP}")));
}

/// Was: same_dn split on escaped commas too, so cn "VDI, Admins" and cn "VDI,Admins" (two
/// groups) compared equal.
pub async fn escaped_commas_keep_two_groups_apart() {
    let admin = r"cn=VDI\, Admins,ou=groups,dc=example,dc=org";
    let other = r"cn=VDI\,Admins,ou=groups,dc=example,dc=org";
    assert!(
        !same_dn(admin, other),
        "cn=\"VDI, Admins\" and cn=\"VDI,Admins\" are different entries"
    );
}

/// Was: the lockout was keyed by the name as typed, while the directory matches uid without
/// case or surrounding spaces: "CAROL" was a fresh counter for the same account.
pub async fn case_variants_of_a_name_share_its_lockout() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app(&slapd, dir.path(), 2).await;
    let mut c = app.connect().await;
    for _ in 0..2 {
        assert_eq!(error_code(&ws_auth(&mut c, "carol", "wrong").await), 401);
    }
    let mut c = app.connect().await;
    assert_eq!(error_code(&ws_auth(&mut c, "carol", "carol-pw").await), 429);
    let mut c = app.connect().await;
    let reply = ws_auth(&mut c, "CAROL", "carol-pw").await;
    app.stop().await;
    assert_eq!(
        error_code(&reply),
        429,
        "carol is locked out from this address, yet CAROL signs in as carol: {reply}"
    );
}

/// Was: admin_revoke {"username"} picked the local user when a directory user had the same
/// name, and the directory user's sessions survived. Now the name alone is refused as
/// ambiguous, and `"directory": true` names the directory user (a directory user named like
/// the local admin never gets admin rights).
pub async fn a_name_shared_by_a_local_and_a_directory_user_is_never_guessed() {
    let slapd = Slapd::start();
    slapd.modify(&format!(
        "dn: uid=astravdi,{PEOPLE}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: astravdi\n\
         cn: Directory Astra\nsn: Astra\nuserPassword: dir-astra-pw\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let app = app(&slapd, dir.path(), 5).await;
    let mut d = app.connect().await;
    let reply = ws_auth(&mut d, "astravdi", "dir-astra-pw").await;
    let token = reply["args"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"))
        .to_owned();
    let sessions = d.rpc("admin_sessions", json!({})).await;
    assert_ne!(sessions["name"], "response", "{sessions}");
    let (_local, local_token) = app.login("astravdi").await;
    let mut bob = app.connect().await;
    ws_auth(&mut bob, "bob", "bob-pw").await;
    let refused = bob
        .rpc("admin_revoke", json!({"username": "astravdi"}))
        .await;
    assert_eq!(error_code(&refused), 422, "{refused}");
    let revoked = bob
        .rpc(
            "admin_revoke",
            json!({"username": "astravdi", "directory": true}),
        )
        .await;
    assert_eq!(revoked["args"]["revoked_sessions"], 1, "{revoked}");
    let mut later = app.connect().await;
    let resumed = later.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(error_code(&resumed), 401, "{resumed}");
    let still = later.rpc("auth_token", json!({"token": local_token})).await;
    assert_eq!(
        still["name"], "response",
        "the local astravdi is untouched: {still}"
    );
    app.stop().await;
}

/// Was: the id came from the entry's *first* uid value, not the one the filter matched: an
/// entry whose uid is [alice, carol] signed in as "carol" with alice's id.
pub async fn the_uid_value_signed_in_with_is_the_identity() {
    let slapd = Slapd::start();
    slapd.modify(&format!(
        "dn: uid=carol,{PEOPLE}\nchangetype: modify\nreplace: uid\nuid: alice\nuid: carol\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let d = Directory::new(directory_config(&slapd, dir.path())).unwrap();
    let e = d.authenticate("carol", "carol-pw").await.unwrap();
    assert_eq!(
        e.username, "carol",
        "signed in as carol, became {:?} (dn {})",
        e.username, e.dn
    );
}
