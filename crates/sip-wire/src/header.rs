//! Typed values of the headers the edge reads and rewrites: a Via (RFC 3261 §20.42 and
//! RFC 3581's `rport`), a name-addr (From, To, Contact, Record-Route: display name, URI,
//! parameters), a SIP URI's user and host, and header lists split only at the commas
//! that separate values (not those inside quotes or `<...>`). Each borrows from the text
//! it reads; only a Via, which the edge rewrites, owns its parts.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The values of a comma-separated header (`<sip:a;lr>, "B, C" <sip:b>`), trimmed and
/// without empty ones. Commas inside a quoted string or `<...>` do not separate.
pub fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut angle, mut quoted, mut escaped) = (0, false, false, false);
    for (i, c) in value.char_indices() {
        if quoted {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '<' => angle = true,
            '>' => angle = false,
            ',' if !angle => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out.retain(|v| !v.is_empty());
    out
}

/// A name-addr or addr-spec (RFC 3261 §20.10): `"Display" <uri>;params` or `uri;params`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// The display name without its quotes (escapes kept as written); empty if none.
    pub display: &'a str,
    pub uri: &'a str,
    /// The header parameters after the URI, with their leading `;` (`;tag=x;lr`).
    pub params: &'a str,
}

impl<'a> NameAddr<'a> {
    pub fn parse(value: &'a str) -> Option<NameAddr<'a>> {
        let value = value.trim();
        let (display, rest) = if let Some(quoted) = value.strip_prefix('"') {
            let end = closing_quote(quoted)?;
            (&quoted[..end], quoted[end + 1..].trim_start())
        } else {
            match value.find('<') {
                Some(start) => (value[..start].trim(), &value[start..]),
                None => ("", value),
            }
        };
        if let Some(inner) = rest.strip_prefix('<') {
            let end = inner.find('>')?;
            let uri = inner[..end].trim();
            (!uri.is_empty()).then_some(NameAddr {
                display,
                uri,
                params: inner[end + 1..].trim(),
            })
        } else {
            // An addr-spec: its parameters belong to the header, not the URI (§20).
            if !display.is_empty() {
                return None;
            }
            let (uri, params) = match rest.find(';') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            (!uri.is_empty()).then_some(NameAddr {
                display,
                uri: uri.trim(),
                params: params.trim(),
            })
        }
    }

    /// A header parameter's value (`tag`, `expires`, `q`); `Some("")` for one without.
    pub fn param(&self, name: &str) -> Option<&'a str> {
        param(self.params, name)
    }
}

/// Where a quoted string that began before `text` ends (§25.1: `\` escapes one char).
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// The value of `name` in `;a=1;b;c=3` (names compared without case).
fn param<'a>(params: &'a str, name: &str) -> Option<&'a str> {
    params
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n.trim(), v.trim()),
            None => (p, ""),
        })
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; `None` for a bad port or an empty host.
fn host_and_port(text: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if text.starts_with('[') {
        let end = text.find(']')?;
        let port = match &text[end + 1..] {
            "" => None,
            rest => Some(rest.strip_prefix(':')?.parse().ok()?),
        };
        (&text[..=end], port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse().ok()?)),
            None => (text, None),
        }
    };
    (!host.is_empty()).then_some((host, port))
}

/// A `sip:` or `sips:` URI (RFC 3261 §19.1): `sip:user:password@host:port;params?headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipUri<'a> {
    pub secure: bool,
    pub user: Option<&'a str>,
    /// The host as written (an IPv6 reference keeps its brackets).
    pub host: &'a str,
    pub port: Option<u16>,
    /// The URI parameters with their leading `;` (`;transport=tcp;lr`).
    pub params: &'a str,
}

impl<'a> SipUri<'a> {
    pub fn parse(uri: &'a str) -> Option<SipUri<'a>> {
        let uri = uri.trim();
        let (scheme, rest) = uri.split_once(':')?;
        let secure = if scheme.eq_ignore_ascii_case("sips") {
            true
        } else if scheme.eq_ignore_ascii_case("sip") {
            false
        } else {
            return None;
        };
        let rest = rest.split('?').next().unwrap_or(rest);
        let (user, host_part) = match rest.rfind('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let user = userinfo.split(':').next().unwrap_or(userinfo);
                (Some(user), &rest[at + 1..])
            }
            None => (None, rest),
        };
        let (host_port, params) = match host_part.find(';') {
            Some(i) => (&host_part[..i], &host_part[i..]),
            None => (host_part, ""),
        };
        let (host, port) = host_and_port(host_port)?;
        Some(SipUri {
            secure,
            user,
            host,
            port,
            params,
        })
    }

    /// The host as an address, brackets removed, when it is one (not a name).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.trim_matches(['[', ']']).parse().ok()
    }

    /// Where the URI points when its host is an address: its port, or `default_port`.
    pub fn addr(&self, default_port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            self.ip()?,
            self.port.unwrap_or(default_port),
        ))
    }

    /// A URI parameter's value (`transport`, `lr`); `Some("")` for one without.
    pub fn param(&self, name: &str) -> Option<&'a str> {
        param(self.params, name)
    }
}

/// One Via value (RFC 3261 §20.42): `SIP/2.0/UDP host:port;branch=z9hG4bK...;rport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    /// The sent-by host as written (an IPv6 reference keeps its brackets).
    pub host: String,
    pub port: Option<u16>,
    /// The parameters in order, each with its value if it has one.
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    /// The Via the edge puts on a request it sends from `local`.
    pub fn ours(reliable: bool, local: SocketAddr, branch: &str) -> String {
        let transport = if reliable { "TCP" } else { "UDP" };
        format!("SIP/2.0/{transport} {local};branch={branch};rport")
    }

    /// The first value of a Via header (which may hold several, comma-separated).
    pub fn parse(value: &str) -> Option<Via> {
        let first = split_list(value).into_iter().next()?;
        let (sent_protocol, rest) = first.split_once(|c: char| c.is_ascii_whitespace())?;
        let mut parts = sent_protocol.split('/');
        let (name, version, transport) = (parts.next()?, parts.next()?, parts.next()?);
        if !name.eq_ignore_ascii_case("SIP")
            || version != "2.0"
            || transport.is_empty()
            || parts.next().is_some()
        {
            return None;
        }
        let mut pieces = rest.split(';');
        let sent_by = pieces.next()?.trim();
        if sent_by.contains(|c: char| c == '@' || c.is_ascii_whitespace()) {
            return None;
        }
        let (host, port) = host_and_port(sent_by)?;
        let params = pieces
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((n, v)) => (n.trim().to_owned(), Some(v.trim().to_owned())),
                None => (p.to_owned(), None),
            })
            .collect();
        Some(Via {
            transport: transport.to_owned(),
            host: host.to_owned(),
            port,
            params,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }

    fn set(&mut self, name: &str, value: String) {
        match self
            .params
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, v)) => *v = Some(value),
            None => self.params.push((name.to_owned(), Some(value))),
        }
    }

    /// What a server does to the top Via of a request that came from `source`: §18.2.1's
    /// `received` when the source is not the sent-by host, and RFC 3581's `rport` filled
    /// in (with `received` too) when the client asked for it.
    pub fn stamp(&mut self, source: SocketAddr) {
        let wants_rport = self.param("rport").is_some();
        let ip = source.ip();
        let sent_by: Option<IpAddr> = self.host.trim_matches(['[', ']']).parse().ok();
        if wants_rport {
            self.set("rport", source.port().to_string());
        }
        if (wants_rport || sent_by != Some(ip)) && self.param("received").is_none() {
            self.set("received", ip.to_string());
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        for (name, value) in &self.params {
            match value {
                Some(value) => write!(f, ";{name}={value}")?,
                None => write!(f, ";{name}")?,
            }
        }
        Ok(())
    }
}

/// A Via header value with its first value stamped for `source` ([`Via::stamp`]); the
/// values after it are kept as they were. `None` when the first value is not a Via.
pub fn stamp_via(value: &str, source: SocketAddr) -> Option<String> {
    let mut via = Via::parse(value)?;
    via.stamp(source);
    let rest = split_list(value).into_iter().skip(1);
    let mut out = via.to_string();
    for value in rest {
        out.push_str(", ");
        out.push_str(value);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_only_at_separating_commas() {
        assert_eq!(
            split_list(r#"<sip:a;lr>, "B, \"C\"" <sip:b?x=1,2>,, sip:c"#),
            vec!["<sip:a;lr>", r#""B, \"C\"" <sip:b?x=1,2>"#, "sip:c"]
        );
        assert!(split_list(" , ").is_empty());
    }

    #[test]
    fn name_addrs_in_each_form() {
        let quoted =
            NameAddr::parse(r#""Doe, \"J\"" <sip:j@h:5070;transport=tcp>;tag=9f"#).unwrap();
        assert_eq!(quoted.display, r#"Doe, \"J\""#);
        assert_eq!(quoted.uri, "sip:j@h:5070;transport=tcp");
        assert_eq!(quoted.params, ";tag=9f");
        assert_eq!(quoted.param("TAG"), Some("9f"));
        let token = NameAddr::parse("Alice <sip:a@h>").unwrap();
        assert_eq!(
            (token.display, token.uri, token.params),
            ("Alice", "sip:a@h", "")
        );
        let spec = NameAddr::parse("sip:a@h;tag=1;lr").unwrap();
        assert_eq!((spec.uri, spec.params), ("sip:a@h", ";tag=1;lr"));
        assert_eq!(spec.param("lr"), Some(""));
        assert_eq!(NameAddr::parse("\"unclosed <sip:a@h>"), None);
        assert_eq!(NameAddr::parse("<sip:a@h"), None);
        assert_eq!(NameAddr::parse("<>"), None);
        assert_eq!(NameAddr::parse(""), None);
    }

    #[test]
    fn sip_uris_give_user_host_and_address() {
        let uri = SipUri::parse("sip:alice:secret@192.0.2.4:5080;transport=tcp?subject=x").unwrap();
        assert_eq!(uri.user, Some("alice"));
        assert_eq!((uri.host, uri.port), ("192.0.2.4", Some(5080)));
        assert_eq!(uri.param("transport"), Some("tcp"));
        assert_eq!(uri.addr(5060), Some("192.0.2.4:5080".parse().unwrap()));
        let v6 = SipUri::parse("sips:[2001:db8::1]").unwrap();
        assert!(v6.secure);
        assert_eq!(v6.addr(5061), Some("[2001:db8::1]:5061".parse().unwrap()));
        let name = SipUri::parse("sip:pbx.example.com;lr").unwrap();
        assert_eq!((name.user, name.addr(5060)), (None, None));
        assert_eq!(SipUri::parse("tel:+15551234"), None);
        assert_eq!(SipUri::parse("sip:a@h:port"), None);
        assert_eq!(SipUri::parse("sip:[::1"), None);
        assert_eq!(SipUri::parse("sip:"), None);
    }

    #[test]
    fn our_via_on_exact_bytes() {
        let local = "10.0.0.5:5060".parse().unwrap();
        assert_eq!(
            Via::ours(false, local, "z9hG4bK1"),
            "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;rport"
        );
        assert_eq!(
            Via::ours(true, local, "z9hG4bK2"),
            "SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bK2;rport"
        );
    }

    #[test]
    fn stamping_follows_rfc_3261_and_3581_on_exact_bytes() {
        let nat = "203.0.113.9:40312".parse().unwrap();
        // rport asked for: both filled in, even where sent-by is the source's address.
        assert_eq!(
            stamp_via("SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKa;rport", nat).unwrap(),
            "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKa;rport=40312;received=203.0.113.9"
        );
        let same = "10.0.0.2:5060".parse().unwrap();
        assert_eq!(
            stamp_via("SIP/2.0/UDP 10.0.0.2:5060;rport;branch=z9hG4bKb", same).unwrap(),
            "SIP/2.0/UDP 10.0.0.2:5060;rport=5060;branch=z9hG4bKb;received=10.0.0.2"
        );
        // No rport: received only when the host differs (a name always differs).
        assert_eq!(
            stamp_via("SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKc", same).unwrap(),
            "SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKc"
        );
        assert_eq!(
            stamp_via("SIP/2.0/TCP phone.lan:5062;branch=z9hG4bKd", nat).unwrap(),
            "SIP/2.0/TCP phone.lan:5062;branch=z9hG4bKd;received=203.0.113.9"
        );
        // The values after the first are the proxies' and stay as they were.
        assert_eq!(
            stamp_via(
                "SIP/2.0/UDP [2001:db8::2]:5060;branch=z9hG4bKe , SIP/2.0/UDP p.example;branch=z9hG4bKf",
                "[2001:db8::2]:5060".parse().unwrap()
            )
            .unwrap(),
            "SIP/2.0/UDP [2001:db8::2]:5060;branch=z9hG4bKe, SIP/2.0/UDP p.example;branch=z9hG4bKf"
        );
        // An existing received is not overwritten.
        assert_eq!(
            stamp_via("SIP/2.0/UDP h;received=1.2.3.4;rport", nat).unwrap(),
            "SIP/2.0/UDP h;received=1.2.3.4;rport=40312"
        );
    }

    #[test]
    fn malformed_vias_are_refused() {
        for bad in [
            "",
            "SIP/2.0/UDP",
            "SIP/3.0/UDP h",
            "HTTP/2.0/UDP h",
            "SIP/2.0/ h",
            "SIP/2.0/UDP a@h",
            "SIP/2.0/UDP/X h",
            "SIP/2.0/UDP h x;branch=1",
            "SIP/2.0/UDP h:99999",
            "SIP/2.0/UDP [::1",
        ] {
            assert_eq!(Via::parse(bad), None, "{bad:?}");
        }
        let via = Via::parse("sip/2.0/udp H:1;BRANCH=z9hG4bKx;maddr").unwrap();
        assert_eq!(via.branch(), Some("z9hG4bKx"));
        assert_eq!(via.param("maddr"), Some(None));
    }
}
