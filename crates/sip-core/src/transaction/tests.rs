use super::*;

const T1: Duration = Duration::from_millis(500);

fn transmits<M: Clone>(t: &mut ClientTransaction<M>) -> Vec<Transmit<M>> {
    std::iter::from_fn(|| t.poll_transmit()).collect()
}

fn server_transmits<M: Clone>(t: &mut ServerTransaction<M>) -> Vec<Transmit<M>> {
    std::iter::from_fn(|| t.poll_transmit()).collect()
}

/// Runs the transaction on simulated time until `until`, returning when each
/// transmission happened, relative to `start`.
fn client(
    invite: bool,
    request: &'static str,
    transport: Transport,
    start: Instant,
) -> ClientTransaction<&'static str> {
    ClientTransaction::new(invite, request, transport, TimerValues::default(), start)
}

fn server(
    invite: bool,
    trying: Option<&'static str>,
    transport: Transport,
) -> ServerTransaction<&'static str> {
    ServerTransaction::new(invite, trying, transport, TimerValues::default())
}

fn run_client(
    t: &mut ClientTransaction<&'static str>,
    start: Instant,
    until: Duration,
) -> Vec<Duration> {
    let mut sent = Vec::new();
    for _ in transmits(t) {
        sent.push(Duration::ZERO);
    }
    while let Some(at) = t.poll_timeout() {
        if at > start + until {
            break;
        }
        t.handle_timeout(at);
        for _ in transmits(t) {
            sent.push(at - start);
        }
    }
    sent
}

#[test]
fn invite_client_timer_a_doubles_and_timer_b_times_out_at_64_t1() {
    let start = Instant::now();
    let mut t = client(true, "INVITE", Transport::Unreliable, start);
    let sent = run_client(&mut t, start, Duration::from_secs(60));
    let ms: Vec<u128> = sent.iter().map(Duration::as_millis).collect();
    // A: 0.5, 1, 2, 4, 8, 16 s after the previous one; B at 32 s ends it.
    assert_eq!(ms, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(t.state(), ClientState::Terminated);
    assert_eq!(t.poll_event(), Some(ClientEvent::Failed(Failure::Timeout)));
}

#[test]
fn invite_client_over_tcp_sends_once() {
    let start = Instant::now();
    let mut t = client(true, "INVITE", Transport::Reliable, start);
    let sent = run_client(&mut t, start, Duration::from_secs(60));
    assert_eq!(sent, [Duration::ZERO]);
    assert_eq!(t.poll_event(), Some(ClientEvent::Failed(Failure::Timeout)));
}

#[test]
fn invite_client_provisional_stops_a_but_not_b() {
    let start = Instant::now();
    let mut t = client(true, "INVITE", Transport::Unreliable, start);
    transmits(&mut t);
    t.handle_response(start + T1 / 2, 180, "180");
    assert_eq!(t.state(), ClientState::Proceeding);
    assert_eq!(t.poll_event(), Some(ClientEvent::Response("180")));
    let next = t.poll_timeout().unwrap();
    assert_eq!(next - start, 64 * T1, "only B is left");
}

#[test]
fn invite_client_non_2xx_final_is_acked_and_reacked_then_timer_d() {
    let start = Instant::now();
    let mut t = client(true, "INVITE", Transport::Unreliable, start);
    transmits(&mut t);
    let now = start + Duration::from_secs(3);
    t.handle_response(now, 486, "486");
    assert_eq!(transmits(&mut t), [Transmit::Ack("486")]);
    assert_eq!(t.poll_event(), Some(ClientEvent::Response("486")));
    assert_eq!(t.state(), ClientState::Completed);
    t.handle_response(now + T1, 486, "486");
    assert_eq!(
        transmits(&mut t),
        [Transmit::Ack("486")],
        "the 486 again: ACK again"
    );
    assert_eq!(t.poll_event(), None, "not passed up twice");
    assert_eq!(
        t.poll_timeout().unwrap() - now,
        Duration::from_secs(32),
        "Timer D"
    );
    t.handle_timeout(now + Duration::from_secs(32));
    assert!(t.is_terminated());
    assert_eq!(t.poll_event(), None, "D ends quietly");
}

#[test]
fn invite_client_2xx_goes_to_accepted_with_timer_m_and_passes_retransmissions() {
    let start = Instant::now();
    let mut t = client(true, "INVITE", Transport::Unreliable, start);
    transmits(&mut t);
    t.handle_response(start, 200, "200");
    assert_eq!(t.state(), ClientState::Accepted);
    assert_eq!(
        transmits(&mut t),
        [],
        "the TU ACKs a 2xx, not the transaction"
    );
    t.handle_response(start + T1, 200, "200 again");
    assert_eq!(t.poll_event(), Some(ClientEvent::Response("200")));
    assert_eq!(t.poll_event(), Some(ClientEvent::Response("200 again")));
    assert_eq!(t.poll_timeout().unwrap() - start, 64 * T1, "Timer M");
    t.handle_timeout(start + 64 * T1);
    assert!(t.is_terminated());
}

#[test]
fn non_invite_client_timer_e_caps_at_t2_and_timer_f() {
    let start = Instant::now();
    let mut t = client(false, "REGISTER", Transport::Unreliable, start);
    let sent = run_client(&mut t, start, Duration::from_secs(60));
    let ms: Vec<u128> = sent.iter().map(Duration::as_millis).collect();
    // E: 0.5, 1, 2, 4, 4, 4, ... s apart; F at 32 s.
    assert_eq!(
        ms,
        [0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    );
    assert_eq!(t.poll_event(), Some(ClientEvent::Failed(Failure::Timeout)));
}

#[test]
fn non_invite_client_in_proceeding_retransmits_every_t2_then_completes_with_k() {
    let start = Instant::now();
    let mut t = client(false, "OPTIONS", Transport::Unreliable, start);
    transmits(&mut t);
    t.handle_response(start + Duration::from_millis(100), 100, "100");
    assert_eq!(t.state(), ClientState::Proceeding);
    t.handle_timeout(start + T1);
    assert_eq!(transmits(&mut t), [Transmit::Message("OPTIONS")]);
    assert_eq!(
        t.poll_timeout().unwrap() - start,
        T1 + Duration::from_secs(4),
        "T2 apart"
    );
    let now = start + Duration::from_secs(2);
    t.handle_response(now, 200, "200");
    assert_eq!(t.state(), ClientState::Completed);
    assert_eq!(
        t.poll_timeout().unwrap() - now,
        Duration::from_secs(5),
        "Timer K = T4"
    );
    t.handle_timeout(now + Duration::from_secs(5));
    assert!(t.is_terminated());

    // Over TCP, K is zero: terminated with the response.
    let mut t = client(false, "OPTIONS", Transport::Reliable, start);
    t.handle_response(start, 200, "200");
    assert!(t.is_terminated());
    assert_eq!(t.poll_event(), Some(ClientEvent::Response("200")));
}

#[test]
fn transport_errors_fail_the_transaction() {
    let start = Instant::now();
    let mut t = client(true, "INVITE", Transport::Reliable, start);
    t.handle_transport_error();
    assert_eq!(
        t.poll_event(),
        Some(ClientEvent::Failed(Failure::TransportError))
    );
    let mut s: ServerTransaction<&str> = server(false, None, Transport::Reliable);
    s.handle_transport_error();
    assert_eq!(
        s.poll_event(),
        Some(ServerEvent::Failed(Failure::TransportError))
    );
}

#[test]
fn invite_server_sends_100_and_repeats_the_last_response_on_retransmission() {
    let start = Instant::now();
    let mut s = server(true, Some("100"), Transport::Unreliable);
    assert_eq!(server_transmits(&mut s), [Transmit::Message("100")]);
    s.handle_retransmission();
    assert_eq!(server_transmits(&mut s), [Transmit::Message("100")]);
    s.respond(start, 180, "180");
    s.handle_retransmission();
    assert_eq!(
        server_transmits(&mut s),
        [Transmit::Message("180"), Transmit::Message("180")]
    );
    assert_eq!(s.state(), ServerState::Proceeding);
}

#[test]
fn invite_server_timer_g_retransmits_until_ack_then_timer_i() {
    let start = Instant::now();
    let mut s = server(true, Some("100"), Transport::Unreliable);
    server_transmits(&mut s);
    s.respond(start, 486, "486");
    assert_eq!(s.state(), ServerState::Completed);
    let mut sent = vec![Duration::ZERO];
    server_transmits(&mut s);
    while let Some(at) = s.poll_timeout() {
        if at - start > Duration::from_secs(10) {
            break;
        }
        s.handle_timeout(at);
        for _ in server_transmits(&mut s) {
            sent.push(at - start);
        }
    }
    let ms: Vec<u128> = sent.iter().map(Duration::as_millis).collect();
    assert_eq!(
        ms,
        [0, 500, 1500, 3500, 7500],
        "G: T1 doubling, capped at T2"
    );
    let now = start + Duration::from_secs(10);
    s.handle_ack(now, "ACK");
    assert_eq!(s.state(), ServerState::Confirmed);
    assert_eq!(
        s.poll_timeout().unwrap() - now,
        Duration::from_secs(5),
        "Timer I = T4"
    );
    s.handle_retransmission();
    assert_eq!(server_transmits(&mut s), [], "absorbed in Confirmed");
    s.handle_timeout(now + Duration::from_secs(5));
    assert!(s.is_terminated());
    assert_eq!(s.poll_event(), None);
}

#[test]
fn invite_server_timer_h_without_ack() {
    let start = Instant::now();
    let mut s = server(true, None, Transport::Reliable);
    s.respond(start, 603, "603");
    assert_eq!(
        s.poll_timeout().unwrap() - start,
        64 * T1,
        "no G over TCP; H"
    );
    s.handle_timeout(start + 64 * T1);
    assert!(s.is_terminated());
    assert_eq!(s.poll_event(), Some(ServerEvent::Failed(Failure::NoAck)));
}

#[test]
fn invite_server_2xx_accepted_with_timer_l_passes_ack_absorbs_invite() {
    let start = Instant::now();
    let mut s = server(true, Some("100"), Transport::Unreliable);
    server_transmits(&mut s);
    s.respond(start, 200, "200");
    assert_eq!(s.state(), ServerState::Accepted);
    assert_eq!(server_transmits(&mut s), [Transmit::Message("200")]);
    s.handle_retransmission();
    assert_eq!(
        server_transmits(&mut s),
        [],
        "INVITE retransmissions absorbed (RFC 6026)"
    );
    s.respond(start + T1, 200, "200 again");
    assert_eq!(
        server_transmits(&mut s),
        [Transmit::Message("200 again")],
        "the TU's 2xx retransmission"
    );
    s.handle_ack(start + T1, "ACK");
    assert_eq!(s.poll_event(), Some(ServerEvent::Ack("ACK")));
    assert_eq!(s.poll_timeout().unwrap() - start, 64 * T1, "Timer L");
    s.handle_timeout(start + 64 * T1);
    assert!(s.is_terminated());
}

#[test]
fn non_invite_server_timer_j() {
    let start = Instant::now();
    let mut s = server(false, None, Transport::Unreliable);
    assert_eq!(s.state(), ServerState::Trying);
    s.handle_retransmission();
    assert_eq!(server_transmits(&mut s), [], "nothing to repeat in Trying");
    s.respond(start, 200, "200");
    s.handle_retransmission();
    assert_eq!(
        server_transmits(&mut s),
        [Transmit::Message("200"), Transmit::Message("200")]
    );
    assert_eq!(s.poll_timeout().unwrap() - start, 64 * T1, "Timer J");
    s.respond(start, 500, "500");
    assert_eq!(server_transmits(&mut s), [], "one final response only");
    s.handle_timeout(start + 64 * T1);
    assert!(s.is_terminated());

    let mut s = server(false, None, Transport::Reliable);
    s.respond(start, 200, "200");
    assert!(s.is_terminated(), "J is zero over TCP");
}
