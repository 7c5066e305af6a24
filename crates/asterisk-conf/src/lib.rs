//! Asterisk's configuration files, read with Asterisk's rules, so that a `sip.conf`,
//! `extensions.conf` and `voicemail.conf` written for Asterisk run here unchanged.
//!
//! Two layers:
//!
//! - [`tree`]: the syntax every Asterisk `.conf` file shares (sections, `=`/`=>`, comments,
//!   `#include`, templates), to an ordered list of sections and entries, each with the
//!   file and line it came from.
//! - Typed views built on it: [`sip`] (peers, `[general]`, `register =>`),
//!   [`voicemail`] (`[general]`, `[zonemessages]`, mailboxes) and [`extensions`] (the
//!   dialplan as an AST for the router).
//!
//! Errors render as `file:line: message`; things Asterisk merely warns about (unknown
//! keys, unknown codecs) are collected as [`Warning`]s and the file still loads. No
//! input makes the parser panic (see `fuzz/` and the crate's robustness tests).
//! Secrets are wrapped in [`Secret`], whose `Debug` and `Display` hide the value.

#![forbid(unsafe_code)]

pub mod error;
pub mod extensions;
#[doc(hidden)]
pub mod fuzzing;
pub mod sip;
pub mod tree;
pub mod values;
pub mod voicemail;

use std::path::{Path, PathBuf};

pub use error::{Error, Location, SyntaxError, Warning};
pub use tree::{
    load, load_from, parse_str, Config, Entry, FileSystem, MemorySource, Section, Source,
};
pub use values::{CallerId, Secret};

/// The three files of a phone system, read from one directory.
#[derive(Debug, Clone)]
pub struct PhoneConfig {
    pub dir: PathBuf,
    pub sip: sip::SipConf,
    pub voicemail: voicemail::VoicemailConf,
    pub dialplan: extensions::Dialplan,
}

impl PhoneConfig {
    pub const SIP: &'static str = "sip.conf";
    pub const VOICEMAIL: &'static str = "voicemail.conf";
    pub const EXTENSIONS: &'static str = "extensions.conf";

    /// Reads `sip.conf`, `voicemail.conf` and `extensions.conf` from `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, Error> {
        Self::load_from(&FileSystem, dir.as_ref())
    }

    pub fn load_from(source: &dyn Source, dir: &Path) -> Result<Self, Error> {
        Ok(Self {
            dir: dir.to_owned(),
            sip: sip::load_from(source, &dir.join(Self::SIP))?,
            voicemail: voicemail::load_from(source, &dir.join(Self::VOICEMAIL))?,
            dialplan: extensions::load_from(source, &dir.join(Self::EXTENSIONS))?,
        })
    }

    /// Every warning of the three files.
    pub fn warnings(&self) -> impl Iterator<Item = &Warning> {
        self.sip
            .warnings
            .iter()
            .chain(&self.voicemail.warnings)
            .chain(&self.dialplan.warnings)
    }
}
