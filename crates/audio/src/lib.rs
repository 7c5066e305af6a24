//! Telephone audio for the voicemail service and the mailer: the G.711 laws carried
//! in RTP, the GSM 06.10 codec, and the two WAV files Asterisk's `format=` names:
//! `wav` (16-bit PCM, 8 kHz, mono) and `wav49` (GSM 06.10 in a Microsoft WAV, 65-byte
//! blocks of two frames), each written and read. Pure Rust, no unsafe code.

#![forbid(unsafe_code)]

pub mod analysis;
pub mod g711;
pub mod gsm;
pub mod wav;

pub use g711::Law;
pub use wav::{Format, WavError};
