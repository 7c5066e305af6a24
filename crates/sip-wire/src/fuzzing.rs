//! The invariants the `sip` fuzz target (`fuzz/fuzz_targets/sip.rs`) and the edge's
//! robustness test check on arbitrary bytes. Not part of the API.

use crate::wire::{parse, Parsed, StreamFramer, StreamItem, MAX_MESSAGE};

/// Asserts: no panic; a rejection's response is one well-framed response; stream
/// framing yields the same messages whether the bytes come at once or in pieces, none
/// larger than the cap; SDP that anchors prints back to SDP aimed at the relay.
pub fn check(data: &[u8]) {
    assert!(crate::shard::shard_of(data, 3) < 3);
    for datagram in [true, false] {
        match parse(data, datagram, "fz") {
            Ok(Parsed::Sip(_)) | Ok(Parsed::Extension(_)) => {}
            Err(rejected) => {
                let Some(response) = rejected.response else {
                    continue;
                };
                // Our answer is one well-framed response, whatever the request held: a
                // status line, and exactly one message for a stream reader (no header or
                // message injection through copied values).
                let text = String::from_utf8_lossy(&response);
                let status = text.get(..12).unwrap_or_default();
                assert!(
                    status.starts_with("SIP/2.0 ")
                        && status[8..11].bytes().all(|b| b.is_ascii_digit()),
                    "{text}"
                );
                assert!(text.contains("\r\nVia: "), "{text}");
                assert_eq!(
                    frame_all(&[&response]),
                    vec![Ok(StreamItem::Message(response.clone()))],
                    "{text}"
                );
            }
        }
    }

    // The same bytes as an SDP body: what anchors prints back to SDP that parses, with
    // its audio at the relay.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(session) = crate::sdp::Session::parse(text) {
            let relay = (std::net::IpAddr::from([203, 0, 113, 5]), 30_000);
            if let Ok(anchored) = session.anchored(&["ulaw".into(), "alaw".into()], relay, "edge") {
                let printed = anchored.to_string();
                let again = crate::sdp::Session::parse(&printed)
                    .unwrap_or_else(|e| panic!("anchored SDP does not parse ({e}):\n{printed}"));
                assert_eq!(again.audio_endpoint(), Some(relay), "{printed}");
            }
        }
    }

    // The same bytes as header values: the typed readers never panic, and a Via they
    // accept and stamp reads back as the same Via with the stamp.
    if let Ok(text) = std::str::from_utf8(data) {
        use crate::header::{split_list, NameAddr, SipUri, Via};
        for value in split_list(text) {
            if let Some(name_addr) = NameAddr::parse(value) {
                let _ = SipUri::parse(name_addr.uri).map(|u| u.addr(5060));
                let _ = name_addr.param("tag");
            }
        }
        let _ = crate::build::tag(text);
        if let Some(mut via) = Via::parse(text) {
            let source = std::net::SocketAddr::from(([203, 0, 113, 7], 40_000));
            via.stamp(source);
            if !via.to_string().contains(',') {
                let again = Via::parse(&via.to_string());
                assert_eq!(again.as_ref(), Some(&via), "{via}");
            }
        }
    }

    let whole = frame_all(&[data]);
    let split_at = data.len() / 3;
    let pieces = frame_all(&[&data[..split_at], &data[split_at..]]);
    assert_eq!(whole, pieces, "framing depends on how bytes arrive");
    for item in whole.iter().flatten() {
        if let StreamItem::Message(m) = item {
            assert!(m.len() <= MAX_MESSAGE);
        }
    }
}

fn frame_all(chunks: &[&[u8]]) -> Vec<Result<StreamItem, String>> {
    let mut framer = StreamFramer::new();
    let mut items = Vec::new();
    for chunk in chunks {
        framer.push(chunk);
        loop {
            match framer.next_item() {
                Ok(Some(item)) => items.push(Ok(item)),
                Ok(None) => break,
                Err(e) => {
                    items.push(Err(e));
                    return items;
                }
            }
        }
    }
    items
}
