//! SIP on the wire, the layer under the edge's protocol logic (`sip-core`): what
//! comes off a socket is checked and parsed here before anything else reads it
//! ([`wire`], with stream framing for TCP), SDP is read and answered with the relay's
//! address ([`sdp`]), digest credentials are checked and made ([`digest`]), and the
//! requests derived from others (ACK, CANCEL, in-dialog) are built ([`build`]), and the
//! header values the edge reads or rewrites are typed ([`header`]: Via, name-addr, URI). Pure
//! functions over bytes and strings: no state, no clock, no I/O.

#![forbid(unsafe_code)]

pub mod build;
pub mod digest;
#[doc(hidden)]
pub mod fuzzing;
pub mod header;
pub mod sdp;
pub mod shard;
pub mod wire;
