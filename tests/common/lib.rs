//! What the test targets share: starting the app and talking to it (`helpers`), the backend
//! suite every state store passes (`backends`, with the `backend_cases!` list; the warm sets'
//! cases are in `warm`), and the harness of the targets that decide at run time whether a
//! case can run (`harness`).

pub mod backends;
pub mod harness;
pub mod helpers;
pub mod oidc_provider;
pub mod policies;
pub mod warm;
pub mod webauthn;
