//! Typed reading of the headers a dialog is made of, and the requests the edge builds
//! from others: the ACK of a failure and the CANCEL of an INVITE (RFC 3261 §17.1.1.3,
//! §9.1), and requests inside a dialog (§12.2.1.1: BYE, the ACK of a 2xx). Each takes
//! the messages it derives from, so the headers that must match are copied, never
//! retyped.

use crate::header::NameAddr;
use rsip::prelude::*;
use rsip::{Header, Headers, Method, Request};

/// A dialog's identity (RFC 3261 §12): its Call-ID and the two tags, ours first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

/// The `tag` parameter of a From or To value (`"A" <sip:a@h>;tag=x`).
pub fn tag(value: &str) -> Option<&str> {
    NameAddr::parse(value)?
        .param("tag")
        .filter(|v| !v.is_empty())
}

/// The URI of a name-addr or addr-spec (`"A" <sip:a@h>;p` or `sip:a@h;p`).
pub fn uri(value: &str) -> &str {
    NameAddr::parse(value).map_or(value.trim(), |n| n.uri)
}

/// The message's From, To, Call-ID, and CSeq number and method, as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parties {
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
    pub method: String,
}

fn parties(headers: &Headers) -> Option<Parties> {
    let mut from = None;
    let mut to = None;
    let mut call_id = None;
    let mut cseq = None;
    for header in headers.iter() {
        match header {
            Header::From(h) => from = Some(h.value().to_owned()),
            Header::To(h) => to = Some(h.value().to_owned()),
            Header::CallId(h) => call_id = Some(h.value().to_owned()),
            Header::CSeq(h) => cseq = Some(h.value().to_owned()),
            _ => {}
        }
    }
    let cseq = cseq?;
    let (number, method) = cseq.trim().split_once(char::is_whitespace)?;
    Some(Parties {
        from: from?,
        to: to?,
        call_id: call_id?,
        cseq: number.trim().parse().ok()?,
        method: method.trim().to_owned(),
    })
}

/// From, To, Call-ID and CSeq of a request.
pub fn request_parties(request: &Request) -> Option<Parties> {
    parties(&request.headers)
}

/// From, To, Call-ID and CSeq of a response.
pub fn response_parties(response: &rsip::Response) -> Option<Parties> {
    parties(&response.headers)
}

fn first_via(headers: &Headers) -> Option<Header> {
    headers
        .iter()
        .find(|h| matches!(h, Header::Via(_)))
        .cloned()
}

fn routes(headers: &Headers) -> impl Iterator<Item = Header> + '_ {
    headers
        .iter()
        .filter(|h| matches!(h, Header::Route(_)))
        .cloned()
}

/// The headers of a request derived from `invite`: its top Via, Max-Forwards, its
/// From, `to`, its Call-ID, `CSeq: <its number> <method>`, its Route headers, no body.
fn derived(invite: &Request, method: Method, to: Header) -> Option<Request> {
    let parties = request_parties(invite)?;
    let mut headers = Headers::default();
    headers.push(first_via(&invite.headers)?);
    headers.push(Header::MaxForwards(rsip::headers::MaxForwards::new("70")));
    headers.push(Header::From(rsip::headers::From::new(parties.from)));
    headers.push(to);
    headers.push(Header::CallId(rsip::headers::CallId::new(parties.call_id)));
    headers.push(Header::CSeq(rsip::headers::CSeq::new(format!(
        "{} {method}",
        parties.cseq
    ))));
    for route in routes(&invite.headers) {
        headers.push(route);
    }
    headers.push(Header::ContentLength(rsip::headers::ContentLength::new(
        "0",
    )));
    Some(Request {
        method,
        uri: invite.uri.clone(),
        version: invite.version.clone(),
        headers,
        body: Vec::new(),
    })
}

/// The ACK of a non-2xx final response to `invite` (§17.1.1.3): the INVITE's
/// Request-URI, top Via, From, Call-ID, CSeq number and Route headers, and the To of
/// the response (with the tag the answering side gave).
pub fn ack_for_failure(invite: &Request, response: &rsip::Response) -> Option<Request> {
    let to = response.to_header().ok()?.value().to_owned();
    derived(invite, Method::Ack, Header::To(rsip::headers::To::new(to)))
}

/// The CANCEL of `invite` (§9.1): its Request-URI, top Via, From, To, Call-ID, CSeq
/// number and Route headers.
pub fn cancel(invite: &Request) -> Option<Request> {
    let to = request_parties(invite)?.to;
    derived(
        invite,
        Method::Cancel,
        Header::To(rsip::headers::To::new(to)),
    )
}

/// One side of a dialog, as a UA builds requests in it (§12.2.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    pub call_id: String,
    /// Our From value (with our tag) and theirs (the To of our requests, with their
    /// tag).
    pub local: String,
    pub remote: String,
    /// Their Contact: the Request-URI of our requests.
    pub remote_target: String,
    /// The route set, in the order the Route headers go.
    pub route: Vec<String>,
}

impl Dialog {
    pub fn id(&self) -> DialogId {
        DialogId {
            call_id: self.call_id.clone(),
            local_tag: tag(&self.local).unwrap_or("").to_owned(),
            remote_tag: tag(&self.remote).unwrap_or("").to_owned(),
        }
    }

    /// A request in the dialog: `via` is the value of its Via (a new branch, but for
    /// the ACK of a 2xx, which shares its INVITE's CSeq number), `extra` more header
    /// lines (each ending in CRLF).
    pub fn request(&self, method: &str, cseq: u32, via: &str, extra: &str) -> String {
        Outgoing {
            method,
            request_uri: &self.remote_target,
            via,
            route: &self.route,
            from: &self.local,
            to: &self.remote,
            call_id: &self.call_id,
            cseq,
            contact: None,
            headers: extra,
            body: None,
        }
        .text()
    }
}

/// A request as the edge writes it, header by header in the order RFC 3261 §8.1.1
/// lists them: Via, Max-Forwards, Route, From, To, Call-ID, CSeq, Contact, then the
/// others, Content-Type and Content-Length. The values are taken as given: a
/// request derived from another copies them from it ([`Dialog`], [`cancel`]).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub method: &'a str,
    pub request_uri: &'a str,
    /// The Via value (a new branch per transaction).
    pub via: &'a str,
    /// Route values, in order.
    pub route: &'a [String],
    pub from: &'a str,
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    pub contact: Option<&'a str>,
    /// More header lines, each ending in CRLF.
    pub headers: &'a str,
    /// The content type and the body.
    pub body: Option<(&'a str, &'a str)>,
}

impl Outgoing<'_> {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.text().into_bytes()
    }

    pub fn text(&self) -> String {
        use std::fmt::Write;
        let body = self.body.map_or("", |(_, body)| body);
        let mut out = String::with_capacity(256 + self.headers.len() + body.len());
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{} {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\n",
            self.method, self.request_uri, self.via
        );
        for route in self.route {
            let _ = write!(out, "Route: {route}\r\n");
        }
        let _ = write!(
            out,
            "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n",
            self.from, self.to, self.call_id, self.cseq, self.method
        );
        if let Some(contact) = self.contact {
            let _ = write!(out, "Contact: {contact}\r\n");
        }
        out.push_str(self.headers);
        if let Some((content_type, _)) = self.body {
            let _ = write!(out, "Content-Type: {content_type}\r\n");
        }
        let _ = write!(out, "Content-Length: {}\r\n\r\n{body}", body.len());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Request {
        Request::try_from(text.as_bytes()).unwrap()
    }

    fn response(text: &str) -> rsip::Response {
        rsip::Response::try_from(text.as_bytes()).unwrap()
    }

    const INVITE: &str = "INVITE sip:desk@192.0.2.10:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bKb1;rport\r\nMax-Forwards: 70\r\nRoute: <sip:192.0.2.50;lr>\r\nFrom: \"Caller\" <sip:13105550199@192.0.2.100>;tag=e1\r\nTo: <sip:desk@192.0.2.10:5060>\r\nCall-ID: c1@192.0.2.100\r\nCSeq: 7 INVITE\r\nContact: <sip:13105550199@192.0.2.100:5060>\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn the_ack_of_a_failure_copies_the_invite_and_the_responses_to() {
        let busy = response("SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bKb1;rport=5060\r\nFrom: \"Caller\" <sip:13105550199@192.0.2.100>;tag=e1\r\nTo: <sip:desk@192.0.2.10:5060>;tag=p9\r\nCall-ID: c1@192.0.2.100\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n");
        let ack = ack_for_failure(&request(INVITE), &busy).unwrap();
        assert_eq!(
            ack.to_string(),
            "ACK sip:desk@192.0.2.10:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bKb1;rport\r\nMax-Forwards: 70\r\nFrom: \"Caller\" <sip:13105550199@192.0.2.100>;tag=e1\r\nTo: <sip:desk@192.0.2.10:5060>;tag=p9\r\nCall-ID: c1@192.0.2.100\r\nCSeq: 7 ACK\r\nRoute: <sip:192.0.2.50;lr>\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_cancel_names_the_invites_transaction() {
        let cancel = cancel(&request(INVITE)).unwrap();
        assert_eq!(
            cancel.to_string(),
            "CANCEL sip:desk@192.0.2.10:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bKb1;rport\r\nMax-Forwards: 70\r\nFrom: \"Caller\" <sip:13105550199@192.0.2.100>;tag=e1\r\nTo: <sip:desk@192.0.2.10:5060>\r\nCall-ID: c1@192.0.2.100\r\nCSeq: 7 CANCEL\r\nRoute: <sip:192.0.2.50;lr>\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_request_in_a_dialog_goes_to_the_remote_target_along_the_route_set() {
        let dialog = Dialog {
            call_id: "c1@192.0.2.100".into(),
            local: "<sip:edge@192.0.2.100>;tag=e1".into(),
            remote: "\"Desk\" <sip:desk@192.0.2.10>;tag=p9".into(),
            remote_target: "sip:desk@192.0.2.10:5062;transport=udp".into(),
            route: vec!["<sip:192.0.2.50;lr>".into(), "<sip:192.0.2.51;lr>".into()],
        };
        assert_eq!(
            dialog.request("BYE", 8, "SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bKx;rport", "Reason: Q.850;cause=16\r\n"),
            "BYE sip:desk@192.0.2.10:5062;transport=udp SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bKx;rport\r\nMax-Forwards: 70\r\nRoute: <sip:192.0.2.50;lr>\r\nRoute: <sip:192.0.2.51;lr>\r\nFrom: <sip:edge@192.0.2.100>;tag=e1\r\nTo: \"Desk\" <sip:desk@192.0.2.10>;tag=p9\r\nCall-ID: c1@192.0.2.100\r\nCSeq: 8 BYE\r\nReason: Q.850;cause=16\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(
            dialog.id(),
            DialogId {
                call_id: "c1@192.0.2.100".into(),
                local_tag: "e1".into(),
                remote_tag: "p9".into()
            }
        );
    }

    #[test]
    fn tags_and_uris_are_read_as_the_grammar_has_them() {
        assert_eq!(tag("\"A;tag=no\" <sip:a@h;tag=no>;tag=yes"), Some("yes"));
        assert_eq!(tag("sip:a@h;TAG=x"), Some("x"));
        assert_eq!(tag("<sip:a@h>"), None);
        assert_eq!(tag("<sip:a@h>;tag="), None);
        assert_eq!(uri("\"A\" <sip:a@h;lr>;tag=1"), "sip:a@h;lr");
        assert_eq!(uri("sip:a@h;tag=1"), "sip:a@h");
    }

    #[test]
    fn an_outgoing_request_on_exact_bytes() {
        let route = ["<sip:192.0.2.50;lr>".to_owned()];
        let invite = Outgoing {
            method: "INVITE",
            request_uri: "sip:desk@192.0.2.10:5062",
            via: "SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bK0s1;rport",
            route: &route,
            from: "\"Ann\" <sip:100@192.0.2.100>;tag=0s2",
            to: "<sip:desk@192.0.2.10:5062>",
            call_id: "0s3-1-0@192.0.2.100",
            cseq: 1,
            contact: Some("<sip:100@192.0.2.100:5060>"),
            headers: "Allow: INVITE, ACK, BYE\r\n",
            body: Some(("application/sdp", "v=0\r\n")),
        };
        assert_eq!(
            String::from_utf8(invite.to_bytes()).unwrap(),
            "INVITE sip:desk@192.0.2.10:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bK0s1;rport\r\nMax-Forwards: 70\r\nRoute: <sip:192.0.2.50;lr>\r\nFrom: \"Ann\" <sip:100@192.0.2.100>;tag=0s2\r\nTo: <sip:desk@192.0.2.10:5062>\r\nCall-ID: 0s3-1-0@192.0.2.100\r\nCSeq: 1 INVITE\r\nContact: <sip:100@192.0.2.100:5060>\r\nAllow: INVITE, ACK, BYE\r\nContent-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n"
        );
        let options = Outgoing {
            method: "OPTIONS",
            contact: None,
            route: &[],
            headers: "",
            body: None,
            ..invite
        };
        let bytes = options.to_bytes();
        let parsed = Request::try_from(bytes.as_slice()).unwrap();
        assert_eq!(parsed.method, Method::Options);
        assert!(String::from_utf8(bytes)
            .unwrap()
            .ends_with("CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"));
    }
}
