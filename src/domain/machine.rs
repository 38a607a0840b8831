//! Machines and the data to connect to them: what provisioners return and tasks carry.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A machine held for a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub id: Uuid,
    pub verbose_name: String,
    pub host: String,
    pub port: u16,
    /// 1 = GLINT v1, the only remote protocol the v2 API knows.
    pub protocol_id: u32,
    pub permissions: Vec<String>,
}

/// What a client needs to connect (the mock's step-2 payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionData {
    pub id: Uuid,
    pub verbose_name: String,
    pub permissions: Vec<String>,
    pub host: String,
    pub port: u16,
    pub status: String,
    pub protocol_id: u32,
}

impl ConnectionData {
    pub fn for_machine(m: &Machine) -> Self {
        ConnectionData {
            id: m.id,
            verbose_name: m.verbose_name.clone(),
            permissions: m.permissions.clone(),
            host: m.host.clone(),
            port: m.port,
            status: "ACTIVE".into(),
            protocol_id: m.protocol_id,
        }
    }
}
