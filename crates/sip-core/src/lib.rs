//! The SIP edge's protocol logic, sans IO. Every state machine here takes the time as
//! an input and gives back what to send and when it next needs the time, so tests
//! jump from deadline to deadline instead of sleeping:
//! - [`transaction`]: the client and server transactions of RFC 3261 §17;
//! - [`registrar`]: REGISTER with digest auth, bindings and their expiry;
//! - [`qualify`]: keep-alive probes of bindings (`qualify=`);
//! - [`outbound`]: registrations to providers (`register =>`);
//! - [`guard`]: the per-source rate limit and the ban after failed authentications;
//! - [`fork`]: `Dial()` to several targets at once;
//! - [`endpoint`]: the whole SIP side of the edge, with the calls' dialogs, fed with
//!   datagrams, timeouts and the calls' commands by a driver (the `sip-edge` service).
//!
//! The layer below is `sip-wire` (parsing, SDP, digest), re-exported here as
//! [`wire`], [`sdp`] and [`digest`].

#![forbid(unsafe_code)]

pub use sip_wire::{digest, sdp, wire};

pub mod endpoint;
pub mod error;
#[doc(hidden)]
pub mod fork;
pub mod guard;
pub mod outbound;
pub mod qualify;
pub mod registrar;
pub mod transaction;
