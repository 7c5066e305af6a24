//! The carrier: Kamailio (Debian's package) configured as a Flowroute-like provider on
//! loopback. Calls to a DID are sent to the customer's PBX (the edge) from the
//! carrier's own address without authentication; INVITEs from the PBX are challenged
//! with 407 (the trunk's username and secret), logged with the number and caller ID
//! the carrier saw, and routed to the PSTN: a phone registered at the carrier as
//! `pstn`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The trunk credentials of the seed's sip.conf (`[flowroute]`).
pub const TRUNK_USER: &str = "12345678";
pub const TRUNK_SECRET: &str = "password";

/// An INVITE the carrier took from the PBX (after its digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The Request-URI's user: the number dialled.
    pub number: String,
    /// The From user.
    pub from_user: String,
    /// The P-Asserted-Identity header, if any.
    pub asserted: String,
    /// The digest username it authenticated with.
    pub auth_user: String,
}

pub struct Carrier {
    child: Option<Child>,
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

fn config(ip: std::net::IpAddr, port: u16, pbx: SocketAddr) -> String {
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
children=2
disable_tcp=yes
auto_aliases=no
listen=udp:{ip}:{port}
alias="{ip}:{port}"

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"

modparam("usrloc", "db_mode", 0)
modparam("rr", "append_fromtag", 1)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{
                t_relay();
            }}
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    if (is_method("REGISTER")) {{
        save("location");
        exit;
    }}
    if (is_method("OPTIONS")) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    if (!is_method("INVITE")) {{
        sl_send_reply("405", "Method Not Allowed");
        exit;
    }}
    t_check_trans();
    record_route();
    if ($si == "{pbx_ip}" && $sp == {pbx_port}) {{
        # From the customer's PBX: digest first, as the provider does.
        if (!pv_proxy_authenticate("carrier.test", "{secret}", "0") || $au != "{user}") {{
            xlog("L_NOTICE", "CARRIER CHALLENGE ruri=$ru\n");
            proxy_challenge("carrier.test", "0");
            exit;
        }}
        consume_credentials();
        xlog("L_NOTICE", "CARRIER OUTBOUND number=$rU from=$fU pai=$(hdr(P-Asserted-Identity)) auth=$au\n");
        $rU = "pstn";
        if (!lookup("location")) {{
            sl_send_reply("480", "PSTN unavailable");
            exit;
        }}
        t_relay();
        exit;
    }}
    # From the PSTN to a DID: to the customer's PBX, from the carrier's address.
    xlog("L_NOTICE", "CARRIER INBOUND number=$rU from=$fU\n");
    $du = "sip:{pbx_ip}:{pbx_port}";
    t_relay();
}}
"#,
        pbx_ip = pbx.ip(),
        pbx_port = pbx.port(),
        secret = TRUNK_SECRET,
        user = TRUNK_USER,
    )
}

impl Carrier {
    /// Kamailio on `port` of loopback, sending DID calls to `pbx` (the edge's SIP
    /// address) and taking calls only from there.
    pub fn start(port: u16, pbx: SocketAddr) -> Self {
        Self::spawn(None, [127, 0, 0, 1].into(), port, pbx)
    }

    /// Kamailio in the network namespace `netns` on its address `ip` (the test
    /// cluster's outside world), sending DID calls to `pbx` and taking calls only from
    /// there.
    pub fn start_in(netns: &str, ip: std::net::IpAddr, port: u16, pbx: SocketAddr) -> Self {
        Self::spawn(Some(netns), ip, port, pbx)
    }

    fn spawn(netns: Option<&str>, ip: std::net::IpAddr, port: u16, pbx: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("kamailio.cfg");
        std::fs::write(&cfg, config(ip, port, pbx)).unwrap();
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, "kamailio"]);
                command
            }
            None => Command::new("kamailio"),
        };
        let mut child = command
            .arg("-f")
            .arg(&cfg)
            .args(["-D", "-E", "-m", "64", "-M", "8", "-Y"])
            .arg(dir.path())
            .arg("-P")
            .arg(dir.path().join("kamailio.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kamailio is installed (scripts/install-deps)");
        let lines = crate::collect_lines(child.stderr.take().unwrap());
        Carrier {
            child: Some(child),
            addr: SocketAddr::new(ip, port),
            lines,
            _dir: dir,
        }
    }

    /// Everything Kamailio logged so far.
    pub fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The authenticated INVITEs from the PBX so far.
    pub fn outbound(&self) -> Vec<Outbound> {
        self.log()
            .iter()
            .filter_map(|line| {
                let rest = &line[line.find("CARRIER OUTBOUND ")? + 17..];
                let field = |name: &str| {
                    let start = rest.find(&format!("{name}="))? + name.len() + 1;
                    let tail = &rest[start..];
                    // Values end at the next " word=" (the PAI may hold spaces).
                    let end = ["number=", "from=", "pai=", "auth="]
                        .iter()
                        .filter_map(|k| tail.find(&format!(" {k}")))
                        .min()
                        .unwrap_or(tail.len());
                    Some(tail[..end].trim().to_owned())
                };
                Some(Outbound {
                    number: field("number")?,
                    from_user: field("from")?,
                    asserted: field("pai").unwrap_or_default(),
                    auth_user: field("auth").unwrap_or_default(),
                })
            })
            .collect()
    }

    /// How many times it challenged the PBX.
    pub fn challenges(&self) -> usize {
        self.log()
            .iter()
            .filter(|l| l.contains("CARRIER CHALLENGE"))
            .count()
    }

    /// Waits until Kamailio has logged that it listens.
    pub async fn ready(&self) {
        for _ in 0..200 {
            if self
                .log()
                .iter()
                .any(|l| l.contains("INFO") || l.contains("NOTICE") || l.contains("listening"))
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("kamailio did not start: {:#?}", self.log());
    }
}

impl Drop for Carrier {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            for _ in 0..50 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
