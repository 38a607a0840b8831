//! The client settings document (`GET /api/v2/users/settings/`): what the config's
//! `[client_settings]` table may say, with the reference mock's values as defaults. The
//! per-user parts are added where it is served (`rest::settings`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    pub admin_mode_enabled: bool,
    pub file_logging_enabled: bool,
    pub default_remote_protocol: u32,
    pub last_pool_autoconnect_enabled: bool,
    pub automatically_install_updates_enabled: bool,
    pub documentation_url: String,
}

impl Default for General {
    fn default() -> Self {
        General {
            admin_mode_enabled: false,
            file_logging_enabled: false,
            default_remote_protocol: 1,
            last_pool_autoconnect_enabled: false,
            automatically_install_updates_enabled: true,
            documentation_url: "https://spacevm.ru/client-docs/latest/".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSettings {
    pub general: General,
    pub domain_username_format_enabled: bool,
    pub sc_permissions: Vec<String>,
    /// Seconds.
    pub network_timeout: u32,
    /// The `protocols` array as clients receive it.
    pub protocols: Vec<Value>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            general: General::default(),
            domain_username_format_enabled: false,
            sc_permissions: Vec::new(),
            network_timeout: 15,
            protocols: vec![json!({
                "id": 1,
                "name": "GLINT",
                "version": "1.0.0",
                "image_format": "BGRX32",
                "fps": 30,
                "keep_session_enabled": false,
                "full_screen_enabled": true,
                "multi_screen_enabled": false,
                "scale_image_enabled": true,
                "full_image_redraw_enabled": false,
                "hardware_acceleration_options": {
                    "hardware_acceleration_enabled": false,
                    "video_compression_codec": "AVC420",
                    "h264_bitrate_mbs": 3
                },
                "audio_playback_mode": "CLIENT"
            })],
        }
    }
}
