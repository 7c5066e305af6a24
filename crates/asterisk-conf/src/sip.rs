//! `sip.conf` as chan_sip reads it: `[general]`, `register =>` lines, and one peer per
//! other (non-template) section.
//!
//! Settings in `[general]` that chan_sip uses as defaults for every peer (`context`,
//! `nat`, `qualify`, `dtmfmode`, `insecure`, `allow`/`disallow`, `canreinvite`) are applied
//! before the peer's own lines, the way chan_sip copies its globals into a new peer.

use std::path::Path;

use crate::error::{Error, Location, Warning};
use crate::tree::{self, Config, Entry, Section, Source};
use crate::values::{invalid, parse_bool, parse_number, CallerId, Secret};

/// chan_sip's default when neither the peer nor `[general]` sets `context`.
pub const DEFAULT_CONTEXT: &str = "default";
/// chan_sip's default `qualify=yes` timeout, in milliseconds.
pub const DEFAULT_QUALIFY_MS: u32 = 2000;

/// Codecs chan_sip knows by name (`allow=`/`disallow=`). Others are warned about and
/// ignored, as Asterisk does.
pub const KNOWN_CODECS: &[&str] = &[
    "ulaw", "alaw", "gsm", "g722", "g723", "g726", "g726aal2", "g729", "ilbc", "lpc10", "speex",
    "speex16", "speex32", "opus", "silk", "siren7", "siren14", "slin", "slin16", "testlaw",
    "adpcm", "h261", "h263", "h263p", "h264", "h265", "vp8", "vp9", "t140", "t140red", "jpeg",
    "png",
];

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipConf {
    pub general: General,
    /// Outbound registrations to providers, from `register =>` in `[general]`.
    pub registrations: Vec<Registration>,
    /// Every non-template section other than `[general]`, in file order.
    pub peers: Vec<Peer>,
    pub warnings: Vec<Warning>,
}

impl SipConf {
    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }
}

/// `[general]`: the settings of the SIP stack itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct General {
    pub context: String,
    pub allow_guest: bool,
    pub always_auth_reject: bool,
    pub realm: Option<String>,
    pub bind_addr: Option<String>,
    pub bind_port: Option<u16>,
    pub udp_bind_addr: Option<String>,
    pub tcp_enable: bool,
    pub tcp_bind_addr: Option<String>,
    pub extern_ip: Option<String>,
    pub local_nets: Vec<String>,
    pub srv_lookup: bool,
    pub user_agent: Option<String>,
    pub min_expiry: u32,
    pub max_expiry: u32,
    pub default_expiry: u32,
}

impl Default for General {
    fn default() -> Self {
        Self {
            context: DEFAULT_CONTEXT.to_owned(),
            allow_guest: true,
            always_auth_reject: true,
            realm: None,
            bind_addr: None,
            bind_port: None,
            udp_bind_addr: None,
            tcp_enable: false,
            tcp_bind_addr: None,
            extern_ip: None,
            local_nets: Vec::new(),
            srv_lookup: true,
            user_agent: None,
            min_expiry: 60,
            max_expiry: 3600,
            default_expiry: 120,
        }
    }
}

/// `type=`: chan_sip's peer (we call it), user (calls us) or friend (both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerType {
    Friend,
    Peer,
    User,
}

/// `host=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// `host=dynamic`: the peer registers and tells us where it is.
    Dynamic,
    /// A host name or address we send to (and match inbound traffic from).
    Static(String),
}

/// `nat=`, with chan_sip's (Asterisk 11+) meanings: `yes` = `force_rport,comedia`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Nat {
    /// Reply to the source address and port of the request (RFC 3581 `rport`) even when
    /// the peer did not ask for it.
    pub force_rport: bool,
    /// Send media to where the peer's media comes from (symmetric RTP, latching).
    pub comedia: bool,
    pub auto_force_rport: bool,
    pub auto_comedia: bool,
}

impl Nat {
    pub fn is_on(&self) -> bool {
        self.force_rport || self.comedia
    }
}

/// `qualify=`: keep-alive OPTIONS and the reachability limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualify {
    No,
    /// Qualify; a peer is unreachable when it answers slower than this many ms.
    Within(u32),
}

/// `dtmfmode=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfMode {
    /// RFC 2833 / RFC 4733 telephone-events.
    Rfc2833,
    Inband,
    Info,
    ShortInfo,
    Auto,
}

/// `insecure=`: what chan_sip does not check for calls from this peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Insecure {
    /// Match the peer by address without checking the source port.
    pub port: bool,
    /// Do not challenge its INVITEs.
    pub invite: bool,
}

/// One `allow=` or `disallow=` line, kept in order: `disallow=all` then `allow=ulaw` is a
/// different list from the reverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecRule {
    Allow(Vec<String>),
    Disallow(Vec<String>),
}

/// A `register =>` line: `[peer?][transport://]user[@domain][:secret[:authuser]]@host[:port][/extension][~expiry]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub peer: Option<String>,
    pub transport: Option<String>,
    pub user: String,
    pub domain: Option<String>,
    pub secret: Option<Secret>,
    pub auth_user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// The extension calls arrive for (the Contact user); chan_sip uses `s` when unset.
    pub extension: Option<String>,
    pub expiry: Option<u32>,
    pub location: Location,
}

/// A peer (a section other than `[general]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub location: Location,
    pub kind: PeerType,
    pub host: Host,
    pub port: Option<u16>,
    /// The user name to authenticate with (outbound) and that the peer uses to log in.
    pub username: Option<String>,
    pub default_user: Option<String>,
    pub secret: Option<Secret>,
    pub md5_secret: Option<Secret>,
    pub context: String,
    pub nat: Nat,
    pub qualify: Qualify,
    pub qualify_freq_secs: u32,
    pub dtmf_mode: DtmfMode,
    /// `canreinvite`/`directmedia`: let media flow end to end. `false` keeps us (the media
    /// relay) in the path.
    pub direct_media: bool,
    /// The `allow`/`disallow` lines of `[general]` then of the peer, in order.
    pub codec_rules: Vec<CodecRule>,
    /// The codecs that result, in preference order.
    pub codecs: Vec<String>,
    pub insecure: Insecure,
    pub caller_id: Option<CallerId>,
    pub from_user: Option<String>,
    pub from_domain: Option<String>,
    /// `mailbox=` (`box[@context]`, comma-separated): whose message counts to NOTIFY.
    pub mailboxes: Vec<String>,
    pub transports: Vec<String>,
    pub outbound_proxy: Option<String>,
}

/// Reads `sip.conf` from the file system.
pub fn load(path: impl AsRef<Path>) -> Result<SipConf, Error> {
    from_config(tree::load(path)?)
}

/// Reads `sip.conf` from `source`.
pub fn load_from(source: &dyn Source, path: &Path) -> Result<SipConf, Error> {
    from_config(tree::load_from(source, path)?)
}

/// Builds the typed view of an already parsed file.
pub fn from_config(config: Config) -> Result<SipConf, Error> {
    let mut warnings = config.warnings.clone();
    let mut general = General::default();
    let mut registrations = Vec::new();
    let mut defaults = PeerDefaults::default();

    for section in config.sections_named("general") {
        for entry in &section.entries {
            let applied = apply_general(
                entry,
                &mut general,
                &mut defaults,
                &mut registrations,
                &mut warnings,
            );
            crate::values::keep_going(applied, &mut warnings)?;
        }
    }

    let mut peers: Vec<Peer> = Vec::new();
    for section in &config.sections {
        if section.is_template || section.name == "general" {
            continue;
        }
        if section.name == "authentication" {
            // chan_sip's realm-wide `auth = user:secret@realm` credentials, not a peer.
            warnings.push(Warning {
                location: section.location.clone(),
                message: "[authentication] is not supported; give the peer username= and secret="
                    .into(),
            });
            continue;
        }
        let peer = build_peer(section, &general, &defaults, &mut warnings)?;
        if let Some(previous) = peers.iter().position(|p| p.name == peer.name) {
            warnings.push(Warning {
                location: section.location.clone(),
                message: format!(
                    "peer '{}' is defined again (first at {}); this definition replaces it",
                    peer.name, peers[previous].location
                ),
            });
            peers[previous] = peer;
        } else {
            peers.push(peer);
        }
    }

    Ok(SipConf {
        general,
        registrations,
        peers,
        warnings,
    })
}

/// `[general]` settings that are also per-peer defaults.
#[derive(Debug, Clone, Default)]
struct PeerDefaults {
    nat: Option<Nat>,
    qualify: Option<Qualify>,
    dtmf_mode: Option<DtmfMode>,
    insecure: Option<Insecure>,
    direct_media: Option<bool>,
    codec_rules: Vec<CodecRule>,
}

fn apply_general(
    entry: &Entry,
    general: &mut General,
    defaults: &mut PeerDefaults,
    registrations: &mut Vec<Registration>,
    warnings: &mut Vec<Warning>,
) -> Result<(), Error> {
    let value = entry.value.as_str();
    match entry.key.to_ascii_lowercase().as_str() {
        "register" => registrations.push(parse_registration(entry)?),
        "context" => general.context = value.to_owned(),
        "allowguest" => general.allow_guest = parse_bool(entry)?,
        "alwaysauthreject" => general.always_auth_reject = parse_bool(entry)?,
        "realm" => general.realm = Some(value.to_owned()),
        "bindaddr" => general.bind_addr = Some(value.to_owned()),
        "bindport" => general.bind_port = Some(parse_number(entry)?),
        "udpbindaddr" => general.udp_bind_addr = Some(value.to_owned()),
        "tcpenable" => general.tcp_enable = parse_bool(entry)?,
        "tcpbindaddr" => general.tcp_bind_addr = Some(value.to_owned()),
        "externip" | "externaddr" => general.extern_ip = Some(value.to_owned()),
        "localnet" => general.local_nets.push(value.to_owned()),
        "srvlookup" => general.srv_lookup = parse_bool(entry)?,
        "useragent" => general.user_agent = Some(value.to_owned()),
        "minexpiry" => general.min_expiry = parse_number(entry)?,
        "maxexpiry" => general.max_expiry = parse_number(entry)?,
        "defaultexpiry" => general.default_expiry = parse_number(entry)?,
        "nat" => defaults.nat = Some(parse_nat(entry, warnings)?),
        "qualify" => defaults.qualify = Some(parse_qualify(entry)?),
        "dtmfmode" => defaults.dtmf_mode = Some(parse_dtmf_mode(entry)?),
        "insecure" => defaults.insecure = Some(parse_insecure(entry)?),
        "canreinvite" | "directmedia" => defaults.direct_media = Some(parse_direct_media(entry)?),
        "allow" => defaults
            .codec_rules
            .push(CodecRule::Allow(codec_list(entry, warnings))),
        "disallow" => defaults
            .codec_rules
            .push(CodecRule::Disallow(codec_list(entry, warnings))),
        _ => unknown_key(entry, "[general]", warnings),
    }
    Ok(())
}

fn build_peer(
    section: &Section,
    general: &General,
    defaults: &PeerDefaults,
    warnings: &mut Vec<Warning>,
) -> Result<Peer, Error> {
    let mut peer = Peer {
        name: section.name.clone(),
        location: section.location.clone(),
        kind: PeerType::Friend,
        host: Host::Dynamic,
        port: None,
        username: None,
        default_user: None,
        secret: None,
        md5_secret: None,
        context: general.context.clone(),
        nat: defaults.nat.unwrap_or(Nat {
            force_rport: true,
            ..Nat::default()
        }),
        qualify: defaults.qualify.unwrap_or(Qualify::No),
        qualify_freq_secs: 60,
        dtmf_mode: defaults.dtmf_mode.unwrap_or(DtmfMode::Rfc2833),
        direct_media: defaults.direct_media.unwrap_or(true),
        codec_rules: defaults.codec_rules.clone(),
        codecs: Vec::new(),
        insecure: defaults.insecure.unwrap_or_default(),
        caller_id: None,
        from_user: None,
        from_domain: None,
        mailboxes: Vec::new(),
        transports: Vec::new(),
        outbound_proxy: None,
    };
    let mut saw_type = false;
    let mut saw_host = false;
    for entry in &section.entries {
        let value = entry.value.as_str();
        let applied = (|| -> Result<(), Error> {
            match entry.key.to_ascii_lowercase().as_str() {
                "type" => {
                    saw_type = true;
                    peer.kind = match value.to_ascii_lowercase().as_str() {
                        "friend" => PeerType::Friend,
                        "peer" => PeerType::Peer,
                        "user" => PeerType::User,
                        _ => return Err(invalid(entry, "expected friend, peer or user")),
                    }
                }
                "host" => {
                    saw_host = true;
                    if value.is_empty() {
                        return Err(invalid(entry, "expected dynamic or a host name"));
                    }
                    peer.host = if value.eq_ignore_ascii_case("dynamic") {
                        Host::Dynamic
                    } else {
                        Host::Static(value.to_owned())
                    };
                }
                "port" => peer.port = Some(parse_port(entry)?),
                "username" => peer.username = Some(value.to_owned()),
                "defaultuser" => peer.default_user = Some(value.to_owned()),
                "secret" => peer.secret = Some(Secret::new(value)),
                "md5secret" => peer.md5_secret = Some(Secret::new(value)),
                "context" => peer.context = value.to_owned(),
                "nat" => peer.nat = parse_nat(entry, warnings)?,
                "qualify" => peer.qualify = parse_qualify(entry)?,
                "qualifyfreq" => peer.qualify_freq_secs = parse_number(entry)?,
                "dtmfmode" => peer.dtmf_mode = parse_dtmf_mode(entry)?,
                "canreinvite" | "directmedia" => peer.direct_media = parse_direct_media(entry)?,
                "allow" => peer
                    .codec_rules
                    .push(CodecRule::Allow(codec_list(entry, warnings))),
                "disallow" => peer
                    .codec_rules
                    .push(CodecRule::Disallow(codec_list(entry, warnings))),
                "insecure" => peer.insecure = parse_insecure(entry)?,
                "callerid" => peer.caller_id = Some(CallerId::parse(value)),
                "fromuser" => peer.from_user = Some(value.to_owned()),
                "fromdomain" => peer.from_domain = Some(value.to_owned()),
                "mailbox" => peer.mailboxes.extend(
                    value
                        .split([',', '&'])
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned),
                ),
                "transport" => {
                    peer.transports = value
                        .split(',')
                        .map(|t| t.trim().to_ascii_lowercase())
                        .filter(|t| !t.is_empty())
                        .collect();
                    if let Some(bad) = peer
                        .transports
                        .iter()
                        .find(|t| !matches!(t.as_str(), "udp" | "tcp" | "tls" | "ws" | "wss"))
                    {
                        return Err(invalid(entry, &format!("unknown transport '{bad}'")));
                    }
                }
                "outboundproxy" => peer.outbound_proxy = Some(value.to_owned()),
                _ => unknown_key(entry, &format!("peer [{}]", section.name), warnings),
            }
            Ok(())
        })();
        crate::values::keep_going(applied, warnings)?;
    }
    if !saw_type {
        warnings.push(Warning {
            location: section.location.clone(),
            message: format!("peer [{}] has no type=; using friend", section.name),
        });
    }
    if !saw_host {
        warnings.push(Warning {
            location: section.location.clone(),
            message: format!(
                "peer [{}] has no host=; it can only reach us by registering",
                section.name
            ),
        });
    }
    peer.codecs = resolve_codecs(&peer.codec_rules);
    Ok(peer)
}

/// Applies allow/disallow rules in order, as `ast_parse_allow_disallow` does.
pub fn resolve_codecs(rules: &[CodecRule]) -> Vec<String> {
    let mut codecs: Vec<String> = Vec::new();
    for rule in rules {
        match rule {
            CodecRule::Allow(names) => {
                for name in names {
                    if name == "all" {
                        for known in KNOWN_CODECS {
                            if !codecs.iter().any(|c| c == known) {
                                codecs.push((*known).to_owned());
                            }
                        }
                    } else if !codecs.contains(name) {
                        codecs.push(name.clone());
                    }
                }
            }
            CodecRule::Disallow(names) => {
                for name in names {
                    if name == "all" {
                        codecs.clear();
                    } else {
                        codecs.retain(|c| c != name);
                    }
                }
            }
        }
    }
    codecs
}

fn codec_list(entry: &Entry, warnings: &mut Vec<Warning>) -> Vec<String> {
    let mut out = Vec::new();
    for name in entry.value.split([',', '&', '|']).map(str::trim) {
        if name.is_empty() {
            continue;
        }
        // `allow=ulaw:20` carries a packetization time; the codec is before the colon.
        let name = name.split(':').next().unwrap_or(name).to_ascii_lowercase();
        if name == "all" || KNOWN_CODECS.contains(&name.as_str()) {
            out.push(name);
        } else {
            warnings.push(Warning {
                location: entry.location.clone(),
                message: format!("{}: unknown codec '{name}' ignored", entry.key),
            });
        }
    }
    out
}

fn parse_port(entry: &Entry) -> Result<u16, Error> {
    match entry.value.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(invalid(entry, "expected a port number 1-65535")),
    }
}

/// `nat=` as chan_sip's `sip_parse_nat_option` reads it: comma-separated words, the
/// ones it does not know ignored (with a warning here).
fn parse_nat(entry: &Entry, warnings: &mut Vec<Warning>) -> Result<Nat, Error> {
    let mut nat = Nat::default();
    for word in entry
        .value
        .split(',')
        .map(|w| w.trim().to_ascii_lowercase())
    {
        match word.as_str() {
            "yes" | "true" | "on" | "1" => {
                nat.force_rport = true;
                nat.comedia = true;
            }
            "no" | "false" | "off" | "0" | "never" => {}
            "force_rport" | "route" => nat.force_rport = true,
            "comedia" => nat.comedia = true,
            "auto_force_rport" => nat.auto_force_rport = true,
            "auto_comedia" => nat.auto_comedia = true,
            word => warnings.push(Warning {
                location: entry.location.clone(),
                message: format!(
                    "nat: '{word}' is not yes, no, force_rport, comedia, auto_force_rport or auto_comedia; ignored, as chan_sip does"
                ),
            }),
        }
    }
    Ok(nat)
}

fn parse_qualify(entry: &Entry) -> Result<Qualify, Error> {
    let value = entry.value.trim();
    if crate::values::is_true(value) {
        return Ok(Qualify::Within(DEFAULT_QUALIFY_MS));
    }
    if crate::values::is_false(value) {
        return Ok(Qualify::No);
    }
    match value.parse::<u32>() {
        Ok(0) => Ok(Qualify::No),
        Ok(ms) => Ok(Qualify::Within(ms)),
        Err(_) => Err(invalid(entry, "expected yes, no or milliseconds")),
    }
}

fn parse_dtmf_mode(entry: &Entry) -> Result<DtmfMode, Error> {
    Ok(match entry.value.trim().to_ascii_lowercase().as_str() {
        "rfc2833" | "rfc4733" => DtmfMode::Rfc2833,
        "inband" => DtmfMode::Inband,
        "info" => DtmfMode::Info,
        "shortinfo" => DtmfMode::ShortInfo,
        "auto" => DtmfMode::Auto,
        _ => {
            return Err(invalid(
                entry,
                "expected rfc2833, inband, info, shortinfo or auto",
            ))
        }
    })
}

fn parse_direct_media(entry: &Entry) -> Result<bool, Error> {
    // chan_sip also takes `nonat`, `update` and `outgoing`: each is a conditional "yes",
    // and the edge decides per call; here they all mean direct media is allowed.
    let value = entry.value.trim().to_ascii_lowercase();
    if value
        .split(',')
        .all(|w| matches!(w.trim(), "nonat" | "update" | "outgoing"))
    {
        return Ok(true);
    }
    parse_bool(entry)
}

fn parse_insecure(entry: &Entry) -> Result<Insecure, Error> {
    let mut insecure = Insecure::default();
    for word in entry
        .value
        .split(',')
        .map(|w| w.trim().to_ascii_lowercase())
    {
        match word.as_str() {
            "port" => insecure.port = true,
            "invite" => insecure.invite = true,
            // Old spellings: `very` = port,invite; `yes` = port.
            "very" => {
                insecure.port = true;
                insecure.invite = true;
            }
            "yes" => insecure.port = true,
            "no" | "" => {}
            _ => return Err(invalid(entry, "expected port, invite or both")),
        }
    }
    Ok(insecure)
}

fn parse_registration(entry: &Entry) -> Result<Registration, Error> {
    let bad = |message: &str| invalid(entry, message);
    let mut rest = entry.value.trim();
    let mut expiry = None;
    if let Some((head, tail)) = rest.rsplit_once('~') {
        expiry = Some(
            tail.trim()
                .parse::<u32>()
                .map_err(|_| bad("expiry after '~' must be a number of seconds"))?,
        );
        rest = head;
    }
    let mut peer = None;
    if let Some(q) = rest.find('?') {
        if rest[..q].find('@').is_none() {
            peer = Some(rest[..q].to_owned());
            rest = &rest[q + 1..];
        }
    }
    let mut transport = None;
    if let Some((scheme, tail)) = rest.split_once("://") {
        transport = Some(scheme.to_ascii_lowercase());
        rest = tail;
    }
    let Some((credentials, target)) = rest.rsplit_once('@') else {
        return Err(bad("expected user[:secret]@host"));
    };
    let (host_port, extension) = match target.split_once('/') {
        Some((hp, ext)) => (hp, Some(ext.to_owned()).filter(|e| !e.is_empty())),
        None => (target, None),
    };
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || host_port.starts_with('[') => (
            h,
            Some(
                p.parse::<u16>()
                    .map_err(|_| bad("port after the host must be a number"))?,
            ),
        ),
        _ => (host_port, None),
    };
    if host.is_empty() {
        return Err(bad("no host after '@'"));
    }
    let mut parts = credentials.splitn(3, ':');
    let user_domain = parts.next().unwrap_or_default();
    let secret = parts.next().map(Secret::new);
    let auth_user = parts.next().map(str::to_owned);
    let (user, domain) = match user_domain.split_once('@') {
        Some((u, d)) => (u, Some(d.to_owned())),
        None => (user_domain, None),
    };
    if user.is_empty() {
        return Err(bad("no user before the host"));
    }
    Ok(Registration {
        peer,
        transport,
        user: user.to_owned(),
        domain,
        secret,
        auth_user,
        host: host.to_owned(),
        port,
        extension,
        expiry,
        location: entry.location.clone(),
    })
}

fn unknown_key(entry: &Entry, place: &str, warnings: &mut Vec<Warning>) {
    warnings.push(Warning {
        location: entry.location.clone(),
        message: format!("unknown key '{}' in {place} ignored", entry.key),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SipConf, Error> {
        from_config(tree::parse_str("sip.conf", text)?)
    }

    #[test]
    fn registration_lines() {
        let conf = parse(
            "[general]\nregister => 12345678:password@sip.flowroute.com/13235550100\n\
             register => trunk?tcp://user@example.com:s3cret:authuser@192.0.2.1:5080/100~300\n",
        )
        .unwrap();
        let r = &conf.registrations[0];
        assert_eq!(r.user, "12345678");
        assert_eq!(r.secret.as_ref().unwrap().expose(), "password");
        assert_eq!(r.host, "sip.flowroute.com");
        assert_eq!(r.port, None);
        assert_eq!(r.extension.as_deref(), Some("13235550100"));
        let r = &conf.registrations[1];
        assert_eq!(r.peer.as_deref(), Some("trunk"));
        assert_eq!(r.transport.as_deref(), Some("tcp"));
        assert_eq!(r.user, "user");
        assert_eq!(r.domain.as_deref(), Some("example.com"));
        assert_eq!(r.auth_user.as_deref(), Some("authuser"));
        assert_eq!(r.host, "192.0.2.1");
        assert_eq!(r.port, Some(5080));
        assert_eq!(r.expiry, Some(300));
        assert_eq!(r.location.line, 3);
    }

    #[test]
    fn bad_registration_names_the_line() {
        // chan_sip logs a register line it cannot parse and goes on.
        let conf = parse("[general]\n\nregister => nohost\n").unwrap();
        assert!(conf.registrations.is_empty());
        assert_eq!(
            conf.warnings[0].to_string(),
            "sip.conf:3: warning: register: expected user[:secret]@host (got 'nohost'); line ignored"
        );
    }

    #[test]
    fn codec_rules_apply_in_order() {
        let conf = parse(
            "[general]\nallow=gsm\n[a]\nhost=dynamic\ntype=friend\ndisallow=all\nallow=ulaw,alaw\n\
             [b]\nhost=dynamic\ntype=friend\nallow=ulaw\n[c]\nhost=dynamic\ntype=friend\n\
             allow=alaw&ulaw\ndisallow=alaw\nallow=nosuchcodec\n",
        )
        .unwrap();
        assert_eq!(conf.peer("a").unwrap().codecs, ["ulaw", "alaw"]);
        assert_eq!(conf.peer("b").unwrap().codecs, ["gsm", "ulaw"]);
        assert_eq!(conf.peer("c").unwrap().codecs, ["gsm", "ulaw"]);
        assert!(conf
            .warnings
            .iter()
            .any(|w| w.message.contains("nosuchcodec") && w.location.line == 17));
    }

    #[test]
    fn general_defaults_reach_peers_and_peers_override() {
        let conf = parse(
            "[general]\ncontext=from-sip\nnat=force_rport,comedia\nqualify=500\n\
             [phone]\ntype=friend\nhost=dynamic\n[trunk]\ntype=peer\nhost=192.0.2.1\nnat=no\ncontext=in\n",
        )
        .unwrap();
        let phone = conf.peer("phone").unwrap();
        assert_eq!(phone.context, "from-sip");
        assert!(phone.nat.force_rport && phone.nat.comedia);
        assert_eq!(phone.qualify, Qualify::Within(500));
        let trunk = conf.peer("trunk").unwrap();
        assert_eq!(trunk.context, "in");
        assert!(!trunk.nat.is_on());
        assert_eq!(trunk.host, Host::Static("192.0.2.1".into()));
    }

    #[test]
    fn templates_build_peers_and_are_not_peers() {
        let conf = parse(
            "[phones](!)\ntype=friend\nhost=dynamic\ncontext=localexts\nnat=yes\n\
             [100](phones)\nsecret=a\n[101](phones)\nsecret=b\ncontext=other\n",
        )
        .unwrap();
        assert_eq!(conf.peers.len(), 2);
        assert_eq!(conf.peer("100").unwrap().context, "localexts");
        assert_eq!(conf.peer("101").unwrap().context, "other");
        assert!(conf.peer("101").unwrap().nat.comedia);
        assert!(conf.peer("phones").is_none());
    }

    #[test]
    fn invalid_values_are_warnings_with_location() {
        // chan_sip logs a value it cannot read and keeps the setting as it was.
        for (text, expected) in [
            ("[p]\ntype=both\n", "sip.conf:2: warning: type: expected friend, peer or user (got 'both'); line ignored"),
            ("[p]\nport=99999\n", "sip.conf:2: warning: port: expected a port number 1-65535 (got '99999'); line ignored"),
            ("[p]\nnat=sometimes\n", "sip.conf:2: warning: nat: 'sometimes' is not yes, no, force_rport, comedia, auto_force_rport or auto_comedia; ignored, as chan_sip does"),
            ("[p]\n\nqualify=soon\n", "sip.conf:3: warning: qualify: expected yes, no or milliseconds (got 'soon'); line ignored"),
            ("[p]\ninsecure=always\n", "sip.conf:2: warning: insecure: expected port, invite or both (got 'always'); line ignored"),
            ("[p]\ntransport=sctp\n", "sip.conf:2: warning: transport: unknown transport 'sctp' (got 'sctp'); line ignored"),
        ] {
            let conf = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(conf.warnings[0].to_string(), expected);
            assert!(conf.peer("p").is_some());
        }
        // `nat=force_rport,comedia instead`: the words chan_sip knows are kept.
        let conf = parse("[p]\nnat=force_rport,comedia instead\n").unwrap();
        let nat = conf.peer("p").unwrap().nat;
        assert!(nat.force_rport && !nat.comedia);
    }

    #[test]
    fn the_authentication_section_is_not_a_peer() {
        let conf = parse("[authentication]\nauth=u:p@realm\n[p]\ntype=peer\nhost=h\n").unwrap();
        assert_eq!(conf.peers.len(), 1);
        assert!(conf.warnings[0]
            .message
            .contains("[authentication] is not supported"));
    }

    #[test]
    fn unknown_keys_warn() {
        let conf = parse("[p]\ntype=friend\nhost=dynamic\nvideosupport=yes\n").unwrap();
        assert_eq!(
            conf.warnings[0].to_string(),
            "sip.conf:4: warning: unknown key 'videosupport' in peer [p] ignored"
        );
    }
}
