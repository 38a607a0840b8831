//! `GET /api/v2/users/settings/`: the client settings document. Values come from the config's
//! `[client_settings]` table, with the reference mock's values as defaults; the MFA flags in
//! `security` are the signed-in user's own.

use serde_json::{Value, json};

use crate::auth::users::User;
pub use crate::domain::client_settings::{ClientSettings, General};

impl ClientSettings {
    pub fn for_user(&self, user: &User) -> Value {
        json!({
            "general": self.general,
            "security": {
                "otp_enabled": user.otp_enabled,
                "adfs_enabled": user.adfs_enabled,
                "hardware_token_enabled": user.hardware_token_enabled,
                "domain_username_format_enabled": self.domain_username_format_enabled,
                "sc_permissions": self.sc_permissions,
            },
            "net": {
                "network_timeout": self.network_timeout,
                "ws_channels": [{"channel": "api/v2/pools/ws/", "event": "pool_update"}],
            },
            "protocols": self.protocols,
        })
    }
}
