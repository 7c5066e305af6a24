//! Drives a [`Call`] without network: the test plays the edge and the voicemail
//! service, on simulated time.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use router::call::{Action, Call, ChannelInfo, Command, Event, VoicemailRequest};
use router::Dialplan;

pub fn seed_dialplan() -> Arc<Dialplan> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/freelancer");
    let (plan, _) = router::load_dialplan(&dir).unwrap();
    plan
}

pub fn dialplan(text: &str) -> Arc<Dialplan> {
    let ast = asterisk_conf::extensions::from_config(
        asterisk_conf::parse_str("extensions.conf", text).unwrap(),
    )
    .unwrap();
    Dialplan::compile(&ast)
}

pub fn channel(peer: &str, context: &str, exten: &str, caller: &str) -> ChannelInfo {
    ChannelInfo {
        channel: format!("SIP/{peer}-0000002a"),
        unique_id: "1700000000.42".into(),
        context: context.into(),
        exten: exten.into(),
        caller_number: caller.into(),
        caller_name: String::new(),
        variables: Vec::new(),
        epoch: 1_700_000_000.0,
    }
}

/// A call under test, with everything it asked for so far.
pub struct Harness {
    pub call: Call,
    pub now: Instant,
    pub commands: Vec<(u64, Command)>,
    pub voicemail: Vec<(u64, VoicemailRequest)>,
    pub stopped: Vec<String>,
    pub logs: Vec<String>,
    pub steps: Vec<String>,
}

impl Harness {
    pub fn start(plan: Arc<Dialplan>, info: ChannelInfo) -> Self {
        let now = Instant::now();
        let call = Call::new(plan, info, now);
        let mut h = Self {
            call,
            now,
            commands: Vec::new(),
            voicemail: Vec::new(),
            stopped: Vec::new(),
            logs: Vec::new(),
            steps: Vec::new(),
        };
        h.collect();
        h
    }

    fn collect(&mut self) {
        while let Some(action) = self.call.poll_action() {
            match action {
                Action::Command { id, command } => self.commands.push((id, command)),
                Action::StartVoicemail { id, request } => self.voicemail.push((id, request)),
                Action::StopVoicemail { session_id } => self.stopped.push(session_id),
                Action::Log { message, .. } => self.logs.push(message),
                Action::Step(step) => self.steps.push(format!("{}({})", step.app, step.args)),
            }
        }
    }

    pub fn event(&mut self, event: Event) {
        self.call.handle_event(self.now, event);
        self.collect();
    }

    /// Jumps to the next timeout, as simulated time does.
    pub fn advance_to_timeout(&mut self) -> Duration {
        let deadline = self
            .call
            .poll_timeout()
            .expect("the call waits for a timer");
        let waited = deadline.saturating_duration_since(self.now);
        self.now = deadline;
        self.call.handle_timeout(self.now);
        self.collect();
        waited
    }

    pub fn last_command(&self) -> &(u64, Command) {
        self.commands.last().expect("a command was sent")
    }

    /// Completes the last command successfully.
    pub fn complete(&mut self) {
        let id = self.last_command().0;
        self.event(Event::CommandDone { id, error: None });
    }

    pub fn var(&self, name: &str) -> String {
        self.call
            .variable(name)
            .map(|t| t.into_string())
            .unwrap_or_default()
    }
}
