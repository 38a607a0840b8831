//! What clients send to and get from the pool methods, shared by the WebSocket RPCs and the
//! REST shim so both transports speak the same shapes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{ConnectionData, Task};

/// A pool as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    pub id: Uuid,
    pub name: String,
    pub status: String,
    pub is_favorite: bool,
    pub pool_type: String,
    pub os_type: String,
    pub connection_types: Vec<String>,
}

/// Step 2's arguments, as both the RPC (`connect_info`) and the REST body carry them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnectParams {
    #[serde(default)]
    pub remote_protocol: Option<i64>,
    #[serde(default)]
    pub width: Option<i64>,
    #[serde(default)]
    pub height: Option<i64>,
    /// Accepted for compatibility with the v2 API (must be a string); dropped on reading, so
    /// it is never stored or logged.
    #[serde(default)]
    pub password: Option<Discarded>,
}

/// A string field that is checked and thrown away.
#[derive(Debug, Clone)]
pub struct Discarded;

impl<'de> Deserialize<'de> for Discarded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|_| Discarded)
    }
}

/// What step 2 answers; on the WebSocket, `{"task": {...}}` or `{"connection": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectOutcome {
    /// Not ready yet: the running (or new) task.
    Task(Box<Task>),
    /// Ready: how to connect (shared with the task that holds it, so answering again copies
    /// nothing).
    Connection(Arc<ConnectionData>),
}

impl From<Task> for ConnectOutcome {
    fn from(task: Task) -> Self {
        ConnectOutcome::Task(Box::new(task))
    }
}
