//! The interpreter of one channel: a synchronous state machine with no IO and no clock
//! of its own (STYLE.md, habits 1 and 2).
//!
//! ```text
//!   Call::new(dialplan, channel, now)
//!   loop {
//!       while let Some(action) = call.poll_action() { carry it out }
//!       wait for an event, or until call.poll_timeout()
//!       call.handle_event(now, event)  |  call.handle_timeout(now)
//!   } until call.is_finished()
//! ```
//!
//! Actions are commands for the edge (answer, dial, hang up...), voicemail sessions to
//! start or stop, and log lines and step traces. Events are what the edge and the
//! voicemail service report. The interpreter runs priorities until an application has
//! to wait (for a command to complete, a dial result, a timer, digits, a voicemail
//! session) or the call ends.
//!
//! Asterisk's rules kept here: after an application the priority goes up by exactly one
//! and a missing priority ends the call (`autofallthrough=yes`, with the hang-up cause
//! following `DIALSTATUS`); a jump to an extension that does not exist goes to `i` when
//! the context has one, else hangs up; when the caller hangs up, `h` runs (only
//! applications that need no caller run there); `T` runs when `TIMEOUT(absolute)`
//! passes; `t` when `WaitExten` gets no digits. A call to a number no extension matches
//! is refused with cause 1 (unallocated: the edge answers 404).
//!
//! Deviations: `WaitExten` collects digits until `#` or the digit timeout instead of
//! stopping at the first unambiguous match; when `TIMEOUT(absolute)` passes during a
//! Dial the caller is hung up (there is no command to cancel a dial and go on); a loop
//! of more than [`MAX_STEPS_WITHOUT_WAITING`] priorities without waiting is hung up
//! instead of spinning.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asterisk_conf::Location;

use crate::apps::{self, App, DialSpec, Target};
use crate::dialplan::{Dialplan, Extension};
use crate::subst::{self, Env};
use crate::text::Text;

/// Priorities run in a row without waiting before the call is taken for a loop.
pub const MAX_STEPS_WITHOUT_WAITING: u32 = 10_000;
/// Gosub nesting limit.
pub const MAX_GOSUB_DEPTH: usize = 64;
const DEFAULT_DIGIT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Q.850 causes the router uses.
pub mod cause {
    pub const UNALLOCATED: u32 = 1;
    pub const NORMAL_CLEARING: u32 = 16;
    pub const USER_BUSY: u32 = 17;
    pub const CONGESTION: u32 = 34;
}

/// What the edge says about a new channel.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    /// `SIP/<peer>-<8 hex digits>`, made by the edge from the peer's name.
    pub channel: String,
    pub unique_id: String,
    pub context: String,
    /// The dialled extension: from outside.
    pub exten: String,
    /// Caller ID number and name: from outside.
    pub caller_number: String,
    pub caller_name: String,
    /// Variables the edge sets (SIP headers and the like): from outside.
    pub variables: Vec<(String, String)>,
    /// Unix time when the call started.
    pub epoch: f64,
}

/// Asterisk's DIALSTATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialStatus {
    Answer,
    Busy,
    NoAnswer,
    Cancel,
    Congestion,
    ChanUnavail,
}

impl DialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DialStatus::Answer => "ANSWER",
            DialStatus::Busy => "BUSY",
            DialStatus::NoAnswer => "NOANSWER",
            DialStatus::Cancel => "CANCEL",
            DialStatus::Congestion => "CONGESTION",
            DialStatus::ChanUnavail => "CHANUNAVAIL",
        }
    }
}

/// Asterisk's VMSTATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmStatus {
    Success,
    UserExit,
    Failed,
}

impl VmStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VmStatus::Success => "SUCCESS",
            VmStatus::UserExit => "USEREXIT",
            VmStatus::Failed => "FAILED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indication {
    Progress,
    Ringing,
    Busy,
    Congestion,
}

/// A command for the edge.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Answer,
    Indicate(Indication),
    Dial {
        spec: DialSpec,
        caller_number: String,
        caller_name: String,
    },
    Playback {
        files: Vec<String>,
        noanswer: bool,
    },
    ConnectVoicemail {
        session_id: String,
        rtp_ip: String,
        rtp_port: u16,
    },
    Hangup {
        cause: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoicemailMode {
    Leave,
    Main,
}

/// A voicemail session to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoicemailRequest {
    pub mode: VoicemailMode,
    pub mailbox: String,
    pub context: String,
    pub options: String,
    pub caller_number: String,
    pub caller_name: String,
    pub channel: String,
    pub unique_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warning,
    Notice,
    Debug,
}

/// One priority run, for traces.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTrace {
    pub context: String,
    pub exten: String,
    pub priority: u32,
    pub app: String,
    /// The arguments after substitution.
    pub args: String,
    pub location: Location,
}

/// What the interpreter wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send to the edge; answer with [`Event::CommandDone`] (or [`Event::DialResult`]
    /// for a dial) carrying `id`. Hang-up needs no answer.
    Command {
        id: u64,
        command: Command,
    },
    /// Start a voicemail session; answer with `VoicemailStarted` or `VoicemailFailed`.
    StartVoicemail {
        id: u64,
        request: VoicemailRequest,
    },
    StopVoicemail {
        session_id: String,
    },
    Log {
        level: LogLevel,
        message: String,
    },
    Step(StepTrace),
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    CommandDone {
        id: u64,
        error: Option<String>,
    },
    DialResult {
        id: u64,
        status: DialStatus,
        answered_secs: u32,
    },
    Dtmf(char),
    HangUp {
        cause: u32,
    },
    VoicemailStarted {
        id: u64,
        session_id: String,
        rtp_ip: String,
        rtp_port: u16,
    },
    VoicemailFailed {
        id: u64,
        error: String,
    },
    VoicemailFinished {
        session_id: String,
        status: VmStatus,
        exit_extension: Option<String>,
    },
}

/// Where the channel is in the dialplan.
#[derive(Debug, Clone)]
struct Position {
    /// The channel's context (`${CONTEXT}`), where lookups start.
    context: String,
    /// The context that holds the running extension: `context` or one it includes.
    home: String,
    /// Index of the extension in `home`.
    extension: usize,
    exten: Text,
    priority: u32,
}

#[derive(Debug, Clone)]
struct Frame {
    ret: Position,
    saved_args: Vec<Option<Text>>,
}

/// What a command's completion leads to.
#[derive(Debug, Clone)]
enum AfterCommand {
    Next,
    /// Playback's answer first, then the playback itself.
    Playback {
        files: Vec<String>,
        noanswer: bool,
    },
    PlaybackDone,
    Busy {
        cause: u32,
        timeout: Option<Duration>,
    },
    Voicemail {
        session_id: String,
        mode: VoicemailMode,
    },
}

#[derive(Debug, Clone)]
enum State {
    Running,
    Command {
        id: u64,
        after: AfterCommand,
    },
    Dial {
        id: u64,
        continue_after_answer: bool,
    },
    Timer {
        until: Option<Instant>,
        cause_after: Option<u32>,
    },
    VoicemailStarting {
        id: u64,
        mode: VoicemailMode,
    },
    Voicemail {
        session_id: String,
        mode: VoicemailMode,
    },
    Digits {
        collected: String,
        deadline: Instant,
    },
    Finished,
}

/// The interpreter of one channel.
pub struct Call {
    dialplan: Arc<Dialplan>,
    info: ChannelInfo,
    position: Position,
    variables: HashMap<String, Text>,
    caller_number: Text,
    caller_name: Text,
    state: State,
    /// Running the `h` extension: the caller is gone.
    in_hangup: bool,
    answered: bool,
    stack: Vec<Frame>,
    actions: VecDeque<Action>,
    next_id: u64,
    started: Instant,
    now: Instant,
    absolute_deadline: Option<Instant>,
    digit_timeout: Duration,
    response_timeout: Duration,
}

impl Call {
    /// A new channel in `info.context` at `info.exten`, priority 1.
    pub fn new(dialplan: Arc<Dialplan>, info: ChannelInfo, now: Instant) -> Self {
        let mut variables: HashMap<String, Text> = info
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), Text::outside(v.as_str())))
            .collect();
        variables.remove("EXTEN");
        let mut call = Self {
            position: Position {
                context: info.context.clone(),
                home: info.context.clone(),
                extension: 0,
                exten: Text::outside(info.exten.as_str()),
                priority: 1,
            },
            caller_number: Text::outside(info.caller_number.as_str()),
            caller_name: Text::outside(info.caller_name.as_str()),
            dialplan,
            info,
            variables: std::mem::take(&mut variables),
            state: State::Running,
            in_hangup: false,
            answered: false,
            stack: Vec::new(),
            actions: VecDeque::new(),
            next_id: 1,
            started: now,
            now,
            absolute_deadline: None,
            digit_timeout: DEFAULT_DIGIT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        };
        let context = call.info.context.clone();
        match call.find(&context, &call.info.exten.clone()) {
            Some((home, index)) => {
                call.position.home = home;
                call.position.extension = index;
                call.run();
            }
            None => {
                call.log(
                    LogLevel::Notice,
                    format!(
                        "no extension '{}' in context '{}' (or its includes): refusing the call",
                        call.info.exten, call.info.context
                    ),
                );
                call.command(Command::Hangup {
                    cause: cause::UNALLOCATED,
                });
                call.state = State::Finished;
            }
        }
        call
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Call::handle_timeout`] is due, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state_deadline = match &self.state {
            State::Timer { until, .. } => *until,
            State::Digits { deadline, .. } => Some(*deadline),
            _ => None,
        };
        let absolute = self.absolute_deadline.filter(|_| !self.in_hangup);
        match (state_deadline, absolute) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// The voicemail session the call is in, if any (to stop it when the call ends).
    pub fn voicemail_session(&self) -> Option<&str> {
        match &self.state {
            State::Voicemail { session_id, .. } => Some(session_id),
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.is_finished() {
            return;
        }
        if let Some(deadline) = self.absolute_deadline.filter(|_| !self.in_hangup) {
            if now >= deadline {
                self.absolute_deadline = None;
                self.absolute_timeout();
                return;
            }
        }
        match std::mem::replace(&mut self.state, State::Running) {
            State::Timer {
                until: Some(until),
                cause_after,
            } if now >= until => match cause_after {
                Some(cause) => self.hang_up(cause),
                None => self.advance(),
            },
            State::Digits {
                collected,
                deadline,
            } if now >= deadline => {
                self.digits_done(collected);
            }
            other => {
                self.state = other;
                return;
            }
        }
        self.run();
    }

    pub fn handle_event(&mut self, now: Instant, event: Event) {
        self.now = now;
        if self.is_finished() {
            return;
        }
        if let Event::HangUp { cause } = event {
            self.caller_gone(cause);
            self.run();
            return;
        }
        let state = std::mem::replace(&mut self.state, State::Running);
        match (state, event) {
            (State::Command { id, after }, Event::CommandDone { id: done, error })
                if id == done =>
            {
                self.command_done(after, error);
            }
            (
                State::Dial {
                    id,
                    continue_after_answer,
                },
                Event::DialResult {
                    id: done,
                    status,
                    answered_secs,
                },
            ) if id == done => {
                self.set_var("DIALSTATUS", status.as_str());
                if status == DialStatus::Answer {
                    self.set_var("ANSWEREDTIME", &answered_secs.to_string());
                    if !continue_after_answer {
                        // The callee hung up after talking: Dial ends the call (no `g`).
                        self.hang_up(cause::NORMAL_CLEARING);
                        self.run();
                        return;
                    }
                }
                self.advance();
            }
            (
                State::VoicemailStarting { id, mode },
                Event::VoicemailStarted {
                    id: done,
                    session_id,
                    rtp_ip,
                    rtp_port,
                },
            ) if id == done => {
                let id = self.command(Command::ConnectVoicemail {
                    session_id: session_id.clone(),
                    rtp_ip,
                    rtp_port,
                });
                self.state = State::Command {
                    id,
                    after: AfterCommand::Voicemail { session_id, mode },
                };
                return;
            }
            (State::VoicemailStarting { id, mode }, Event::VoicemailFailed { id: done, error })
                if id == done =>
            {
                self.log(
                    LogLevel::Warning,
                    format!("voicemail could not start: {error}"),
                );
                if mode == VoicemailMode::Leave {
                    self.set_var("VMSTATUS", VmStatus::Failed.as_str());
                }
                self.advance();
            }
            (
                State::Voicemail { session_id, mode },
                Event::VoicemailFinished {
                    session_id: done,
                    status,
                    exit_extension,
                },
            ) if session_id == done => {
                if mode == VoicemailMode::Leave {
                    self.set_var("VMSTATUS", status.as_str());
                }
                match exit_extension {
                    // `0` and `*` in VoiceMail jump to `o` and `a` in the current context.
                    Some(exten) if !exten.is_empty() => {
                        let context = self.position.context.clone();
                        self.jump(&context, Text::trusted(exten), Text::trusted("1"));
                    }
                    _ => self.advance(),
                }
            }
            (State::Digits { mut collected, .. }, Event::Dtmf(digit)) => {
                if digit == '#' && !collected.is_empty() {
                    self.digits_done(collected);
                } else {
                    collected.push(digit);
                    self.state = State::Digits {
                        collected,
                        deadline: now + self.digit_timeout,
                    };
                    return;
                }
            }
            (state, event) => {
                // Not what this state waits for (a late answer, a digit while dialling).
                self.state = state;
                if !matches!(event, Event::Dtmf(_)) {
                    self.log(LogLevel::Debug, format!("event ignored: {event:?}"));
                }
                return;
            }
        }
        self.run();
    }

    // ---- running priorities ----

    fn run(&mut self) {
        let mut steps = 0u32;
        while matches!(self.state, State::Running) {
            steps += 1;
            if steps > MAX_STEPS_WITHOUT_WAITING {
                self.log(
                    LogLevel::Error,
                    format!(
                        "more than {MAX_STEPS_WITHOUT_WAITING} priorities without waiting: a dialplan loop? hanging up"
                    ),
                );
                self.finish_with_hangup(cause::NORMAL_CLEARING);
                return;
            }
            let Some(step) = self
                .current_extension()
                .and_then(|e| e.step(self.position.priority))
                .cloned()
            else {
                self.fall_through();
                continue;
            };
            self.execute(step);
        }
    }

    fn current_extension(&self) -> Option<&Extension> {
        self.dialplan
            .context(&self.position.home)?
            .extensions()
            .get(self.position.extension)
    }

    fn execute(&mut self, step: crate::dialplan::Step) {
        let mut warnings = Vec::new();
        let args = subst::substitute(&step.args, &*self, &mut warnings);
        for warning in warnings {
            self.log(LogLevel::Warning, format!("{}: {warning}", step.location));
        }
        self.actions.push_back(Action::Step(StepTrace {
            context: self.position.context.clone(),
            exten: self.position.exten.as_str().to_owned(),
            priority: self.position.priority,
            app: step.app_name.clone(),
            args: args.as_str().to_owned(),
            location: step.location.clone(),
        }));
        if self.in_hangup && !step.app.runs_after_hangup() {
            self.log(
                LogLevel::Notice,
                format!(
                    "{}: {}() cannot run after hang-up; ending",
                    step.location, step.app_name
                ),
            );
            self.state = State::Finished;
            return;
        }
        match step.app {
            App::NoOp => self.advance(),
            App::Set => {
                self.app_set(&args, &step.location);
                self.advance();
            }
            App::Goto => match Target::parse(&args) {
                Some(target) => self.goto(target),
                None => self.bad_args(&step, "expected [[context,]extension,]priority"),
            },
            App::GotoIf => {
                let (condition, yes, no) = apps::split_condition(&args);
                let branch = if apps::condition_is_true(condition.as_str()) {
                    yes
                } else {
                    no
                };
                match branch {
                    None => self.advance(),
                    Some(b) => match Target::parse(&b) {
                        Some(target) => self.goto(target),
                        None => self.bad_args(&step, "bad label"),
                    },
                }
            }
            App::Gosub => match Target::parse(&args) {
                Some(target) => self.gosub(target),
                None => self.bad_args(&step, "expected [[context,]extension,]priority[(args)]"),
            },
            App::Return => self.gosub_return(args),
            App::Answer => {
                let id = self.command(Command::Answer);
                self.state = State::Command {
                    id,
                    after: AfterCommand::Next,
                };
            }
            App::Progress | App::Ringing => {
                let indication = if step.app == App::Progress {
                    Indication::Progress
                } else {
                    Indication::Ringing
                };
                let id = self.command(Command::Indicate(indication));
                self.state = State::Command {
                    id,
                    after: AfterCommand::Next,
                };
            }
            App::Busy | App::Congestion => {
                let (indication, cause) = if step.app == App::Busy {
                    (Indication::Busy, cause::USER_BUSY)
                } else {
                    (Indication::Congestion, cause::CONGESTION)
                };
                let timeout = seconds(args.as_str()).filter(|d| !d.is_zero());
                let id = self.command(Command::Indicate(indication));
                self.state = State::Command {
                    id,
                    after: AfterCommand::Busy { cause, timeout },
                };
            }
            App::Hangup => {
                let cause = match args.as_str().trim() {
                    "" => cause::NORMAL_CLEARING,
                    text => apps::hangup_cause(text).unwrap_or_else(|| {
                        self.log(
                            LogLevel::Warning,
                            format!("{}: unknown hang-up cause '{text}'", step.location),
                        );
                        cause::NORMAL_CLEARING
                    }),
                };
                self.hang_up(cause);
            }
            App::Wait => match seconds(args.as_str()) {
                Some(d) if !self.in_hangup => {
                    self.state = State::Timer {
                        until: Some(self.now + d),
                        cause_after: None,
                    };
                }
                Some(_) => self.advance(),
                None => self.bad_args(&step, "expected a number of seconds"),
            },
            App::WaitExten => {
                let response = seconds(args.as_str().split(',').next().unwrap_or(""))
                    .unwrap_or(self.response_timeout);
                self.state = State::Digits {
                    collected: String::new(),
                    deadline: self.now + response,
                };
            }
            App::Playback => self.app_playback(&args),
            App::Dial => self.app_dial(&args, &step),
            App::VoiceMail | App::VoiceMailMain => {
                let mode = if step.app == App::VoiceMail {
                    VoicemailMode::Leave
                } else {
                    VoicemailMode::Main
                };
                self.app_voicemail(mode, &args, &step);
            }
            App::Log => {
                let (level, message) = match args.split_once_trusted(',') {
                    Some((l, m)) => (l.as_str().trim().to_ascii_uppercase(), m),
                    None => ("NOTICE".to_owned(), args.clone()),
                };
                let level = match level.as_str() {
                    "ERROR" => LogLevel::Error,
                    "WARNING" | "SECURITY" => LogLevel::Warning,
                    "DEBUG" | "VERBOSE" | "DTMF" => LogLevel::Debug,
                    _ => LogLevel::Notice,
                };
                self.log(level, message.into_string());
                self.advance();
            }
            App::Verbose => {
                let message = match args.split_once_trusted(',') {
                    Some((level, m))
                        if level.as_str().trim().chars().all(|c| c.is_ascii_digit()) =>
                    {
                        m
                    }
                    _ => args,
                };
                self.log(LogLevel::Notice, message.into_string());
                self.advance();
            }
            App::While => {
                if apps::condition_is_true(args.as_str()) {
                    self.advance();
                } else {
                    self.leave_loop(&step, step.priority);
                }
            }
            // Back to the loop's While, which tests its condition again.
            App::EndWhile | App::ContinueWhile => match self.enclosing_while(step.priority) {
                Some(priority) => {
                    self.position.priority = priority;
                    self.state = State::Running;
                }
                None => self.bad_args(&step, "no While() before it in this extension"),
            },
            App::ExitWhile => match self.enclosing_while(step.priority) {
                Some(priority) => self.leave_loop(&step, priority),
                None => self.bad_args(&step, "no While() before it in this extension"),
            },
            App::Unsupported => {
                self.log(
                    LogLevel::Error,
                    format!(
                        "{}: application {}() is not supported by this router; hanging up",
                        step.location, step.app_name
                    ),
                );
                self.hang_up(cause::NORMAL_CLEARING);
            }
        }
    }

    fn bad_args(&mut self, step: &crate::dialplan::Step, why: &str) {
        self.log(
            LogLevel::Warning,
            format!(
                "{}: {}({}): {why}; hanging up",
                step.location, step.app_name, step.args
            ),
        );
        self.hang_up(cause::NORMAL_CLEARING);
    }

    fn advance(&mut self) {
        self.position.priority += 1;
        self.state = State::Running;
    }

    /// The While() of the loop that holds `priority` (app_while matches them by
    /// nesting in the extension's priorities): the nearest While before it whose
    /// EndWhile does not come before `priority`.
    fn enclosing_while(&self, priority: u32) -> Option<u32> {
        let steps = &self.current_extension()?.steps;
        let mut depth = 0u32;
        for step in steps.iter().rev().filter(|s| s.priority < priority) {
            match step.app {
                App::EndWhile => depth += 1,
                App::While if depth == 0 => return Some(step.priority),
                App::While => depth -= 1,
                _ => {}
            }
        }
        None
    }

    /// Out of the loop that `while_priority` opens: to the priority after its matching
    /// EndWhile (or the end of the extension when it has none, with a warning).
    fn leave_loop(&mut self, step: &crate::dialplan::Step, while_priority: u32) {
        let end = self.current_extension().and_then(|e| {
            let mut depth = 0u32;
            e.steps
                .iter()
                .filter(|s| s.priority > while_priority)
                .find(|s| match s.app {
                    App::While => {
                        depth += 1;
                        false
                    }
                    App::EndWhile if depth == 0 => true,
                    App::EndWhile => {
                        depth -= 1;
                        false
                    }
                    _ => false,
                })
                .map(|s| s.priority)
        });
        match end {
            Some(priority) => {
                self.position.priority = priority + 1;
                self.state = State::Running;
            }
            None => self.bad_args(step, "no matching EndWhile() in this extension"),
        }
    }

    /// The priority after the last one does not exist: Asterisk's autofallthrough.
    fn fall_through(&mut self) {
        if self.in_hangup {
            self.state = State::Finished;
            return;
        }
        // Asterisk indicates busy or congestion after a failed Dial; on an answered
        // channel that means nothing and the call simply clears.
        let cause = match self.variables.get("DIALSTATUS").map(Text::as_str) {
            _ if self.answered => cause::NORMAL_CLEARING,
            Some("BUSY") => cause::USER_BUSY,
            Some("CONGESTION" | "CHANUNAVAIL") => cause::CONGESTION,
            _ => cause::NORMAL_CLEARING,
        };
        self.log(
            LogLevel::Debug,
            format!(
                "end of the dialplan at {},{},{}: hanging up",
                self.position.context, self.position.exten, self.position.priority
            ),
        );
        self.hang_up(cause);
    }

    /// The router ends the call: tells the edge, then runs `h`.
    fn hang_up(&mut self, cause: u32) {
        if self.in_hangup {
            self.state = State::Finished;
            return;
        }
        self.command(Command::Hangup { cause });
        self.set_var("HANGUPCAUSE", &cause.to_string());
        self.enter_h();
    }

    fn finish_with_hangup(&mut self, cause: u32) {
        if !self.in_hangup {
            self.command(Command::Hangup { cause });
        }
        self.state = State::Finished;
    }

    /// The caller hung up.
    fn caller_gone(&mut self, cause: u32) {
        if let State::Voicemail { session_id, .. } = &self.state {
            self.actions.push_back(Action::StopVoicemail {
                session_id: session_id.clone(),
            });
        }
        if self.in_hangup {
            return;
        }
        if matches!(self.state, State::Dial { .. }) {
            self.set_var("DIALSTATUS", DialStatus::Cancel.as_str());
        }
        self.set_var("HANGUPCAUSE", &cause.to_string());
        self.enter_h();
    }

    fn enter_h(&mut self) {
        self.in_hangup = true;
        self.stack.clear();
        let context = self.position.context.clone();
        match self.find(&context, "h") {
            Some((home, index)) => {
                self.position = Position {
                    context,
                    home,
                    extension: index,
                    exten: Text::trusted("h"),
                    priority: 1,
                };
                self.state = State::Running;
            }
            None => self.state = State::Finished,
        }
    }

    fn absolute_timeout(&mut self) {
        if let State::Voicemail { session_id, .. } = &self.state {
            self.actions.push_back(Action::StopVoicemail {
                session_id: session_id.clone(),
            });
        }
        if matches!(self.state, State::Dial { .. }) {
            self.log(
                LogLevel::Notice,
                "absolute timeout during Dial: hanging up".into(),
            );
            self.hang_up(cause::NORMAL_CLEARING);
        } else {
            let context = self.position.context.clone();
            if self.find(&context, "T").is_some() {
                self.jump(&context, Text::trusted("T"), Text::trusted("1"));
            } else {
                self.log(LogLevel::Notice, "absolute timeout: hanging up".into());
                self.hang_up(cause::NORMAL_CLEARING);
            }
        }
        self.run();
    }

    fn digits_done(&mut self, collected: String) {
        let context = self.position.context.clone();
        if collected.is_empty() {
            if self.find(&context, "t").is_some() {
                self.jump(&context, Text::trusted("t"), Text::trusted("1"));
            } else {
                self.log(
                    LogLevel::Notice,
                    format!("timeout, and no 't' in context '{context}': hanging up"),
                );
                self.hang_up(cause::NORMAL_CLEARING);
            }
            return;
        }
        self.jump(&context, Text::outside(collected), Text::trusted("1"));
    }

    fn command_done(&mut self, after: AfterCommand, error: Option<String>) {
        match after {
            AfterCommand::Next => {
                if let Some(e) = error {
                    self.log(LogLevel::Warning, format!("command failed: {e}"));
                } else if self.last_command_was_answer() {
                    self.answered = true;
                }
                self.advance();
            }
            AfterCommand::Playback { files, noanswer } => {
                if error.is_some() {
                    self.set_var("PLAYBACKSTATUS", "FAILED");
                    self.advance();
                    return;
                }
                self.answered = true;
                let id = self.command(Command::Playback { files, noanswer });
                self.state = State::Command {
                    id,
                    after: AfterCommand::PlaybackDone,
                };
            }
            AfterCommand::PlaybackDone => {
                self.set_var(
                    "PLAYBACKSTATUS",
                    if error.is_none() { "SUCCESS" } else { "FAILED" },
                );
                self.advance();
            }
            AfterCommand::Busy { cause, timeout } => {
                self.state = State::Timer {
                    until: timeout.map(|t| self.now + t),
                    cause_after: Some(cause),
                };
            }
            AfterCommand::Voicemail { session_id, mode } => match error {
                None => {
                    self.answered = true;
                    self.state = State::Voicemail { session_id, mode };
                }
                Some(e) => {
                    self.log(
                        LogLevel::Warning,
                        format!("cannot connect the caller to voicemail: {e}"),
                    );
                    self.actions.push_back(Action::StopVoicemail { session_id });
                    if mode == VoicemailMode::Leave {
                        self.set_var("VMSTATUS", VmStatus::Failed.as_str());
                    }
                    self.advance();
                }
            },
        }
    }

    fn last_command_was_answer(&self) -> bool {
        matches!(
            self.current_extension()
                .and_then(|e| e.step(self.position.priority))
                .map(|s| s.app),
            Some(App::Answer)
        )
    }

    // ---- jumps ----

    /// The context holding the extension `exten` reaches from `context`, and its index.
    fn find(&self, context: &str, exten: &str) -> Option<(String, usize)> {
        self.dialplan
            .find(context, exten, self.caller_number.as_str())
            .map(|found| (found.context.to_owned(), found.index))
    }

    /// Goes to `exten` in `context` at `priority` (a number or a label).
    fn jump(&mut self, context: &str, exten: Text, priority: Text) {
        let Some(found) = self
            .dialplan
            .find(context, exten.as_str(), self.caller_number.as_str())
        else {
            self.invalid_extension(context, exten);
            return;
        };
        let priority_number = match priority.as_str().trim().parse::<u32>() {
            Ok(p) if p > 0 => Some(p),
            _ => found.extension.label(priority.as_str().trim()),
        };
        let Some(priority_number) = priority_number else {
            self.log(
                LogLevel::Warning,
                format!(
                    "priority '{}' is neither a number nor a label of '{}' in '{}': hanging up",
                    priority, exten, found.context
                ),
            );
            self.hang_up(cause::NORMAL_CLEARING);
            return;
        };
        self.position = Position {
            context: context.to_owned(),
            home: found.context.to_owned(),
            extension: found.index,
            exten,
            priority: priority_number,
        };
        self.state = State::Running;
    }

    fn invalid_extension(&mut self, context: &str, exten: Text) {
        if self.in_hangup {
            self.state = State::Finished;
            return;
        }
        if exten.as_str() != "i" {
            if let Some((home, index)) = self.find(context, "i") {
                self.log(
                    LogLevel::Notice,
                    format!("invalid extension '{exten}' in '{context}': going to 'i'"),
                );
                self.variables.insert("INVALID_EXTEN".into(), exten);
                self.position = Position {
                    context: context.to_owned(),
                    home,
                    extension: index,
                    exten: Text::trusted("i"),
                    priority: 1,
                };
                self.state = State::Running;
                return;
            }
        }
        self.log(
            LogLevel::Notice,
            format!("extension '{exten}' does not exist in context '{context}': hanging up"),
        );
        self.hang_up(cause::UNALLOCATED);
    }

    fn goto(&mut self, target: Target) {
        let context = target
            .context
            .map(|c| c.into_string())
            .unwrap_or_else(|| self.position.context.clone());
        let exten = target
            .extension
            .unwrap_or_else(|| self.position.exten.clone());
        if self.dialplan.context(&context).is_none() {
            self.log(
                LogLevel::Warning,
                format!("Goto: no context '{context}': hanging up"),
            );
            self.hang_up(cause::NORMAL_CLEARING);
            return;
        }
        self.jump(&context, exten, target.priority);
    }

    fn gosub(&mut self, target: Target) {
        if self.stack.len() >= MAX_GOSUB_DEPTH {
            self.log(
                LogLevel::Error,
                format!("Gosub nested more than {MAX_GOSUB_DEPTH} deep: hanging up"),
            );
            self.hang_up(cause::NORMAL_CLEARING);
            return;
        }
        let mut ret = self.position.clone();
        ret.priority += 1;
        let count = target
            .args
            .len()
            .max(self.stack.last().map(|f| f.saved_args.len()).unwrap_or(0));
        let saved_args = (1..=count)
            .map(|n| self.variables.get(&format!("ARG{n}")).cloned())
            .collect();
        for n in 1..=count {
            self.variables.remove(&format!("ARG{n}"));
        }
        for (n, arg) in target.args.iter().enumerate() {
            self.variables.insert(format!("ARG{}", n + 1), arg.clone());
        }
        self.stack.push(Frame { ret, saved_args });
        self.goto(target);
    }

    fn gosub_return(&mut self, value: Text) {
        self.variables.insert("GOSUB_RETVAL".into(), value);
        let Some(frame) = self.stack.pop() else {
            self.log(
                LogLevel::Warning,
                "Return() without Gosub(): hanging up".into(),
            );
            self.hang_up(cause::NORMAL_CLEARING);
            return;
        };
        for (n, saved) in frame.saved_args.into_iter().enumerate() {
            let name = format!("ARG{}", n + 1);
            match saved {
                Some(v) => self.variables.insert(name, v),
                None => self.variables.remove(&name),
            };
        }
        self.position = frame.ret;
        self.state = State::Running;
    }

    // ---- applications with more to them ----

    fn app_set(&mut self, args: &Text, location: &Location) {
        let Some((name, value)) = args.split_once_trusted('=') else {
            self.log(
                LogLevel::Warning,
                format!("{location}: Set({args}): expected name=value"),
            );
            return;
        };
        let name = name.trim();
        if name.has_outside() || name.is_empty() {
            self.log(
                LogLevel::Warning,
                format!(
                    "{location}: Set(): the variable name '{name}' comes from the caller; refused"
                ),
            );
            return;
        }
        let name = name.as_str().trim_start_matches('_');
        if let Some((function, fargs)) = subst::function_call(name) {
            match function.to_ascii_uppercase().as_str() {
                "CALLERID" => match fargs.trim().to_ascii_lowercase().as_str() {
                    "num" | "number" => self.caller_number = value,
                    "name" => self.caller_name = value,
                    "all" => {
                        let parsed = asterisk_conf::CallerId::parse(value.as_str());
                        let keep = |s: String| {
                            if value.has_outside() {
                                Text::outside(s)
                            } else {
                                Text::trusted(s)
                            }
                        };
                        self.caller_number = keep(parsed.number);
                        self.caller_name = keep(parsed.name);
                    }
                    other => self.log(
                        LogLevel::Warning,
                        format!("{location}: CALLERID({other}) cannot be set"),
                    ),
                },
                "TIMEOUT" => {
                    let secs = seconds(value.as_str());
                    match (fargs.trim().to_ascii_lowercase().as_str(), secs) {
                        ("absolute", Some(d)) => {
                            self.absolute_deadline = (!d.is_zero()).then(|| self.now + d);
                        }
                        ("digit", Some(d)) => self.digit_timeout = d,
                        ("response", Some(d)) => self.response_timeout = d,
                        (kind, _) => self.log(
                            LogLevel::Warning,
                            format!("{location}: TIMEOUT({kind})={value}: expected absolute, digit or response and seconds"),
                        ),
                    }
                }
                other => self.log(
                    LogLevel::Warning,
                    format!("{location}: {other}() cannot be set by this router"),
                ),
            }
            return;
        }
        self.variables.insert(name.to_owned(), value);
    }

    fn app_playback(&mut self, args: &Text) {
        let parts = args.split_trusted(',');
        let files: Vec<String> = parts
            .first()
            .map(|f| {
                f.split_trusted('&')
                    .into_iter()
                    .map(|t| t.trim().into_string())
                    .filter(|f| !f.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let options = parts
            .get(1)
            .map(|o| o.as_str().to_owned())
            .unwrap_or_default();
        let noanswer = options.contains("noanswer");
        if files.is_empty() {
            self.set_var("PLAYBACKSTATUS", "FAILED");
            self.advance();
            return;
        }
        if !self.answered && options.contains("skip") {
            self.set_var("PLAYBACKSTATUS", "SUCCESS");
            self.advance();
            return;
        }
        if !self.answered && !noanswer {
            let id = self.command(Command::Answer);
            self.state = State::Command {
                id,
                after: AfterCommand::Playback { files, noanswer },
            };
        } else {
            let id = self.command(Command::Playback { files, noanswer });
            self.state = State::Command {
                id,
                after: AfterCommand::PlaybackDone,
            };
        }
    }

    fn app_dial(&mut self, args: &Text, step: &crate::dialplan::Step) {
        let spec = apps::parse_dial(args);
        for refused in &spec.refused {
            self.log(
                LogLevel::Warning,
                format!("{}: Dial: {refused}", step.location),
            );
        }
        if !spec.ignored_options.is_empty() {
            self.log(
                LogLevel::Debug,
                format!(
                    "{}: Dial options {:?} are not acted on",
                    step.location, spec.ignored_options
                ),
            );
        }
        if spec.targets.is_empty() {
            self.set_var("DIALSTATUS", DialStatus::ChanUnavail.as_str());
            self.advance();
            return;
        }
        let continue_after_answer = spec.continue_after_answer;
        let id = self.command(Command::Dial {
            spec,
            caller_number: self.caller_number.as_str().to_owned(),
            caller_name: self.caller_name.as_str().to_owned(),
        });
        self.state = State::Dial {
            id,
            continue_after_answer,
        };
    }

    fn app_voicemail(&mut self, mode: VoicemailMode, args: &Text, step: &crate::dialplan::Step) {
        let Some((mailbox, context, options)) = apps::parse_mailbox(args) else {
            self.log(
                LogLevel::Warning,
                format!(
                    "{}: {}({args}): expected mailbox@context",
                    step.location, step.app_name
                ),
            );
            if mode == VoicemailMode::Leave {
                self.set_var("VMSTATUS", VmStatus::Failed.as_str());
            }
            self.advance();
            return;
        };
        let id = self.next_id();
        self.actions.push_back(Action::StartVoicemail {
            id,
            request: VoicemailRequest {
                mode,
                mailbox,
                context,
                options,
                caller_number: self.caller_number.as_str().to_owned(),
                caller_name: self.caller_name.as_str().to_owned(),
                channel: self.info.channel.clone(),
                unique_id: self.info.unique_id.clone(),
            },
        });
        self.state = State::VoicemailStarting { id, mode };
    }

    // ---- helpers ----

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn command(&mut self, command: Command) -> u64 {
        let id = self.next_id();
        self.actions.push_back(Action::Command { id, command });
        id
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.actions.push_back(Action::Log { level, message });
    }

    fn set_var(&mut self, name: &str, value: &str) {
        self.variables.insert(name.to_owned(), Text::trusted(value));
    }

    /// A variable's current value (tests and traces).
    pub fn variable(&self, name: &str) -> Option<Text> {
        Env::variable(self, name)
    }
}

impl Env for Call {
    fn variable(&self, name: &str) -> Option<Text> {
        match name {
            "EXTEN" => Some(self.position.exten.clone()),
            "CONTEXT" => Some(Text::trusted(self.position.context.as_str())),
            "PRIORITY" => Some(Text::trusted(self.position.priority.to_string())),
            "CHANNEL" => Some(Text::trusted(self.info.channel.as_str())),
            "UNIQUEID" => Some(Text::trusted(self.info.unique_id.as_str())),
            "EPOCH" => Some(Text::trusted(format!("{}", self.epoch().floor() as i64))),
            _ => self.variables.get(name).cloned().or_else(|| {
                self.dialplan
                    .globals
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| Text::trusted(v.as_str()))
            }),
        }
    }

    fn caller_id(&self) -> (&Text, &Text) {
        (&self.caller_number, &self.caller_name)
    }

    fn epoch(&self) -> f64 {
        self.info.epoch
            + self
                .now
                .saturating_duration_since(self.started)
                .as_secs_f64()
    }
}

/// Seconds as Wait() and TIMEOUT() take them: a decimal number.
fn seconds(text: &str) -> Option<Duration> {
    let t = text.trim();
    let secs: f64 = t.parse().ok()?;
    (0.0..1.0e7)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
}
