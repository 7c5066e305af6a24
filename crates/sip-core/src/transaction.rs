//! SIP transactions (RFC 3261 §17, with RFC 6026's Accepted state), sans-IO.
//!
//! Four state machines, each driven by `(now, input)` and polled for what to send,
//! what to tell the transaction user (TU), and when to wake up next. The message type
//! `M` is opaque here: the transaction stores the request or response it may have to
//! send again and hands it back; building an ACK for a non-2xx final response is the
//! driver's job ([`Transmit::Ack`]), since it needs the request and the response.
//!
//! Timers are named after the RFC and kept in one table; the next wake-up is the
//! earliest armed timer, so a test jumps straight to it (Timer B fires in microseconds).
//!
//! ```text
//! INVITE client (17.1.1, RFC 6026 7.2)         non-INVITE client (17.1.2)
//!   Calling --1xx--> Proceeding                  Trying --1xx--> Proceeding
//!   Calling/Proceeding --2xx--> Accepted (M)     Trying/Proceeding --final--> Completed (K)
//!   Calling/Proceeding --300-699--> Completed(D) Trying/Proceeding --F--> Terminated
//!   Calling --B--> Terminated                    E retransmits (T1 doubling to T2;
//!   A retransmits (unreliable; T1 doubling)        T2 in Proceeding); unreliable only
//!
//! INVITE server (17.2.1, RFC 6026 7.1)         non-INVITE server (17.2.2)
//!   Proceeding --300-699--> Completed (G, H)     Trying --1xx--> Proceeding
//!   Proceeding --2xx--> Accepted (L)             Trying/Proceeding --final--> Completed (J)
//!   Completed --ACK--> Confirmed (I)
//!   Completed --H--> Terminated (no ACK)
//! ```
//!
//! | timer | value | meaning |
//! |---|---|---|
//! | A | T1, doubling | INVITE request retransmit (unreliable) |
//! | B | 64*T1 | INVITE transaction timeout |
//! | D | 32 s (unreliable), 0 | wait for response retransmits |
//! | E | T1, doubling to T2 | non-INVITE request retransmit (unreliable) |
//! | F | 64*T1 | non-INVITE transaction timeout |
//! | G | T1, doubling to T2 | INVITE final response retransmit (unreliable) |
//! | H | 64*T1 | wait for ACK |
//! | I | T4 (unreliable), 0 | wait for ACK retransmits |
//! | J | 64*T1 (unreliable), 0 | wait for non-INVITE request retransmits |
//! | K | T4 (unreliable), 0 | wait for response retransmits |
//! | L | 64*T1 | wait for INVITE retransmits after 2xx (RFC 6026) |
//! | M | 64*T1 | wait for 2xx retransmits (RFC 6026) |

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// RFC 3261's T1, T2, T4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerValues {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for TimerValues {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerValues {
    fn sixty_four_t1(&self) -> Duration {
        self.t1 * 64
    }
}

/// Whether the transport retransmits for us (TCP) or not (UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Reliable,
    Unreliable,
}

/// The timers of RFC 3261 §17 and RFC 6026, as table indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    A,
    B,
    D,
    E,
    F,
    G,
    H,
    I,
    J,
    K,
    L,
    M,
}

const TIMER_COUNT: usize = 12;

/// One `Option<Instant>` per timer; the earliest armed one is the next wake-up.
#[derive(Debug, Clone, Default)]
struct TimerTable([Option<Instant>; TIMER_COUNT]);

impl TimerTable {
    fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer as usize] = Some(at);
    }
    fn clear(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }
    fn clear_all(&mut self) {
        self.0 = [None; TIMER_COUNT];
    }
    fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
    /// Timers due at `now`, in table order, disarmed.
    fn take_due(&mut self, now: Instant) -> Vec<Timer> {
        const ALL: [Timer; TIMER_COUNT] = [
            Timer::A,
            Timer::B,
            Timer::D,
            Timer::E,
            Timer::F,
            Timer::G,
            Timer::H,
            Timer::I,
            Timer::J,
            Timer::K,
            Timer::L,
            Timer::M,
        ];
        let mut due = Vec::new();
        for timer in ALL {
            if self.0[timer as usize].is_some_and(|at| at <= now) {
                self.0[timer as usize] = None;
                due.push(timer);
            }
        }
        due
    }
}

/// What a transaction wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit<M> {
    /// Send (or send again) this message.
    Message(M),
    /// Send the ACK for this non-2xx final response (RFC 3261 17.1.1.3).
    Ack(M),
}

/// Why a transaction ended without a final answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Timer B or F: no final response (the TU treats it as 408).
    Timeout,
    /// Timer H: the final response was never acknowledged.
    NoAck,
    /// The transport reported an error (the TU treats it as 503).
    TransportError,
}

/// What a client transaction tells its TU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent<M> {
    /// A response to pass up (provisional, the first final, 2xx retransmissions in
    /// Accepted).
    Response(M),
    Failed(Failure),
}

/// What a server transaction tells its TU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent<M> {
    /// The ACK for a 2xx, received in Accepted (RFC 6026 7.1): for the TU's dialog.
    Ack(M),
    Failed(Failure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE: Calling; non-INVITE: Trying.
    Calling,
    Proceeding,
    Accepted,
    Completed,
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// non-INVITE only: nothing sent yet.
    Trying,
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
    Terminated,
}

/// A client transaction: INVITE or non-INVITE.
#[derive(Debug, Clone)]
pub struct ClientTransaction<M> {
    invite: bool,
    transport: Transport,
    values: TimerValues,
    state: ClientState,
    request: M,
    /// The final non-2xx response, for re-sending its ACK.
    final_response: Option<M>,
    timers: TimerTable,
    /// The current retransmit interval of A or E.
    interval: Duration,
    transmits: VecDeque<Transmit<M>>,
    events: VecDeque<ClientEvent<M>>,
}

impl<M: Clone> ClientTransaction<M> {
    /// Starts the transaction: the request is to be sent now.
    pub fn new(
        invite: bool,
        request: M,
        transport: Transport,
        values: TimerValues,
        now: Instant,
    ) -> Self {
        let mut t = Self {
            invite,
            transport,
            values,
            state: ClientState::Calling,
            request: request.clone(),
            final_response: None,
            timers: TimerTable::default(),
            interval: values.t1,
            transmits: VecDeque::from([Transmit::Message(request)]),
            events: VecDeque::new(),
        };
        let (retransmit, timeout) = if invite {
            (Timer::A, Timer::B)
        } else {
            (Timer::E, Timer::F)
        };
        if transport == Transport::Unreliable {
            t.timers.set(retransmit, now + values.t1);
        }
        t.timers.set(timeout, now + values.sixty_four_t1());
        t
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    /// The request the transaction sends.
    pub fn request(&self) -> &M {
        &self.request
    }

    pub fn is_invite(&self) -> bool {
        self.invite
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit<M>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent<M>> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// A response matched to this transaction (RFC 3261 17.1.3).
    pub fn handle_response(&mut self, now: Instant, status: u16, response: M) {
        let provisional = (100..200).contains(&status);
        let success = (200..300).contains(&status);
        match (self.state, self.invite) {
            (ClientState::Calling | ClientState::Proceeding, _) if provisional => {
                if self.state == ClientState::Calling && !self.invite {
                    // 17.1.2.2: in Proceeding, E fires at T2.
                    self.interval = self.values.t2;
                }
                if self.invite {
                    self.timers.clear(Timer::A);
                }
                self.state = ClientState::Proceeding;
                self.events.push_back(ClientEvent::Response(response));
            }
            (ClientState::Calling | ClientState::Proceeding, true) if success => {
                // RFC 6026 7.2: Accepted, Timer M; the TU ACKs the 2xx itself.
                self.timers.clear_all();
                self.timers.set(Timer::M, now + self.values.sixty_four_t1());
                self.state = ClientState::Accepted;
                self.events.push_back(ClientEvent::Response(response));
            }
            (ClientState::Calling | ClientState::Proceeding, true) => {
                self.timers.clear_all();
                self.transmits.push_back(Transmit::Ack(response.clone()));
                self.final_response = Some(response.clone());
                let wait = match self.transport {
                    Transport::Unreliable => {
                        Duration::from_secs(32).max(self.values.sixty_four_t1())
                    }
                    Transport::Reliable => Duration::ZERO,
                };
                self.timers.set(Timer::D, now + wait);
                self.state = ClientState::Completed;
                self.events.push_back(ClientEvent::Response(response));
            }
            (ClientState::Calling | ClientState::Proceeding, false) => {
                self.timers.clear_all();
                let wait = match self.transport {
                    Transport::Unreliable => self.values.t4,
                    Transport::Reliable => Duration::ZERO,
                };
                self.timers.set(Timer::K, now + wait);
                self.state = ClientState::Completed;
                self.events.push_back(ClientEvent::Response(response));
            }
            (ClientState::Accepted, true) if success => {
                // A 2xx retransmission (or a 2xx from another fork): to the TU.
                self.events.push_back(ClientEvent::Response(response));
            }
            (ClientState::Completed, true) if status >= 300 => {
                // The final response again: our ACK was lost.
                if let Some(r) = &self.final_response {
                    self.transmits.push_back(Transmit::Ack(r.clone()));
                }
            }
            // Anything else is absorbed (late provisionals, retransmissions).
            _ => {}
        }
        self.expire_zero_timers(now);
    }

    pub fn handle_transport_error(&mut self) {
        if self.state != ClientState::Terminated {
            self.terminate(Some(Failure::TransportError));
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in self.timers.take_due(now) {
            match timer {
                Timer::A | Timer::E => {
                    let resend = matches!(self.state, ClientState::Calling)
                        || (timer == Timer::E && self.state == ClientState::Proceeding);
                    if resend {
                        self.transmits
                            .push_back(Transmit::Message(self.request.clone()));
                        self.interval = if timer == Timer::A {
                            self.interval * 2
                        } else if self.state == ClientState::Proceeding {
                            self.values.t2
                        } else {
                            (self.interval * 2).min(self.values.t2)
                        };
                        self.timers.set(timer, now + self.interval);
                    }
                }
                Timer::B | Timer::F => {
                    if matches!(self.state, ClientState::Calling | ClientState::Proceeding) {
                        self.terminate(Some(Failure::Timeout));
                    }
                }
                Timer::D | Timer::K | Timer::M => self.terminate(None),
                _ => {}
            }
        }
    }

    /// Zero-length waits (reliable transports) end at once.
    fn expire_zero_timers(&mut self, now: Instant) {
        if self.timers.next().is_some_and(|at| at <= now) {
            self.handle_timeout(now);
        }
    }

    fn terminate(&mut self, failure: Option<Failure>) {
        self.timers.clear_all();
        self.state = ClientState::Terminated;
        if let Some(f) = failure {
            self.events.push_back(ClientEvent::Failed(f));
        }
    }
}

/// A server transaction: INVITE or non-INVITE.
#[derive(Debug, Clone)]
pub struct ServerTransaction<M> {
    invite: bool,
    transport: Transport,
    values: TimerValues,
    state: ServerState,
    /// The last response sent, for retransmissions.
    last_response: Option<M>,
    timers: TimerTable,
    interval: Duration,
    transmits: VecDeque<Transmit<M>>,
    events: VecDeque<ServerEvent<M>>,
}

impl<M: Clone> ServerTransaction<M> {
    /// A new request arrived. For INVITE, `trying` is the 100 (Trying) to send at once
    /// (17.2.1: unless the TU answers within 200 ms; we never wait).
    pub fn new(invite: bool, trying: Option<M>, transport: Transport, values: TimerValues) -> Self {
        let mut t = Self {
            invite,
            transport,
            values,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            last_response: None,
            timers: TimerTable::default(),
            interval: values.t1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        if let Some(trying) = trying.filter(|_| invite) {
            t.last_response = Some(trying.clone());
            t.transmits.push_back(Transmit::Message(trying));
        }
        t
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit<M>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent<M>> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The same request again (a retransmission): re-send the last response, if any.
    pub fn handle_retransmission(&mut self) {
        let resend = match self.state {
            ServerState::Proceeding | ServerState::Completed => true,
            // RFC 6026 7.1: an INVITE retransmission in Accepted is absorbed; the TU's
            // 2xx retransmissions come through `respond`.
            _ => false,
        };
        if resend {
            if let Some(r) = &self.last_response {
                self.transmits.push_back(Transmit::Message(r.clone()));
            }
        }
    }

    /// An ACK for this INVITE transaction.
    pub fn handle_ack(&mut self, now: Instant, ack: M) {
        match self.state {
            ServerState::Completed if self.invite => {
                self.timers.clear(Timer::G);
                self.timers.clear(Timer::H);
                let wait = match self.transport {
                    Transport::Unreliable => self.values.t4,
                    Transport::Reliable => Duration::ZERO,
                };
                self.timers.set(Timer::I, now + wait);
                self.state = ServerState::Confirmed;
                self.expire_zero_timers(now);
            }
            ServerState::Accepted => self.events.push_back(ServerEvent::Ack(ack)),
            _ => {}
        }
    }

    /// The TU responds with `status`.
    pub fn respond(&mut self, now: Instant, status: u16, response: M) {
        let provisional = (100..200).contains(&status);
        let success = (200..300).contains(&status);
        match self.state {
            ServerState::Trying | ServerState::Proceeding if provisional => {
                self.state = ServerState::Proceeding;
            }
            ServerState::Trying | ServerState::Proceeding if self.invite && success => {
                self.state = ServerState::Accepted;
                self.timers.set(Timer::L, now + self.values.sixty_four_t1());
            }
            ServerState::Trying | ServerState::Proceeding if self.invite => {
                self.state = ServerState::Completed;
                if self.transport == Transport::Unreliable {
                    self.timers.set(Timer::G, now + self.values.t1);
                }
                self.timers.set(Timer::H, now + self.values.sixty_four_t1());
            }
            ServerState::Trying | ServerState::Proceeding => {
                self.state = ServerState::Completed;
                let wait = match self.transport {
                    Transport::Unreliable => self.values.sixty_four_t1(),
                    Transport::Reliable => Duration::ZERO,
                };
                self.timers.set(Timer::J, now + wait);
            }
            // The TU's own 2xx retransmissions go out through the transaction.
            ServerState::Accepted if success => {}
            // A response in any other state is a TU error: nothing is sent.
            _ => return,
        }
        self.last_response = Some(response.clone());
        self.transmits.push_back(Transmit::Message(response));
        self.expire_zero_timers(now);
    }

    pub fn handle_transport_error(&mut self) {
        if self.state != ServerState::Terminated {
            self.timers.clear_all();
            self.state = ServerState::Terminated;
            self.events
                .push_back(ServerEvent::Failed(Failure::TransportError));
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in self.timers.take_due(now) {
            match timer {
                Timer::G if self.state == ServerState::Completed => {
                    if let Some(r) = &self.last_response {
                        self.transmits.push_back(Transmit::Message(r.clone()));
                    }
                    self.interval = (self.interval * 2).min(self.values.t2);
                    self.timers.set(Timer::G, now + self.interval);
                }
                Timer::H if self.state == ServerState::Completed => {
                    self.timers.clear_all();
                    self.state = ServerState::Terminated;
                    self.events.push_back(ServerEvent::Failed(Failure::NoAck));
                }
                Timer::I | Timer::J | Timer::L => {
                    self.timers.clear_all();
                    self.state = ServerState::Terminated;
                }
                _ => {}
            }
        }
    }

    fn expire_zero_timers(&mut self, now: Instant) {
        if self.timers.next().is_some_and(|at| at <= now) {
            self.handle_timeout(now);
        }
    }
}

#[cfg(test)]
mod tests;
