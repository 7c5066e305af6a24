//! Trunks: which requests are a trunk's (by address, or a Trunk resource's networks),
//! and the registrations to providers (`register =>` and the Trunk resources'), each an
//! [`OutboundRegistration`] driven by the endpoint's timers and answers.

use super::*;

/// A trunk (a peer with a `host`): where its requests come from and what is not
/// checked for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trunk {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    /// `insecure=port`: match by address alone, any source port.
    pub any_port: bool,
    /// `insecure=invite`: its INVITEs are not challenged.
    pub no_challenge: bool,
    /// Networks whose requests are the trunk's from any port, never challenged (a
    /// Trunk resource's `ipAddresses`: the carrier's IP authentication).
    pub nets: Vec<ipnet::IpNet>,
}

impl Trunk {
    /// Whether a request from `source` is this trunk's, and then whether its INVITEs
    /// go unchallenged.
    pub(super) fn matches(&self, source: SocketAddr) -> Option<bool> {
        if self.nets.iter().any(|net| net.contains(&source.ip())) {
            return Some(true);
        }
        self.addrs
            .iter()
            .any(|a| a.ip() == source.ip() && (self.any_port || a.port() == source.port()))
            .then_some(self.no_challenge)
    }
}

/// A registration to a provider, and where it goes. `id` names it for the branches of
/// its requests (the list changes as Trunk resources do); `trunk` is the Trunk
/// resource it comes from (`None` for sip.conf's `register =>` lines).
pub struct Outbound {
    id: u64,
    pub trunk: Option<String>,
    pub registration: OutboundRegistration,
    pub target: SocketAddr,
    /// What it was made from: a resource's registration is kept across resyncs while
    /// this stays the same.
    pub made_from: String,
    /// When the provider last accepted it.
    pub last_registered: Option<SystemTime>,
}

impl Outbound {
    pub fn new(
        trunk: Option<String>,
        registration: OutboundRegistration,
        target: SocketAddr,
        made_from: String,
    ) -> Self {
        Self {
            id: 0,
            trunk,
            registration,
            target,
            made_from,
            last_registered: None,
        }
    }
}

/// A trunk defined by a resource: how its requests are recognised, what calls to it
/// need, and its registration if it registers.
pub struct ResourceTrunk {
    pub trunk: Trunk,
    pub peer: PeerInfo,
    pub registration: Option<Outbound>,
}

impl SipCore {
    /// sip.conf's provider registrations (`register =>`), with their resolved
    /// addresses.
    pub fn set_outbound(&mut self, registrations: Vec<(OutboundRegistration, SocketAddr)>) {
        let resources: Vec<Outbound> = self
            .outbound
            .drain(..)
            .filter(|o| o.trunk.is_some())
            .collect();
        for (registration, target) in registrations {
            self.push_outbound(Outbound::new(None, registration, target, String::new()));
        }
        self.outbound.extend(resources);
    }

    pub(super) fn push_outbound(&mut self, mut outbound: Outbound) {
        self.outbound_seq += 1;
        outbound.id = self.outbound_seq;
        if !self.registering {
            outbound.registration.restart(self.now);
        }
        self.outbound.push(outbound);
    }

    /// Whether this edge registers to the providers now (it holds the Lease, or there
    /// is none).
    pub fn registering(&self) -> bool {
        self.registering
    }

    /// Whether this edge sends the `register =>` lines' REGISTERs: always without a
    /// Lease; with one, only while it holds it (one registration per trunk, whatever the
    /// number of edges). A change starts the registrations over.
    pub fn set_registering(&mut self, registering: bool) {
        if self.registering == registering {
            return;
        }
        self.registering = registering;
        let now = self.now;
        for outbound in &mut self.outbound {
            outbound.registration.restart(now);
        }
        self.outbound_branches.clear();
        tracing::info!(registering, "trunk registration ownership changed");
    }

    /// sip.conf's trunks, by address.
    pub fn set_trunks(&mut self, trunks: Vec<Trunk>) {
        self.trunks = trunks;
    }

    /// The trunk a request from `source` belongs to, and whether its INVITEs go
    /// unchallenged (chan_sip's rule: by address and port, or by address alone with
    /// `insecure=port`; a resource's `ipAddresses` by network). sip.conf's come first.
    pub(super) fn trunk_for(&self, source: SocketAddr) -> Option<(&Trunk, bool)> {
        self.trunks
            .iter()
            .chain(&self.resource_trunks)
            .find_map(|t| t.matches(source).map(|trusted| (t, trusted)))
    }

    /// The state of each provider registration: (user, status).
    pub fn outbound_status(&self) -> Vec<(String, outbound::Status)> {
        self.outbound
            .iter()
            .map(|o| (o.registration.user.clone(), o.registration.status().clone()))
            .collect()
    }

    /// The registration of the Trunk resource `trunk`: its status and when the provider
    /// last accepted it.
    pub fn trunk_registration(
        &self,
        trunk: &str,
    ) -> Option<(outbound::Status, Option<SystemTime>)> {
        self.outbound
            .iter()
            .find(|o| o.trunk.as_deref() == Some(trunk))
            .map(|o| (o.registration.status().clone(), o.last_registered))
    }

    pub(super) fn send_outbound(&mut self, index: usize, request: outbound::Request, now: Instant) {
        let Some(Outbound { id, target, .. }) = self.outbound.get(index) else {
            return;
        };
        let (id, target) = (*id, *target);
        let path = Path::udp(target);
        self.outbound_branches.insert(request.branch.clone(), id);
        self.start_client(request.branch, request.bytes, path, now);
    }

    /// The position of the outbound registration a request's branch belongs to.
    pub(super) fn outbound_index(&self, branch: &str) -> Option<usize> {
        let id = self.outbound_branches.get(branch)?;
        self.outbound.iter().position(|o| o.id == *id)
    }

    /// The trunks defined by resources (Kubernetes `Trunk`s), replacing the previous
    /// set: their addresses, the peers calls use, and their registrations. A
    /// registration made from the same settings as before is kept as it is (a resync
    /// does not register again); a gone trunk's registration stops.
    pub fn set_resource_trunks(&mut self, resources: Vec<ResourceTrunk>) {
        let (mut previous, kept): (Vec<Outbound>, Vec<Outbound>) =
            self.outbound.drain(..).partition(|o| o.trunk.is_some());
        self.outbound = kept;
        self.resource_trunks.clear();
        self.trunk_peers.clear();
        let mut fresh = Vec::new();
        let mut nets = Vec::new();
        for resource in resources {
            nets.extend(resource.trunk.nets.iter().copied());
            nets.extend(
                resource
                    .trunk
                    .addrs
                    .iter()
                    .map(|a| ipnet::IpNet::from(a.ip())),
            );
            self.resource_trunks.push(resource.trunk);
            self.trunk_peers.push(resource.peer);
            let Some(wanted) = resource.registration else {
                continue;
            };
            match previous
                .iter()
                .position(|o| o.trunk == wanted.trunk && o.made_from == wanted.made_from)
            {
                Some(at) => self.outbound.push(previous.swap_remove(at)),
                None => fresh.push(wanted),
            }
        }
        for outbound in fresh {
            tracing::info!(trunk = ?outbound.trunk, target = %outbound.target, "registering a trunk resource");
            self.push_outbound(outbound);
        }
        for gone in previous {
            tracing::info!(trunk = ?gone.trunk, "a trunk resource's registration stops");
        }
        let ids: HashSet<u64> = self.outbound.iter().map(|o| o.id).collect();
        self.outbound_branches.retain(|_, id| ids.contains(id));
        self.guard.set_exempt_nets(nets);
        self.rebuild_peers();
    }

    /// A response to a provider registration: final ones drive it on.
    pub(super) fn outbound_answer(
        &mut self,
        index: usize,
        branch: &str,
        bytes: &[u8],
        now: Instant,
    ) {
        let Ok(Parsed::Sip(message)) = wire::parse(bytes, true, "x") else {
            return;
        };
        let rsip::SipMessage::Response(response) = *message else {
            return;
        };
        let status = response.status_code.code();
        if status < 200 {
            return;
        }
        self.outbound_branches.remove(branch);
        let challenge = response.headers.iter().find_map(|h| match h {
            rsip::Header::ProxyAuthenticate(v) if status == 407 => Some(v.value().to_owned()),
            rsip::Header::WwwAuthenticate(v) if status != 407 => Some(v.value().to_owned()),
            _ => None,
        });
        // The Expires header, else the expires parameter of the Contact.
        let expires = response
            .expires_header()
            .and_then(|e| e.value().trim().parse().ok())
            .or_else(|| {
                let contact = response.contact_header().ok()?;
                let (_, params) = crate::registrar::parse_contact(contact.value())?;
                params
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case("expires"))
                    .and_then(|(_, value)| value.as_deref()?.trim().parse().ok())
            });
        let Some(local) = self.local_addr() else {
            return;
        };
        let next_branch = format!("z9hG4bK{}", self.tag());
        let unix = self.unix();
        let Some(Outbound {
            registration,
            last_registered,
            ..
        }) = self.outbound.get_mut(index)
        else {
            return;
        };
        let answer = outbound::Answer {
            status,
            challenge,
            expires,
        };
        let next = registration.handle_answer(now, branch, answer, local, next_branch);
        match registration.status() {
            outbound::Status::Registered { .. } => {
                *last_registered = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(unix));
                tracing::debug!(user = %registration.user, "registered to the provider")
            }
            outbound::Status::Failed { reason } => {
                tracing::warn!(user = %registration.user, %reason, "provider registration failed")
            }
            outbound::Status::Unregistered => {}
        }
        if let Some(request) = next {
            self.send_outbound(index, request, now);
        }
    }
}

#[cfg(test)]
mod trunk_tests {
    use super::*;

    fn core() -> SipCore {
        SipCore::new(
            crate::registrar::Registrar::new(Default::default(), Vec::new(), [7; 32]),
            std::sync::Arc::new(crate::guard::SharedGuard::new(Default::default(), &[], 1)),
            Qualifier::new(HashMap::new()),
            Vec::new(),
            None,
            Counters::default(),
            (Instant::now(), 1_800_000_000),
            7,
        )
    }

    fn resource(name: &str, nets: &[&str], made_from: &str) -> ResourceTrunk {
        let line = asterisk_conf::sip::Registration {
            peer: None,
            transport: None,
            user: "12345678".into(),
            domain: None,
            secret: None,
            auth_user: None,
            host: "carrier.example".into(),
            port: None,
            extension: None,
            expiry: None,
            location: asterisk_conf::Location::new(std::path::PathBuf::from("t"), 1),
        };
        let target: SocketAddr = "192.0.2.10:5060".parse().unwrap();
        ResourceTrunk {
            trunk: Trunk {
                name: name.into(),
                addrs: vec![target],
                any_port: false,
                no_challenge: false,
                nets: nets.iter().map(|n| n.parse().unwrap()).collect(),
            },
            peer: PeerInfo {
                name: name.into(),
                context: "from-carrier".into(),
                trunk: Some(target),
                ..PeerInfo::default()
            },
            registration: Some(Outbound::new(
                Some(name.into()),
                OutboundRegistration::fresh(&line, name),
                target,
                made_from.into(),
            )),
        }
    }

    fn registration_id(core: &SipCore, trunk: &str) -> Option<u64> {
        core.outbound
            .iter()
            .find(|o| o.trunk.as_deref() == Some(trunk))
            .map(|o| o.id)
    }

    #[test]
    fn a_resync_keeps_the_registration_and_a_change_makes_a_new_one() {
        let mut core = core();
        core.set_resource_trunks(vec![resource("carrier", &[], "a")]);
        let first = registration_id(&core, "carrier").unwrap();
        core.set_resource_trunks(vec![resource("carrier", &[], "a")]);
        assert_eq!(registration_id(&core, "carrier"), Some(first));
        core.set_resource_trunks(vec![resource("carrier", &[], "b")]);
        let second = registration_id(&core, "carrier").unwrap();
        assert_ne!(second, first);
        assert!(matches!(
            core.trunk_registration("carrier"),
            Some((outbound::Status::Unregistered, None))
        ));
        core.set_resource_trunks(Vec::new());
        assert_eq!(registration_id(&core, "carrier"), None);
        assert!(core.trunk_registration("carrier").is_none());
    }

    /// The carrier's INVITE for the DID from `caller`, sent from `from`.
    fn did_invite(from: SocketAddr, caller: &str) -> Vec<u8> {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        format!(
            "INVITE sip:13235550100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-{caller}\r\nMax-Forwards: 70\r\nFrom: \"Somebody\" <sip:{caller}@{from}>;tag=f1\r\nTo: <sip:13235550100@127.0.0.1>\r\nCall-ID: {caller}@carrier\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
        .into_bytes()
    }

    /// The calls the endpoint asked a task for.
    fn new_calls(core: &mut SipCore) -> Vec<NewCall> {
        std::iter::from_fn(|| core.poll_event())
            .filter_map(|e| match e {
                Event::NewCall(call) => Some(call),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_peers_callerid_replaces_what_its_from_header_says() {
        let carrier: SocketAddr = "127.0.0.1:5999".parse().unwrap();
        let mut core = core();
        core.set_trunks(vec![Trunk {
            name: "flowroute".into(),
            addrs: vec![carrier],
            any_port: false,
            no_challenge: true,
            nets: Vec::new(),
        }]);
        core.set_local("127.0.0.1:5060".parse().unwrap());
        core.set_accepting_calls(true);
        let carrier_peer = |caller_id: Option<(String, String)>| PeerInfo {
            name: "flowroute".into(),
            codecs: vec!["ulaw".into()],
            caller_id,
            ..PeerInfo::default()
        };
        core.set_file_config(Vec::new(), vec![carrier_peer(None)], HashMap::new());
        let path = Path::udp(carrier);
        // Without callerid=, the From header's.
        let now = Instant::now();
        core.handle_datagram(now, path, &did_invite(carrier, "13105550199"));
        let [call] = <[NewCall; 1]>::try_from(new_calls(&mut core)).unwrap();
        assert_eq!(
            (call.caller_number.as_str(), call.caller_name.as_str()),
            ("13105550199", "Somebody")
        );
        // With it (sip.conf's callerid=, a Line's callerId), the peer's.
        let caller_id = asterisk_conf::CallerId::parse("\"Front Desk\" <13235550100>");
        core.set_file_config(
            Vec::new(),
            vec![carrier_peer(Some((caller_id.number, caller_id.name)))],
            HashMap::new(),
        );
        core.handle_datagram(now, path, &did_invite(carrier, "13105550198"));
        let [call] = <[NewCall; 1]>::try_from(new_calls(&mut core)).unwrap();
        assert_eq!(
            (call.caller_number.as_str(), call.caller_name.as_str()),
            ("13235550100", "Front Desk")
        );
    }

    #[test]
    fn file_trunks_stay_when_resource_trunks_change() {
        let mut core = core();
        core.set_trunks(vec![Trunk {
            name: "flowroute".into(),
            addrs: vec!["192.0.2.1:5060".parse().unwrap()],
            any_port: true,
            no_challenge: true,
            nets: Vec::new(),
        }]);
        core.set_resource_trunks(vec![resource("carrier", &["198.51.100.0/24"], "a")]);
        core.set_resource_trunks(vec![resource("carrier", &["198.51.100.0/24"], "a")]);
        fn name(core: &SipCore, source: &str) -> Option<(String, bool)> {
            core.trunk_for(source.parse().unwrap())
                .map(|(t, trusted)| (t.name.clone(), trusted))
        }
        assert_eq!(
            name(&core, "192.0.2.1:7000"),
            Some(("flowroute".into(), true))
        );
        // By its ipAddresses: from any port, and trusted.
        assert_eq!(
            name(&core, "198.51.100.77:40000"),
            Some(("carrier".into(), true))
        );
        // By its host's address: that port only, and challenged (no insecure=invite).
        assert_eq!(
            name(&core, "192.0.2.10:5060"),
            Some(("carrier".into(), false))
        );
        assert_eq!(name(&core, "192.0.2.10:5061"), None);
        assert_eq!(name(&core, "203.0.113.1:5060"), None);
        assert_eq!(core.peer_context("carrier"), "from-carrier");
        core.set_resource_trunks(Vec::new());
        assert_eq!(name(&core, "198.51.100.77:40000"), None);
        assert_eq!(
            name(&core, "192.0.2.1:7000"),
            Some(("flowroute".into(), true))
        );
        assert_eq!(core.peer_context("carrier"), "default");
    }
}
