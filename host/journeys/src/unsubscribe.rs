//! Signed unsubscribe links, as Gmail and Yahoo require of bulk senders (RFC 8058). Each
//! message a customer could unsubscribe from carries a link naming who, which purpose (or
//! topic) and the send it came with, sealed with the host's key: whoever holds the link
//! can unsubscribe that one person from that one thing, and nothing else. A link that was
//! changed or made up does not open.

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use rekindle_store::Purpose;
use serde::{Deserialize, Serialize};

/// What a link unsubscribes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The profile the message went to.
    #[serde(rename = "p")]
    pub profile_id: String,
    /// The consent purpose the message needed (`email`, `sms`).
    #[serde(rename = "c", with = "purpose_name")]
    pub purpose: Purpose,
    /// The topic the send step named (`win-back`), if any.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The send the link came with, recorded on the `Unsubscribed` event.
    #[serde(rename = "k")]
    pub send_key: String,
    /// The channel it went out on.
    #[serde(rename = "h")]
    pub channel: String,
}

mod purpose_name {
    use rekindle_store::Purpose;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(purpose: &Purpose, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(purpose.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Purpose, D::Error> {
        let name = String::deserialize(d)?;
        Purpose::parse(&name).ok_or_else(|| serde::de::Error::custom(format!("no purpose `{name}`")))
    }
}

/// The key links are sealed with; its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct LinkKey(Vec<u8>);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

/// Why a link does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("this link is not one this host made, or it was changed")]
    Forged,
    #[error("this link is not complete")]
    Malformed,
}

const VERSION: &str = "u1";

impl LinkKey {
    /// A key over `secret` (at least 32 bytes of randomness).
    pub fn new(secret: &[u8]) -> LinkKey {
        LinkKey(secret.to_vec())
    }

    fn tag(&self, payload: &str) -> Vec<u8> {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        // Only this host's unsubscribe links verify under it, not its other signed texts.
        mac.update(b"rekindle unsubscribe link ");
        mac.update(VERSION.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The token for `subscription`: URL-safe, to put in a path.
    pub fn seal(&self, subscription: &Subscription) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = b64.encode(serde_json::to_vec(subscription).expect("a subscription serialises"));
        let tag = b64.encode(self.tag(&payload));
        format!("{VERSION}.{payload}.{tag}")
    }

    /// What `token` unsubscribes from, if this key sealed it unchanged.
    pub fn open(&self, token: &str) -> Result<Subscription, LinkError> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = token.split('.');
        let (Some(VERSION), Some(payload), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(LinkError::Malformed);
        };
        let tag = b64.decode(tag).map_err(|_| LinkError::Malformed)?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(b"rekindle unsubscribe link ");
        mac.update(VERSION.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&tag).map_err(|_| LinkError::Forged)?;
        let json = b64.decode(payload).map_err(|_| LinkError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| LinkError::Malformed)
    }
}

/// Where the host's unsubscribe links point, and the key that seals them.
#[derive(Debug, Clone)]
pub struct Links {
    /// The host's public URL, without a trailing slash; `None` on a host that opens links
    /// but cannot make working ones (no public URL), which sends no email.
    pub base_url: Option<String>,
    pub key: LinkKey,
}

impl Links {
    /// The one-click unsubscribe URL for `subscription`, when this host can make one.
    pub fn url(&self, subscription: &Subscription) -> Option<String> {
        self.base_url.as_ref().map(|base| format!("{base}/v1/unsubscribe/{}", self.key.seal(subscription)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann() -> Subscription {
        Subscription {
            profile_id: "p-ann".into(),
            purpose: Purpose::Email,
            topic: Some("win-back".into()),
            send_key: "run-1:hello:email".into(),
            channel: "email".into(),
        }
    }

    #[test]
    fn a_link_opens_to_what_it_was_sealed_with_and_nothing_changed_opens() {
        let key = LinkKey::new(&[1u8; 32]);
        let token = key.seal(&ann());
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "{token}");
        assert_eq!(key.open(&token), Ok(ann()));
        // Another key, a payload naming someone else under the old tag, a cut tag.
        assert_eq!(LinkKey::new(&[2u8; 32]).open(&token), Err(LinkError::Forged));
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let bob = b64.encode(serde_json::to_vec(&Subscription { profile_id: "p-bob".into(), ..ann() }).unwrap());
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(key.open(&format!("u1.{bob}.{}", parts[2])), Err(LinkError::Forged));
        assert_eq!(key.open(&format!("u1.{}.{}", parts[1], &parts[2][..10])), Err(LinkError::Forged));
        assert_eq!(key.open("u1.abc"), Err(LinkError::Malformed));
        assert_eq!(key.open(&format!("u2.{}.{}", parts[1], parts[2])), Err(LinkError::Malformed));
        assert_eq!(key.open(""), Err(LinkError::Malformed));
    }
}
