//! STUN and TURN servers handed to peers on join, with short-lived TURN
//! credentials (the TURN REST API scheme that coturn's `use-auth-secret`
//! implements): the user name is `<expiry unix seconds>:<peer id>` and the
//! password is base64(HMAC-SHA1(shared secret, user name)). The TURN server
//! checks both with the same secret, so no long-term password ever reaches a
//! browser, and a leaked credential stops working at its expiry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ferry_protocol::{IceServer, PeerId};
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// STUN/TURN settings of a server.
#[derive(Debug, Clone, Default)]
pub struct IceConfig {
    /// `stun:` URLs handed out as they are.
    pub stun_urls: Vec<String>,
    /// `turn:`/`turns:` URLs; handed out only with a secret.
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`).
    pub turn_secret: Option<String>,
    /// How long TURN credentials stay valid.
    pub turn_ttl: Duration,
}

/// One TURN REST credential: `(user name, password)`.
pub fn turn_credential(secret: &str, peer: &PeerId, expires_unix: u64) -> (String, String) {
    let username = format!("{expires_unix}:{peer}");
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any size"));
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

impl IceConfig {
    /// The list for one peer that just joined.
    pub fn servers_for(&self, peer: &PeerId) -> Vec<IceServer> {
        let mut out = Vec::new();
        if !self.stun_urls.is_empty() {
            out.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if let (false, Some(secret)) = (self.turn_urls.is_empty(), &self.turn_secret) {
            let expires = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_add(self.turn_ttl)
                .as_secs();
            let (username, credential) = turn_credential(secret, peer, expires);
            out.push(IceServer {
                urls: self.turn_urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_scheme() {
        // Computed independently: printf '1700000000:p1' |
        //   openssl dgst -sha1 -hmac 'north' -binary | base64
        let (user, pass) = turn_credential("north", &PeerId::new("p1").unwrap(), 1_700_000_000);
        assert_eq!(user, "1700000000:p1");
        assert_eq!(pass, "qmV1Ez2SwzrylXCPMqxg9P1hY0Y=");
    }

    #[test]
    fn turn_needs_a_secret() {
        let mut c = IceConfig {
            stun_urls: vec!["stun:127.0.0.1:3478".into()],
            turn_urls: vec!["turn:127.0.0.1:3478".into()],
            turn_secret: None,
            turn_ttl: Duration::from_secs(3600),
        };
        let p = PeerId::new("p1").unwrap();
        assert_eq!(c.servers_for(&p).len(), 1, "no TURN without a secret");
        c.turn_secret = Some("s".into());
        let list = c.servers_for(&p);
        assert_eq!(list.len(), 2);
        let user = list[1].username.as_deref().unwrap();
        let expiry: u64 = user.split(':').next().unwrap().parse().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!((now + 3590..=now + 3610).contains(&expiry));
        assert!(user.ends_with(":p1"));
    }
}
