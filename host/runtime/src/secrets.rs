//! Secret placeholders: the text an adapter puts where a secret goes, and how the host finds
//! them again.
//!
//! A placeholder carries a marker drawn at random for the one call that asked for it:
//! `{{secret:NAME#MARKER}}` or `{{basic-auth:USER:PASS#MARKER}}`. The host fills only
//! placeholders with the marker of the call that produced the request. Text that reached
//! the adapter as data (a customer's first name, a template, an offer) was written before
//! the marker existed, so whatever it says, it reaches the provider exactly as written.

use std::fmt;

/// The random marker of one adapter call's placeholders.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretMarker(String);

impl SecretMarker {
    /// A fresh marker: 128 random bits, as hex.
    pub(crate) fn fresh() -> SecretMarker {
        let mut bytes = [0u8; 16];
        // Without the OS's randomness no marker is safe, and the call cannot go on.
        getrandom::fill(&mut bytes).expect("the operating system's random number generator");
        SecretMarker(hex::encode(bytes))
    }

    /// The marker's text.
    #[cfg(test)]
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretMarker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A marker is no secret, but keeping it out of logs keeps it out of data too.
        f.write_str("SecretMarker(..)")
    }
}

/// What one placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretRef<'a> {
    /// The value of one secret.
    Secret(&'a str),
    /// `Basic base64(user:password)` from two secrets.
    BasicAuth { user: &'a str, password: &'a str },
}

/// The placeholder for secret `name` under `marker`.
pub(crate) fn placeholder(name: &str, marker: &SecretMarker) -> String {
    format!("{{{{secret:{name}#{}}}}}", marker.0)
}

/// The placeholder for Basic credentials from secrets `user` and `password` under `marker`.
pub(crate) fn basic_auth_placeholder(user: &str, password: &str, marker: &SecretMarker) -> String {
    format!("{{{{basic-auth:{user}:{password}#{}}}}}", marker.0)
}

/// Replaces every placeholder of `marker` in `text` with what `resolve` gives for it. Any
/// other `{{...}}`, including a placeholder under another marker, stays as written.
pub fn fill_placeholders<E>(text: &str, marker: &SecretMarker, mut resolve: impl FnMut(SecretRef<'_>) -> Result<String, E>) -> Result<String, E> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let candidate = &rest[start..];
        match parse(candidate, marker) {
            Some((reference, len)) => {
                out.push_str(&resolve(reference)?);
                rest = &candidate[len..];
            }
            None => {
                out.push_str("{{");
                rest = &candidate[2..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The placeholder at the start of `text` under `marker`, and its length.
fn parse<'a>(text: &'a str, marker: &SecretMarker) -> Option<(SecretRef<'a>, usize)> {
    let end = text.find("}}")?;
    let inner = &text[2..end];
    let (reference, given) = inner.rsplit_once('#')?;
    if given != marker.0 {
        return None;
    }
    let reference = match reference.split_once(':')? {
        ("secret", name) if is_name(name) => SecretRef::Secret(name),
        ("basic-auth", pair) => {
            let (user, password) = pair.split_once(':')?;
            (is_name(user) && is_name(password)).then_some(SecretRef::BasicAuth { user, password })?
        }
        _ => return None,
    };
    Some((reference, end + 2))
}

fn is_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// `text` with the placeholders of `marker` shown as `{{secret:NAME}}` and
/// `{{basic-auth:USER:PASS}}`: how tools display an adapter's requests to its author.
pub fn show_placeholders(text: &str, marker: &SecretMarker) -> String {
    let shown: Result<String, std::convert::Infallible> = fill_placeholders(text, marker, |reference| {
        Ok(match reference {
            SecretRef::Secret(name) => format!("{{{{secret:{name}}}}}"),
            SecretRef::BasicAuth { user, password } => format!("{{{{basic-auth:{user}:{password}}}}}"),
        })
    });
    shown.unwrap_or_else(|never| match never {})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(reference: SecretRef<'_>) -> Result<String, String> {
        match reference {
            SecretRef::Secret("KEY") => Ok("s3cr3t".into()),
            SecretRef::BasicAuth { user: "SID", password: "TOKEN" } => Ok("Basic xyz".into()),
            other => Err(format!("unexpected {other:?}")),
        }
    }

    #[test]
    fn only_this_calls_placeholders_are_filled() {
        let marker = SecretMarker::fresh();
        let other = SecretMarker::fresh();
        let text = format!(
            "Bearer {} | {} | {{{{secret:KEY}}}} | {} | {{{{secret:KEY#}}}} | {{{{",
            placeholder("KEY", &marker),
            basic_auth_placeholder("SID", "TOKEN", &marker),
            placeholder("KEY", &other),
        );
        let filled = fill_placeholders(&text, &marker, values).unwrap();
        assert_eq!(filled, format!("Bearer s3cr3t | Basic xyz | {{{{secret:KEY}}}} | {} | {{{{secret:KEY#}}}} | {{{{", placeholder("KEY", &other)));
    }

    #[test]
    fn a_marker_is_fresh_and_shown_placeholders_lose_it() {
        let marker = SecretMarker::fresh();
        assert_ne!(marker, SecretMarker::fresh());
        assert_eq!(marker.as_str().len(), 32);
        let text = format!("{}/{}", placeholder("KEY", &marker), basic_auth_placeholder("A", "B", &marker));
        assert_eq!(show_placeholders(&text, &marker), "{{secret:KEY}}/{{basic-auth:A:B}}");
    }
}
