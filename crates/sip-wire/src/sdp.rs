//! SDP (RFC 4566) as the edge needs it for offer/answer (RFC 3264) with media always
//! anchored at the relay (`canreinvite=no`): parse, filter codecs by a peer's
//! `disallow`/`allow` list, keep `telephone-event` (RFC 4733), rewrite the connection
//! address and ports, and print. Lines the edge does not interpret are kept as they are.
//!
//! The codec names are Asterisk's (`ulaw`, `alaw`, `gsm`, `g722`, ...); static payload
//! types are known without an `a=rtpmap`.

use std::fmt::Write as _;
use std::net::IpAddr;

/// Why SDP cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("no common codec")]
    NoCommonCodec,
    #[error("no audio stream")]
    NoAudio,
}

/// Media direction (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// What an answer says to an offer of `self` (RFC 3264 §6.1).
    pub fn answer(self) -> Self {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub kind: String,
    pub port: u16,
    pub protocol: String,
    /// Payload types, in the order of the `m=` line.
    pub formats: Vec<u8>,
    /// `c=` of the section, if it has its own.
    pub connection: Option<IpAddr>,
    pub direction: Option<Direction>,
    /// `a=` lines other than direction, in order (`rtpmap:0 PCMU/8000`, `ptime:20`...).
    pub attributes: Vec<String>,
}

/// A session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub origin: String,
    pub name: String,
    pub connection: Option<IpAddr>,
    pub direction: Option<Direction>,
    /// Session-level `a=` lines other than direction, `b=`, `t=`... kept in order.
    pub other: Vec<String>,
    pub media: Vec<Media>,
}

/// A payload type's codec name (Asterisk's spelling) and clock rate.
fn static_codec(pt: u8) -> Option<(&'static str, u32)> {
    Some(match pt {
        0 => ("ulaw", 8000),
        3 => ("gsm", 8000),
        8 => ("alaw", 8000),
        9 => ("g722", 8000),
        18 => ("g729", 8000),
        _ => return None,
    })
}

fn codec_from_encoding(encoding: &str) -> String {
    match encoding.to_ascii_uppercase().as_str() {
        "PCMU" => "ulaw".into(),
        "PCMA" => "alaw".into(),
        "GSM" => "gsm".into(),
        "G722" => "g722".into(),
        "G729" => "g729".into(),
        "TELEPHONE-EVENT" => "telephone-event".into(),
        other => other.to_ascii_lowercase(),
    }
}

impl Media {
    /// The codec of payload type `pt`: from `a=rtpmap`, else the static table.
    pub fn codec(&self, pt: u8) -> Option<String> {
        let prefix = format!("rtpmap:{pt} ");
        if let Some(map) = self.attributes.iter().find_map(|a| a.strip_prefix(&prefix)) {
            let encoding = map.split('/').next().unwrap_or("");
            return Some(codec_from_encoding(encoding));
        }
        static_codec(pt).map(|(name, _)| name.to_owned())
    }

    fn is_audio(&self) -> bool {
        self.kind == "audio" && self.port != 0
    }
}

fn parse_ip(value: &str, line: usize) -> Result<IpAddr, SdpError> {
    // c=IN IP4 192.0.2.1
    let mut parts = value.split_whitespace();
    let (Some("IN"), Some(_), Some(address)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SdpError::Syntax {
            line,
            message: format!("bad connection '{value}'"),
        });
    };
    let address = address.split('/').next().unwrap_or(address);
    address.parse().map_err(|_| SdpError::Syntax {
        line,
        message: format!("'{address}' is not an address"),
    })
}

fn direction(attribute: &str) -> Option<Direction> {
    Some(match attribute {
        "sendrecv" => Direction::SendRecv,
        "sendonly" => Direction::SendOnly,
        "recvonly" => Direction::RecvOnly,
        "inactive" => Direction::Inactive,
        _ => return None,
    })
}

impl Session {
    /// Parses an SDP body (LF or CRLF line ends; at most 64 media sections).
    pub fn parse(text: &str) -> Result<Self, SdpError> {
        let mut session = Session {
            origin: String::new(),
            name: "-".into(),
            connection: None,
            direction: None,
            other: Vec::new(),
            media: Vec::new(),
        };
        let mut saw_version = false;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let raw = raw.trim_end_matches('\r');
            if raw.is_empty() {
                continue;
            }
            let Some((kind, value)) = raw.split_once('=') else {
                return Err(SdpError::Syntax {
                    line,
                    message: format!("not 'x=value': '{raw}'"),
                });
            };
            let in_media = !session.media.is_empty();
            match kind {
                "v" if value == "0" => saw_version = true,
                "v" => {
                    return Err(SdpError::Syntax {
                        line,
                        message: "version must be 0".into(),
                    })
                }
                "o" => session.origin = value.to_owned(),
                "s" => session.name = value.to_owned(),
                "c" => {
                    let ip = parse_ip(value, line)?;
                    match session.media.last_mut() {
                        Some(m) => m.connection = Some(ip),
                        None => session.connection = Some(ip),
                    }
                }
                "m" => {
                    if session.media.len() >= 64 {
                        return Err(SdpError::Syntax {
                            line,
                            message: "too many media sections".into(),
                        });
                    }
                    let mut parts = value.split_whitespace();
                    let (Some(media), Some(port), Some(protocol)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        return Err(SdpError::Syntax {
                            line,
                            message: format!("bad media '{value}'"),
                        });
                    };
                    let port: u16 = port.split('/').next().unwrap_or("").parse().map_err(|_| {
                        SdpError::Syntax {
                            line,
                            message: format!("bad port in '{value}'"),
                        }
                    })?;
                    let formats = parts
                        .map(|f| f.parse::<u8>())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| SdpError::Syntax {
                            line,
                            message: format!("bad payload type in '{value}'"),
                        })?;
                    session.media.push(Media {
                        kind: media.to_owned(),
                        port,
                        protocol: protocol.to_owned(),
                        formats,
                        connection: None,
                        direction: None,
                        attributes: Vec::new(),
                    });
                }
                "a" if in_media => {
                    let media = session.media.last_mut().expect("in a media section");
                    match direction(value) {
                        Some(d) => media.direction = Some(d),
                        None => media.attributes.push(value.to_owned()),
                    }
                }
                "a" => match direction(value) {
                    Some(d) => session.direction = Some(d),
                    None => session.other.push(raw.to_owned()),
                },
                // b=, t=, r=, z=, k=, i=, u=, e=, p=: kept at session level in order.
                _ if !in_media => session.other.push(raw.to_owned()),
                _ => {}
            }
        }
        if !saw_version {
            return Err(SdpError::Syntax {
                line: 1,
                message: "no v=0".into(),
            });
        }
        Ok(session)
    }

    /// The direction of the first audio stream.
    pub fn audio_direction(&self) -> Direction {
        self.media
            .iter()
            .find(|m| m.is_audio())
            .and_then(|m| m.direction)
            .or(self.direction)
            .unwrap_or(Direction::SendRecv)
    }

    /// Where the first audio stream wants media: its address and port.
    pub fn audio_endpoint(&self) -> Option<(IpAddr, u16)> {
        let media = self.media.iter().find(|m| m.is_audio())?;
        Some((media.connection.or(self.connection)?, media.port))
    }

    /// The copy to send on, for a leg whose allowed codecs are `allowed` (a peer's
    /// `disallow`/`allow` result, in preference order): audio formats filtered and
    /// ordered by `allowed`, `telephone-event` kept, other media rejected (port 0), and
    /// every connection and port pointed at `relay`. Fails with [`SdpError::NoCommonCodec`]
    /// (the call gets 488) when no audio codec is left.
    pub fn anchored(
        &self,
        allowed: &[String],
        relay: (IpAddr, u16),
        origin_user: &str,
    ) -> Result<Session, SdpError> {
        let mut out = self.clone();
        out.origin = format!(
            "{origin_user} {} IN {} {}",
            session_version(&self.origin),
            ip_kind(relay.0),
            relay.0
        );
        out.connection = Some(relay.0);
        let mut audio_done = false;
        for media in &mut out.media {
            media.connection = None;
            if !media.is_audio() || audio_done {
                media.port = 0;
                continue;
            }
            let mut formats: Vec<u8> = Vec::new();
            for codec in allowed {
                for &pt in &media.formats {
                    if media.codec(pt).as_deref() == Some(codec.as_str()) && !formats.contains(&pt)
                    {
                        formats.push(pt);
                    }
                }
            }
            if formats.is_empty() {
                return Err(SdpError::NoCommonCodec);
            }
            formats.extend(
                media
                    .formats
                    .iter()
                    .filter(|&&pt| media.codec(pt).as_deref() == Some("telephone-event")),
            );
            // Attributes of payload types that are gone go too.
            media.attributes.retain(|a| {
                let Some(rest) = a
                    .strip_prefix("rtpmap:")
                    .or_else(|| a.strip_prefix("fmtp:"))
                else {
                    return true;
                };
                let pt = rest.split(' ').next().and_then(|p| p.parse::<u8>().ok());
                pt.is_none_or(|pt| formats.contains(&pt))
            });
            media.formats = formats;
            media.port = relay.1;
            audio_done = true;
        }
        if !audio_done {
            return Err(SdpError::NoAudio);
        }
        Ok(out)
    }
}

fn session_version(origin: &str) -> String {
    // o=<user> <sess-id> <sess-version> ...: keep id and version.
    let parts: Vec<&str> = origin.split_whitespace().collect();
    match parts.as_slice() {
        [_, id, version, ..] => format!("{id} {version}"),
        _ => "0 0".into(),
    }
}

fn ip_kind(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IP4"
    } else {
        "IP6"
    }
}

impl std::fmt::Display for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        let _ = write!(out, "v=0\r\no={}\r\ns={}\r\n", self.origin, self.name);
        if let Some(ip) = self.connection {
            let _ = write!(out, "c=IN {} {ip}\r\n", ip_kind(ip));
        }
        let has_time = self.other.iter().any(|l| l.starts_with("t="));
        for line in &self.other {
            let _ = write!(out, "{line}\r\n");
        }
        if !has_time {
            out.push_str("t=0 0\r\n");
        }
        if let Some(d) = self.direction {
            let _ = write!(out, "a={}\r\n", d.attribute());
        }
        for media in &self.media {
            let formats: Vec<String> = media.formats.iter().map(u8::to_string).collect();
            let _ = write!(
                out,
                "m={} {} {} {}\r\n",
                media.kind,
                media.port,
                media.protocol,
                formats.join(" ")
            );
            if let Some(ip) = media.connection {
                let _ = write!(out, "c=IN {} {ip}\r\n", ip_kind(ip));
            }
            for attribute in &media.attributes {
                let _ = write!(out, "a={attribute}\r\n");
            }
            if let Some(d) = media.direction {
                let _ = write!(out, "a={}\r\n", d.attribute());
            }
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer as baresip sends it (PCMU, PCMA, telephone-event).
    const BARESIP: &str = "v=0\r\no=- 1716233432 3063207651 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
m=audio 10024 RTP/AVP 0 8 101\r\nb=AS:64\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n";

    fn ulaw() -> Vec<String> {
        vec!["ulaw".into()]
    }

    #[test]
    fn parses_a_phone_offer() {
        let s = Session::parse(BARESIP).unwrap();
        assert_eq!(
            s.audio_endpoint(),
            Some(("192.0.2.20".parse().unwrap(), 10024))
        );
        assert_eq!(s.audio_direction(), Direction::SendRecv);
        assert_eq!(s.media[0].formats, [0, 8, 101]);
        assert_eq!(s.media[0].codec(101).as_deref(), Some("telephone-event"));
        assert_eq!(s.media[0].codec(8).as_deref(), Some("alaw"));
    }

    #[test]
    fn anchored_keeps_allowed_codecs_in_order_and_dtmf_and_points_at_the_relay() {
        let s = Session::parse(BARESIP).unwrap();
        let relay = ("203.0.113.5".parse().unwrap(), 30000);
        let out = s.anchored(&ulaw(), relay, "phone").unwrap();
        assert_eq!(
            out.to_string(),
            "v=0\r\no=phone 1716233432 3063207651 IN IP4 203.0.113.5\r\ns=-\r\nc=IN IP4 203.0.113.5\r\nt=0 0\r\n\
m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
        );
        // The peer's order wins: alaw before ulaw.
        let out = s
            .anchored(&["alaw".into(), "ulaw".into()], relay, "phone")
            .unwrap();
        assert_eq!(out.media[0].formats, [8, 0, 101]);
        // Static payload types without rtpmap are understood.
        let bare = Session::parse("v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 4000 RTP/AVP 8 0\n").unwrap();
        assert_eq!(
            bare.anchored(&ulaw(), relay, "x").unwrap().media[0].formats,
            [0]
        );
    }

    #[test]
    fn no_common_codec_and_hold() {
        let s = Session::parse(BARESIP).unwrap();
        let relay = ("203.0.113.5".parse().unwrap(), 30000);
        assert_eq!(
            s.anchored(&["g722".into()], relay, "x"),
            Err(SdpError::NoCommonCodec)
        );
        let held = Session::parse(&BARESIP.replace("a=sendrecv", "a=sendonly")).unwrap();
        assert_eq!(held.audio_direction(), Direction::SendOnly);
        assert_eq!(held.audio_direction().answer(), Direction::RecvOnly);
        // A video stream is refused (port 0), audio kept.
        let av = format!("{BARESIP}m=video 10026 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n");
        let out = Session::parse(&av)
            .unwrap()
            .anchored(&ulaw(), relay, "x")
            .unwrap();
        assert_eq!((out.media[0].port, out.media[1].port), (30000, 0));
    }

    #[test]
    fn broken_sdp_is_an_error_not_a_panic() {
        for bad in [
            "",
            "v=1\r\n",
            "v=0\r\nc=IN IP4 nope\r\n",
            "v=0\r\nm=audio x RTP/AVP 0\r\n",
            "v=0\r\nm=audio 1 RTP/AVP 999\r\n",
            "v=0\r\ngarbage\r\n",
        ] {
            assert!(Session::parse(bad).is_err(), "{bad:?}");
        }
        let no_audio = Session::parse("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n").unwrap();
        assert_eq!(
            no_audio.anchored(&ulaw(), ("1.2.3.4".parse().unwrap(), 1), "x"),
            Err(SdpError::NoAudio)
        );
    }
}
