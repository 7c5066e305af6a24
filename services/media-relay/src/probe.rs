//! `media-relay probe livez|readyz ADDRESS-FILE`: the kubelet's exec probe of a relay
//! whose ports are not fixed (`--port-slots`). It reads the admin address the relay
//! wrote to `--address-file` and asks its `/livez` or `/readyz` over HTTP/1.1: exit 0
//! on `200`, else 1 with the reason on stderr (the kubelet shows it in the pod's
//! events).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the probe on the arguments after `probe`.
pub fn run(args: &[String]) -> ExitCode {
    match check(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("media-relay probe: {why}");
            ExitCode::FAILURE
        }
    }
}

fn check(args: &[String]) -> Result<(), String> {
    let [what, file] = args else {
        return Err("usage: media-relay probe livez|readyz ADDRESS-FILE".into());
    };
    if what != "livez" && what != "readyz" {
        return Err(format!("unknown check {what:?} (livez or readyz)"));
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let admin = admin_address(&text).ok_or_else(|| format!("no admin= line in {file}"))?;
    get(admin, what)
}

/// The `admin=` address of an address file.
pub fn admin_address(text: &str) -> Option<SocketAddr> {
    text.lines()
        .find_map(|line| line.strip_prefix("admin="))
        .and_then(|addr| addr.trim().parse().ok())
}

fn get(admin: SocketAddr, path: &str) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&admin, TIMEOUT).map_err(|e| format!("{admin}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| format!("{admin}: {e}"))?;
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{admin}: {e}"))?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(format!("{admin}/{path}: {e}")),
        }
        if head[..read].contains(&b'\n') {
            break;
        }
    }
    let status_line = String::from_utf8_lossy(&head[..read]);
    let status_line = status_line.lines().next().unwrap_or_default();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("{admin}/{path}: {status_line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_address_is_read_from_its_line() {
        let text = "grpc=10.0.0.1:50062\nadmin=10.0.0.1:9462\n";
        assert_eq!(admin_address(text), Some("10.0.0.1:9462".parse().unwrap()));
        assert_eq!(admin_address("grpc=10.0.0.1:1\n"), None);
        assert_eq!(admin_address("admin=nonsense\n"), None);
    }

    #[test]
    fn bad_arguments_say_how_to_call_it() {
        assert!(check(&[]).unwrap_err().contains("usage"));
        let args = ["health".to_owned(), "/nonexistent".to_owned()];
        assert!(check(&args).unwrap_err().contains("unknown check"));
        let args = ["readyz".to_owned(), "/nonexistent/relay.addr".to_owned()];
        assert!(check(&args).unwrap_err().contains("cannot read"));
    }
}
