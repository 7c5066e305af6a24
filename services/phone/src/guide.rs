//! What `phone` prints once it is ready: how to register a softphone to it and what
//! the phone can dial, read from the configuration it runs (so it is right for the
//! shipped example and for the user's own files), and where voicemail email goes.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use asterisk_conf::extensions::Dialplan;
use asterisk_conf::sip::{Host, SipConf};

/// Where the email of a new voicemail goes.
pub enum Mail<'a> {
    Smtp { host: &'a str, port: u16 },
    Folder(&'a Path),
}

/// The guide's lines.
pub fn guide(
    sip: &SipConf,
    dialplan: &Dialplan,
    config_dir: &Path,
    sip_bind: SocketAddr,
    advertise_ip: Option<IpAddr>,
    mail: Mail<'_>,
) -> String {
    let server = match (advertise_ip, sip_bind.ip()) {
        (Some(ip), _) => SocketAddr::new(ip, sip_bind.port()).to_string(),
        (None, ip) if ip.is_unspecified() => {
            format!("<this machine's address>:{}", sip_bind.port())
        }
        (None, ip) => SocketAddr::new(ip, sip_bind.port()).to_string(),
    };
    let sip_conf = config_dir.join("sip.conf");
    let mut out = String::new();
    let patterns = |context: &str| -> String {
        let mut seen: Vec<&str> = Vec::new();
        if let Some(c) = dialplan.context(context) {
            for line in &c.lines {
                if !seen.contains(&line.extension.as_str()) {
                    seen.push(&line.extension);
                }
            }
        }
        if seen.is_empty() {
            "nothing (the context is empty or missing)".to_owned()
        } else {
            seen.join(", ")
        }
    };
    for peer in sip.peers.iter().filter(|p| p.host == Host::Dynamic) {
        let user = peer.username.as_deref().unwrap_or(&peer.name);
        let _ = writeln!(
            out,
            "register a softphone: server {server} (UDP or TCP), user {user}, password: secret= of [{}] in {}",
            peer.name,
            sip_conf.display()
        );
        let _ = writeln!(
            out,
            "  it can dial (context {}): {}",
            peer.context,
            patterns(&peer.context)
        );
    }
    for peer in sip.peers.iter() {
        if let Host::Static(host) = &peer.host {
            let _ = writeln!(
                out,
                "trunk [{}] at {host}: its calls enter context {} ({})",
                peer.name,
                peer.context,
                patterns(&peer.context)
            );
        }
    }
    let _ = match mail {
        Mail::Smtp { host, port } => {
            writeln!(out, "voicemail email: through SMTP at {host}:{port}")
        }
        Mail::Folder(dir) => writeln!(
            out,
            "voicemail email: written as .eml files to {} (no --smtp-host)",
            dir.display()
        ),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_guide_names_the_line_what_it_dials_and_the_trunk() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/freelancer");
        let sip = asterisk_conf::sip::load(dir.join("sip.conf")).unwrap();
        let dialplan = asterisk_conf::extensions::load(dir.join("extensions.conf")).unwrap();
        let text = guide(
            &sip,
            &dialplan,
            Path::new("/etc/phone"),
            "0.0.0.0:5060".parse().unwrap(),
            Some("192.0.2.10".parse().unwrap()),
            Mail::Folder(Path::new("phone-data/mailer/mail")),
        );
        assert_eq!(
            text,
            "register a softphone: server 192.0.2.10:5060 (UDP or TCP), user 13235550100, password: secret= of [13235550100] in /etc/phone/sip.conf\n  it can dial (context localexts): 911, 1, _+X!, _NXXNXXXXXX, _1NXXNXXXXXX\ntrunk [flowroute] at sip.flowroute.com: its calls enter context inbound (_1NXXNXXXXXX)\nvoicemail email: written as .eml files to phone-data/mailer/mail (no --smtp-host)\n"
        );
    }
}
