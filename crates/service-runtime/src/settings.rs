//! Settings: every flag is also an environment variable, `PHONE_` and the flag's name
//! in upper case with `_` for `-` (`--sip-bind` = `PHONE_SIP_BIND`), the same names the
//! Helm chart's values map to. A flag on the command line wins over the variable.

use std::net::SocketAddr;
use std::time::Duration;

/// Flags every service has.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Where the gRPC API (and the gRPC health service) listens.
    #[arg(long, env = "PHONE_GRPC_BIND", default_value = "0.0.0.0:50051")]
    pub grpc_bind: SocketAddr,

    /// Where the admin HTTP server listens: /metrics (Prometheus), /livez, /readyz.
    #[arg(long, env = "PHONE_ADMIN_BIND", default_value = "0.0.0.0:9090")]
    pub admin_bind: SocketAddr,

    /// After SIGTERM, how long to keep serving while reporting NOT_SERVING, so that
    /// Kubernetes takes the pod out of its Services before it stops accepting.
    #[arg(long, env = "PHONE_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// After SIGTERM, the longest wait for in-flight requests and calls to finish.
    #[arg(long, env = "PHONE_DRAIN_DEADLINE", default_value = "30s", value_parser = parse_duration)]
    pub drain_deadline: Duration,

    /// Listeners bound by a parent (`phone`, tests) and handed over instead of binding
    /// `grpc_bind`/`admin_bind`, like systemd socket activation. Not a flag.
    #[arg(skip)]
    pub handed_over: Option<crate::server::Listeners>,
}

impl CommonArgs {
    /// Loopback on ephemeral ports: for `phone` and tests.
    pub fn loopback() -> Self {
        Self {
            grpc_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain_delay: Duration::ZERO,
            drain_deadline: Duration::from_secs(30),
            handed_over: None,
        }
    }
}

/// `250ms`, `30s`, `5m`, `1h`, `5d`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 500ms, 30s or 5m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use ms, s, m, h or d)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("'{text}': {e}"))
}

/// `LOW-HIGH`: an inclusive port range such as the RTP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    /// Port pairs (RTP even, RTCP odd) in the range.
    pub fn pairs(&self) -> u32 {
        let (low, high) = (u32::from(self.low), u32::from(self.high));
        let first_even = low + (low % 2);
        if high <= first_even {
            return 0;
        }
        (high - first_even).div_ceil(2)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (low, high) = text
            .split_once('-')
            .ok_or_else(|| format!("'{text}' is not a port range such as 10000-20000"))?;
        let port = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("'{s}' is not a port number 1-65535"))
        };
        let range = Self {
            low: port(low)?,
            high: port(high)?,
        };
        if range.low > range.high {
            return Err(format!("'{text}': the low port is above the high port"));
        }
        if range.pairs() == 0 {
            return Err(format!(
                "'{text}' holds no RTP/RTCP pair (an even port and the odd one after it)"
            ));
        }
        Ok(range)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

/// Checks that every flag of `command` has the environment variable of the same name.
/// Each service's tests call it on their `Config`.
pub fn check_env_names(command: &clap::Command) -> Result<(), String> {
    let mut problems = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let expected = format!("PHONE_{}", long.to_ascii_uppercase().replace('-', "_"));
        match arg.get_env() {
            Some(env) if env == expected.as_str() => {}
            Some(env) => problems.push(format!("--{long} reads {env:?}, expected {expected}")),
            None => problems.push(format!("--{long} has no environment variable ({expected})")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(5 * 86_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 days").is_err());
    }

    #[test]
    fn port_ranges() {
        let r: PortRange = "10000-20000".parse().unwrap();
        assert_eq!(r.pairs(), 5000);
        assert_eq!("10001-10003".parse::<PortRange>().unwrap().pairs(), 1);
        assert!("10001-10002".parse::<PortRange>().is_err());
        assert_eq!("10000-10003".parse::<PortRange>().unwrap().pairs(), 2);
        assert!("65535-65535".parse::<PortRange>().is_err());
        assert_eq!("65534-65535".parse::<PortRange>().unwrap().pairs(), 1);
        assert!("20000-10000".parse::<PortRange>().is_err());
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("10000".parse::<PortRange>().is_err());
    }

    #[test]
    fn common_flags_have_matching_env_names() {
        check_env_names(&Flags::command()).unwrap();
    }

    #[test]
    fn a_flag_without_its_env_name_is_reported() {
        let command = clap::Command::new("x")
            .arg(clap::Arg::new("a").long("sip-bind").env("SIP_BIND"))
            .arg(clap::Arg::new("b").long("rtp-ports"));
        let err = check_env_names(&command).unwrap_err();
        assert_eq!(
            err,
            "--sip-bind reads \"SIP_BIND\", expected PHONE_SIP_BIND; \
             --rtp-ports has no environment variable (PHONE_RTP_PORTS)"
        );
    }

    #[test]
    fn flag_wins_over_env_and_env_is_read() {
        // Each parse gets its own variable lookup through clap; set a variable that no
        // other test in this binary reads.
        std::env::set_var("PHONE_DRAIN_DEADLINE", "7s");
        let flags = Flags::try_parse_from(["x"]).unwrap();
        assert_eq!(flags.common.drain_deadline, Duration::from_secs(7));
        let flags = Flags::try_parse_from(["x", "--drain-deadline", "9s"]).unwrap();
        assert_eq!(flags.common.drain_deadline, Duration::from_secs(9));
        std::env::remove_var("PHONE_DRAIN_DEADLINE");
    }
}
