//! Documentation that must stay true: checked against the code it describes.

use std::collections::BTreeSet;

const CONFIGURATION: &str = include_str!("../../docs/configuration.md");

/// The rows of docs/configuration.md's key table: (keys, default cell).
fn config_table() -> Vec<(Vec<String>, String)> {
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().trim_matches('`').to_owned())
            .collect()
    };
    let mut lines = CONFIGURATION
        .lines()
        .skip_while(|l| !l.starts_with('|') || cells(l) != ["key", "default", "meaning"]);
    assert!(
        lines.next().is_some(),
        "docs/configuration.md has the key table (| key | default | meaning |)"
    );
    let border = lines.next().expect("the table's border row");
    assert!(
        border.starts_with("|--") || border.starts_with("| --"),
        "{border}"
    );
    let mut rows = Vec::new();
    for line in lines.take_while(|l| l.starts_with('|')) {
        let row = cells(line);
        assert_eq!(row.len(), 3, "a row of three cells: {line}");
        rows.push((
            row[0].split(", ").map(str::to_owned).collect(),
            row[1].clone(),
        ));
    }
    assert!(!rows.is_empty(), "the key table has rows");
    rows
}

#[test]
fn the_documented_config_table_lists_every_key_the_config_reads_with_its_default() {
    let rows = config_table();
    let documented: BTreeSet<String> = rows.iter().flat_map(|(k, _)| k.clone()).collect();
    let code: BTreeSet<String> = poolgate::config::keys()
        .iter()
        .map(|k| (*k).to_owned())
        .collect();
    assert!(code.len() > 30, "keys read from serde: {code:?}");
    let missing: Vec<_> = code.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&code).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/configuration.md's table lacks {missing:?} and names keys the config does not read: {unknown:?}"
    );

    // Every default that is a value (not prose like "cores − 1" or "—") is the real one: the
    // key set to it leaves the config exactly as the default.
    let default = format!("{:?}", poolgate::Config::default());
    let mut checked = 0;
    for (keys, cell) in &rows {
        if cell.contains(' ') || cell == "—" {
            continue;
        }
        for key in keys {
            let parsed = toml::from_str::<poolgate::Config>(&format!("{key} = {cell}"))
                .or_else(|_| toml::from_str(&format!("{key} = {cell:?}")));
            match parsed {
                Ok(config) => {
                    assert_eq!(
                        format!("{config:?}"),
                        default,
                        "docs/configuration.md says {key} defaults to {cell}"
                    );
                    checked += 1;
                }
                // A number must be a valid value of its key.
                Err(e) if cell.starts_with(|c: char| c.is_ascii_digit()) => {
                    panic!(
                        "docs/configuration.md's default of {key} ({cell}) is not a valid value: {e}"
                    )
                }
                Err(_) => {} // a word standing for a table ("mock's", "simulated")
            }
        }
    }
    assert!(checked > 20, "defaults checked: {checked}");
}

/// The token length protocol/README.md states is what the server hands out.
#[tokio::test]
async fn the_protocol_states_the_token_length_the_server_hands_out() {
    let app = crate::helpers::TestApp::spawn().await;
    let (_client, token) = app.login("astravdi").await;
    let body = token.strip_prefix("pgt_").expect("a pgt_ token");
    let said = format!("`pgt_` followed by {} base64url characters", body.len());
    assert!(
        include_str!("../../protocol/README.md").contains(&said),
        "protocol/README.md should say {said:?}"
    );
}

/// Every demo user has a purpose: a comment above its `[[users]]` table in examples/demo.toml
/// and a row ("user — what it shows — how") in docs/demo.md; and the users whose purpose ends
/// at a desktop have a pool to get one from.
#[test]
fn every_demo_user_has_a_purpose_in_the_demo_file_and_docs_demo_md() {
    const DEMO_TOML: &str = include_str!("../../examples/demo.toml");
    const DEMO_MD: &str = include_str!("../../docs/demo.md");
    let demo = poolgate::Config::demo();
    assert!(demo.demo, "the demo says demo = true");
    let toml_lines: Vec<&str> = DEMO_TOML.lines().collect();
    for user in &demo.users {
        let name = &user.username;
        let row = format!("| `{name}` | ");
        let line = DEMO_MD
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("docs/demo.md has no row for {name}"));
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
        assert_eq!(cells.len(), 3, "user — what it shows — how: {line}");
        assert!(
            cells[1..].iter().all(|c| c.trim().len() > 20),
            "an empty cell: {line}"
        );
        // The comment right above the user's table.
        let at = toml_lines
            .iter()
            .position(|l| *l == format!("username = \"{name}\""))
            .unwrap_or_else(|| panic!("examples/demo.toml has no {name}"));
        assert_eq!(toml_lines[at - 1], "[[users]]");
        assert!(
            toml_lines[at - 2].starts_with("# "),
            "examples/demo.toml: no comment above {name}'s [[users]]"
        );
    }
    let pools_of = |name: &str| -> Vec<String> {
        demo.pools
            .iter()
            .filter(|p| p.users.iter().any(|u| u == name))
            .map(|p| p.name.clone())
            .collect()
    };
    assert_eq!(pools_of("user-4"), ["pool-win-1"], "the one-time-code user");
    assert_eq!(
        pools_of("user-5"),
        ["pool-win-2"],
        "the single sign-on user"
    );
    // The table's header.
    assert!(DEMO_MD.contains("| user | what it shows | how |"));
}
