//! The gRPC contracts of the phone system, one versioned package per service, generated
//! from `proto/phone/**`: `phone.edge.v1` (MWI, registrations), `phone.router.v1` (the
//! bidirectional call-control stream, one per channel), `phone.media.v1` (relay
//! sessions), `phone.voicemail.v1` (voicemail sessions), `phone.mailer.v1` (deliveries).
//! Every RPC carries W3C trace context in its metadata (see `service-runtime`).

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod edge {
    pub mod v1 {
        tonic::include_proto!("phone.edge.v1");
    }
}
pub mod router {
    pub mod v1 {
        tonic::include_proto!("phone.router.v1");
    }
}
pub mod media {
    pub mod v1 {
        tonic::include_proto!("phone.media.v1");
    }
}
pub mod voicemail {
    pub mod v1 {
        tonic::include_proto!("phone.voicemail.v1");
    }
}
pub mod mailer {
    pub mod v1 {
        tonic::include_proto!("phone.mailer.v1");
    }
}
