//! Identifier normalisation and SHA-256 hashing as Meta, TikTok and Google require for
//! customer-list audiences.

use alloc::string::String;

use sha2::{Digest, Sha256};

/// The ad platforms whose hashing rules differ slightly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdPlatform {
    /// Meta Custom Audiences: phone as digits with country code, no `+`.
    Meta,
    /// TikTok audiences: phone in E.164 with `+`.
    TikTok,
    /// Google Customer Match: E.164 phone, and dots dropped from Gmail local parts.
    Google,
}

/// Lower-case hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest.iter() {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push(HEX[(byte >> 4) as usize] as char);
        out.push(HEX[(byte & 0xf) as usize] as char);
    }
    out
}

/// The idempotency key of one audience change: the same on every attempt at it (the host
/// gives every attempt the `ctx.now` of the change's first), and another for any other
/// change, even the same member added to the same audience again later.
pub fn audience_change_key(ctx: &crate::Context, change: &crate::AudienceChange) -> String {
    let mut hash = Sha256::new();
    let mut put = |part: &str| {
        // Lengths first, so no two lists of parts hash alike.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    };
    put(&change.audience);
    put(&alloc::format!("{}", ctx.now));
    for (side, members) in [("add", &change.add), ("remove", &change.remove)] {
        put(side);
        for member in members {
            put(&member.profile_id);
        }
    }
    let digest = hash.finalize();
    let mut key = String::from("audience-");
    for byte in &digest[..16] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        key.push(HEX[(byte >> 4) as usize] as char);
        key.push(HEX[(byte & 0xf) as usize] as char);
    }
    key
}

/// A stable bucket from 0 to 99 for `key`, for holdouts and A/B splits that must come out
/// the same at the server and at the edge.
pub fn percent_bucket(key: &str) -> u8 {
    let digest = Sha256::digest(key.as_bytes());
    (u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % 100) as u8
}

/// Trims and lower-cases an email address; `None` unless it looks like `local@domain.tld`.
pub fn normalize_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let valid = !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(char::is_whitespace);
    valid.then_some(email)
}

/// Normalises a phone number to E.164 (`+` and 8 to 15 digits). A number written without
/// an international prefix gets `default_country_code` (digits only, such as `"1"` or
/// `"44"`), after dropping a national trunk `0`.
pub fn normalize_phone(raw: &str, default_country_code: &str) -> Option<String> {
    let trimmed = raw.trim();
    if trimmed.chars().any(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    let international = if trimmed.starts_with('+') {
        digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.into()
    } else {
        let national = digits.trim_start_matches('0');
        let mut full = String::from(default_country_code);
        full.push_str(national);
        full
    };
    let valid = (8..=15).contains(&international.len()) && !international.starts_with('0');
    valid.then(|| {
        let mut e164 = String::from("+");
        e164.push_str(&international);
        e164
    })
}

/// The platform's normalised, SHA-256-hashed form of an email address.
pub fn hash_email(platform: AdPlatform, raw: &str) -> Option<String> {
    let email = normalize_email(raw)?;
    let email = match (platform, email.split_once('@')) {
        (AdPlatform::Google, Some((local, domain @ ("gmail.com" | "googlemail.com")))) => {
            let mut stripped: String = local.chars().filter(|c| *c != '.').collect();
            stripped.push('@');
            stripped.push_str(domain);
            stripped
        }
        _ => email,
    };
    Some(sha256_hex(&email))
}

/// The platform's normalised, SHA-256-hashed form of a phone number.
pub fn hash_phone(platform: AdPlatform, raw: &str, default_country_code: &str) -> Option<String> {
    let e164 = normalize_phone(raw, default_country_code)?;
    Some(match platform {
        AdPlatform::Meta => sha256_hex(&e164[1..]),
        AdPlatform::TikTok | AdPlatform::Google => sha256_hex(&e164),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_emails() {
        assert_eq!(normalize_email("  John.Doe@Example.COM ").as_deref(), Some("john.doe@example.com"));
        assert_eq!(normalize_email("no-at-sign"), None);
        assert_eq!(normalize_email("a@b"), None);
        assert_eq!(normalize_email("a@@b.com"), None);
    }

    #[test]
    fn normalises_phones_to_e164() {
        assert_eq!(normalize_phone("+1 (555) 123-4567", "1").as_deref(), Some("+15551234567"));
        assert_eq!(normalize_phone("0044 20 7946 0958", "1").as_deref(), Some("+442079460958"));
        assert_eq!(normalize_phone("020 7946 0958", "44").as_deref(), Some("+442079460958"));
        assert_eq!(normalize_phone("555-CALL", "1"), None);
        assert_eq!(normalize_phone("123", "1"), None);
    }

    #[test]
    fn hashes_per_platform() {
        // SHA-256 of "test@example.com", a published test vector.
        let expected = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b";
        assert_eq!(hash_email(AdPlatform::Meta, " Test@Example.com").as_deref(), Some(expected));
        assert_eq!(hash_email(AdPlatform::Google, "j.o.hn@gmail.com"), hash_email(AdPlatform::Google, "john@gmail.com"));
        assert_ne!(hash_email(AdPlatform::Meta, "j.o.hn@gmail.com"), hash_email(AdPlatform::Meta, "john@gmail.com"));
        assert_eq!(hash_phone(AdPlatform::Meta, "+1 555 123 4567", "1"), Some(sha256_hex("15551234567")));
        assert_eq!(hash_phone(AdPlatform::TikTok, "+1 555 123 4567", "1"), Some(sha256_hex("+15551234567")));
    }
}
