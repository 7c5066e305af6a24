//! Calls through the B2BUA with the real router (the seed's `extensions.conf`) and a
//! real media relay, the test playing the carrier and the desk phone over UDP on
//! loopback: who gets which INVITE, what SDP says, that RTP flows both ways through
//! the relay, and how each call ends.

mod common;

use std::time::Duration;

use common::*;
use sip_edge::digest::{self, Challenge};
use tokio::net::UdpSocket;

#[tokio::test(flavor = "multi_thread")]
async fn a_carrier_call_rings_the_desk_phone_which_answers_and_both_hear_each_other() {
    let Scene {
        system,
        carrier,
        phone,
        carrier_rtp,
        phone_rtp,
    } = Scene::start(None, &[]).await;

    // The carrier sends the DID call, unauthenticated (insecure=port,invite).
    let offer = did_call(&carrier, &carrier_rtp, "in1", "13105550199");
    carrier.send(&offer).await;
    carrier.expect_status(100).await;

    // The phone rings with an offer that points at the relay.
    let ring = phone.expect("INVITE ").await;
    assert!(
        header(&ring, "From").unwrap().contains("13105550199"),
        "{ring}"
    );
    let relay_b = sdp_media(&ring);
    assert!((25000..25100).contains(&relay_b.port()), "{ring}");
    assert!(body(&ring).contains("PCMU/8000"), "{ring}");
    phone
        .send(&response_to(&ring, 180, "Ringing", "ph1", ""))
        .await;
    carrier.expect_status(180).await;
    let answer_sdp = sdp(phone_rtp.local_addr().unwrap());
    phone
        .send(&response_to(&ring, 200, "OK", "ph1", &answer_sdp))
        .await;
    let ack = phone.expect("ACK ").await;
    assert!(header(&ack, "To").unwrap().contains("tag=ph1"), "{ack}");

    let ok = carrier.expect_status(200).await;
    let relay_a = sdp_media(&ok);
    assert!((25000..25100).contains(&relay_a.port()), "{ok}");
    assert_ne!(relay_a, relay_b);
    carrier
        .send(&in_dialog("ACK", &offer, &ok, 1, system.edge_sip))
        .await;

    // Audio both ways through the relay.
    assert!(
        audio_flows(&carrier_rtp, relay_a, &phone_rtp, 0xa1).await,
        "carrier -> phone"
    );
    assert!(
        audio_flows(&phone_rtp, relay_b, &carrier_rtp, 0xb2).await,
        "phone -> carrier"
    );
    assert_eq!(system.relay_sessions().await, 1);

    // The carrier hangs up: the phone gets a BYE, the relay session goes.
    carrier
        .send(&in_dialog("BYE", &offer, &ok, 2, system.edge_sip))
        .await;
    carrier.expect_status(200).await;
    let bye = phone.expect("BYE ").await;
    phone.send(&response_to(&bye, 200, "OK", "", "")).await;
    let mut left = 1;
    for _ in 0..100 {
        left = system.relay_sessions().await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "the media session is deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_answers_the_dial_times_out_with_cancel_and_the_dialplan_goes_on() {
    // The seed's inbound context with a 1 s Dial, then Busy() so that the carrier's
    // answer tells which way the dialplan went after NOANSWER.
    let extensions = "[inbound]\nexten => _1NXXNXXXXXX,1,Dial(SIP/${EXTEN},1)\n same => n,GotoIf($[\"${DIALSTATUS}\" = \"NOANSWER\"]?busy)\n same => n,Hangup()\n same => n(busy),Busy()\n\n[localexts]\nexten => 1,1,Hangup()\n";
    let Scene {
        system: _system,
        carrier,
        phone,
        carrier_rtp,
        ..
    } = Scene::start(Some(extensions), &[]).await;
    let offer = did_call(&carrier, &carrier_rtp, "in2", "13105550199");
    carrier.send(&offer).await;
    let ring = phone.expect("INVITE ").await;
    phone
        .send(&response_to(&ring, 180, "Ringing", "ph2", ""))
        .await;
    carrier.expect_status(180).await;
    // After the Dial timeout the edge CANCELs the ringing phone.
    let cancel = phone.expect("CANCEL ").await;
    assert_eq!(header(&cancel, "Call-ID"), header(&ring, "Call-ID"));
    phone.send(&response_to(&cancel, 200, "OK", "", "")).await;
    phone
        .send(&response_to(&ring, 487, "Request Terminated", "ph2", ""))
        .await;
    phone.expect("ACK ").await;
    // NOANSWER -> Busy(): the carrier gets 486.
    let busy = carrier.expect_status(486).await;
    assert!(header(&busy, "To").unwrap().contains("tag="), "{busy}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_caller_cancels_while_the_phone_rings() {
    let Scene {
        system: _system,
        carrier,
        phone,
        carrier_rtp,
        ..
    } = Scene::start(None, &[]).await;
    let offer = did_call(&carrier, &carrier_rtp, "in3", "13105550199");
    carrier.send(&offer).await;
    let ring = phone.expect("INVITE ").await;
    phone
        .send(&response_to(&ring, 180, "Ringing", "ph3", ""))
        .await;
    carrier.expect_status(180).await;
    // CANCEL: same branch as the INVITE, CSeq 1 CANCEL.
    let cancel = offer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .replacen("INVITE ", "CANCEL ", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
        .lines()
        .filter(|l| !l.starts_with("Content-"))
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\nContent-Length: 0\r\n\r\n";
    carrier.send(&cancel).await;
    carrier.expect_status(200).await;
    carrier.expect_status(487).await;
    let cancelled = phone.expect("CANCEL ").await;
    assert_eq!(header(&cancelled, "Call-ID"), header(&ring, "Call-ID"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbound_call_answers_the_carriers_407_and_carries_the_line_caller_id() {
    let carrier = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let carrier_addr = carrier.local_addr().unwrap();
    let system = System::start(carrier_addr, None).await;
    let carrier = Peer {
        socket: carrier,
        edge: system.edge_sip,
    };
    let phone = registered_phone(system.edge_sip).await;
    let phone_rtp = rtp_socket().await;
    let carrier_rtp = rtp_socket().await;

    // The phone dials 10 digits; the edge challenges it first (407).
    let ruri = format!("sip:3105550123@{}", system.edge_sip);
    let first = invite(
        phone.addr(),
        &ruri,
        "13235550100",
        "out1",
        phone_rtp.local_addr().unwrap(),
        "",
        1,
    );
    phone.send(&first).await;
    let challenge = phone.expect_status(407).await;
    phone
        .send(
            &in_dialog("ACK", &first, &challenge, 1, system.edge_sip)
                .replace("branch=z9hG4bKACK1x", "branch=z9hG4bKout11"),
        )
        .await;
    let challenge = Challenge::parse(&header(&challenge, "Proxy-Authenticate").unwrap()).unwrap();
    let creds = digest::authorize(
        &challenge,
        "13235550100",
        "password",
        "INVITE",
        &ruri,
        "c",
        1,
    );
    let second = invite(
        phone.addr(),
        &ruri,
        "13235550100",
        "out1",
        phone_rtp.local_addr().unwrap(),
        &format!("Proxy-Authorization: {}\r\n", creds.to_header()),
        2,
    );
    phone.send(&second).await;

    // The carrier gets 1 + 10 digits, challenges with 407, and gets credentials.
    let outbound = carrier.expect("INVITE ").await;
    assert!(
        outbound.starts_with("INVITE sip:13105550123@127.0.0.1 "),
        "{outbound}"
    );
    assert!(
        header(&outbound, "From").unwrap().contains("13235550100"),
        "{outbound}"
    );
    assert!(
        header(&outbound, "P-Asserted-Identity")
            .unwrap()
            .contains("13235550100"),
        "{outbound}"
    );
    let nonce = "carriernonce1";
    let mut challenge_407 = response_to(&outbound, 407, "Proxy Authentication Required", "cr1", "");
    challenge_407 = challenge_407.replacen(
        "Content-Length: 0",
        &format!("Proxy-Authenticate: Digest realm=\"sip.flowroute.com\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"\r\nContent-Length: 0"),
        1,
    );
    carrier.send(&challenge_407).await;
    let ack = carrier.expect("ACK ").await;
    assert!(ack.starts_with("ACK sip:13105550123@127.0.0.1 "), "{ack}");
    let authed = carrier.expect("INVITE ").await;
    let credentials =
        digest::Credentials::parse(&header(&authed, "Proxy-Authorization").unwrap()).unwrap();
    assert_eq!(credentials.username, "12345678");
    let expected = digest::compute_response(
        digest::Algorithm::Md5,
        "12345678",
        "sip.flowroute.com",
        "password",
        "INVITE",
        &credentials.uri,
        nonce,
        credentials.qop.as_ref().map(|(n, c)| (*n, c.as_str())),
    );
    assert_eq!(
        credentials.response, expected,
        "the digest is right for the trunk's secret"
    );
    assert_eq!(header(&authed, "CSeq").unwrap(), "2 INVITE");

    carrier
        .send(&response_to(
            &authed,
            200,
            "OK",
            "cr2",
            &sdp(carrier_rtp.local_addr().unwrap()),
        ))
        .await;
    carrier.expect("ACK ").await;
    let ok = phone.expect_status(200).await;
    let relay_a = sdp_media(&ok);
    let relay_b = sdp_media(&authed);
    phone
        .send(&in_dialog("ACK", &second, &ok, 2, system.edge_sip))
        .await;
    assert!(
        audio_flows(&phone_rtp, relay_a, &carrier_rtp, 0xc3).await,
        "phone -> carrier"
    );
    assert!(
        audio_flows(&carrier_rtp, relay_b, &phone_rtp, 0xd4).await,
        "carrier -> phone"
    );

    // The carrier's side hangs up: the phone gets the BYE.
    let bye = format!(
        "BYE sip:13235550100@{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {c};branch=z9hG4bKcbye;rport\r\nMax-Forwards: 70\r\nFrom: {to}\r\nTo: {from}\r\nCall-ID: {cid}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        edge = system.edge_sip,
        c = carrier.addr(),
        to = header(&response_to(&authed, 200, "OK", "cr2", ""), "To").unwrap(),
        from = header(&authed, "From").unwrap(),
        cid = header(&authed, "Call-ID").unwrap(),
    );
    carrier.send(&bye).await;
    carrier.expect_status(200).await;
    let bye = phone.expect("BYE ").await;
    phone.send(&response_to(&bye, 200, "OK", "", "")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_without_media_ends_on_both_legs_at_the_media_timeout() {
    let Scene {
        system: _system,
        carrier,
        phone,
        carrier_rtp,
        phone_rtp,
    } = Scene::start(None, &["--media-timeout", "1s"]).await;
    let offer = did_call(&carrier, &carrier_rtp, "mt1", "13105550199");
    carrier.send(&offer).await;
    let (ring, _ok) = answer_call(&carrier, &phone, &phone_rtp, &offer, "ph5").await;
    // Nobody sends RTP: within a couple of seconds both legs get a BYE.
    let bye = carrier.expect("BYE ").await;
    assert_eq!(header(&bye, "Call-ID"), header(&offer, "Call-ID"));
    carrier.send(&response_to(&bye, 200, "OK", "", "")).await;
    let bye = phone.expect("BYE ").await;
    assert_eq!(header(&bye, "Call-ID"), header(&ring, "Call-ID"));
    phone.send(&response_to(&bye, 200, "OK", "", "")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hold_and_resume_by_reinvite_keep_the_call() {
    let Scene {
        system,
        carrier,
        phone,
        carrier_rtp,
        phone_rtp,
    } = Scene::start(None, &[]).await;
    let offer = did_call(&carrier, &carrier_rtp, "hold1", "13105550199");
    carrier.send(&offer).await;
    let (ring, ok) = answer_call(&carrier, &phone, &phone_rtp, &offer, "ph6").await;
    let relay_a = sdp_media(&ok);
    let relay_b = sdp_media(&ring);
    assert!(audio_flows(&carrier_rtp, relay_a, &phone_rtp, 0x11).await);

    // The carrier puts the call on hold (sendonly), then resumes (sendrecv): each
    // re-INVITE is answered with the relay's address and the mirrored direction.
    for (cseq, direction, expected) in [(2, "sendonly", "recvonly"), (3, "sendrecv", "sendrecv")] {
        let body =
            sdp(carrier_rtp.local_addr().unwrap()).replace("a=sendrecv", &format!("a={direction}"));
        let reinvite = in_dialog("INVITE", &offer, &ok, cseq, system.edge_sip).replace(
            "Content-Length: 0\r\n\r\n",
            &format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        carrier.send(&reinvite).await;
        let answer = carrier.expect_status(200).await;
        assert!(body_has(&answer, &format!("a={expected}")), "{answer}");
        assert_eq!(sdp_media(&answer), relay_a, "media stays on the relay");
        carrier
            .send(&in_dialog("ACK", &offer, &ok, cseq, system.edge_sip))
            .await;
    }
    // Still connected both ways after the resume.
    assert!(audio_flows(&carrier_rtp, relay_a, &phone_rtp, 0x22).await);
    assert!(audio_flows(&phone_rtp, relay_b, &carrier_rtp, 0x33).await);
}

fn body_has(message: &str, line: &str) -> bool {
    body(message).lines().any(|l| l.trim() == line)
}

#[tokio::test(flavor = "multi_thread")]
async fn both_contacts_ring_early_media_passes_and_the_loser_is_cancelled() {
    let carrier = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let carrier_addr = carrier.local_addr().unwrap();
    let system = System::start(carrier_addr, None).await;
    let carrier = Peer {
        socket: carrier,
        edge: system.edge_sip,
    };
    // The line registered from two devices (several contacts per line).
    let desk = registered_phone(system.edge_sip).await;
    let soft = registered_phone(system.edge_sip).await;
    let carrier_rtp = rtp_socket().await;
    let desk_rtp = rtp_socket().await;
    let soft_rtp = rtp_socket().await;
    let offer = did_call(&carrier, &carrier_rtp, "fork1", "13105550199");
    carrier.send(&offer).await;
    let desk_ring = desk.expect("INVITE ").await;
    let soft_ring = soft.expect("INVITE ").await;
    assert_ne!(header(&desk_ring, "Call-ID"), header(&soft_ring, "Call-ID"));

    // The desk phone sends early media: the carrier gets 183 with the relay's address.
    desk.send(&response_to(
        &desk_ring,
        183,
        "Session Progress",
        "d1",
        &sdp(desk_rtp.local_addr().unwrap()),
    ))
    .await;
    let progress = carrier.expect_status(183).await;
    let relay_a = sdp_media(&progress);
    assert!((25000..25100).contains(&relay_a.port()), "{progress}");
    assert!(
        audio_flows(&desk_rtp, sdp_media(&desk_ring), &carrier_rtp, 0x44).await,
        "early media reaches the carrier"
    );

    // The softphone answers: it is bridged, and the desk phone is cancelled.
    soft.send(&response_to(
        &soft_ring,
        200,
        "OK",
        "s1",
        &sdp(soft_rtp.local_addr().unwrap()),
    ))
    .await;
    soft.expect("ACK ").await;
    let cancel = desk.expect("CANCEL ").await;
    assert_eq!(header(&cancel, "Call-ID"), header(&desk_ring, "Call-ID"));
    desk.send(&response_to(&cancel, 200, "OK", "", "")).await;
    desk.send(&response_to(
        &desk_ring,
        487,
        "Request Terminated",
        "d1",
        "",
    ))
    .await;
    desk.expect("ACK ").await;
    let ok = carrier.expect_status(200).await;
    carrier
        .send(&in_dialog("ACK", &offer, &ok, 1, system.edge_sip))
        .await;
    assert_eq!(sdp_media(&ok), relay_a, "the caller keeps its relay port");
    assert!(
        audio_flows(&carrier_rtp, relay_a, &soft_rtp, 0x55).await,
        "the answering phone hears the caller"
    );
    assert!(
        audio_flows(&soft_rtp, sdp_media(&soft_ring), &carrier_rtp, 0x66).await,
        "the caller hears the answering phone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_free_relay_ports_means_503_for_the_next_call() {
    // Two port pairs: one call's worth.
    let Scene {
        system: _system,
        carrier,
        phone,
        carrier_rtp,
        phone_rtp,
    } = Scene::start(None, &["--rtp-ports", "25200-25203"]).await;
    let first = did_call(&carrier, &carrier_rtp, "full1", "13105550199");
    carrier.send(&first).await;
    let _answered = answer_call(&carrier, &phone, &phone_rtp, &first, "f1").await;

    let second = did_call(&carrier, &carrier_rtp, "full2", "13105550198");
    carrier.send(&second).await;
    let refused = carrier.expect_status(503).await;
    assert_eq!(header(&refused, "Call-ID").as_deref(), Some("full2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_answer_is_hung_up_and_cancel_waits_for_a_provisional_response() {
    let Scene {
        system,
        carrier,
        phone: desk,
        carrier_rtp,
        phone_rtp: desk_rtp,
    } = Scene::start(None, &[]).await;
    let soft = registered_phone(system.edge_sip).await;
    let mobile = registered_phone(system.edge_sip).await;
    let offer = did_call(&carrier, &carrier_rtp, "race1", "13105550199");
    carrier.send(&offer).await;
    let desk_ring = desk.expect("INVITE ").await;
    let soft_ring = soft.expect("INVITE ").await;
    let mobile_ring = mobile.expect("INVITE ").await;
    soft.send(&response_to(&soft_ring, 180, "Ringing", "s2", ""))
        .await;
    carrier.expect_status(180).await;

    // The desk phone answers: the softphone (which rang) gets a CANCEL at once; the
    // mobile (silent so far) gets none yet (RFC 3261 §9.1).
    desk.send(&response_to(
        &desk_ring,
        200,
        "OK",
        "d2",
        &sdp(desk_rtp.local_addr().unwrap()),
    ))
    .await;
    desk.expect("ACK ").await;
    soft.expect("CANCEL ").await;
    assert!(
        mobile.quiet_for(Duration::from_millis(300)).await,
        "no CANCEL before a provisional response"
    );
    // The mobile's 180 releases its CANCEL.
    mobile
        .send(&response_to(&mobile_ring, 180, "Ringing", "m2", ""))
        .await;
    let cancel = mobile.expect("CANCEL ").await;
    assert_eq!(header(&cancel, "Call-ID"), header(&mobile_ring, "Call-ID"));

    // The softphone answered anyway (its 200 crossed the CANCEL): ACKed, then BYE.
    soft.send(&response_to(
        &soft_ring,
        200,
        "OK",
        "s2",
        &sdp(rtp_socket().await.local_addr().unwrap()),
    ))
    .await;
    soft.expect("ACK ").await;
    let bye = soft.expect("BYE ").await;
    assert_eq!(header(&bye, "Call-ID"), header(&soft_ring, "Call-ID"));
    assert!(header(&bye, "To").unwrap().contains("tag=s2"), "{bye}");
    carrier.expect_status(200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_answers_and_the_caller_leaves_a_voicemail_through_the_relay() {
    use phone_audio::analysis::tone_share;
    use phone_audio::Law;
    // The seed's inbound context with a 1 s Dial.
    let extensions = "[inbound]\nexten => _1NXXNXXXXXX,1,Dial(SIP/${EXTEN},1)\n same => n,VoiceMail(${EXTEN}@default,u)\n same => n,Hangup()\n\n[localexts]\nexten => 1,1,Hangup()\n";
    let Scene {
        system,
        carrier,
        phone,
        carrier_rtp,
        ..
    } = Scene::start(Some(extensions), &[]).await;
    let offer = did_call(&carrier, &carrier_rtp, "in-vm", "13105550199");
    carrier.send(&offer).await;
    let ring = phone.expect("INVITE ").await;
    phone
        .send(&response_to(&ring, 180, "Ringing", "phvm", ""))
        .await;
    let cancel = phone.expect("CANCEL ").await;
    phone.send(&response_to(&cancel, 200, "OK", "", "")).await;
    phone
        .send(&response_to(&ring, 487, "Request Terminated", "phvm", ""))
        .await;
    // VoiceMail() answers the carrier, with the relay's address.
    let ok = carrier.expect_status(200).await;
    carrier
        .send(&in_dialog("ACK", &offer, &ok, 1, carrier.edge))
        .await;
    let relay = sdp_media(&ok);

    // The carrier's side talks PCMU every 20 ms: silence until the beep, then a
    // 600 Hz tone for 2 s, then it hangs up.
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    let mut heard: Vec<i16> = Vec::new();
    let (mut seq, mut ts) = (0u16, 0u32);
    let mut beeped = false;
    let mut talked = 0;
    let mut buf = [0u8; 2048];
    for _ in 0..1500 {
        clock.tick().await;
        let samples: Vec<i16> = (0..160)
            .map(|n| {
                if beeped {
                    let t = f64::from(talked * 160 + n);
                    (8000.0 * (2.0 * std::f64::consts::PI * 600.0 * t / 8000.0).sin()) as i16
                } else {
                    0
                }
            })
            .collect();
        let mut packet = vec![0x80, 0];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&ts.to_be_bytes());
        packet.extend_from_slice(&[9, 9, 9, 9]);
        packet.extend(samples.iter().map(|&s| Law::Ulaw.encode(s)));
        carrier_rtp.send_to(&packet, relay).await.unwrap();
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(160);
        if beeped {
            talked += 1;
            if talked == 100 {
                break;
            }
            continue;
        }
        while let Ok((n, _)) = carrier_rtp.try_recv_from(&mut buf) {
            if n > 12 && buf[1] & 0x7F == 0 {
                heard.extend(buf[12..n].iter().map(|&b| Law::Ulaw.decode(b)));
            }
        }
        // The beep is a 1 kHz tone; the recording starts when it ends.
        let last = &heard[heard.len().saturating_sub(320)..];
        let beeping = last.len() == 320 && tone_share(last, 1000.0) > 0.8;
        if heard.len() > 8000
            && !beeping
            && tone_share(&heard[heard.len().saturating_sub(1600)..], 1000.0) > 0.3
        {
            beeped = true;
        }
    }
    assert!(
        beeped,
        "the greeting and the beep came back through the relay"
    );
    assert!(
        heard.len() > 8000 * 2,
        "a spoken greeting: {} samples",
        heard.len()
    );
    // The carrier hangs up.
    carrier
        .send(&in_dialog("BYE", &offer, &ok, 2, carrier.edge))
        .await;
    carrier.expect_status(200).await;

    // The message is in the voicemail's folder, and it is the caller's tone.
    let inbox = system
        .voicemail_messages
        .join("voicemail/default/13235550100/INBOX");
    let mut wav = None;
    for _ in 0..100 {
        if let Some(entry) = std::fs::read_dir(&inbox).ok().and_then(|d| {
            d.filter_map(Result::ok)
                .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        }) {
            wav = std::fs::read(entry.path().with_extension("wav")).ok();
            if wav.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audio = phone_audio::wav::decode(&wav.expect("a message in INBOX")).unwrap();
    let secs = audio.len() as f64 / 8000.0;
    assert!((1.5..=2.5).contains(&secs), "{secs} s recorded");
    let toned = audio
        .chunks_exact(800)
        .filter(|c| tone_share(c, 600.0) > 0.9)
        .count();
    assert!(
        toned + 2 >= audio.len() / 800,
        "{toned} of {} chunks are the caller's tone",
        audio.len() / 800
    );

    // The mailer emailed it to the mailbox's owner, with the recording attached.
    let mut eml = None;
    for _ in 0..100 {
        eml = std::fs::read_dir(&system.mail).ok().and_then(|d| {
            d.filter_map(Result::ok)
                .find(|e| e.file_name().to_string_lossy().ends_with(".email.eml"))
                .and_then(|e| std::fs::read_to_string(e.path()).ok())
        });
        if eml.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let eml = eml.expect("the email of the message");
    assert!(
        eml.contains("Subject: [PBX]: New message 1 in mailbox 13235550100"),
        "{eml}"
    );
    assert!(eml.contains("email@domain.com"), "{eml}");
    assert!(eml.contains("filename=\"msg0000.WAV\""), "{eml}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emergency_call_carries_the_lines_location_to_the_carrier() {
    let carrier = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let system = System::start(carrier.local_addr().unwrap(), None).await;
    let carrier = Peer {
        socket: carrier,
        edge: system.edge_sip,
    };
    // A line as a Line resource gives it, with where the phone is.
    let address = phone_kube::CivicAddress {
        country: "US".into(),
        state: Some("CA".into()),
        city: Some("Los Angeles".into()),
        street: Some("Sunset Blvd".into()),
        house_number: Some("6000".into()),
        location: Some("Suite 2".into()),
        postal_code: Some("90028".into()),
        ..Default::default()
    };
    let line = sip_edge::endpoint::ResourceLine {
        line: sip_edge::registrar::Line {
            name: "13235550177".into(),
            secret: Some("k1tchen".into()),
            nat: false,
        },
        peer: sip_edge::endpoint::PeerInfo {
            name: "13235550177".into(),
            codecs: vec!["ulaw".into()],
            context: "localexts".into(),
            location: Some(address.pidf_lo("pres:13235550177@phone")),
            ..Default::default()
        },
        mailboxes: Vec::new(),
    };
    system
        .edge
        .each(|core| core.set_resource_lines(vec![line.clone()]));
    let phone = Peer::new(system.edge_sip).await;
    let rtp = rtp_socket().await;
    let call = |number: &str, call_id: &str, auth: &str, cseq: u32| {
        invite(
            phone.addr(),
            &format!("sip:{number}@{}", system.edge_sip),
            "13235550177",
            call_id,
            rtp.local_addr().unwrap(),
            auth,
            cseq,
        )
    };
    let authorized = async |number: &str, call_id: &str| {
        let first = call(number, call_id, "", 1);
        phone.send(&first).await;
        let challenge = phone.expect_status(407).await;
        phone
            .send(
                &in_dialog("ACK", &first, &challenge, 1, system.edge_sip)
                    .replace("branch=z9hG4bKACK1x", &format!("branch=z9hG4bK{call_id}1")),
            )
            .await;
        let challenge =
            Challenge::parse(&header(&challenge, "Proxy-Authenticate").unwrap()).unwrap();
        let ruri = format!("sip:{number}@{}", system.edge_sip);
        let creds = digest::authorize(
            &challenge,
            "13235550177",
            "k1tchen",
            "INVITE",
            &ruri,
            "c",
            1,
        );
        phone
            .send(&call(
                number,
                call_id,
                &format!("Proxy-Authorization: {}\r\n", creds.to_header()),
                2,
            ))
            .await;
    };

    // 911: the carrier gets the location by value, beside the SDP (RFC 6442).
    authorized("911", "e911").await;
    let emergency = carrier.expect("INVITE ").await;
    assert!(emergency.starts_with("INVITE sip:911@"), "{emergency}");
    let geolocation = header(&emergency, "Geolocation").unwrap();
    let cid = geolocation
        .trim()
        .strip_prefix("<cid:")
        .and_then(|c| c.strip_suffix('>'))
        .unwrap();
    assert_eq!(header(&emergency, "Geolocation-Routing").unwrap(), "no");
    let content_type = header(&emergency, "Content-Type").unwrap();
    let boundary = content_type.split("boundary=").nth(1).unwrap().trim();
    assert!(
        content_type.starts_with("multipart/mixed"),
        "{content_type}"
    );
    let parts: Vec<&str> = body(&emergency)
        .split(&format!("--{boundary}"))
        .filter(|p| p.starts_with("\r\n") && !p.trim().is_empty())
        .collect();
    assert_eq!(parts.len(), 2, "{emergency}");
    assert!(
        parts[0].contains("Content-Type: application/sdp"),
        "{}",
        parts[0]
    );
    assert!(parts[0].contains("m=audio "), "{}", parts[0]);
    assert!(
        parts[1].contains("Content-Type: application/pidf+xml"),
        "{}",
        parts[1]
    );
    assert!(
        parts[1].contains(&format!("Content-ID: <{cid}>")),
        "{}",
        parts[1]
    );
    for element in [
        "<ca:A3>Los Angeles</ca:A3>",
        "<ca:HNO>6000</ca:HNO>",
        "<ca:LOC>Suite 2</ca:LOC>",
    ] {
        assert!(parts[1].contains(element), "{element}: {}", parts[1]);
    }
    // The length counts the whole multipart body.
    assert_eq!(
        header(&emergency, "Content-Length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        body(&emergency).len()
    );
    carrier
        .send(&response_to(&emergency, 486, "Busy Here", "e1", ""))
        .await;
    carrier.expect("ACK ").await;

    // An ordinary call from the same line carries none.
    authorized("3105550123", "plain").await;
    let plain = carrier.expect("INVITE ").await;
    assert!(plain.starts_with("INVITE sip:13105550123@"), "{plain}");
    assert!(header(&plain, "Geolocation").is_none(), "{plain}");
    assert_eq!(header(&plain, "Content-Type").unwrap(), "application/sdp");
}
