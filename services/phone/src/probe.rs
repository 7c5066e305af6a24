//! `phone --probe-grpc URL,... --probe-sip HOST:PORT`: checks a running deployment and
//! exits, 0 when every check passes. The chart's `helm test` hook runs it in a pod:
//! each service's gRPC health service must answer SERVING, and the SIP edge must answer
//! an OPTIONS request with `200` over UDP (RFC 3261 §11), as a phone or a carrier's
//! keep-alive would ask. One line per check is printed, so `helm test --logs` says which
//! failed and why.

use std::net::SocketAddr;
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How long each check may take by default, retries included (a pod that just became
/// Ready may still be settling its connections).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// One failed check.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} checks failed")]
pub struct Failed {
    pub failed: usize,
    pub total: usize,
}

/// Runs every check, each for at most `within`; prints `ok` or `FAILED` with the reason
/// for each.
pub async fn run(grpc: &[String], sip: Option<&str>, within: Duration) -> Result<(), Failed> {
    let mut failed = 0;
    let mut total = 0;
    for url in grpc {
        total += 1;
        match retrying(within, || grpc_serving(url)).await {
            Ok(()) => println!("ok      gRPC health {url}: SERVING"),
            Err(why) => {
                failed += 1;
                println!("FAILED  gRPC health {url}: {why}");
            }
        }
    }
    if let Some(target) = sip {
        total += 1;
        match retrying(within, || sip_options(target)).await {
            Ok(status) => println!("ok      SIP OPTIONS {target}: {status}"),
            Err(why) => {
                failed += 1;
                println!("FAILED  SIP OPTIONS {target}: {why}");
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(Failed { failed, total })
    }
}

/// `check` until it succeeds or `within` passes; the last error otherwise.
async fn retrying<T, F, Fut>(within: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let attempt = tokio::time::timeout_at(deadline, check()).await;
        match attempt {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(why)) if tokio::time::Instant::now() >= deadline => return Err(why),
            Err(_) => return Err(format!("no answer within {within:?}")),
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn grpc_serving(url: &str) -> Result<(), String> {
    let channel = service_runtime::grpc::client_channel(url).map_err(|e| e.to_string())?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|e| format!("{}: {}", e.code(), e.message()))?
        .into_inner()
        .status;
    if status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(format!(
            "{:?}",
            ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown)
        ))
    }
}

/// Sends one OPTIONS to `target` (`host:port`, resolved by DNS) and returns the final
/// status line; an answer other than 200 is an error.
async fn sip_options(target: &str) -> Result<String, String> {
    let to: SocketAddr = tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or("cannot resolve: no address")?;
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    socket.connect(to).await.map_err(|e| e.to_string())?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let tag = std::process::id();
    let request = options_request(target, local, tag);
    socket
        .send(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buffer))
            .await
            .map_err(|_| "no answer in 2 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&buffer[..n]);
        let status_line = answer.lines().next().unwrap_or("").trim().to_owned();
        let code: u16 = status_line
            .strip_prefix("SIP/2.0 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not a SIP response: {status_line:?}"))?;
        match code {
            100..=199 => continue,
            200 => return Ok(status_line),
            _ => return Err(status_line),
        }
    }
}

/// The OPTIONS request of [`sip_options`].
fn options_request(target: &str, local: SocketAddr, tag: u32) -> String {
    format!(
        "OPTIONS sip:{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};rport;branch=z9hG4bK-probe-{tag}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag=probe{tag}\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: probe-{tag}@{local}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Accept: application/sdp\r\n\
         User-Agent: phone-probe\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_edge_that_answers_200_passes_and_one_that_refuses_fails() {
        for (answer, passes) in [
            ("SIP/2.0 200 OK", true),
            ("SIP/2.0 503 Service Unavailable", false),
        ] {
            let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let target = server.local_addr().unwrap().to_string();
            let serve = tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let (n, from) = server.recv_from(&mut buffer).await.unwrap();
                let request = String::from_utf8_lossy(&buffer[..n]).into_owned();
                // A provisional answer first: the probe waits for the final one.
                let _ = server.send_to(b"SIP/2.0 100 Trying\r\n\r\n", from).await;
                let _ = server
                    .send_to(
                        format!("{answer}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        from,
                    )
                    .await;
                request
            });
            let result = sip_options(&target).await;
            let request = serve.await.unwrap();
            assert!(request.starts_with(&format!("OPTIONS sip:{target} SIP/2.0\r\n")));
            assert!(request.contains("CSeq: 1 OPTIONS\r\n"));
            assert_eq!(result.is_ok(), passes, "{answer}: {result:?}");
        }
    }

    #[tokio::test]
    async fn nothing_listening_is_a_failed_check_with_its_reason() {
        let result = run(&[], Some("127.0.0.1:9"), Duration::from_secs(1)).await;
        assert_eq!(result.unwrap_err().failed, 1);
    }
}
