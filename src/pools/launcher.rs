//! The launcher file a desktop client opens: `.rdp` (mstsc, Remmina, FreeRDP) for RDP pools,
//! `.vv` (virt-viewer) for SPICE/GLINT-style ones. Rendered by the server alone, so that the
//! command-line client (`poolgate connect`) and the web portal hand out the same file.

use serde::Serialize;

use super::PoolView;
use crate::domain::ConnectionData;

/// A launcher file, as `rpc/launcher` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Launcher {
    /// The pool's name, reduced to characters every file system accepts, and the extension.
    pub filename: String,
    pub content_type: &'static str,
    pub content: String,
}

/// The launcher for `conn`, a connection to a machine of `pool`, for `username`.
pub fn render(pool: &PoolView, conn: &ConnectionData, username: &str) -> Launcher {
    let stem = file_stem(&pool.name);
    let host = line_safe(&conn.host);
    let port = conn.port;
    if pool.connection_types.iter().any(|t| t.contains("RDP")) {
        Launcher {
            filename: format!("{stem}.rdp"),
            content_type: "application/x-rdp",
            content: format!(
                "full address:s:{host}:{port}\r\nusername:s:{}\r\nprompt for credentials:i:1\r\n\
                 screen mode id:i:2\r\nauthentication level:i:2\r\n",
                line_safe(username)
            ),
        }
    } else {
        Launcher {
            filename: format!("{stem}.vv"),
            content_type: "application/x-virt-viewer",
            content: format!(
                "[virt-viewer]\ntype=spice\nhost={host}\nport={port}\ntitle={} ({})\n\
                 delete-this-file=1\nfullscreen=0\n",
                line_safe(&conn.verbose_name),
                line_safe(&pool.name)
            ),
        }
    }
}

/// A value on one line of the file: control characters (a newline would start a setting of
/// its own) are dropped.
fn line_safe(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).collect()
}

/// A file name from a pool name: letters, digits, `.`, `-` and `_` kept, anything else `_`;
/// never empty and never hidden.
fn file_stem(name: &str) -> String {
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stem = stem.trim_start_matches('.');
    if stem.is_empty() {
        "desktop".into()
    } else {
        stem.chars().take(64).collect()
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn pool(name: &str, types: &[&str]) -> PoolView {
        PoolView {
            id: Uuid::new_v4(),
            name: name.into(),
            status: "ACTIVE".into(),
            is_favorite: false,
            pool_type: "AUTOMATED".into(),
            os_type: "Windows".into(),
            connection_types: types.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn conn(host: &str) -> ConnectionData {
        ConnectionData {
            id: Uuid::new_v4(),
            verbose_name: "vm-1".into(),
            permissions: vec![],
            host: host.into(),
            port: 3389,
            status: "ACTIVE".into(),
            protocol_id: 1,
        }
    }

    #[test]
    fn rdp_pools_get_an_rdp_file_and_others_a_virt_viewer_file() {
        let rdp = render(
            &pool("pool-win-1", &["RDP", "NATIVE_RDP"]),
            &conn("10.0.0.5"),
            "u",
        );
        assert_eq!(rdp.filename, "pool-win-1.rdp");
        assert_eq!(rdp.content_type, "application/x-rdp");
        assert!(
            rdp.content
                .starts_with("full address:s:10.0.0.5:3389\r\nusername:s:u\r\n")
        );
        let vv = render(&pool("linux", &["SPICE"]), &conn("10.0.0.6"), "u");
        assert_eq!(vv.filename, "linux.vv");
        assert!(
            vv.content
                .starts_with("[virt-viewer]\ntype=spice\nhost=10.0.0.6\nport=3389\n")
        );
        assert!(vv.content.contains("title=vm-1 (linux)\n"));
    }

    #[test]
    fn no_value_can_add_a_line_or_leave_the_directory() {
        let l = render(
            &pool("../../etc/x\nfull address:s:evil", &["RDP"]),
            &conn("10.0.0.5\r\nfull address:s:evil:1"),
            "u\r\nalternate shell:s:cmd",
        );
        assert_eq!(l.content.lines().count(), 5, "{}", l.content);
        assert!(
            !l.filename.contains('/') && !l.filename.starts_with('.'),
            "{}",
            l.filename
        );
        assert_eq!(
            render(&pool("..", &[]), &conn("h"), "u").filename,
            "desktop.vv"
        );
    }
}
