//! Reading a directory entry: the account name it goes by, the key that identifies it for
//! good, and DNs compared as the directory compares them.

use std::collections::HashMap;

use ldap3::SearchEntry;

use super::DirectoryError;

/// The entry's account name, for display and for the admin methods: the `uid` or
/// `sAMAccountName` value that is the name signed in with (whatever its case), never merely
/// the first of several values (an entry whose `uid` is [alice, carol] signed in as carol is
/// carol). A name the directory matched by rules of its own (Unicode case folding, full-width
/// forms: "ａｌｉｃｅ" finds uid=alice) is shown as the entry's first value, never as typed; the
/// name typed is kept only when the entry has neither attribute. (Identity is the entry's
/// [`entry_key`], whatever the name.)
pub(super) fn account_name(attrs: &HashMap<String, Vec<String>>, typed: &str) -> String {
    let typed = typed.trim();
    let values: Vec<&String> = ["uid", "sAMAccountName"]
        .iter()
        .flat_map(|a| attrs.iter().filter(|(k, _)| k.eq_ignore_ascii_case(a)))
        .flat_map(|(_, v)| v)
        .collect();
    values
        .iter()
        .find(|v| v.to_lowercase() == typed.to_lowercase())
        .or_else(|| values.first())
        .map(|v| (*v).clone())
        .unwrap_or_else(|| typed.to_owned())
}

/// What identifies an entry for good: its `entryUUID` (OpenLDAP, RFC 4530) or `objectGUID`
/// (Active Directory), which neither a rename nor a move changes. Every name that signs in to
/// the entry is the same user, with one TOTP enrolment and one record of used codes.
///
/// An entry whose service account can read neither is refused (the caller's 503, logged),
/// never identified by its DN instead: a DN changes with a move, and an identity that changes
/// — or that changes when an ACL starts showing `entryUUID` — would leave the person's TOTP
/// enrolment behind and let them in with the password alone.
pub fn entry_key(entry: &SearchEntry) -> Result<String, DirectoryError> {
    let uuid = first(&entry.attrs, "entryUUID")
        .and_then(|v| uuid::Uuid::parse_str(v).ok())
        .or_else(|| {
            // 16 raw bytes: ldap3 files a value that happens to be UTF-8 with the text ones.
            let text = entry
                .attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("objectGUID"))
                .and_then(|(_, v)| v.first())
                .map(|v| v.as_bytes());
            let binary = entry
                .bin_attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("objectGUID"))
                .and_then(|(_, v)| v.first())
                .map(Vec::as_slice);
            text.or(binary)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(uuid::Uuid::from_bytes_le)
        });
    match uuid {
        Some(uuid) => Ok(format!("uuid:{uuid}")),
        None => Err(DirectoryError::Unavailable(format!(
            "the entry {} has no entryUUID or objectGUID the service account can read; \
             poolgate identifies directory users by it (let bind_dn read it)",
            entry.dn
        ))),
    }
}

/// An attribute's first value (attribute names are case-insensitive).
pub(super) fn first<'a>(attrs: &'a HashMap<String, Vec<String>>, name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(String::as_str)
}

/// Whether two DNs name the same entry, as far as case and spaces around the separating
/// commas go. An escaped comma (`\,`) is part of a value, and so are the spaces beside it.
pub fn same_dn(a: &str, b: &str) -> bool {
    normalized_dn(a) == normalized_dn(b)
}

/// A DN as [`same_dn`] compares it: each RDN without case or the spaces around it.
fn normalized_dn(dn: &str) -> String {
    fn rdns(dn: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rdn = String::new();
        let mut chars = dn.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    rdn.push(c);
                    if let Some(next) = chars.next() {
                        rdn.push(next);
                    }
                }
                ',' => out.push(std::mem::take(&mut rdn)),
                _ => rdn.push(c),
            }
        }
        out.push(rdn);
        out.iter()
            .map(|r| r.trim_start().to_lowercase())
            .map(|r| match r.strip_suffix(' ') {
                // A trailing space is the value's only when escaped.
                Some(_) if !r.ends_with("\\ ") => r.trim_end().to_owned(),
                _ => r,
            })
            .collect()
    }
    rdns(dn).join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_compare_without_case_or_spaces() {
        assert!(same_dn(
            "cn=VDI-Admins, ou=groups,dc=example,dc=org",
            "CN=vdi-admins,OU=Groups,DC=example,DC=org"
        ));
        assert!(!same_dn("cn=a,dc=x", "cn=b,dc=x"));
        // Found by a hostile review: escaped commas are part of a value.
        assert!(!same_dn(
            r"cn=VDI\, Admins,ou=groups,dc=example,dc=org",
            r"cn=VDI\,Admins,ou=groups,dc=example,dc=org"
        ));
        assert!(same_dn(
            r"cn=VDI\, Admins, ou=groups,dc=example,dc=org",
            r"CN=vdi\, admins,OU=groups,DC=example,DC=org"
        ));
        assert!(!same_dn("cn=a,dc=x", "cn=a,dc=x,dc=evil"));
    }
}
