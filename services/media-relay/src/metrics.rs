//! The relay's Prometheus metrics (prefix `phone_media_`). Packet counters are labelled
//! by worker, and each worker keeps its own handles, so counting a packet is an atomic
//! add on a cache line no other thread writes. Per-leg RTP statistics are exported in
//! aggregate when a session ends (loss counted, jitter in a histogram): a label per
//! session would grow the series without bound.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::session::Kind;
use phone_proto::media::v1 as pb;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    worker: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    worker: String,
    reason: &'static str,
}

/// Every metric of the relay.
#[derive(Clone)]
pub struct Metrics {
    packets: Family<KindLabels, Counter>,
    bytes: Family<KindLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    pub sessions_created: Counter,
    pub sessions_active: Gauge,
    pub sessions_refused: Family<ReasonLabel, Counter>,
    timeouts: Counter,
    pub free_port_pairs: Gauge,
    lost: Counter,
    received: Counter,
    jitter: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            packets: Family::default(),
            bytes: Family::default(),
            dropped: Family::default(),
            sessions_created: Counter::default(),
            sessions_active: Gauge::default(),
            sessions_refused: Family::default(),
            timeouts: Counter::default(),
            free_port_pairs: Gauge::default(),
            lost: Counter::default(),
            received: Counter::default(),
            jitter: Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 100.0]),
        };
        // Every reason from the start, so that a dashboard's series exist at zero.
        for reason in ["ports_exhausted", "draining"] {
            let _ = m.sessions_refused.get_or_create(&ReasonLabel { reason });
        }
        let r = registry.sub_registry_with_prefix("media");
        r.register(
            "packets_forwarded",
            "RTP and RTCP packets forwarded, by worker and kind",
            m.packets.clone(),
        );
        r.register(
            "bytes_forwarded",
            "RTP and RTCP bytes forwarded, by worker and kind",
            m.bytes.clone(),
        );
        r.register(
            "packets_dropped",
            "Packets not forwarded, by reason (foreign source, malformed, learning, no destination, send failed)",
            m.dropped.clone(),
        );
        r.register(
            "sessions_created",
            "Sessions created",
            m.sessions_created.clone(),
        );
        r.register(
            "sessions_active",
            "Sessions forwarding now",
            m.sessions_active.clone(),
        );
        r.register(
            "sessions_refused",
            "Session requests refused, by reason (ports exhausted, draining)",
            m.sessions_refused.clone(),
        );
        r.register(
            "media_timeouts",
            "Sessions ended because a leg sent no RTP for the media (or hold) timeout",
            m.timeouts.clone(),
        );
        r.register(
            "free_port_pairs",
            "RTP/RTCP port pairs free in the pool",
            m.free_port_pairs.clone(),
        );
        r.register(
            "rtp_packets_lost",
            "RTP packets lost on the way to the relay (RFC 3550), summed over ended legs",
            m.lost.clone(),
        );
        r.register(
            "rtp_packets_received",
            "RTP and RTCP packets received from the legs' far ends, summed over ended legs",
            m.received.clone(),
        );
        r.register(
            "leg_jitter_ms",
            "Interarrival jitter (RFC 3550 A.8) of each ended leg, in milliseconds",
            m.jitter.clone(),
        );
        m
    }

    /// The handles worker `number` counts with.
    pub fn worker(&self, number: usize) -> WorkerMetrics {
        let worker = number.to_string();
        let kind = |family: &Family<KindLabels, Counter>, kind| {
            family
                .get_or_create(&KindLabels {
                    worker: worker.clone(),
                    kind,
                })
                .clone()
        };
        let dropped = |reason| {
            self.dropped
                .get_or_create(&DropLabels {
                    worker: worker.clone(),
                    reason,
                })
                .clone()
        };
        WorkerMetrics {
            rtp_packets: kind(&self.packets, "rtp"),
            rtcp_packets: kind(&self.packets, "rtcp"),
            rtp_bytes: kind(&self.bytes, "rtp"),
            rtcp_bytes: kind(&self.bytes, "rtcp"),
            dropped_foreign: dropped("foreign"),
            dropped_malformed: dropped("malformed"),
            dropped_learning: dropped("learning"),
            dropped_no_destination: dropped("no_destination"),
            dropped_send_failed: dropped("send_failed"),
            timeouts: self.timeouts.clone(),
            sessions_active: self.sessions_active.clone(),
            lost: self.lost.clone(),
            received: self.received.clone(),
            jitter: self.jitter.clone(),
            free_port_pairs: self.free_port_pairs.clone(),
        }
    }
}

/// One worker's own handles.
#[derive(Clone)]
pub struct WorkerMetrics {
    rtp_packets: Counter,
    rtcp_packets: Counter,
    rtp_bytes: Counter,
    rtcp_bytes: Counter,
    pub dropped_foreign: Counter,
    pub dropped_malformed: Counter,
    pub dropped_learning: Counter,
    pub dropped_no_destination: Counter,
    pub dropped_send_failed: Counter,
    pub timeouts: Counter,
    pub sessions_active: Gauge,
    lost: Counter,
    received: Counter,
    jitter: Histogram,
    pub free_port_pairs: Gauge,
}

impl WorkerMetrics {
    pub fn forwarded(&self, kind: Kind, bytes: usize) {
        let (packets, octets) = match kind {
            Kind::Rtp => (&self.rtp_packets, &self.rtp_bytes),
            Kind::Rtcp => (&self.rtcp_packets, &self.rtcp_bytes),
        };
        packets.inc();
        octets.inc_by(bytes as u64);
    }

    pub fn session_ended(&self, stats: &pb::SessionStats) {
        self.sessions_active.dec();
        for leg in [&stats.a, &stats.b].into_iter().flatten() {
            self.lost
                .inc_by(u64::try_from(leg.packets_lost).unwrap_or(0));
            self.received.inc_by(leg.packets_received);
            if leg.packets_received > 0 {
                self.jitter.observe(leg.jitter_ms);
            }
        }
    }
}
