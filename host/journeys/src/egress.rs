//! Where an adapter's requests may go, and what of a secret may come back. The pieces the
//! deliverer enforces around every provider request:
//! - an allowlist of origins (scheme, host and port), with plain `http` only where the
//!   operator lists it;
//! - after DNS resolution, no loopback, private, link-local or otherwise non-public address
//!   unless the operator allowed that address;
//! - headers an adapter may not set;
//! - redaction of the channel's secret values from anything that leaves the deliverer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use ipnet::IpNet;

/// One allowed origin: `https://api.sendgrid.com` or `http://127.0.0.1:9000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: &'static str,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Reads an allowlist entry. A bare host (`api.sendgrid.com`, as adapters declare them)
    /// means `https` on port 443; `http` must be written out.
    pub fn parse(entry: &str) -> Result<Origin, String> {
        let entry = entry.trim();
        let with_scheme = if entry.contains("://") { entry.to_string() } else { format!("https://{entry}") };
        let url = reqwest::Url::parse(&with_scheme).map_err(|e| format!("`{entry}` is not an origin: {e}"))?;
        if !url.username().is_empty() || url.password().is_some() || url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!("`{entry}` must be only a scheme, a host and a port, like https://api.sendgrid.com:443"));
        }
        Origin::of(&url).filter(|o| !o.host.is_empty()).ok_or_else(|| format!("`{entry}`: only http and https origins with a host can be allowed"))
    }

    /// The origin a request URL goes to.
    pub fn of(url: &reqwest::Url) -> Option<Origin> {
        let scheme = match url.scheme() {
            "https" => "https",
            "http" => "http",
            _ => return None,
        };
        Some(Origin { scheme, host: url.host_str()?.to_string(), port: url.port_or_known_default()? })
    }

    /// The address, when the host is an IP address written out.
    pub fn ip_literal(&self) -> Option<IpAddr> {
        self.host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok()
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Headers an adapter may not set: the host decides where a request goes and how it is
/// framed, so `Host` cannot point an allowed connection at another virtual host and the
/// framing headers cannot smuggle a second request.
pub const FORBIDDEN_HEADERS: &[&str] =
    &["host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive", "proxy-authorization", "proxy-connection"];

/// Whether `ip` is an ordinary address on the public internet: not loopback, private,
/// link-local, shared (CGNAT), documentation, benchmarking, multicast, reserved or
/// unspecified, in IPv4 or IPv6, and not an IPv6 form of such an IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            let embedded_v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
            // 6to4 (2002::/16) carries an IPv4 address in its second and third groups.
            let six_to_four = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local, fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated), fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b && !is_public_v4(embedded_v4)) // NAT64 of a private address
                || (s[0..6] == [0, 0, 0, 0, 0, 0] && !is_public_v4(embedded_v4)) // IPv4-compatible
                || (s[0..6] == [0, 0, 0, 0, 0xffff, 0] && !is_public_v4(embedded_v4)) // IPv4-translated (SIIT)
                || (s[0] == 0x2002 && !is_public_v4(six_to_four)) // 6to4 of a private address
                || (s[0] == 0x2001 && s[1] == 0) // Teredo, which tunnels to anywhere
                || s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only, 100::/64
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT), 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

/// Whether a request may reach `ip`: a public address, or one the operator allowed.
pub fn address_allowed(ip: IpAddr, allowed: &[IpNet]) -> bool {
    is_public(ip) || allowed.iter().any(|net| net.contains(&ip))
}

/// Why the host would not connect to an address the adapter's host name resolved to.
#[derive(Debug, thiserror::Error)]
#[error("`{host}` resolves to {address}, which is not a public address; allow it with allow_private_addresses if it is meant")]
pub struct PrivateAddress {
    pub host: String,
    pub address: IpAddr,
}

/// A DNS resolver that leaves out non-public addresses, unless the operator allowed them.
/// The HTTP client connects only to what it returns, so a host name that resolves (or
/// rebinds) to a private address between the check and the connection gets nowhere.
pub struct GuardedResolver {
    pub allowed: Arc<Vec<IpNet>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allowed.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (kept, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = found.into_iter().partition(|a| address_allowed(a.ip(), &allowed));
            if kept.is_empty() {
                let address = refused.first().map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), SocketAddr::ip);
                return Err(Box::new(PrivateAddress { host, address }) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The private address an error from the HTTP client came from, if that is why it failed.
pub fn private_address_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a PrivateAddress> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<PrivateAddress>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Replaces a channel's secret values, in the forms a provider might echo them (as is,
/// percent-encoded, JSON-escaped, as HTTP Basic credentials), with `[redacted NAME]`.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    needles: Vec<(String, String)>,
    /// All the needles at once, longest first where two overlap; `None` with none.
    matcher: Option<aho_corasick::AhoCorasick>,
}

/// `%2F` as `%2f`: providers differ in which case they percent-encode with.
fn lower_case_escapes(percent: &str) -> String {
    let mut out = String::with_capacity(percent.len());
    let mut hex_left = 0u8;
    for c in percent.chars() {
        out.push(if hex_left > 0 { c.to_ascii_lowercase() } else { c });
        hex_left = if c == '%' { 2 } else { hex_left.saturating_sub(1) };
    }
    out
}

/// Values shorter than this are not redacted: replacing two letters everywhere would wreck
/// every answer, and no provider issues secrets that short.
const SHORTEST_REDACTED: usize = 4;

impl Redactor {
    /// A redactor for `secrets` (name to value).
    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a String, &'a String)>) -> Redactor {
        let mut redactor = Redactor::default();
        for (name, value) in secrets {
            redactor.add(name, value);
        }
        redactor
    }

    /// Also redacts `value`, standing for `name`.
    pub fn add(&mut self, name: &str, value: &str) {
        if value.len() < SHORTEST_REDACTED {
            return;
        }
        let replacement = format!("[redacted {name}]");
        let json = serde_json::to_string(value).unwrap_or_default();
        let percent = percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string();
        let forms = [
            value.to_string(),
            json.trim_matches('"').to_string(),
            // JSON writers that escape `/` (PHP's, among others).
            json.trim_matches('"').replace('/', "\\/"),
            lower_case_escapes(&percent),
            percent,
            base64::engine::general_purpose::STANDARD.encode(value),
        ];
        for form in forms {
            if !self.needles.iter().any(|(needle, _)| *needle == form) {
                self.needles.push((form, replacement.clone()));
            }
        }
        self.matcher =
            aho_corasick::AhoCorasick::builder().match_kind(aho_corasick::MatchKind::LeftmostLongest).build(self.needles.iter().map(|(needle, _)| needle)).ok();
    }

    /// `bytes` with every secret form replaced.
    pub fn bytes(&self, bytes: &[u8]) -> Vec<u8> {
        match &self.matcher {
            Some(matcher) => matcher.replace_all_bytes(bytes, &self.needles.iter().map(|(_, r)| r.as_bytes()).collect::<Vec<_>>()),
            None => bytes.to_vec(),
        }
    }

    /// `text` with every secret form replaced.
    pub fn text(&self, text: &str) -> String {
        match &self.matcher {
            Some(matcher) => matcher.replace_all(text, &self.needles.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>()),
            None => text.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_pin_scheme_host_and_port() {
        assert_eq!(Origin::parse("api.sendgrid.com").unwrap(), Origin { scheme: "https", host: "api.sendgrid.com".into(), port: 443 });
        assert_eq!(Origin::parse("https://api.sendgrid.com:443").unwrap(), Origin::parse("https://API.sendgrid.com").unwrap());
        assert_eq!(Origin::parse("http://127.0.0.1:9000").unwrap().to_string(), "http://127.0.0.1:9000");
        for bad in ["ftp://x.example", "https://x.example/path", "https://user@x.example", "https://x.example?q", "https://"] {
            assert!(Origin::parse(bad).is_err(), "{bad} must be refused");
        }
        assert_eq!(Origin::parse("http://[::1]:8080").unwrap().ip_literal(), Some("::1".parse().unwrap()));
        assert_eq!(Origin::parse("https://localhost").unwrap().ip_literal(), None);
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::7f00:1",
            "2001:db8::1",
            "::ffff:0:7f00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private} must not count as public");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"] {
            assert!(is_public(public.parse().unwrap()), "{public} is public");
        }
    }

    #[test]
    fn secrets_are_redacted_in_every_form_a_provider_echoes() {
        let secrets = [("KEY".to_string(), "s3cr3t/v+al\"ue".to_string()), ("TINY".to_string(), "ab".to_string())];
        let redactor = Redactor::new(secrets.iter().map(|(k, v)| (k, v)));
        let percent = percent_encoding::utf8_percent_encode("s3cr3t/v+al\"ue", percent_encoding::NON_ALPHANUMERIC).to_string();
        let echoed = format!(
            r#"{{"auth": "Bearer s3cr3t/v+al\"ue", "form": "{percent}", "lower": "{}", "php": "s3cr3t\/v+al\"ue", "b64": "{}", "ab": "ab"}}"#,
            percent.to_lowercase(),
            base64::engine::general_purpose::STANDARD.encode("s3cr3t/v+al\"ue"),
        );
        let clean = redactor.text(&echoed);
        assert!(!clean.contains("s3cr3t"), "{clean}");
        assert_eq!(clean.matches("[redacted KEY]").count(), 5, "{clean}");
        assert!(clean.contains(r#""ab": "ab""#), "values too short to be secrets stay: {clean}");
    }
}
