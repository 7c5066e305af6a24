//! Why a call fails and why a message is refused, as types: a [`CallError`] says the
//! SIP status the caller hears and the Q.850 cause the dialplan sees
//! (`${HANGUPCAUSE}`); a [`RejectReason`] labels the `sip_refused_total` metric.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// A call's command that cannot be carried out, or a call that cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallError {
    /// The call is no longer known (it ended on the SIP side).
    Gone,
    /// The caller's leg has ended.
    Ended,
    /// No relay session gives the caller media yet.
    NoMedia,
    /// The caller's INVITE carried no SDP offer.
    NoOffer,
    /// The caller's offer has no codec the peer may use (RFC 3264 §6).
    NoCommonCodec,
    /// The edge has no SIP socket to send from.
    NoSocket,
    /// No media relay could give the call a session.
    NoRelay,
    /// No router took the call's call-control stream.
    RouterUnreachable,
}

impl CallError {
    /// The status the caller's INVITE gets when this ends the call before an answer.
    pub fn sip_status(self) -> u16 {
        match self {
            CallError::Gone | CallError::Ended => 481,
            CallError::NoOffer | CallError::NoCommonCodec => 488,
            CallError::NoMedia
            | CallError::NoSocket
            | CallError::NoRelay
            | CallError::RouterUnreachable => 503,
        }
    }

    /// The Q.850 cause: what chan_sip gives for the status (`hangup_sip2cause`), or
    /// for a missing resource, 34 (no circuit available) as Asterisk does without
    /// RTP ports or a PBX.
    pub fn q850(self) -> u32 {
        match self {
            CallError::Gone | CallError::Ended => 16,
            CallError::NoOffer | CallError::NoCommonCodec => 58,
            CallError::NoSocket => 38,
            CallError::NoMedia | CallError::NoRelay | CallError::RouterUnreachable => 34,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CallError::Gone => "the call is gone",
            CallError::Ended => "the call has ended",
            CallError::NoMedia => "no media for the caller",
            CallError::NoOffer => "no SDP offer from the caller",
            CallError::NoCommonCodec => "no codec in common",
            CallError::NoSocket => "no SIP socket",
            CallError::NoRelay => "no media relay",
            CallError::RouterUnreachable => "the router is unreachable",
        })
    }
}

impl std::error::Error for CallError {}

/// Why the edge refused a message, answered or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The parser refused it (400, 416, 505, 513, or dropped when no answer can go).
    Malformed,
    /// Over its source's rate limit: dropped.
    RateLimited,
    /// Its source is banned after failed authentications: dropped.
    Banned,
    /// A method the edge does not know (501).
    NotImplemented,
    /// A method the edge knows but does not serve (405).
    NotAllowed,
    /// A response that matches no transaction of ours: dropped.
    Stray,
    /// A request inside no dialog the edge knows (481).
    NoDialog,
    /// An INVITE whose SDP cannot be read, or has no offer or no common codec (488).
    NotAcceptable,
    /// An INVITE or REGISTER the edge cannot take now (503 with Retry-After).
    Unavailable,
    /// Credentials that did not match (the 401/407 or 403 that follows).
    AuthFailed,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::Banned => "banned",
            RejectReason::NotImplemented => "not_implemented",
            RejectReason::NotAllowed => "not_allowed",
            RejectReason::Stray => "stray",
            RejectReason::NoDialog => "no_dialog",
            RejectReason::NotAcceptable => "not_acceptable",
            RejectReason::Unavailable => "unavailable",
            RejectReason::AuthFailed => "auth_failed",
        }
    }
}

impl EncodeLabelValue for RejectReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// The label set of `sip_refused_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub reason: RejectReason,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_errors_map_to_a_status_and_a_cause() {
        assert_eq!(
            (CallError::NoRelay.sip_status(), CallError::NoRelay.q850()),
            (503, 34)
        );
        assert_eq!(
            (
                CallError::NoCommonCodec.sip_status(),
                CallError::NoCommonCodec.q850()
            ),
            (488, 58)
        );
        assert_eq!(CallError::Gone.to_string(), "the call is gone");
    }

    #[test]
    fn reasons_are_metric_labels() {
        let mut registry = prometheus_client::registry::Registry::default();
        let family = prometheus_client::metrics::family::Family::<
            RejectLabels,
            prometheus_client::metrics::counter::Counter,
        >::default();
        registry.register("refused", "refused", family.clone());
        family
            .get_or_create(&RejectLabels {
                reason: RejectReason::RateLimited,
            })
            .inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("refused_total{reason=\"rate_limited\"} 1"),
            "{text}"
        );
    }
}
