use super::*;
use crate::wire::{parse, Parsed};

const NOW: u64 = 1_700_000_000;
const PHONE: &str = "192.0.2.20:5062";

fn registrar() -> Registrar {
    Registrar::new(
        RegistrarConfig {
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            ..RegistrarConfig::default()
        },
        vec![Line {
            name: "13235550100".into(),
            secret: Some("password".into()),
            nat: true,
        }],
        [9; 32],
    )
}

fn register(user: &str, cseq: u32, extra: &str) -> rsip::Request {
    let text = format!(
        "REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP {PHONE};branch=z9hG4bKreg{cseq};rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:{user}@pbx.example.com>\r\n\
From: <sip:{user}@pbx.example.com>;tag=a73kszlfl\r\n\
Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.20\r\n\
CSeq: {cseq} REGISTER\r\n\
User-Agent: baresip v1.0.0\r\n\
{extra}Content-Length: 0\r\n\r\n"
    );
    match parse(text.as_bytes(), true, "t") {
        Ok(Parsed::Sip(m)) => match *m {
            rsip::SipMessage::Request(r) => r,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}\n{text}"),
    }
}

fn source() -> Source {
    Source {
        addr: PHONE.parse().unwrap(),
        reliable: false,
    }
}

fn header(response: &rsip::Response, name: &str) -> Vec<String> {
    response
        .headers
        .iter()
        .filter_map(|h| {
            let text = h.to_string();
            let (n, v) = text.split_once(": ")?;
            n.eq_ignore_ascii_case(name).then(|| v.to_owned())
        })
        .collect()
}

/// Answers the response's first challenge of `algorithm`.
fn authorize(
    response: &rsip::Response,
    user: &str,
    password: &str,
    nc: u32,
    algorithm: Algorithm,
) -> String {
    let challenge = header(response, "WWW-Authenticate")
        .iter()
        .map(|v| Challenge::parse(v).unwrap())
        .find(|c| c.algorithm == algorithm)
        .unwrap();
    let creds = digest::authorize(
        &challenge,
        user,
        password,
        "REGISTER",
        "sip:pbx.example.com",
        "0a4f113b",
        nc,
    );
    format!("Authorization: {}\r\n", creds.to_header())
}

fn login(r: &mut Registrar, extra: &str, cseq: u32, algorithm: Algorithm) -> Outcome {
    let first = r.handle(NOW, &register("13235550100", cseq, extra), source(), "rt");
    assert_eq!(first.response.status_code.code(), 401);
    let auth = authorize(&first.response, "13235550100", "password", 1, algorithm);
    r.handle(
        NOW,
        &register("13235550100", cseq + 1, &format!("{auth}{extra}")),
        source(),
        "rt",
    )
}

#[test]
fn challenge_lists_sha256_then_md5_with_qop_auth() {
    let mut r = registrar();
    let out = r.handle(
        NOW,
        &register(
            "13235550100",
            1,
            "Contact: <sip:13235550100@10.0.0.5:5062>\r\n",
        ),
        source(),
        "rt",
    );
    let text = out.response.to_string();
    assert!(text.starts_with("SIP/2.0 401 Unauthorized\r\n"), "{text}");
    let challenges = header(&out.response, "WWW-Authenticate");
    assert_eq!(challenges.len(), 2);
    assert!(challenges[0].contains("algorithm=SHA-256") && challenges[1].contains("algorithm=MD5"));
    assert!(challenges
        .iter()
        .all(|c| c.contains("realm=\"asterisk\"") && c.contains("qop=\"auth\"")));
    assert_eq!(
        header(&out.response, "To"),
        ["<sip:13235550100@pbx.example.com>;tag=rt"]
    );
    assert_eq!(
        header(&out.response, "Via"),
        [format!("SIP/2.0/UDP {PHONE};branch=z9hG4bKreg1;rport")]
    );
}

#[test]
fn a_phone_registers_with_md5_or_sha256_and_is_reached_where_it_registered_from() {
    for algorithm in [Algorithm::Md5, Algorithm::Sha256] {
        let mut r = registrar();
        let out = login(
            &mut r,
            "Contact: <sip:13235550100@10.0.0.5:5062;transport=udp>;expires=300\r\n",
            1,
            algorithm,
        );
        assert_eq!(out.response.status_code.code(), 200, "{}", out.response);
        assert_eq!(out.changed.as_deref(), Some("13235550100"));
        assert_eq!(
            header(&out.response, "Contact"),
            ["<sip:13235550100@10.0.0.5:5062;transport=udp>;expires=300"]
        );
        let bindings = r.contacts("13235550100", NOW);
        assert_eq!(bindings.len(), 1);
        let b = bindings[0];
        assert_eq!(
            b.source,
            PHONE.parse().unwrap(),
            "nat=yes: the source address, not 10.0.0.5"
        );
        assert!(b.nat);
        assert_eq!(b.expires_at, NOW + 300);
        assert_eq!(b.user_agent.as_deref(), Some("baresip v1.0.0"));
    }
}

#[test]
fn md5_alone_by_default_and_unoffered_algorithms_are_refused() {
    let mut r = Registrar::new(
        RegistrarConfig::default(),
        vec![Line {
            name: "13235550100".into(),
            secret: Some("password".into()),
            nat: true,
        }],
        [9; 32],
    );
    let first = r.handle(NOW, &register("13235550100", 1, ""), source(), "rt");
    let challenges = header(&first.response, "WWW-Authenticate");
    assert_eq!(challenges.len(), 1);
    assert!(challenges[0].contains("algorithm=MD5"));
    // A client that answers with SHA-256 anyway is refused.
    let mut challenge = Challenge::parse(&challenges[0]).unwrap();
    challenge.algorithm = Algorithm::Sha256;
    let creds = digest::authorize(
        &challenge,
        "13235550100",
        "password",
        "REGISTER",
        "sip:pbx.example.com",
        "c",
        1,
    );
    let auth = format!("Authorization: {}\r\n", creds.to_header());
    let out = r.handle(NOW, &register("13235550100", 2, &auth), source(), "rt");
    assert_eq!(out.response.status_code.code(), 403);
}

#[test]
fn wrong_password_and_unknown_user_get_the_same_403() {
    let mut r = registrar();
    let first = r.handle(NOW, &register("13235550100", 1, ""), source(), "rt");
    let wrong = authorize(&first.response, "13235550100", "guess", 1, Algorithm::Md5);
    let out = r.handle(NOW, &register("13235550100", 2, &wrong), source(), "rt");
    assert_eq!(out.response.status_code.code(), 403);
    assert!(out.auth_failed);

    let first = r.handle(NOW, &register("19995550100", 1, ""), source(), "rt");
    assert_eq!(
        first.response.status_code.code(),
        401,
        "unknown users are challenged like known ones"
    );
    let unknown = authorize(
        &first.response,
        "19995550100",
        "password",
        1,
        Algorithm::Md5,
    );
    let out2 = r.handle(NOW, &register("19995550100", 2, &unknown), source(), "rt");
    assert_eq!(out2.response.status_code.code(), 403);
    assert!(out2.auth_failed);
    assert_eq!(
        out.response.to_string().replace("13235550100", "X"),
        out2.response.to_string().replace("19995550100", "X"),
        "nothing tells the two apart"
    );
}

#[test]
fn replayed_credentials_are_refused_and_old_nonces_are_stale() {
    let mut r = registrar();
    let first = r.handle(NOW, &register("13235550100", 1, ""), source(), "rt");
    let auth = authorize(
        &first.response,
        "13235550100",
        "password",
        1,
        Algorithm::Md5,
    );
    let extra = format!("{auth}Contact: <sip:13235550100@10.0.0.5>\r\n");
    assert_eq!(
        r.handle(NOW, &register("13235550100", 2, &extra), source(), "rt")
            .response
            .status_code
            .code(),
        200
    );
    let replay = r.handle(NOW + 1, &register("13235550100", 3, &extra), source(), "rt");
    assert_eq!(
        replay.response.status_code.code(),
        401,
        "the same nonce again: challenged afresh"
    );
    assert!(header(&replay.response, "WWW-Authenticate")[0].contains("stale=true"));
    let late = authorize(
        &first.response,
        "13235550100",
        "password",
        2,
        Algorithm::Md5,
    );
    let out = r.handle(
        NOW + 301,
        &register("13235550100", 4, &late),
        source(),
        "rt",
    );
    assert_eq!(out.response.status_code.code(), 401);
    assert!(header(&out.response, "WWW-Authenticate")[0].contains("stale=true"));
}

#[test]
fn expiry_bounds_removal_and_wildcard() {
    let mut r = registrar();
    let out = login(
        &mut r,
        "Expires: 30\r\nContact: <sip:a@10.0.0.5>\r\n",
        1,
        Algorithm::Md5,
    );
    assert_eq!(out.response.status_code.code(), 423);
    assert_eq!(header(&out.response, "Min-Expires"), ["60"]);

    let out = login(
        &mut r,
        "Expires: 7200\r\nContact: <sip:a@10.0.0.5>, <sip:b@10.0.0.6>;expires=600\r\n",
        3,
        Algorithm::Md5,
    );
    assert_eq!(out.response.status_code.code(), 200);
    let mut contacts = header(&out.response, "Contact");
    contacts.sort();
    assert_eq!(
        contacts,
        [
            "<sip:a@10.0.0.5>;expires=3600",
            "<sip:b@10.0.0.6>;expires=600"
        ]
    );

    let out = login(
        &mut r,
        "Contact: <sip:a@10.0.0.5>;expires=0\r\n",
        5,
        Algorithm::Md5,
    );
    assert_eq!(
        header(&out.response, "Contact"),
        ["<sip:b@10.0.0.6>;expires=600"]
    );

    let out = login(&mut r, "Expires: 0\r\nContact: *\r\n", 7, Algorithm::Md5);
    assert_eq!(out.response.status_code.code(), 200);
    assert!(r.contacts("13235550100", NOW).is_empty());
    let out = login(&mut r, "Contact: *\r\n", 9, Algorithm::Md5);
    assert_eq!(out.response.status_code.code(), 400, "* needs Expires: 0");
}

#[test]
fn out_of_order_cseq_does_not_update_and_contacts_are_capped() {
    let mut r = Registrar::new(
        RegistrarConfig {
            max_contacts: 2,
            ..RegistrarConfig::default()
        },
        vec![Line {
            name: "13235550100".into(),
            secret: Some("password".into()),
            nat: false,
        }],
        [9; 32],
    );
    login(
        &mut r,
        "Contact: <sip:a@10.0.0.5>;expires=100\r\n",
        10,
        Algorithm::Md5,
    );
    // An older CSeq of the same Call-ID: the binding stays as it was.
    login(
        &mut r,
        "Contact: <sip:a@10.0.0.5>;expires=900\r\n",
        3,
        Algorithm::Md5,
    );
    assert_eq!(r.contacts("13235550100", NOW)[0].expires_at, NOW + 100);
    login(
        &mut r,
        "Contact: <sip:b@10.0.0.6>;expires=200\r\n",
        20,
        Algorithm::Md5,
    );
    login(
        &mut r,
        "Contact: <sip:c@10.0.0.7>;expires=300\r\n",
        30,
        Algorithm::Md5,
    );
    let mut left: Vec<&str> = r
        .contacts("13235550100", NOW)
        .iter()
        .map(|b| b.contact.as_str())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["sip:b@10.0.0.6", "sip:c@10.0.0.7"],
        "the first to expire gave way"
    );
}

#[test]
fn bindings_expire_and_survive_a_restart() {
    let mut r = registrar();
    login(
        &mut r,
        "Contact: <sip:a@10.0.0.5>;expires=100\r\n",
        1,
        Algorithm::Md5,
    );
    let saved = serde_json::to_string(&r.snapshot()).unwrap();
    let mut restarted = registrar();
    restarted.restore(serde_json::from_str(&saved).unwrap(), NOW + 10);
    assert_eq!(restarted.contacts("13235550100", NOW + 10).len(), 1);
    assert_eq!(restarted.expire(NOW + 100), ["13235550100"]);
    assert!(restarted.contacts("13235550100", NOW + 100).is_empty());
    let mut late = registrar();
    late.restore(serde_json::from_str(&saved).unwrap(), NOW + 500);
    assert!(
        late.snapshot().is_empty(),
        "expired bindings are not restored"
    );
}
