//! Which of the edge's shards a message belongs to, from a glance at its head (no full
//! parse): every message of a call, of a registration and of a transaction the edge
//! started must reach the one endpoint that keeps its state.
//!
//! - A response: the shard named in its top Via's branch, which the edge made
//!   (`z9hG4bK<shard>s...`); failing that, by Call-ID.
//! - A REGISTER: by its To's user (the line, whose bindings one shard keeps).
//! - A SUBSCRIBE: by its From's user (the line subscribing, same shard as its
//!   bindings, so that the lamp's NOTIFYs are not sent twice).
//! - Any other request: the shard named at the start of its Call-ID
//!   (`<shard>s...`, the edge's own Call-IDs), else a hash of the Call-ID.
//!
//! A malformed message goes to shard 0, whose parser answers it.

/// FNV-1a: stable across runs and processes, cheap on short strings.
pub fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `<digits>s...` names a shard, if it is one of `shards`.
fn named(token: &[u8], shards: usize) -> Option<usize> {
    let digits = token.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 4 || token.get(digits) != Some(&b's') {
        return None;
    }
    let n: usize = std::str::from_utf8(&token[..digits]).ok()?.parse().ok()?;
    (n < shards).then_some(n)
}

/// The shard of a line (by its name).
pub fn shard_of_line(line: &str, shards: usize) -> usize {
    (hash(line.as_bytes()) % shards.max(1) as u64) as usize
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end.max(start)]
}

/// The user part of the URI in a From or To value.
fn user(value: &[u8]) -> &[u8] {
    let uri = match value.iter().position(|b| *b == b'<') {
        Some(start) => &value[start + 1..],
        None => value,
    };
    let Some(colon) = uri.iter().position(|b| *b == b':') else {
        return &[];
    };
    let rest = &uri[colon + 1..];
    match rest.iter().position(|b| *b == b'@') {
        Some(at) => &rest[..at],
        None => &[],
    }
}

/// The value of a `branch` parameter in a Via value.
fn branch(via: &[u8]) -> Option<&[u8]> {
    via.split(|b| *b == b';').find_map(|param| {
        let param = trim(param);
        let (name, value) = param.split_at(param.iter().position(|b| *b == b'=')?);
        name.eq_ignore_ascii_case(b"branch")
            .then(|| trim(&value[1..]))
    })
}

/// The shard of a request outside REGISTER and SUBSCRIBE with this Call-ID: the one
/// the Call-ID names (the edge's own), else by its hash. A call restored after a
/// restart goes where its requests will.
pub fn shard_of_call_id(call_id: &str, shards: usize) -> usize {
    let id = trim(call_id.as_bytes());
    if shards <= 1 {
        return 0;
    }
    named(id, shards).unwrap_or((hash(id) % shards as u64) as usize)
}

/// Which of `shards` takes this message.
pub fn shard_of(message: &[u8], shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut lines = message.split(|b| *b == b'\n');
    let Some(start) = lines.next() else {
        return 0;
    };
    let response = start.starts_with(b"SIP/2.0 ");
    let method = start.split(|b| *b == b' ').next().unwrap_or(&[]);
    let (mut via, mut call_id, mut to, mut from) = (None, None, None, None);
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (trim(&line[..colon]), trim(&line[colon + 1..]));
        let is = |long: &[u8], short: &[u8]| {
            name.eq_ignore_ascii_case(long) || name.eq_ignore_ascii_case(short)
        };
        if via.is_none() && is(b"via", b"v") {
            via = Some(value);
        } else if is(b"call-id", b"i") {
            call_id = Some(value);
        } else if is(b"to", b"t") {
            to = Some(value);
        } else if is(b"from", b"f") {
            from = Some(value);
        }
    }
    let by_call_id = |call_id: Option<&[u8]>| match call_id {
        Some(id) => named(id, shards).unwrap_or((hash(id) % shards as u64) as usize),
        None => 0,
    };
    if response {
        let ours = via
            .and_then(branch)
            .and_then(|b| b.strip_prefix(b"z9hG4bK"))
            .and_then(|b| named(b, shards));
        return ours.unwrap_or_else(|| by_call_id(call_id));
    }
    let line = match method {
        b"REGISTER" => to.map(user),
        b"SUBSCRIBE" => from.map(user),
        _ => None,
    };
    match line.filter(|l| !l.is_empty()) {
        Some(line) => (hash(line) % shards as u64) as usize,
        None => by_call_id(call_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_go_to_the_shard_their_branch_names() {
        let response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;rport=5060;branch=z9hG4bK3s9e37;received=1.2.3.4\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK0s1\r\nCall-ID: abc\r\nCSeq: 1 BYE\r\n\r\n";
        assert_eq!(shard_of(response, 4), 3);
        // A branch that names no shard of ours: by Call-ID, as its request was.
        let foreign = b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP x;branch=z9hG4bK7s1\r\ni: abc\r\n\r\n";
        assert_eq!(shard_of(foreign, 4), (hash(b"abc") % 4) as usize);
    }

    #[test]
    fn requests_go_by_call_id_registers_by_line_subscribes_by_subscriber() {
        let invite = b"INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKq\r\nCall-ID: 17880-18022@127.0.0.1\r\n\r\n";
        let bye = b"BYE sip:1@h SIP/2.0\r\ni:  17880-18022@127.0.0.1 \r\n\r\n";
        assert_eq!(shard_of(invite, 8), shard_of(bye, 8));
        assert_eq!(
            shard_of_call_id("17880-18022@127.0.0.1", 8),
            shard_of(bye, 8)
        );
        let ours = b"BYE sip:edge@h SIP/2.0\r\nCall-ID: 1s5-3-0@10.0.0.1\r\n\r\n";
        assert_eq!(shard_of(ours, 2), 1);
        let register = b"REGISTER sip:h SIP/2.0\r\nTo: \"Desk\" <sip:desk@h>\r\nCall-ID: x\r\n\r\n";
        assert_eq!(shard_of(register, 8), shard_of_line("desk", 8));
        let subscribe = b"SUBSCRIBE sip:desk@h SIP/2.0\r\nf: <sip:desk@h>;tag=1\r\nt: <sip:desk@h>\r\nCall-ID: y\r\n\r\n";
        assert_eq!(shard_of(subscribe, 8), shard_of_line("desk", 8));
    }

    #[test]
    fn anything_else_goes_somewhere_without_a_panic() {
        for junk in [
            &b""[..],
            b"\r\n\r\n",
            b"SIP/2.0 200",
            b"X\r\nCall-ID:\r\n",
            b"\xff\xfe:",
        ] {
            assert!(shard_of(junk, 3) < 3);
        }
        assert_eq!(shard_of(b"anything", 1), 0);
    }
}
