//! Warm sets in the config: refused where they cannot work, at their key, by `serve` and by
//! `check-config`. (The sets themselves are in the backend suite: tests/common/warm.rs.)

use std::process::Command;

use poolgate::Application;

use crate::helpers::*;

const STATIC: &str = "kind = \"static\"\nmachines = [{ host = \"10.0.0.1\", port = 3389 }]";

#[tokio::test]
async fn a_warm_set_on_a_static_inventory_is_a_config_error_naming_the_key() {
    let mut config = demo_config();
    config
        .provisioners
        .insert("lab".into(), toml::from_str(STATIC).unwrap());
    assert_eq!(config.pools[2].name, "pool-astra-1");
    config.pools[2].provisioner = "lab".into();
    config.pools[2].warm = 2;
    let refused = match Application::build(config).await {
        Ok(_) => panic!("a warm set on a static inventory was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        refused.contains(
            "pools.2.warm: pool \"pool-astra-1\" takes its machines from the static inventory \"lab\""
        ),
        "{refused}"
    );

    let dir = tempfile::tempdir().unwrap();
    let demo = std::fs::read_to_string("examples/demo.toml").unwrap();
    let pool = "name = \"pool-astra-1\"\n";
    assert!(
        demo.contains(pool),
        "examples/demo.toml changed: update this test"
    );
    let text = format!(
        "{}\n[provisioners.lab]\n{STATIC}\n",
        demo.replacen(pool, &format!("{pool}provisioner = \"lab\"\nwarm = 2\n"), 1)
    );
    let file = dir.path().join("poolgate.toml");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_poolgate"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = text.lines().position(|l| l == "warm = 2").unwrap() + 1;
    let at = format!("{}:{line}:1: pools.2.warm: ", file.display());
    assert!(
        err.lines()
            .any(|l| l.starts_with(&at) && l.contains("always up")),
        "{at}… in:\n{err}"
    );
}
