//! Trunks as Kubernetes resources (`Trunk` of `phone.dev`, see the `phone-kube` crate):
//! the edge watches them in its namespace and applies every change without a restart.
//! A trunk is a carrier: its requests are recognised by the addresses its host resolves
//! to (with `insecure=`'s rules) and by its `ipAddresses` (never challenged, from any
//! port); calls to it (`Dial(SIP/<number>@<name>)`) go to its host with its
//! credentials; with `register`, the edge keeps a registration with it, as a
//! `register =>` line does. sip.conf stays supported: a `Trunk` with the name of a
//! sip.conf peer is not merged; its status says why it is not used.
//!
//! Hosts are resolved again and Secrets read again every [`RESYNC_EVERY`]; a
//! registration made from the same settings is kept across resyncs. The edge that
//! registers (the holder of the trunk Lease, or the only edge) writes each trunk's
//! status, only on change and at most once per [`STATUS_EVERY`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use asterisk_conf::sip::Registration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::ResourceExt;
use phone_kube::{SecretReader, Trunk, TrunkStatus};
use service_runtime::Shutdown;

use crate::driver::Driver;
use crate::endpoint::{self, Outbound, PeerInfo, ResourceTrunk, SipCore};
use crate::outbound::{OutboundRegistration, Status};
use crate::resources::{rfc3339, RESYNC_EVERY, STATUS_EVERY};

/// A trunk resource as the edge uses it, or why it cannot.
struct Resolved {
    name: String,
    generation: Option<i64>,
    register: bool,
    addresses: Vec<SocketAddr>,
    /// Why it is not used, if so.
    problem: Option<String>,
}

/// Watches `Trunk`s in `namespace` until `shutdown`: applies them to the SIP core
/// (after each spec change and every [`RESYNC_EVERY`]) and, while this edge registers,
/// writes their status as `identity`.
pub async fn run(
    client: kube::Client,
    namespace: String,
    edge: Arc<Driver>,
    file_peers: HashSet<String>,
    identity: String,
    shutdown: Shutdown,
) {
    let trunks: Api<Trunk> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let resolved: Arc<Mutex<Vec<Resolved>>> = Arc::default();
    let file_peers = Arc::new(file_peers);
    tokio::spawn(status_task(
        trunks.clone(),
        resolved.clone(),
        edge.clone(),
        identity,
        shutdown.clone(),
    ));
    phone_kube::on_spec_changes(trunks, RESYNC_EVERY, shutdown.triggered(), |found| {
        let (secrets, file_peers) = (secrets.clone(), file_peers.clone());
        let (edge, resolved) = (edge.clone(), resolved.clone());
        async move {
            let mut secrets = SecretReader::new(secrets);
            let mut usable = Vec::new();
            let mut now = Vec::new();
            let mut found = found;
            found.sort_by_key(|t| t.name_any());
            for trunk in found {
                let name = trunk.name_any();
                let outcome = if file_peers.contains(&name) {
                    Err(format!(
                        "sip.conf defines the peer {name} too; the file's is used"
                    ))
                } else {
                    resolve(&trunk, &mut secrets).await
                };
                let (addresses, problem) = match outcome {
                    Ok(resource) => {
                        let addresses = resource.trunk.addrs.clone();
                        usable.push(resource);
                        (addresses, None)
                    }
                    Err(problem) => {
                        tracing::warn!(trunk = %name, %problem, "trunk not used");
                        (Vec::new(), Some(problem))
                    }
                };
                now.push(Resolved {
                    name,
                    generation: trunk.metadata.generation,
                    register: trunk.spec.register,
                    addresses,
                    problem,
                });
            }
            let count = usable.len();
            // Only shard 0 registers to providers; every shard knows the trunks.
            for index in 1..edge.shards() {
                let without: Vec<ResourceTrunk> = usable
                    .iter()
                    .map(|r| ResourceTrunk {
                        trunk: r.trunk.clone(),
                        peer: r.peer.clone(),
                        registration: None,
                    })
                    .collect();
                edge.with_shard(index, |core, _| core.set_resource_trunks(without));
            }
            edge.with_shard(0, |core, _| core.set_resource_trunks(usable));
            tracing::info!(trunks = count, "trunk resources applied");
            *resolved.lock().unwrap_or_else(|e| e.into_inner()) = now;
        }
    })
    .await;
}

/// The trunk as the SIP core uses it: its host resolved, its password read.
async fn resolve(trunk: &Trunk, secrets: &mut SecretReader) -> Result<ResourceTrunk, String> {
    let name = trunk.name_any();
    let spec = &trunk.spec;
    let nets = spec
        .ip_addresses
        .iter()
        .map(|text| {
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("ipAddresses: {text:?} is neither an address nor a CIDR"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let secret = match &spec.secret_ref {
        Some(key) => Some(secrets.read(key).await?),
        None => None,
    };
    let port = spec.port.unwrap_or(5060);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((spec.host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve the host {}: {e}", spec.host))?
        .collect();
    let target = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("the host {} has no address", spec.host))?;
    let insecure = |what: &str| spec.insecure.iter().any(|i| i.eq_ignore_ascii_case(what));
    let registration = if spec.register {
        let user = spec
            .username
            .clone()
            .or_else(|| spec.from_user.clone())
            .ok_or("register needs a username")?;
        let line = Registration {
            peer: Some(name.clone()),
            transport: None,
            user,
            domain: None,
            secret: secret.clone().map(asterisk_conf::Secret::new),
            auth_user: None,
            host: spec.host.clone(),
            port: spec.port,
            extension: spec.extension.clone(),
            expiry: None,
            location: asterisk_conf::Location::new(
                std::path::PathBuf::from(format!("Trunk/{name}")),
                1,
            ),
        };
        // A registration is made again only when one of these changes.
        let made_from = format!(
            "{}:{}@{}:{port}/{} via {target}",
            line.user,
            secret.as_deref().unwrap_or(""),
            spec.host,
            spec.extension.as_deref().unwrap_or("s"),
        );
        Some(Outbound::new(
            Some(name.clone()),
            OutboundRegistration::fresh(&line, &name),
            target,
            made_from,
        ))
    } else {
        None
    };
    Ok(ResourceTrunk {
        trunk: endpoint::Trunk {
            name: name.clone(),
            addrs,
            any_port: insecure("port"),
            no_challenge: insecure("invite"),
            nets,
        },
        peer: PeerInfo {
            name,
            codecs: if spec.codecs.is_empty() {
                vec!["ulaw".into()]
            } else {
                spec.codecs.clone()
            },
            nat: false,
            context: spec.context.clone(),
            trunk: Some(target),
            host: Some(spec.host.clone()),
            username: spec.username.clone(),
            secret,
            from_user: spec.from_user.clone(),
            from_domain: None,
            caller_id: None,
            location: None,
        },
        registration,
    })
}

/// Writes the trunks' status every [`STATUS_EVERY`] while this edge registers, until
/// `shutdown`.
async fn status_task(
    trunks: Api<Trunk>,
    resolved: Arc<Mutex<Vec<Resolved>>>,
    edge: Arc<Driver>,
    identity: String,
    shutdown: Shutdown,
) {
    let mut written: HashMap<String, TrunkStatus> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.triggered() => return,
            _ = tokio::time::sleep(STATUS_EVERY) => {}
        }
        let wanted: Option<Vec<(String, TrunkStatus)>> = {
            let resolved = resolved.lock().unwrap_or_else(|e| e.into_inner());
            written.retain(|name, _| resolved.iter().any(|r| &r.name == name));
            edge.with_shard(0, |core, _| {
                core.registering().then(|| {
                    resolved
                        .iter()
                        .map(|r| (r.name.clone(), status_of(core, r, &identity)))
                        .collect()
                })
            })
        };
        let Some(wanted) = wanted else {
            // Another edge owns the trunks; what this one wrote is stale from now.
            written.clear();
            continue;
        };
        phone_kube::write_changed(&trunks, wanted, &mut written, |status| {
            serde_json::json!({
                "registration": status.registration,
                "owner": status.owner,
                "lastRegistered": status.last_registered,
                "addresses": status.addresses,
                "observedGeneration": status.observed_generation,
                "problem": status.problem,
            })
        })
        .await;
    }
}

fn status_of(core: &SipCore, trunk: &Resolved, identity: &str) -> TrunkStatus {
    let registration = trunk
        .register
        .then(|| core.trunk_registration(&trunk.name))
        .flatten();
    let (state, refused) = match (&trunk.problem, trunk.register, &registration) {
        (Some(_), _, _) => (None, None),
        (None, false, _) => (Some("NotRegistering"), None),
        (None, true, Some((Status::Registered { .. }, _))) => (Some("Registered"), None),
        (None, true, Some((Status::Failed { reason }, _))) => {
            (Some("Rejected"), Some(reason.clone()))
        }
        (None, true, _) => (Some("Registering"), None),
    };
    TrunkStatus {
        registration: state.map(str::to_owned),
        owner: Some(identity.to_owned()),
        last_registered: registration
            .and_then(|(_, at)| at)
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| rfc3339(d.as_secs())),
        addresses: trunk.addresses.iter().map(|a| a.to_string()).collect(),
        observed_generation: trunk.generation,
        problem: trunk.problem.clone().or(refused),
    }
}
