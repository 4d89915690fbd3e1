//! Settings from a TOML file, merged under flags and environment variables
//! (flags and variables win; anything unset keeps [`Config::default`]).
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//! web_root = "/srv/ferry/www"
//! max_room_size = 8
//! heartbeat_ms = 5000
//! max_frame_bytes = 65536
//! reconnect_grace_ms = 15000
//! redis = "redis://127.0.0.1:6379"
//!
//! [ice]
//! stun_urls = ["stun:turn.example.org:3478"]
//! turn_urls = ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"]
//! turn_secret = "same as coturn's static-auth-secret"
//! turn_ttl_secs = 21600
//!
//! [limits]
//! max_rooms = 50000
//! messages_per_sec = 50
//! message_burst = 200
//! connections_per_ip_per_min = 120
//! join_timeout_ms = 60000
//! write_timeout_ms = 10000
//! allowed_origins = ["https://ferry.example.org"]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{Config, Error};

/// The file's shape: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// See [`Config::listen`].
    pub listen: Option<SocketAddr>,
    /// See [`Config::web_root`].
    pub web_root: Option<PathBuf>,
    /// See [`Config::max_room_size`].
    pub max_room_size: Option<usize>,
    /// See [`Config::heartbeat`].
    pub heartbeat_ms: Option<u64>,
    /// See [`Config::max_frame_bytes`].
    pub max_frame_bytes: Option<usize>,
    /// See [`Config::reconnect_grace`].
    pub reconnect_grace_ms: Option<u64>,
    /// See [`Config::redis`].
    pub redis: Option<String>,
    /// STUN/TURN.
    #[serde(default)]
    pub ice: IceSettings,
    /// Abuse limits.
    #[serde(default)]
    pub limits: LimitSettings,
}

/// `[ice]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceSettings {
    /// STUN URLs.
    pub stun_urls: Option<Vec<String>>,
    /// TURN URLs.
    pub turn_urls: Option<Vec<String>>,
    /// Shared TURN secret.
    pub turn_secret: Option<String>,
    /// Credential lifetime in seconds.
    pub turn_ttl_secs: Option<u64>,
}

/// `[limits]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Most rooms.
    pub max_rooms: Option<usize>,
    /// Messages per second per connection.
    pub messages_per_sec: Option<u32>,
    /// Burst of messages per connection.
    pub message_burst: Option<u32>,
    /// New connections per address per minute.
    pub connections_per_ip_per_min: Option<u32>,
    /// Time to send `join`, in milliseconds.
    pub join_timeout_ms: Option<u64>,
    /// Time a write may take, in milliseconds.
    pub write_timeout_ms: Option<u64>,
    /// Allowed `Origin` values.
    pub allowed_origins: Option<Vec<String>>,
}

impl FileSettings {
    /// Parses a TOML file's text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        toml::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }

    /// Applies every value the file sets onto `config`.
    pub fn apply(self, config: &mut Config) {
        let l = &mut config.limits;
        let i = &mut config.ice;
        macro_rules! set {
            ($($dst:expr => $src:expr),* $(,)?) => { $(if let Some(v) = $src { $dst = v; })* };
        }
        set! {
            config.listen => self.listen,
            config.web_root => self.web_root,
            config.max_room_size => self.max_room_size,
            config.heartbeat => self.heartbeat_ms.map(Duration::from_millis),
            config.max_frame_bytes => self.max_frame_bytes,
            config.reconnect_grace => self.reconnect_grace_ms.map(Duration::from_millis),
            config.redis => self.redis.map(Some),
            i.stun_urls => self.ice.stun_urls,
            i.turn_urls => self.ice.turn_urls,
            i.turn_secret => self.ice.turn_secret.map(Some),
            i.turn_ttl => self.ice.turn_ttl_secs.map(Duration::from_secs),
            l.max_rooms => self.limits.max_rooms,
            l.messages_per_sec => self.limits.messages_per_sec,
            l.message_burst => self.limits.message_burst,
            l.connections_per_ip_per_min => self.limits.connections_per_ip_per_min,
            l.join_timeout => self.limits.join_timeout_ms.map(Duration::from_millis),
            l.write_timeout => self.limits.write_timeout_ms.map(Duration::from_millis),
            l.allowed_origins => self.limits.allowed_origins,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_applies() {
        let doc = include_str!("settings.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let mut c = Config::default();
        FileSettings::parse(&example).unwrap().apply(&mut c);
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.ice.turn_urls.len(), 2);
        assert_eq!(c.ice.turn_ttl, Duration::from_secs(21600));
        assert_eq!(c.limits.allowed_origins, ["https://ferry.example.org"]);
        assert_eq!(c.limits.join_timeout, Duration::from_secs(60));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(FileSettings::parse("listn = \"1.2.3.4:5\"").is_err());
        assert!(FileSettings::parse("max_room_size = \"eight\"").is_err());
        assert!(FileSettings::parse("[limits]\nmax_roms = 3").is_err());
        let mut c = Config::default();
        FileSettings::parse("").unwrap().apply(&mut c);
        assert_eq!(c.max_room_size, 8, "an empty file changes nothing");
    }
}
