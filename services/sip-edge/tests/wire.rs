//! The edge's parsing path on wire-exact input: the RFC 4475 torture messages with the
//! outcome each section of the RFC asks for, malformed messages, stream framing.

use std::path::PathBuf;

use sip_edge::wire::{parse, Parsed, StreamFramer, StreamItem, MAX_MESSAGE};

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    /// Parsed into rsip's model.
    Sip,
    /// Parsed as a request with an extension method (to be answered 501).
    Extension,
    /// Refused with this status sent back.
    Answer(u16),
    /// Refused, nothing sent (responses, or no way to route an answer).
    Drop,
}

use Outcome::*;

/// RFC 4475: §3.1.1 valid (parse), §3.1.2 invalid (reject), §3.3 parse then the
/// application answers, §3.4 backward compatibility.
const CORPUS: &[(&str, Outcome)] = &[
    // §3.1.1
    ("WSINV", Sip),
    ("INTMETH", Extension),
    ("ESC01_V", Sip),
    ("ESCNULL_V", Sip),
    ("ESC02_V", Extension),
    ("LWSDISP_V", Sip),
    ("LONGREQ_V", Sip),
    ("DBLREQ", Sip),
    ("SEMIURI_V", Sip),
    ("TRANSPORTS_V", Sip),
    ("MPART01", Sip),
    ("UNREASON_V", Sip),
    ("NOREASON_V", Sip),
    // §3.1.2
    ("BADINV01_I", Answer(400)),
    ("CLERR_I", Answer(400)),
    ("NCL_I", Answer(400)),
    ("SCALAR02_V", Answer(400)),
    ("SCALARLG_V", Drop),
    ("QUOTBAL_I", Answer(400)),
    ("LTGTRURI_I", Answer(400)),
    ("LWSRURI_I", Answer(400)),
    ("LWSSTART_V", Answer(400)),
    ("TRWS_I", Answer(400)),
    ("ESCRURI_V", Answer(400)),
    ("BADDATE_V", Answer(400)),
    ("REGBADCT_I", Answer(400)),
    ("BADASPEC_I", Answer(400)),
    ("BADDN_I", Answer(400)),
    ("BADVERS_V", Answer(505)),
    ("MISMATCH01_V", Answer(400)),
    ("MISMATCH02_V", Answer(400)),
    ("BIGCODE_V", Drop),
    // §3.2
    ("BADBRANCH_V", Sip),
    // §3.3
    ("INSUF_I", Answer(400)),
    ("UNKSCM_V", Answer(416)),
    ("NOVELSC_V", Answer(416)),
    ("UNKSM2_V", Sip),
    ("BEXT01_V", Sip),
    ("INVUT_V", Sip),
    ("REGAUT01_V", Sip),
    ("MULTI01_I", Answer(400)),
    ("MCL01_I", Answer(400)),
    ("BCAST_V", Sip),
    ("ZEROMF_V", Sip),
    ("CPARAM01_V", Sip),
    ("CPARAM02_V", Sip),
    ("REGESCRT_V", Sip),
    ("SDP01_V", Sip),
    // §3.4
    ("INV2543_I", Sip),
];

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/rfc4475")
}

fn outcome(bytes: &[u8]) -> Outcome {
    match parse(bytes, true, "t0") {
        Ok(Parsed::Sip(_)) => Sip,
        Ok(Parsed::Extension(_)) => Extension,
        Err(rejected) => match rejected.response {
            Some(response) => {
                let text = String::from_utf8(response).unwrap();
                Answer(text[8..11].parse().unwrap())
            }
            None => Drop,
        },
    }
}

#[test]
fn rfc_4475_torture_messages() {
    let dir = corpus_dir();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".dat"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        CORPUS.len(),
        "every corpus file has an expected outcome"
    );
    let mut wrong = Vec::new();
    for (name, expected) in CORPUS {
        let bytes = std::fs::read(dir.join(format!("TC_{name}.dat"))).unwrap();
        let got = outcome(&bytes);
        if got != *expected {
            wrong.push(format!("{name}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn a_rejected_request_gets_a_400_with_its_transaction_headers_and_a_to_tag() {
    let request = b"INVITE sip:13235550100@pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKnashds8\r\n\
Max-Forwards: 70\r\n\
To: <sip:13235550100@pbx.example.com>\r\n\
From: \"Caller\" <sip:13105550199@carrier.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@192.0.2.10\r\n\
CSeq: 314159 OPTIONS\r\n\
Content-Length: 0\r\n\r\n";
    let err = parse(request, true, "edge1").unwrap_err();
    assert_eq!(
        err.reason,
        "CSeq method 'OPTIONS' is not the request's 'INVITE'"
    );
    assert_eq!(
        String::from_utf8(err.response.unwrap()).unwrap(),
        "SIP/2.0 400 CSeq method 'OPTIONS' is not the request's 'INVITE'\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKnashds8\r\n\
From: \"Caller\" <sip:13105550199@carrier.example.com>;tag=1928301774\r\n\
To: <sip:13235550100@pbx.example.com>;tag=edge1\r\n\
Call-ID: a84b4c76e66710@192.0.2.10\r\n\
CSeq: 314159 OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
    );
}

fn register(extra: &str, body: &str) -> Vec<u8> {
    format!(
        "REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.20:5062;branch=z9hG4bKreg1\r\n\
Max-Forwards: 70\r\n\
To: <sip:13235550100@pbx.example.com>\r\n\
From: <sip:13235550100@pbx.example.com>;tag=a73kszlfl\r\n\
Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.20\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:13235550100@192.0.2.20:5062>\r\n\
{extra}\r\n{body}"
    )
    .into_bytes()
}

#[test]
fn malformed_messages_get_400_or_are_dropped_and_good_ones_still_parse() {
    let good = register("Content-Length: 0\r\n", "");
    assert!(matches!(parse(&good, true, "t"), Ok(Parsed::Sip(_))));

    // Truncated anywhere but at the end of a header line: refused, never a panic. (A
    // datagram may end after its last header line; one cut just before Content-Length
    // is still a whole request.)
    for cut in 0..good.len() {
        let piece = &good[..cut];
        let result = parse(piece, true, "t");
        if !piece.ends_with(b"\r\n") {
            assert!(result.is_err(), "cut at {cut} parsed");
        }
    }
    // Oversized: 513 when it can still be answered.
    let big = register("Content-Length: 0\r\n", &"x".repeat(MAX_MESSAGE));
    assert_eq!(outcome(&big), Answer(513));
    // Content-Length wrong: more than the body is an error; less cuts the datagram.
    assert_eq!(
        outcome(&register("Content-Length: 10\r\n", "short")),
        Answer(400)
    );
    assert_eq!(outcome(&register("Content-Length: 2\r\n", "abcdef")), Sip);
    assert_eq!(outcome(&register("Content-Length: x\r\n", "")), Answer(400));
    // Bad headers.
    for bad in [
        "Expires: soon\r\nContent-Length: 0\r\n",
        "Max-Forwards: 99999\r\nContent-Length: 0\r\n",
        "no colon here\r\nContent-Length: 0\r\n",
        "Bad Name: x\r\nContent-Length: 0\r\n",
        "Contact: <sip:a@b>;;expires=1\r\nContent-Length: 0\r\n",
    ] {
        assert_eq!(outcome(&register(bad, "")), Answer(400), "{bad:?}");
    }
    // Binary garbage and an empty datagram are dropped.
    assert_eq!(outcome(b""), Drop);
    assert_eq!(outcome(&[0xff, 0xfe, 0x00, 0x13, 0x37]), Drop);
    assert_eq!(outcome(b"\r\n\r\n"), Drop);
}

#[test]
fn folded_headers_compact_forms_and_extension_methods() {
    let text = b"OPTIONS sip:pbx.example.com SIP/2.0\r\n\
v: SIP/2.0/UDP 192.0.2.20:5062\r\n ;branch=z9hG4bKfold\r\n\
t: <sip:pbx.example.com>\r\n\
f: <sip:13235550100@pbx.example.com>;tag=x\r\n\
i: fold@192.0.2.20\r\n\
CSeq: 7 OPTIONS\r\n\
l: 0\r\n\r\n";
    let Ok(Parsed::Sip(message)) = parse(text, true, "t") else {
        panic!()
    };
    let rsip::SipMessage::Request(request) = *message else {
        panic!()
    };
    assert_eq!(request.method, rsip::Method::Options);
    let text = b"PING sip:pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20\r\nTo: <sip:a@b>\r\nFrom: <sip:c@d>;tag=1\r\nCall-ID: p\r\nCSeq: 1 PING\r\nContent-Length: 0\r\n\r\n";
    let Ok(Parsed::Extension(e)) = parse(text, true, "t") else {
        panic!()
    };
    assert_eq!(
        (e.method.as_str(), e.uri.as_str()),
        ("PING", "sip:pbx.example.com")
    );
}

#[test]
fn stream_framing_by_content_length_with_keepalives() {
    let one = register("Content-Length: 4\r\n", "abcd");
    let mut framer = StreamFramer::new();
    let mut stream = b"\r\n\r\n".to_vec();
    stream.extend_from_slice(&one);
    stream.extend_from_slice(&one);
    // Fed one byte at a time, it yields exactly ping, message, message.
    let mut items = Vec::new();
    for b in &stream {
        framer.push(std::slice::from_ref(b));
        while let Some(item) = framer.next_item().unwrap() {
            items.push(item);
        }
    }
    assert_eq!(
        items,
        [
            StreamItem::Ping,
            StreamItem::Message(one.clone()),
            StreamItem::Message(one)
        ]
    );
    assert_eq!(framer.buffered(), 0);

    let mut framer = StreamFramer::new();
    framer.push(&register("", ""));
    assert!(framer
        .next_item()
        .unwrap_err()
        .contains("no Content-Length"));
    let mut framer = StreamFramer::new();
    framer.push(&vec![b'a'; MAX_MESSAGE + 1]);
    assert!(
        framer.next_item().is_err(),
        "no end of headers within the cap"
    );
    let mut framer = StreamFramer::new();
    framer.push(&register(
        &format!("Content-Length: {}\r\n", MAX_MESSAGE),
        "",
    ));
    assert!(framer.next_item().unwrap_err().contains("larger than"));
}
