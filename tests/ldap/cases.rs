//! The directory client against slapd: who signs in, with what, and what the directory's
//! failures look like.

use std::time::Duration;

use poolgate::auth::directory::{Directory, DirectoryConfig, DirectoryError};

use crate::slapd::*;

/// The shared config, with the admin group written as an operator might: other case, a
/// space after a comma.
fn config(slapd: &Slapd, dir: &std::path::Path) -> DirectoryConfig {
    DirectoryConfig {
        admin_groups: vec!["CN=VDI-Admins, OU=groups,dc=example,dc=org".into()],
        ..directory_config(slapd, dir)
    }
}

fn refused(result: Result<impl std::fmt::Debug, DirectoryError>) -> bool {
    matches!(
        result,
        Err(DirectoryError::InvalidCredentials | DirectoryError::WrongPassword(_))
    )
}

pub async fn a_person_signs_in_with_the_directory_password() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let directory = Directory::new(config(&slapd, dir.path())).unwrap();

    let alice = directory.authenticate("alice", "alice-pw").await.unwrap();
    assert_eq!(alice.dn, format!("uid=alice,{PEOPLE}"));
    assert_eq!(alice.username, "alice");
    assert_eq!(alice.full_name, "Alice L.", "displayName first");
    assert_eq!(alice.email, "alice@example.org");
    assert_eq!(alice.groups, vec![USERS_GROUP.to_owned()]);
    assert!(!alice.admin);

    let bob = directory.authenticate("bob", "bob-pw").await.unwrap();
    assert_eq!(bob.full_name, "Bob Builder", "cn without a displayName");
    let mut groups = bob.groups.clone();
    groups.sort();
    assert_eq!(
        groups,
        vec![ADMINS_GROUP.to_owned(), USERS_GROUP.to_owned()]
    );
    assert!(bob.admin, "a member of an admin group");

    // Again, on the kept service connection.
    assert_eq!(
        directory.authenticate("alice", "alice-pw").await.unwrap(),
        alice
    );
}

pub async fn wrong_unknown_and_empty_passwords_are_refused() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let directory = Directory::new(config(&slapd, dir.path())).unwrap();
    assert!(refused(directory.authenticate("alice", "bob-pw").await));
    assert!(refused(directory.authenticate("nobody", "alice-pw").await));

    // This slapd takes a DN with an empty password as an unauthenticated bind, and says
    // yes — as many directories do...
    let (conn, mut ldap) = ldap3::LdapConnAsync::new(&slapd.url()).await.unwrap();
    ldap3::drive!(conn);
    let unauthenticated = ldap
        .simple_bind(&format!("uid=alice,{PEOPLE}"), "")
        .await
        .unwrap();
    assert_eq!(unauthenticated.rc, 0, "the server accepts it");
    // ...which must never sign anyone in.
    assert!(refused(directory.authenticate("alice", "").await));
}

pub async fn filter_metacharacters_in_a_username_are_literal() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let directory = Directory::new(config(&slapd, dir.path())).unwrap();
    // Unescaped, `al*` would find alice and `*` everyone; escaped, they name nobody.
    assert!(refused(directory.authenticate("al*", "alice-pw").await));
    assert!(refused(directory.authenticate("*", "alice-pw").await));
    assert!(refused(
        directory.authenticate("alice)(uid=*", "alice-pw").await
    ));
    assert!(refused(directory.authenticate("star*", "odd-pw").await));
    // A user_filter that matches several entries (a configuration mistake) signs no one in,
    // whether the directory sends two or stops at its size limit.
    let mut wide = config(&slapd, dir.path());
    wide.user_filter = "(|(uid={username})(uid=bob))".into();
    let two = Directory::new(wide.clone()).unwrap();
    assert!(refused(two.authenticate("alice", "alice-pw").await));
    wide.user_filter = "(|(uid={username})(objectClass=inetOrgPerson))".into();
    let all = Directory::new(wide).unwrap();
    assert!(refused(all.authenticate("alice", "alice-pw").await));
    // And a name made of them is found as it is.
    let odd = directory.authenticate(ODD_NAME, "odd-pw").await.unwrap();
    assert_eq!(odd.username, ODD_NAME);
    assert_eq!(odd.groups, vec![USERS_GROUP.to_owned()]);
}

pub async fn disabled_is_said_only_after_the_right_password() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let directory = Directory::new(config(&slapd, dir.path())).unwrap();
    // An AD-style account with userAccountControl bit 0x2.
    assert!(matches!(
        directory.authenticate("disabled", "disabled-pw").await,
        Err(DirectoryError::Disabled(_))
    ));
    assert!(refused(directory.authenticate("disabled", "wrong").await));
    // A ppolicy-locked account: slapd refuses its bind whatever the password, so nothing
    // proves the password right and it is never said to be disabled.
    assert!(refused(directory.authenticate("locked", "locked-pw").await));
    assert!(refused(directory.authenticate("locked", "wrong").await));
}

pub async fn groups_come_from_memberof_or_from_a_group_search() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&slapd, dir.path());
    config.group_attribute = "doesNotExist".into();
    config.group_base = Some(GROUPS.into());
    let directory = Directory::new(config).unwrap();
    let mut bob = directory
        .authenticate("bob", "bob-pw")
        .await
        .unwrap()
        .groups;
    bob.sort();
    assert_eq!(bob, vec![ADMINS_GROUP.to_owned(), USERS_GROUP.to_owned()]);
    // The user's DN holds filter metacharacters too: escaped in the group filter.
    let odd = directory.authenticate(ODD_NAME, "odd-pw").await.unwrap();
    assert_eq!(odd.groups, vec![USERS_GROUP.to_owned()]);
    let carol = directory.authenticate("carol", "carol-pw").await.unwrap();
    assert!(carol.groups.is_empty() && !carol.admin);
}

pub async fn a_directory_down_is_unavailable_and_recovers() {
    let mut slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let directory = Directory::new(config(&slapd, dir.path())).unwrap();
    directory.authenticate("alice", "alice-pw").await.unwrap();
    directory.ping().await.unwrap();

    // Stopped: refused connections, at once.
    slapd.stop();
    assert!(matches!(
        directory.authenticate("alice", "alice-pw").await,
        Err(DirectoryError::Unavailable(_))
    ));
    assert!(directory.ping().await.is_err());

    // Back: the kept connection is dead; the next sign-in connects again.
    slapd.resume();
    directory.authenticate("alice", "alice-pw").await.unwrap();
    directory.ping().await.unwrap();

    // A directory that accepts connections and never answers: unavailable once the timeout
    // (2 s here) has passed, not a hang (the outer 30 s only turns a hang into a failure).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = config(&slapd, dir.path());
    config.url = format!("ldap://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let directory = Directory::new(config).unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        directory.authenticate("alice", "alice-pw"),
    )
    .await
    .expect("an answer, not a hang");
    assert!(
        matches!(answer, Err(DirectoryError::Unavailable(_))),
        "{answer:?}"
    );
    held.abort();
}
