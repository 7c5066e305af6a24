//! The phone system's Kubernetes resources, so that `kubectl` can run it: a `Line` is a
//! phone's account (a `sip.conf` peer of `type=friend`), a `Trunk` the carrier (a peer
//! with `host=`), and a `Mailbox` a `voicemail.conf` box. Each is a namespaced custom
//! resource of the `phone.dev` group; secrets (SIP passwords, PINs) stay in Kubernetes
//! Secrets and are named by reference. The dialplan has no kind of its own: the chart
//! gives `extensions.conf` in a ConfigMap, which the router follows through the API.
//!
//! The CRDs are derived from these types (`kube`'s `CustomResource`). [`crds`] gives
//! them to the chart's `crds/` folder, and a test keeps that folder in step with them.
//! Status is written by the services: registration for lines and trunks, message counts
//! for mailboxes.

#![forbid(unsafe_code)]
// Several `printcolumn(type_ = "string", ...)` in one `#[kube]` are columns, not repeats.
#![allow(clippy::duplicated_attributes)]

pub mod endpoints;
pub mod lease;

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every phone resource.
pub const GROUP: &str = "phone.dev";

/// A key of a Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key in it.
    pub key: String,
}

/// A phone's line: what a `sip.conf` peer with `type=friend` and `host=dynamic` says.
/// The phone registers with the number as its user name unless `peerName` says
/// otherwise.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "phone.dev",
    version = "v1alpha1",
    kind = "Line",
    namespaced,
    status = "LineStatus",
    shortname = "ln",
    category = "phone",
    printcolumn(name = "NUMBER", type_ = "string", json_path = ".spec.number"),
    printcolumn(
        name = "REGISTERED",
        type_ = "boolean",
        json_path = ".status.registered"
    ),
    printcolumn(
        name = "CONTACT",
        type_ = "string",
        json_path = ".status.contacts[0].uri"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct LineSpec {
    /// The number (and SIP user name) of the line, as the phone registers it.
    pub number: String,
    /// The SIP peer's name (the user name the phone registers with), when it is not
    /// the number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_name: Option<String>,
    /// The digest password (`secret=`).
    pub secret_ref: SecretKeyRef,
    /// The dialplan context of the line's calls (`context=`).
    pub context: String,
    /// Codecs in order of preference (`allow=`), `ulaw` when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codecs: Vec<String>,
    /// The phone is behind NAT (`nat=yes`): answer to the source address and latch its
    /// media.
    #[serde(default)]
    pub nat: bool,
    /// The caller ID of the line's calls (`callerid=`), `"Name" <number>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_id: Option<String>,
    /// The mailbox whose lamp the phone shows (`mailbox=`), `box@context`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    /// Where the phone is: sent with its emergency calls to the carrier as a PIDF-LO
    /// civic address (RFC 6442 location conveyance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency_location: Option<CivicAddress>,
}

/// A civic address (RFC 5139's elements), as a PSAP reads it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CivicAddress {
    /// The ISO 3166 country code (`US`).
    pub country: String,
    /// State or province (`A1`), `CA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// County (`A2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub county: Option<String>,
    /// City (`A3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// The street (`RD`), `Main St`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub street: Option<String>,
    /// The house number (`HNO`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub house_number: Option<String>,
    /// Where in the building (`LOC`): suite, floor, room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The postal code (`PC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// Who or what is there (`NAM`): a business or resident name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl CivicAddress {
    /// The address as a PIDF-LO document (RFC 4119 with RFC 5139's civic address) for
    /// `entity` (`pres:<user>@<host>`), its location entered by hand.
    pub fn pidf_lo(&self, entity: &str) -> String {
        let mut fields = format!("<ca:country>{}</ca:country>", xml_text(&self.country));
        for (element, value) in [
            ("A1", &self.state),
            ("A2", &self.county),
            ("A3", &self.city),
            ("RD", &self.street),
            ("HNO", &self.house_number),
            ("LOC", &self.location),
            ("NAM", &self.name),
            ("PC", &self.postal_code),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !v.trim().is_empty()) {
                fields.push_str(&format!("<ca:{element}>{}</ca:{element}>", xml_text(value)));
            }
        }
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
             <presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
             xmlns:gp=\"urn:ietf:params:xml:ns:pidf:geopriv10\" \
             xmlns:ca=\"urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr\" \
             entity=\"{}\">\r\n\
             <tuple id=\"location\"><status><gp:geopriv><gp:location-info>\
             <ca:civicAddress xml:lang=\"en\">{fields}</ca:civicAddress>\
             </gp:location-info><gp:usage-rules/><gp:method>Manual</gp:method>\
             </gp:geopriv></status></tuple>\r\n</presence>\r\n",
            xml_text(entity)
        )
    }
}

/// `text` with XML's special characters escaped (for text and attribute values).
fn xml_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters have no place in an address.
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// What the edge knows of a line's registration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LineStatus {
    /// At least one contact is bound.
    #[serde(default)]
    pub registered: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<Contact>,
    /// The phone's last REGISTER (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// The phone answered the edge's last qualify (`qualify=yes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    /// The generation of the spec the edge applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Why the line is not in use (a missing Secret, a clash with sip.conf), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// A registered contact.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    pub uri: String,
    /// When the binding expires (RFC 3339).
    pub expires: String,
    /// The address the REGISTER came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// The carrier: a `sip.conf` peer with a host, and the `register =>` line if the
/// carrier wants registration. Its name is the peer's name, which the dialplan dials
/// (`Dial(SIP/${EXTEN}@<name>)`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "phone.dev",
    version = "v1alpha1",
    kind = "Trunk",
    namespaced,
    status = "TrunkStatus",
    category = "phone",
    printcolumn(name = "HOST", type_ = "string", json_path = ".spec.host"),
    printcolumn(name = "STATE", type_ = "string", json_path = ".status.registration"),
    printcolumn(name = "OWNER", type_ = "string", json_path = ".status.owner"),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TrunkSpec {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The digest user name (`username=`, `defaultuser=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The user part of From on outbound calls (`fromuser=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_user: Option<String>,
    /// The digest password (`secret=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Addresses or CIDRs (`203.0.113.0/24`) whose calls are the carrier's without
    /// authentication, from any port: the carrier's IP authentication.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// Register with the carrier (`register =>`); one edge replica does, by Lease.
    #[serde(default)]
    pub register: bool,
    /// The extension the carrier's calls arrive for while registered (the Contact user
    /// of the registration, `register => .../extension`); `s` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    /// The dialplan context of the carrier's calls.
    pub context: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codecs: Vec<String>,
    /// `insecure=` (`port`, `invite`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure: Vec<String>,
}

/// The trunk's registration, as the edge replica that owns it reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrunkStatus {
    /// `Registered`, `Registering`, `Rejected`, `NotRegistering`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<String>,
    /// The edge replica (pod) that registers the trunks: the holder of their Lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The carrier's last 2xx to a REGISTER (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_registered: Option<String>,
    /// The addresses the host resolved to (calls from them are the carrier's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The generation of the spec the edge applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Why the trunk is not in use or not registered (a missing Secret, a clash with
    /// sip.conf, the carrier's refusal), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// A voicemail box: a `voicemail.conf` line
/// (`box => pin,full name,email,pager,options`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "phone.dev",
    version = "v1alpha1",
    kind = "Mailbox",
    namespaced,
    status = "MailboxStatus",
    shortname = "mbx",
    category = "phone",
    printcolumn(name = "BOX", type_ = "string", json_path = ".spec.box"),
    printcolumn(name = "NEW", type_ = "integer", json_path = ".status.new"),
    printcolumn(name = "OLD", type_ = "integer", json_path = ".status.old"),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MailboxSpec {
    /// The box number.
    #[serde(rename = "box")]
    pub mailbox: String,
    /// The voicemail context, `default` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The PIN.
    pub pin_ref: SecretKeyRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pager: Option<String>,
    /// The box's options (`attach`, `tz`, `saycid`, `delete`...), as in voicemail.conf.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// The box's message counts, as the voicemail service reports them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailboxStatus {
    #[serde(default)]
    pub new: u32,
    #[serde(default)]
    pub old: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Reads the Secrets that resources name, each Secret at most once: one reader serves
/// one pass over the resources (a resync), so lines or boxes sharing a Secret cost one
/// request, and the next pass reads it afresh.
pub struct SecretReader {
    api: kube::Api<k8s_openapi::api::core::v1::Secret>,
    fetched: std::collections::HashMap<
        String,
        Result<Option<k8s_openapi::api::core::v1::Secret>, String>,
    >,
}

impl SecretReader {
    pub fn new(api: kube::Api<k8s_openapi::api::core::v1::Secret>) -> Self {
        Self {
            api,
            fetched: std::collections::HashMap::new(),
        }
    }

    /// The text `key` names, or why there is none (for a resource's `status.problem`).
    pub async fn read(&mut self, key: &SecretKeyRef) -> Result<String, String> {
        if !self.fetched.contains_key(&key.name) {
            let fetched = self
                .api
                .get_opt(&key.name)
                .await
                .map_err(|e| format!("cannot read Secret {}: {e}", key.name));
            self.fetched.insert(key.name.clone(), fetched);
        }
        let secret = match &self.fetched[&key.name] {
            Ok(Some(secret)) => secret,
            Ok(None) => return Err(format!("Secret {} does not exist", key.name)),
            Err(e) => return Err(e.clone()),
        };
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&key.key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&key.key))
                    .map(|s| s.clone().into_bytes())
            })
            .ok_or_else(|| format!("Secret {} has no key {}", key.name, key.key))?;
        String::from_utf8(bytes)
            .map_err(|_| format!("Secret {} key {} is not text", key.name, key.key))
    }
}

/// Patches the status of each of `wanted` that differs from what was last written
/// (`written`, kept by the caller between rounds), so that an unchanged status costs
/// no request. `fields` gives every field of the status, nulls included: a merge patch
/// leaves out what it omits, and a cleared field (gone contacts, a solved problem) must
/// be written as null.
pub async fn write_changed<K, S>(
    api: &kube::Api<K>,
    wanted: Vec<(String, S)>,
    written: &mut std::collections::HashMap<String, S>,
    fields: impl Fn(&S) -> serde_json::Value,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: PartialEq,
{
    use kube::api::{Patch, PatchParams};
    for (name, status) in wanted {
        if written.get(&name) == Some(&status) {
            continue;
        }
        let patch = serde_json::json!({ "status": fields(&status) });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                written.insert(name, status);
            }
            // Deleted meanwhile, or the API server is away: the next round tries again.
            Err(e) => tracing::debug!(resource = %name, error = %e, "status not written"),
        }
    }
}

impl Mailbox {
    /// The box's context (`default` when unset).
    pub fn context(&self) -> String {
        self.spec
            .context
            .clone()
            .unwrap_or_else(|| "default".to_owned())
    }

    /// The box as a voicemail.conf line gives it, with its PIN (a leading `-` locks
    /// it, as in voicemail.conf).
    pub fn to_conf(&self, pin: String) -> asterisk_conf::voicemail::Mailbox {
        use kube::ResourceExt;
        let spec = &self.spec;
        let (pin, pin_locked) = match pin.strip_prefix('-') {
            Some(rest) => (rest.to_owned(), true),
            None => (pin, false),
        };
        asterisk_conf::voicemail::Mailbox {
            context: self.context(),
            number: spec.mailbox.clone(),
            pin: asterisk_conf::Secret::new(pin),
            pin_locked,
            full_name: spec.full_name.clone().unwrap_or_default(),
            email: spec.email.clone(),
            pager: spec.pager.clone(),
            options: spec
                .options
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            location: asterisk_conf::Location::new(
                std::path::PathBuf::from(format!("Mailbox/{}", self.name_any())),
                1,
            ),
        }
    }
}

/// Watches `api` until `stop`, and calls `changed` with every object after the first
/// full list, after each spec change (a new generation: status writes do not count),
/// each deletion, and every `resync` (Secrets they name may have changed).
pub async fn on_spec_changes<K, F, Fut>(
    api: kube::Api<K>,
    resync: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
    mut changed: F,
) where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    F: FnMut(Vec<std::sync::Arc<K>>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    use kube::ResourceExt;
    let (store, writer) = reflector::store::<K>();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .boxed();
    let mut tick = tokio::time::interval(resync);
    let mut generations = std::collections::HashMap::new();
    let (mut ready, mut dirty) = (false, false);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            event = events.next() => match event {
                Some(Ok(watcher::Event::InitDone)) => (ready, dirty) = (true, true),
                Some(Ok(watcher::Event::InitApply(o))) => {
                    generations.insert(o.name_any(), o.meta().generation);
                }
                Some(Ok(watcher::Event::Apply(o))) => {
                    dirty |= generations.insert(o.name_any(), o.meta().generation)
                        != Some(o.meta().generation);
                }
                Some(Ok(watcher::Event::Delete(o))) => {
                    generations.remove(&o.name_any());
                    dirty = true;
                }
                Some(Ok(watcher::Event::Init)) => {}
                Some(Err(e)) => {
                    tracing::warn!(kind = %K::kind(&K::DynamicType::default()), error = %e, "watching resources failed; retrying")
                }
                None => return,
            },
            _ = tick.tick() => dirty = ready,
        }
        if dirty && ready {
            dirty = false;
            changed(store.state()).await;
        }
    }
}

/// Every CRD, in the order the chart installs them, with the file name each has in the
/// chart's `crds/` folder.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    use kube::CustomResourceExt;
    vec![
        ("lines.yaml", Line::crd()),
        ("trunks.yaml", Trunk::crd()),
        ("mailboxes.yaml", Mailbox::crd()),
    ]
}

/// A CRD as the chart ships it: JSON (which is YAML), pretty and with a final newline.
pub fn manifest(crd: &CustomResourceDefinition) -> String {
    let mut text = serde_json::to_string_pretty(crd).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crds_name_the_group_kinds_and_printer_columns() {
        let crds = crds();
        let names: Vec<String> = crds
            .iter()
            .map(|(_, c)| c.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            ["lines.phone.dev", "trunks.phone.dev", "mailboxes.phone.dev",]
        );
        let line = &crds[0].1;
        let columns: Vec<&str> = line.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["NUMBER", "REGISTERED", "CONTACT", "AGE"]);
        assert!(line.spec.versions[0]
            .subresources
            .as_ref()
            .unwrap()
            .status
            .is_some());
        assert_eq!(line.spec.group, GROUP);
    }

    #[test]
    fn a_line_reads_as_an_operator_writes_it() {
        let line: LineSpec = serde_json::from_value(serde_json::json!({
            "number": "13235550100",
            "secretRef": {"name": "desk-phone", "key": "password"},
            "context": "outbound",
            "nat": true,
            "callerId": "\"Desk\" <13235550100>",
            "mailbox": "13235550100@default"
        }))
        .unwrap();
        assert_eq!(line.secret_ref.key, "password");
        assert!(line.nat && line.codecs.is_empty());
        let mailbox: MailboxSpec = serde_json::from_value(serde_json::json!({
            "box": "13235550100",
            "pinRef": {"name": "desk-phone", "key": "pin"},
            "email": "email@domain.com",
            "options": {"attach": "yes", "tz": "central"}
        }))
        .unwrap();
        assert_eq!(mailbox.mailbox, "13235550100");
        assert_eq!(mailbox.options["tz"], "central");
    }

    #[test]
    fn an_emergency_location_is_a_pidf_lo_civic_address_with_its_text_escaped() {
        let line: LineSpec = serde_json::from_value(serde_json::json!({
            "number": "13235550100",
            "secretRef": {"name": "desk-phone", "key": "password"},
            "context": "localexts",
            "emergencyLocation": {
                "country": "US", "state": "CA", "city": "Los Angeles",
                "street": "Sunset Blvd", "houseNumber": "6000",
                "location": "Suite 2 <rear> & \"B\"", "postalCode": "90028"
            }
        }))
        .unwrap();
        let pidf = line
            .emergency_location
            .unwrap()
            .pidf_lo("pres:13235550100@phone");
        assert!(pidf.starts_with("<?xml"), "{pidf}");
        assert!(pidf.contains("entity=\"pres:13235550100@phone\""), "{pidf}");
        for element in [
            "<ca:country>US</ca:country>",
            "<ca:A1>CA</ca:A1>",
            "<ca:A3>Los Angeles</ca:A3>",
            "<ca:RD>Sunset Blvd</ca:RD>",
            "<ca:HNO>6000</ca:HNO>",
            "<ca:LOC>Suite 2 &lt;rear&gt; &amp; &quot;B&quot;</ca:LOC>",
            "<ca:PC>90028</ca:PC>",
            "<gp:method>Manual</gp:method>",
        ] {
            assert!(pidf.contains(element), "{element} in {pidf}");
        }
        assert!(!pidf.contains("<ca:A2>"), "no empty elements: {pidf}");
    }
}
