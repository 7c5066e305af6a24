//! SIP on the wire, in front of `rsip`: framing, the checks RFC 3261 requires that
//! rsip does not make, and the answer to what cannot be parsed.
//!
//! DESIGN.md's measurement holds here: rsip 0.4 rejects valid messages (folded and
//! extra whitespace, extension methods, long headers) and accepts invalid ones (bad
//! Content-Length, unbalanced quotes). So every message goes through [`parse`]:
//!
//! 1. Framing: at most [`MAX_MESSAGE`] bytes; headers end at the first empty line; the
//!    body is `Content-Length` bytes (required and exact on streams; on datagrams a
//!    longer body is cut to it and a shorter one is an error, RFC 3261 §18.3).
//! 2. Start line: `Method SP Request-URI SP SIP/2.0` or `SIP/2.0 SP code SP reason`,
//!    single spaces, a token method, a three-digit code 100-699, version 2.0 (else 505).
//! 3. Headers: folded lines joined (LWS, RFC 3261 §7.3.1), compact names expanded,
//!    `To`, `From`, `Call-ID`, `CSeq`, `Via` present (`Max-Forwards` too in requests),
//!    single-valued ones once, numbers in range, quotes and angle brackets balanced,
//!    `CSeq` method equal to the request's.
//! 4. The message is printed again canonically (one header per line, `Name: value`)
//!    and given to rsip for its typed model; a request whose method rsip does not know
//!    is kept as an [`Extension`] so that it can be answered 501 (RFC 3261 §21.5.2).
//!
//! What fails gets [`Rejected`]: for a request whose `Via`, `From`, `To`, `Call-ID`
//! and `CSeq` could be read, a ready response (400 with the reason, 505, 513);
//! otherwise nothing, and the caller drops and counts it.

use std::fmt::Write as _;

/// The largest message accepted (RFC 3261 does not cap it; we do).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A parsed message.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// rsip's typed model of the message.
    Sip(Box<rsip::SipMessage>),
    /// A request with a method rsip does not model.
    Extension(Extension),
}

/// A request with an extension method: what is needed to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

/// Why a message was refused, and the answer to send if one can be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: String,
    /// The response to send back (400, 505 or 513), when the message was a request whose
    /// transaction headers could be read.
    pub response: Option<Vec<u8>>,
}

/// The compact forms (RFC 3261 §7.3.3 and others) and their full names.
const COMPACT: &[(&str, &str)] = &[
    ("i", "Call-ID"),
    ("m", "Contact"),
    ("e", "Content-Encoding"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("f", "From"),
    ("s", "Subject"),
    ("k", "Supported"),
    ("t", "To"),
    ("v", "Via"),
    ("o", "Event"),
    ("r", "Refer-To"),
    ("u", "Allow-Events"),
];

/// Headers that may appear once only.
const SINGLE: &[&str] = &[
    "To",
    "From",
    "Call-ID",
    "CSeq",
    "Max-Forwards",
    "Content-Length",
    "Expires",
];

fn canonical_name(name: &str) -> String {
    if let Some((_, full)) = COMPACT.iter().find(|(c, _)| c.eq_ignore_ascii_case(name)) {
        return (*full).to_owned();
    }
    for known in [
        "Call-ID",
        "CSeq",
        "WWW-Authenticate",
        "Max-Forwards",
        "Content-Length",
        "Content-Type",
        "Contact",
        "Via",
        "From",
        "To",
        "Expires",
        "Route",
        "Record-Route",
        "Authorization",
        "Proxy-Authenticate",
        "Proxy-Authorization",
    ] {
        if known.eq_ignore_ascii_case(name) {
            return known.to_owned();
        }
    }
    name.to_owned()
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// The head of a message: start line and unfolded headers, and the body.
#[derive(Debug)]
struct Frame<'a> {
    start: &'a str,
    headers: Vec<(String, String)>,
    body: &'a [u8],
}

impl Frame<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

fn split_head(bytes: &[u8], datagram: bool) -> Result<(&str, &[u8]), String> {
    let (end, body) = match bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => (end, end + 4),
        // A datagram that ends after its last header line has no body.
        None if datagram && bytes.ends_with(b"\r\n") => (bytes.len() - 2, bytes.len()),
        None => return Err("no empty line after the headers".into()),
    };
    let head =
        std::str::from_utf8(&bytes[..end]).map_err(|_| "headers are not UTF-8".to_owned())?;
    Ok((head, &bytes[body..]))
}

fn frame(bytes: &[u8], datagram: bool) -> Result<Frame<'_>, String> {
    if bytes.len() > MAX_MESSAGE {
        return Err(format!("message larger than {MAX_MESSAGE} bytes"));
    }
    let (head, rest) = split_head(bytes, datagram)?;
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or_default();
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            // A folded line continues the previous header (RFC 3261 §7.3.1).
            let Some((_, value)) = headers.last_mut() else {
                return Err("a folded line before any header".into());
            };
            value.push(' ');
            value.push_str(line.trim());
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!(
                "header line without ':': '{}'",
                line.chars().take(40).collect::<String>()
            ));
        };
        let name = name.trim_end();
        if !is_token(name) {
            return Err(format!(
                "bad header name '{}'",
                name.chars().take(40).collect::<String>()
            ));
        }
        headers.push((canonical_name(name), value.trim().to_owned()));
    }
    let length = match headers.iter().find(|(n, _)| n == "Content-Length") {
        Some((_, v)) => Some(
            v.parse::<usize>()
                .map_err(|_| format!("Content-Length '{v}' is not a number of bytes"))?,
        ),
        None if datagram => None,
        None => return Err("no Content-Length on a stream".into()),
    };
    let body = match length {
        Some(n) if n > rest.len() => {
            return Err(format!(
                "Content-Length {n} is more than the {} bytes of body",
                rest.len()
            ))
        }
        Some(n) => &rest[..n],
        None => rest,
    };
    Ok(Frame {
        start,
        headers,
        body,
    })
}

/// What the start line says.
enum Start<'a> {
    Request { method: &'a str, uri: &'a str },
    Response,
}

fn check_start(start: &str) -> Result<Start<'_>, (u16, String)> {
    let bad = |m: &str| (400, m.to_owned());
    let parts: Vec<&str> = start.split(' ').collect();
    if start.starts_with("SIP/") {
        // SIP/2.0 SP Status-Code SP Reason-Phrase (the reason may hold spaces).
        if parts.len() < 2 || parts[0] != "SIP/2.0" {
            return Err(bad("bad status line"));
        }
        let code = parts[1];
        if code.len() != 3
            || !code.bytes().all(|b| b.is_ascii_digit())
            || !(b'1'..=b'6').contains(&code.as_bytes()[0])
        {
            return Err(bad("status code must be 100-699"));
        }
        return Ok(Start::Response);
    }
    let [method, uri, version] = parts.as_slice() else {
        return Err(bad(
            "request line must be 'Method SP Request-URI SP SIP/2.0' with single spaces",
        ));
    };
    if !is_token(method) {
        return Err(bad("bad method"));
    }
    if uri.is_empty() || uri.starts_with('<') || uri.contains(['<', '>', '"']) || !uri.contains(':')
    {
        return Err(bad("bad Request-URI"));
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        if version.starts_with("SIP/") {
            return Err((505, "Version Not Supported".into()));
        }
        return Err(bad("bad SIP version"));
    }
    let scheme = uri
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !matches!(scheme.as_str(), "sip" | "sips" | "tel") {
        return Err((416, "Unsupported URI Scheme".into()));
    }
    Ok(Start::Request { method, uri })
}

fn balanced(value: &str) -> bool {
    let mut quoted = false;
    let mut escaped = false;
    let mut angle = 0i32;
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle += 1,
            '>' if !quoted => {
                angle -= 1;
                if angle < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    !quoted && angle == 0
}

/// `name-addr` or `addr-spec` with parameters (To, From, Contact, Route...), as far as
/// RFC 3261 §20.10 and §25.1 say: a display name that is not quoted is tokens; nothing
/// but the URI inside `<...>`; a bare URI holds no `?` or `,`; no empty parameter.
fn check_address(value: &str) -> Result<(), String> {
    if value == "*" {
        return Ok(());
    }
    let params = match value.find('<') {
        Some(open) => {
            let display = value[..open].trim();
            if !display.is_empty()
                && !display.starts_with('"')
                && !display.split_whitespace().all(is_token)
            {
                return Err("a display name with special characters must be quoted".into());
            }
            let close = value[open..]
                .find('>')
                .map(|c| open + c)
                .ok_or("'<' without '>'")?;
            let inside = &value[open + 1..close];
            if inside.trim() != inside || inside.is_empty() {
                return Err("spaces inside '<...>'".into());
            }
            &value[close + 1..]
        }
        None => {
            let uri = value.split(';').next().unwrap_or_default();
            if uri.contains(['?', ',']) {
                return Err("a URI with '?' or ',' must be enclosed in '<...>'".into());
            }
            if uri.trim().contains(char::is_whitespace) {
                return Err("spaces in a URI".into());
            }
            &value[uri.len()..]
        }
    };
    check_params(params)
}

/// `;name[=value]` parameters: none empty.
fn check_params(params: &str) -> Result<(), String> {
    let params = params.trim();
    if params.is_empty() {
        return Ok(());
    }
    let Some(rest) = params.strip_prefix(';') else {
        return Err(format!(
            "unexpected '{}' after the address",
            params.chars().take(20).collect::<String>()
        ));
    };
    if rest.split(';').any(|p| p.trim().is_empty()) {
        return Err("an empty parameter (';;')".into());
    }
    Ok(())
}

fn check_headers(frame: &Frame, request_method: Option<&str>) -> Result<(), String> {
    // Max-Forwards is not required: RFC 2543 elements omit it (RFC 4475 §3.4).
    for name in ["To", "From", "Call-ID", "CSeq", "Via"] {
        if frame.count(name) == 0 {
            return Err(format!("missing {name}"));
        }
    }
    for name in SINGLE {
        if frame.count(name) > 1 {
            return Err(format!("{name} appears more than once"));
        }
    }
    for name in ["To", "From", "Contact", "Route", "Record-Route"] {
        for (_, v) in frame.headers.iter().filter(|(n, _)| n == name) {
            if !balanced(v) {
                return Err(format!("unbalanced quotes or angle brackets in {name}"));
            }
            if matches!(name, "To" | "From") || (name == "Contact" && !v.contains(',')) {
                check_address(v).map_err(|e| format!("{name}: {e}"))?;
            }
        }
    }
    for (_, via) in frame.headers.iter().filter(|(n, _)| n == "Via") {
        for hop in via.split(',') {
            let params = hop.find(';').map(|i| &hop[i..]).unwrap_or("");
            check_params(params).map_err(|e| format!("Via: {e}"))?;
        }
    }
    if let Some(date) = frame.get("Date") {
        if !date.trim_end().ends_with("GMT") {
            return Err("Date must be in GMT (RFC 3261 §20.17)".into());
        }
    }
    let cseq = frame.get("CSeq").unwrap_or_default();
    let (number, method) = cseq
        .split_once(char::is_whitespace)
        .ok_or("CSeq must be 'number method'")?;
    let number: u64 = number
        .parse()
        .map_err(|_| format!("CSeq number '{number}' is not a number"))?;
    if number >= 1 << 31 {
        return Err("CSeq number must be below 2**31".into());
    }
    let method = method.trim();
    if let Some(request) = request_method {
        if method != request {
            return Err(format!(
                "CSeq method '{method}' is not the request's '{request}'"
            ));
        }
    }
    if let Some(mf) = frame.get("Max-Forwards") {
        let n: u32 = mf
            .parse()
            .map_err(|_| format!("Max-Forwards '{mf}' is not a number"))?;
        if n > 255 {
            return Err("Max-Forwards must be 0-255".into());
        }
    }
    if let Some(expires) = frame.get("Expires") {
        expires
            .parse::<u32>()
            .map_err(|_| format!("Expires '{expires}' is not a number of seconds"))?;
    }
    Ok(())
}

/// A `;` in the user part of a SIP URI (`sip:user;par=x@host`, RFC 4475 semiuri) is
/// legal but rsip cannot tokenize it; escaped as `%3B` it is the same URI (RFC 3261
/// §19.1.2 allows escaping any user character).
fn escape_user_semicolons(start: &str) -> std::borrow::Cow<'_, str> {
    let mut parts = start.splitn(3, ' ');
    let (Some(method), Some(uri), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return start.into();
    };
    let Some((scheme, rest)) = uri.split_once(':') else {
        return start.into();
    };
    match rest.find('@') {
        Some(at) if rest[..at].contains(';') && !start.starts_with("SIP/") => format!(
            "{method} {scheme}:{}{} {version}",
            rest[..at].replace(';', "%3B"),
            &rest[at..]
        )
        .into(),
        _ => start.into(),
    }
}

fn canonical(frame: &Frame) -> Vec<u8> {
    let mut out = String::with_capacity(512 + frame.body.len());
    out.push_str(&escape_user_semicolons(frame.start));
    out.push_str("\r\n");
    for (name, value) in &frame.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if frame.get("Content-Length").is_none() {
        let _ = write!(out, "Content-Length: {}\r\n", frame.body.len());
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(frame.body);
    bytes
}

/// Builds a response to a request from its raw headers: Via (all), From, To (with a tag
/// added if it has none), Call-ID, CSeq copied, as RFC 3261 §8.2.6 asks.
pub fn response_from_headers(
    headers: &[(String, String)],
    status: u16,
    reason: &str,
    to_tag: &str,
) -> Option<Vec<u8>> {
    // Values are copied without control characters: a stray CR or LF in a request must
    // not become a header of our response.
    let clean = |v: &str| -> String { v.chars().filter(|c| !c.is_control()).collect() };
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| clean(v))
    };
    let vias: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n == "Via")
        .map(|(_, v)| clean(v))
        .collect();
    // Without a Via the response cannot be routed; the other headers are copied when
    // present (a request missing them still learns why it failed).
    if vias.is_empty() {
        return None;
    }
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect();
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    for via in vias {
        let _ = write!(out, "Via: {via}\r\n");
    }
    if let Some(from) = get("From") {
        let _ = write!(out, "From: {from}\r\n");
    }
    match get("To") {
        Some(to) if to.to_ascii_lowercase().contains(";tag=") => {
            let _ = write!(out, "To: {to}\r\n");
        }
        Some(to) => {
            let _ = write!(out, "To: {to};tag={to_tag}\r\n");
        }
        None => {}
    }
    for name in ["Call-ID", "CSeq"] {
        if let Some(value) = get(name) {
            let _ = write!(out, "{name}: {value}\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

/// Parses one message (a datagram, or one framed from a stream). `to_tag` is used in a
/// rejection's response.
pub fn parse(bytes: &[u8], datagram: bool, to_tag: &str) -> Result<Parsed, Rejected> {
    let frame = match frame(bytes, datagram) {
        Ok(f) => f,
        Err(reason) => {
            // Try to answer a request anyway (513 for a message too large).
            let status = if bytes.len() > MAX_MESSAGE { 513 } else { 400 };
            let response = split_head(bytes, datagram).ok().and_then(|(head, _)| {
                let mut lines = head.split("\r\n");
                let start = lines.next()?;
                if start.starts_with("SIP/") {
                    return None;
                }
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (canonical_name(n.trim()), v.trim().to_owned()))
                    .collect();
                response_from_headers(&headers, status, &reason, to_tag)
            });
            return Err(Rejected { reason, response });
        }
    };
    let start = match check_start(frame.start) {
        Ok(s) => s,
        Err((status, reason)) => {
            let is_request = !frame.start.starts_with("SIP/");
            let response = is_request
                .then(|| response_from_headers(&frame.headers, status, &reason, to_tag))
                .flatten();
            return Err(Rejected { reason, response });
        }
    };
    let method = match &start {
        Start::Request { method, .. } => Some(*method),
        Start::Response => None,
    };
    if let Err(reason) = check_headers(&frame, method) {
        let response =
            method.and_then(|_| response_from_headers(&frame.headers, 400, &reason, to_tag));
        return Err(Rejected { reason, response });
    }
    let text = canonical(&frame);
    match rsip::SipMessage::try_from(text.as_slice()) {
        Ok(message) => Ok(Parsed::Sip(Box::new(message))),
        Err(e) => match start {
            Start::Request { method, uri } if !is_rsip_method(method) => {
                Ok(Parsed::Extension(Extension {
                    method: method.to_owned(),
                    uri: uri.to_owned(),
                    headers: frame.headers.clone(),
                }))
            }
            Start::Request { .. } => {
                let reason = format!("cannot parse: {}", short(&e.to_string()));
                let response = response_from_headers(&frame.headers, 400, &reason, to_tag);
                Err(Rejected { reason, response })
            }
            Start::Response => Err(Rejected {
                reason: format!("cannot parse response: {}", short(&e.to_string())),
                response: None,
            }),
        },
    }
}

fn short(s: &str) -> String {
    s.chars().take(100).collect()
}

fn is_rsip_method(method: &str) -> bool {
    matches!(
        method,
        "ACK"
            | "BYE"
            | "CANCEL"
            | "INFO"
            | "INVITE"
            | "MESSAGE"
            | "NOTIFY"
            | "OPTIONS"
            | "PRACK"
            | "PUBLISH"
            | "REFER"
            | "REGISTER"
            | "SUBSCRIBE"
            | "UPDATE"
    )
}

/// Frames messages out of a TCP byte stream by `Content-Length` (RFC 3261 §18.3), with
/// keep-alive CRLFs (RFC 5626 §3.5.1) between messages.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buffer: Vec<u8>,
}

/// What a stream yields.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamItem {
    Message(Vec<u8>),
    /// A double-CRLF keep-alive ping: answer with a single CRLF.
    Ping,
}

impl StreamFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete item, `Ok(None)` when more bytes are needed, or an error after
    /// which the connection is to be closed (framing is lost).
    pub fn next_item(&mut self) -> Result<Option<StreamItem>, String> {
        loop {
            if self.buffer.starts_with(b"\r\n\r\n") {
                self.buffer.drain(..4);
                return Ok(Some(StreamItem::Ping));
            }
            // What could still become a ping waits for its next bytes.
            if !self.buffer.is_empty() && b"\r\n\r\n".starts_with(&self.buffer) {
                return Ok(None);
            }
            // A lone CRLF between messages (a pong, or slack) is skipped (RFC 3261 §7.5).
            if self.buffer.starts_with(b"\r\n") {
                self.buffer.drain(..2);
                continue;
            }
            break;
        }
        let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.buffer.len() > MAX_MESSAGE {
                return Err(format!("no end of headers within {MAX_MESSAGE} bytes"));
            }
            return Ok(None);
        };
        let head = std::str::from_utf8(&self.buffer[..end])
            .map_err(|_| "headers are not UTF-8".to_owned())?;
        let mut length = None;
        for line in head.split("\r\n").skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim();
                if name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l") {
                    length = Some(value.trim().parse::<usize>().map_err(|_| {
                        format!("Content-Length '{}' is not a number", value.trim())
                    })?);
                }
            }
        }
        let length = length.ok_or("no Content-Length on a stream")?;
        // Checked: the length comes from the peer and may be any number.
        let total = length.saturating_add(end + 4);
        if total > MAX_MESSAGE {
            return Err(format!(
                "message of {total} bytes is larger than {MAX_MESSAGE}"
            ));
        }
        if self.buffer.len() < total {
            return Ok(None);
        }
        let message: Vec<u8> = self.buffer.drain(..total).collect();
        Ok(Some(StreamItem::Message(message)))
    }

    /// Bytes held waiting for the rest of a message.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }
}
