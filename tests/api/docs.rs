//! Documentation that must stay true: checked against the code it describes.

use std::collections::BTreeSet;

const README: &str = include_str!("../../README.rst");

/// The rows of README.rst's configuration table: (keys, default cell).
fn config_table() -> Vec<(Vec<String>, String)> {
    // The header row: "key", "default", "meaning", however wide the columns are.
    let header = README
        .lines()
        .find(|l| l.split_whitespace().eq(["key", "default", "meaning"]))
        .expect("README.rst has the configuration table");
    let start = header.as_ptr() as usize - README.as_ptr() as usize;
    let body = &README[start..];
    let border = body.lines().nth(1).unwrap();
    assert!(border.starts_with("====="), "{border}");
    // Column starts from the border: "=====  =====  =====".
    let key_width = border.find(' ').unwrap();
    let default_start = key_width + border[key_width..].find('=').unwrap();
    let default_width = border[default_start..].find(' ').unwrap();
    let mut rows = Vec::new();
    for line in body.lines().skip(2) {
        if line.starts_with("=====") {
            return rows;
        }
        let key = line[..key_width.min(line.len())].trim();
        if key.is_empty() {
            continue; // a continuation line of the meaning
        }
        let default = line
            .get(default_start..(default_start + default_width).min(line.len()))
            .unwrap_or("")
            .trim()
            .to_owned();
        rows.push((key.split(", ").map(str::to_owned).collect(), default));
    }
    panic!("the configuration table is not closed");
}

#[test]
fn the_readme_config_table_lists_every_key_the_config_reads_with_its_default() {
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
        "README.rst's table lacks {missing:?} and names keys the config does not read: {unknown:?}"
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
                        "README.rst says {key} defaults to {cell}"
                    );
                    checked += 1;
                }
                // A number must be a valid value of its key.
                Err(e) if cell.starts_with(|c: char| c.is_ascii_digit()) => {
                    panic!("README.rst's default of {key} ({cell}) is not a valid value: {e}")
                }
                Err(_) => {} // a word standing for a table ("mock's", "simulated")
            }
        }
    }
    assert!(checked > 20, "defaults checked: {checked}");
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
    // The table's header, as issue 32 asks.
    assert!(DEMO_MD.contains("| user | what it shows | how |"));
}
