//! The ground floor: plain domain types that every layer above may name — tasks and their
//! kinds, machines and connection data, token digests, how client addresses are counted, how
//! settings write durations. Nothing here imports the rest of the crate, so a lower layer
//! never needs an upper one to name what it stores or sends (see `lib.rs` for the layers).

pub mod address;
pub mod audit;
pub mod client_settings;
pub mod clock;
pub mod machine;
pub mod problem;
pub mod secs;
pub mod task;

pub use address::{address_key, is_loopback_url};
pub use audit::{AuditEvent, AuditQuery};
pub use machine::{ConnectionData, Machine};
pub use problem::Problem;
pub use task::{Task, TaskError, TaskKind, TaskStatus};

/// A session or MFA token's SHA-256 digest: what is stored and compared, never the token.
pub type TokenHash = [u8; 32];
