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
