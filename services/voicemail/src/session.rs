//! One voicemail session, sans I/O: `VoiceMail()` (greeting, beep, recording) and
//! `VoiceMailMain()` (login, counts, the message menu, mailbox options), driven by
//! 20 ms ticks (with the caller's audio for the tick, when it has come) and by DTMF
//! digits, answering with 20 ms of audio to send. Storage is asked through [`Action::Query`] (the session waits for
//! [`Session::on_reply`]) and changed through [`Action::Apply`] (the runner carries
//! the changes out in order, even after the caller hangs up). Time is the tick count,
//! so every timeout is tested on simulated time.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::audio::{digits, number, Clip, Item, Player, Prompts, FRAME};
use crate::recorder::{Limits, Recorder, Stop};
use crate::saydate;

/// Milliseconds per tick.
pub const TICK_MS: u64 = 20;
/// How long a menu waits for a digit after its prompt before saying it again.
const MENU_WAIT_MS: u64 = 10_000;
/// How long digit entry (mailbox, password) waits after the last digit.
const DIGIT_WAIT_MS: u64 = 5_000;
/// Menu repeats before the session says goodbye.
const MENU_REPEATS: u32 = 3;

/// What came from the caller for one tick.
#[derive(Debug, Clone, Copy)]
pub enum Heard<'a> {
    /// The caller's next 20 ms.
    Audio(&'a [i16; FRAME]),
    /// No packets for a while: 20 ms of silence that is not the caller's.
    Nothing,
    /// The audio for this tick has not come yet (it will be given by `hear`).
    NotYet,
}

/// Asterisk's folders, by the digit VoiceMailMain gives each.
pub const FOLDERS: [&str; 5] = ["INBOX", "Old", "Work", "Family", "Friends"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greeting {
    Unavailable,
    Busy,
    Name,
}

impl Greeting {
    pub fn file(self) -> &'static str {
        match self {
            Greeting::Unavailable => "unavail",
            Greeting::Busy => "busy",
            Greeting::Name => "greet",
        }
    }
}

/// A stored message as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageInfo {
    pub id: String,
    pub folder: String,
    pub caller_id_number: String,
    pub caller_id_name: String,
    pub origtime: DateTime<Utc>,
    pub duration_secs: u32,
}

/// A mailbox, once known: what the session needs of `voicemail.conf` and of storage.
#[derive(Debug, Clone, PartialEq)]
pub struct MailboxInfo {
    pub mailbox: String,
    pub context: String,
    /// The PIN in force (a changed PIN from storage wins over the file's).
    pub pin: String,
    pub pin_locked: bool,
    pub max_msg: u32,
    pub skip_ms: u32,
    pub limits: Limits,
    /// The `[zonemessages]` entry: its zone and say format.
    pub tz: chrono_tz::Tz,
    pub say_format: String,
}

/// What the session asks of storage and waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// The mailbox's settings; `None` in the reply when there is no such mailbox.
    Mailbox {
        mailbox: String,
    },
    Counts,
    Greeting(Greeting),
    List {
        folder: String,
    },
    Audio {
        folder: String,
        id: String,
    },
}

#[derive(Debug, Clone)]
pub enum Reply {
    Mailbox(Option<Box<MailboxInfo>>),
    Counts {
        new: u32,
        old: u32,
    },
    Greeting(Option<Clip>),
    List(Vec<MessageInfo>),
    Audio(Option<Clip>),
    /// The store could not answer.
    Failed(String),
}

/// A change to storage, carried out by the runner in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new message in INBOX.
    SaveMessage {
        audio: Arc<[i16]>,
        duration_secs: u32,
    },
    Move {
        id: String,
        from: String,
        to: String,
    },
    Delete {
        id: String,
        folder: String,
    },
    SaveGreeting {
        greeting: Greeting,
        audio: Arc<[i16]>,
    },
    SetPin {
        pin: String,
    },
}

/// Asterisk's VMSTATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    UserExit,
    Failed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Query(Query),
    Apply(Change),
    /// The session is over (after its last words); the caller leaves it, to
    /// `exit_extension` when set (`o` for 0, `a` for *).
    Finished {
        status: Status,
        exit_extension: Option<&'static str>,
    },
}

/// How the session was started.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub main: bool,
    /// The mailbox given to the application; for VoiceMailMain it may be empty.
    pub mailbox: String,
    pub context: String,
    /// VoiceMail: `u`, `b`, `s` (no instructions). VoiceMailMain: `s` (no password).
    pub options: String,
    pub caller_id_number: String,
    pub caller_id_name: String,
    /// `maxlogins` of `[general]`: wrong logins before goodbye.
    pub max_logins: u32,
}

#[derive(Debug)]
enum State {
    /// Waiting for a query's reply; what comes next depends on it.
    Waiting(Pending),
    /// VoiceMail: the greeting (and instructions) play; then the beep.
    Greeting,
    Beep,
    Recording(Recorder),
    /// The last words play, then `Finished`.
    Closing {
        status: Status,
        exit: Option<&'static str>,
    },
    /// Digit entry: mailbox number, password, new PIN.
    Entry {
        purpose: Entry,
        digits: String,
        last_input_ms: u64,
    },
    /// A menu waits for a digit.
    Menu {
        menu: Menu,
        since_ms: u64,
        repeats: u32,
    },
    /// A message of the open folder plays.
    Playing,
    /// The instructions and beep before recording a greeting.
    GreetingPrompt(Greeting),
    /// Recording a greeting from the options menu.
    RecordingGreeting(Greeting, Recorder),
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    LeaveGreeting,
    LeaveCounts,
    Login,
    MainCounts,
    List,
    Audio,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Mailbox,
    Password,
    NewPin,
    ConfirmPin(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Menu {
    Main,
    Message,
    SaveTo,
    ChangeFolder,
    Options,
}

pub struct Session {
    start: Start,
    prompts: Arc<Prompts>,
    player: Player,
    state: State,
    actions: std::collections::VecDeque<Action>,
    now_ms: u64,
    /// Wall clock at tick 0, for envelopes ("today").
    epoch: DateTime<Utc>,
    mailbox: Option<MailboxInfo>,
    /// VoiceMail: the limits and `maxmsg` come with the mailbox.
    greeting: Option<Clip>,
    login_attempts: u32,
    folder: String,
    messages: Vec<MessageInfo>,
    current: usize,
    /// The current INBOX message has been heard: it moves to Old when left.
    heard: bool,
    /// Words to say before the next message (after a delete or a save).
    preface: Vec<Item>,
}

impl Session {
    /// A session; for VoiceMail, `mailbox` is the box being called (known to exist).
    pub fn new(
        start: Start,
        mailbox: Option<MailboxInfo>,
        prompts: Arc<Prompts>,
        epoch: DateTime<Utc>,
    ) -> Self {
        let mut s = Self {
            start,
            prompts,
            player: Player::default(),
            state: State::Done,
            actions: Default::default(),
            now_ms: 0,
            epoch,
            mailbox,
            greeting: None,
            login_attempts: 0,
            folder: FOLDERS[0].to_owned(),
            messages: Vec::new(),
            current: 0,
            heard: false,
            preface: Vec::new(),
        };
        s.begin();
        s
    }

    fn has_option(&self, c: char) -> bool {
        self.start.options.contains(c)
    }

    fn begin(&mut self) {
        if !self.start.main {
            let greeting = if self.has_option('b') {
                Greeting::Busy
            } else if self.has_option('u') {
                Greeting::Unavailable
            } else {
                Greeting::Name
            };
            self.query(Query::Greeting(greeting), Pending::LeaveGreeting);
        } else if self.start.mailbox.is_empty() {
            self.ask_mailbox();
        } else {
            self.query(
                Query::Mailbox {
                    mailbox: self.start.mailbox.clone(),
                },
                Pending::Login,
            );
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether the caller's audio is being recorded (a message or a greeting).
    pub fn is_recording(&self) -> bool {
        matches!(
            self.state,
            State::Recording(_) | State::RecordingGreeting(..)
        )
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Prompts asked for that the prompt set lacks (for a log line).
    pub fn take_missing_prompts(&mut self) -> Vec<String> {
        self.player.take_missing()
    }

    fn query(&mut self, query: Query, pending: Pending) {
        self.actions.push_back(Action::Query(query));
        self.state = State::Waiting(pending);
    }

    fn play(&mut self, items: Vec<Item>) {
        self.player.play(&self.prompts, items);
    }

    fn close(&mut self, status: Status, exit: Option<&'static str>, words: Vec<Item>) {
        self.play(words);
        self.state = State::Closing { status, exit };
    }

    fn menu(&mut self, menu: Menu, words: Vec<Item>) {
        self.play(words);
        self.state = State::Menu {
            menu,
            since_ms: self.now_ms,
            repeats: 0,
        };
    }

    fn entry(&mut self, purpose: Entry, words: Vec<Item>) {
        self.play(words);
        self.state = State::Entry {
            purpose,
            digits: String::new(),
            last_input_ms: self.now_ms,
        };
    }

    fn ask_mailbox(&mut self) {
        self.entry(Entry::Mailbox, vec![Item::Prompt("vm-login")]);
    }

    /// 20 ms: `received` is what the caller's side gave for this tick; `out` gets what
    /// to send.
    pub fn tick(&mut self, received: Heard<'_>, out: &mut [i16; FRAME]) {
        self.now_ms += TICK_MS;
        let finished_playing = self.player.frame(out);
        let idle = !self.player.is_playing();
        match &mut self.state {
            State::Greeting if idle => {
                self.play(vec![Item::Beep]);
                self.state = State::Beep;
            }
            State::Beep if idle => {
                let limits = self.limits();
                self.state = State::Recording(Recorder::new(limits));
            }
            State::Recording(_) | State::RecordingGreeting(..) => match received {
                Heard::Audio(frame) => self.hear(frame),
                Heard::Nothing => self.hear_nothing(),
                Heard::NotYet => {}
            },
            State::GreetingPrompt(greeting) if idle => {
                let greeting = *greeting;
                let limits = self.limits();
                self.state = State::RecordingGreeting(greeting, Recorder::new(limits));
            }
            State::Closing { status, exit } if idle => {
                let (status, exit) = (*status, *exit);
                self.finish(status, exit);
            }
            State::Entry { last_input_ms, .. } if idle => {
                // The wait starts when the prompt ends or at the last digit.
                if finished_playing {
                    *last_input_ms = self.now_ms;
                } else if self.now_ms - *last_input_ms >= DIGIT_WAIT_MS {
                    self.entry_done();
                }
            }
            State::Menu {
                menu,
                since_ms,
                repeats,
            } if idle => {
                if finished_playing {
                    *since_ms = self.now_ms;
                } else if self.now_ms - *since_ms >= MENU_WAIT_MS {
                    let (menu, repeats) = (*menu, *repeats + 1);
                    if repeats >= MENU_REPEATS {
                        self.goodbye();
                    } else {
                        let words = self.menu_words(menu);
                        self.menu(menu, words);
                        if let State::Menu { repeats: r, .. } = &mut self.state {
                            *r = repeats;
                        }
                    }
                }
            }
            State::Playing if idle => {
                let words = self.menu_words(Menu::Message);
                self.menu(Menu::Message, words);
            }
            _ => {}
        }
    }

    /// 20 ms of the caller's audio beyond the one of this tick (the media runs ahead
    /// of the clock after a busy moment): recorded if a recording runs, else dropped.
    pub fn hear(&mut self, frame: &[i16; FRAME]) {
        match &mut self.state {
            State::Recording(recorder) => {
                if let Some(stop) = recorder.push(frame) {
                    self.end_recording(stop, None);
                }
            }
            State::RecordingGreeting(_, recorder) => {
                if let Some(stop) = recorder.push(frame) {
                    self.end_greeting(stop);
                }
            }
            _ => {}
        }
    }

    fn hear_nothing(&mut self) {
        match &mut self.state {
            State::Recording(recorder) => {
                if let Some(stop) = recorder.push_missing() {
                    self.end_recording(stop, None);
                }
            }
            State::RecordingGreeting(_, recorder) => {
                if let Some(stop) = recorder.push_missing() {
                    self.end_greeting(stop);
                }
            }
            _ => {}
        }
    }

    fn limits(&self) -> Limits {
        self.mailbox.as_ref().map(|m| m.limits).unwrap_or(Limits {
            max_silence_secs: 0,
            silence_threshold: 128,
            max_secs: 0,
            min_secs: 0,
        })
    }

    fn finish(&mut self, status: Status, exit_extension: Option<&'static str>) {
        self.leave_message();
        self.player.stop();
        self.actions.push_back(Action::Finished {
            status,
            exit_extension,
        });
        self.state = State::Done;
    }

    fn goodbye(&mut self) {
        self.leave_message();
        self.close(Status::UserExit, None, vec![Item::Prompt("vm-goodbye")]);
    }

    /// The caller hung up: keep what was recorded, mark what was heard.
    pub fn hang_up(&mut self) {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Recording(recorder) => {
                self.state = State::Recording(recorder);
                self.end_recording(Stop::HangUp, None);
                if let State::Closing { status, exit } = self.state {
                    self.finish(status, exit);
                }
            }
            State::Done => {}
            State::Closing { status, exit } => self.finish(status, exit),
            _ => {
                let status = if self.start.main {
                    Status::UserExit
                } else {
                    Status::Failed
                };
                self.finish(status, None);
            }
        }
    }

    pub fn on_dtmf(&mut self, digit: char) {
        match &mut self.state {
            State::Greeting | State::Beep => match digit {
                '#' => {
                    // Skip the greeting, straight to the beep.
                    self.play(vec![Item::Beep]);
                    self.state = State::Beep;
                }
                '0' => self.finish(Status::UserExit, Some("o")),
                '*' => self.finish(Status::UserExit, Some("a")),
                _ => {}
            },
            State::Recording(_) => match digit {
                '#' | '*' => self.end_recording(Stop::Pound, None),
                // Asterisk keeps the message and sends the caller to the operator.
                '0' => self.end_recording(Stop::Pound, Some("o")),
                _ => {}
            },
            State::GreetingPrompt(_) => {}
            State::RecordingGreeting(..) => {
                if digit == '#' || digit == '*' {
                    self.end_greeting(Stop::Pound);
                }
            }
            State::Entry {
                digits,
                last_input_ms,
                ..
            } => {
                self.player.stop();
                if digit == '#' {
                    self.entry_done();
                } else if digits.len() < 32 {
                    digits.push(digit);
                    *last_input_ms = self.now_ms;
                }
            }
            State::Menu { menu, .. } => {
                let menu = *menu;
                self.player.stop();
                self.menu_digit(menu, digit);
            }
            State::Playing => match digit {
                '*' => self.seek(-1),
                '#' => self.seek(1),
                _ => {
                    self.player.stop();
                    self.menu_digit(Menu::Message, digit);
                }
            },
            State::Waiting(_) | State::Closing { .. } | State::Done => {}
        }
    }

    fn seek(&mut self, direction: i64) {
        let skip = self.mailbox.as_ref().map(|m| m.skip_ms).unwrap_or(3000);
        self.player.seek(direction * i64::from(skip));
    }

    pub fn on_reply(&mut self, reply: Reply) {
        let State::Waiting(pending) = self.state else {
            return;
        };
        match (pending, reply) {
            (_, Reply::Failed(error)) => {
                tracing::warn!(%error, "voicemail storage failed during a session");
                self.close(Status::Failed, None, vec![Item::Prompt("vm-goodbye")]);
            }
            (Pending::LeaveGreeting, Reply::Greeting(clip)) => {
                self.greeting = clip;
                self.query(Query::Counts, Pending::LeaveCounts);
            }
            (Pending::LeaveCounts, Reply::Counts { new, old }) => {
                let max = self.mailbox.as_ref().map(|m| m.max_msg).unwrap_or(100);
                if max > 0 && new + old >= max {
                    self.close(
                        Status::Failed,
                        None,
                        vec![Item::Prompt("vm-mailboxfull"), Item::Prompt("vm-goodbye")],
                    );
                    return;
                }
                let mut words = match self.greeting.take() {
                    Some(clip) => vec![Item::Audio(clip)],
                    None => {
                        let mut w = vec![Item::Prompt("vm-theperson")];
                        digits(&self.start.mailbox, &mut w);
                        w.push(Item::Prompt(if self.has_option('b') {
                            "vm-isonphone"
                        } else {
                            "vm-isunavail"
                        }));
                        w
                    }
                };
                if !self.has_option('s') {
                    words.push(Item::Prompt("vm-intro"));
                }
                self.play(words);
                self.state = State::Greeting;
            }
            (Pending::Login, Reply::Mailbox(info)) => {
                self.mailbox = info.map(|b| *b);
                if self.has_option('s') && self.mailbox.is_some() {
                    self.logged_in();
                } else {
                    self.entry(Entry::Password, vec![Item::Prompt("vm-password")]);
                }
            }
            (Pending::MainCounts, Reply::Counts { new, old }) => {
                let mut words = vec![Item::Prompt("vm-youhave")];
                if new == 0 && old == 0 {
                    words.extend([Item::Prompt("vm-no"), Item::Prompt("vm-messages")]);
                } else {
                    let count = |n: u32, folder: &'static str, words: &mut Vec<Item>| {
                        number(n, words);
                        words.push(Item::Prompt(folder));
                        words.push(Item::Prompt(if n == 1 {
                            "vm-message"
                        } else {
                            "vm-messages"
                        }));
                    };
                    if new > 0 {
                        count(new, "vm-INBOX", &mut words);
                    }
                    if new > 0 && old > 0 {
                        words.push(Item::Prompt("vm-and"));
                    }
                    if old > 0 {
                        count(old, "vm-Old", &mut words);
                    }
                }
                // New first: the folder to open with 1.
                self.folder = FOLDERS[if new == 0 && old > 0 { 1 } else { 0 }].to_owned();
                words.push(Item::Prompt("vm-mainmenu"));
                self.menu(Menu::Main, words);
            }
            (Pending::List, Reply::List(mut messages)) => {
                messages.sort_by(|a, b| a.origtime.cmp(&b.origtime).then(a.id.cmp(&b.id)));
                self.messages = messages;
                self.current = 0;
                if self.messages.is_empty() {
                    let words = vec![Item::Prompt("vm-nomessages"), Item::Prompt("vm-mainmenu")];
                    self.menu(Menu::Main, words);
                } else {
                    self.load_current();
                }
            }
            (Pending::Audio, Reply::Audio(clip)) => self.play_current(clip),
            (pending, reply) => {
                tracing::warn!(?pending, ?reply, "unexpected storage reply; ignored");
            }
        }
    }

    fn end_recording(&mut self, stop: Stop, exit: Option<&'static str>) {
        let State::Recording(recorder) = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        match recorder.finish(stop) {
            Some(audio) => {
                let duration_secs = (audio.len() as u32).div_ceil(8000);
                self.actions.push_back(Action::Apply(Change::SaveMessage {
                    audio: audio.into(),
                    duration_secs,
                }));
                let status = if exit.is_some() {
                    Status::UserExit
                } else {
                    Status::Success
                };
                let words = if stop == Stop::HangUp || exit.is_some() {
                    Vec::new()
                } else {
                    vec![Item::Prompt("vm-msgsaved"), Item::Prompt("vm-goodbye")]
                };
                self.close(status, exit, words);
            }
            None => {
                let words = if stop == Stop::HangUp {
                    Vec::new()
                } else {
                    vec![Item::Prompt("vm-goodbye")]
                };
                let status = if exit.is_some() {
                    Status::UserExit
                } else {
                    Status::Failed
                };
                self.close(status, exit, words);
            }
        }
    }

    fn end_greeting(&mut self, stop: Stop) {
        let State::RecordingGreeting(greeting, recorder) =
            std::mem::replace(&mut self.state, State::Done)
        else {
            return;
        };
        let mut words = Vec::new();
        if let Some(audio) = recorder.finish(stop) {
            self.actions.push_back(Action::Apply(Change::SaveGreeting {
                greeting,
                audio: audio.into(),
            }));
            words.push(Item::Prompt("vm-saved"));
        }
        words.push(Item::Prompt("vm-options"));
        self.menu(Menu::Options, words);
    }

    fn entry_done(&mut self) {
        let State::Entry {
            purpose, digits, ..
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return;
        };
        match purpose {
            Entry::Mailbox => {
                if digits.is_empty() {
                    self.failed_login();
                    return;
                }
                self.query(Query::Mailbox { mailbox: digits }, Pending::Login);
            }
            Entry::Password => {
                let ok = self
                    .mailbox
                    .as_ref()
                    .is_some_and(|m| !m.pin.is_empty() && m.pin == digits)
                    || self
                        .mailbox
                        .as_ref()
                        .is_some_and(|m| m.pin.is_empty() && digits.is_empty());
                if ok {
                    self.logged_in();
                } else {
                    self.failed_login();
                }
            }
            Entry::NewPin => {
                if digits.is_empty() {
                    self.menu(Menu::Options, vec![Item::Prompt("vm-options")]);
                } else {
                    self.entry(
                        Entry::ConfirmPin(digits),
                        vec![Item::Prompt("vm-reenterpassword")],
                    );
                }
            }
            Entry::ConfirmPin(first) => {
                if first == digits {
                    self.actions.push_back(Action::Apply(Change::SetPin {
                        pin: digits.clone(),
                    }));
                    if let Some(m) = &mut self.mailbox {
                        m.pin = digits;
                    }
                    self.menu(
                        Menu::Options,
                        vec![Item::Prompt("vm-passchanged"), Item::Prompt("vm-options")],
                    );
                } else {
                    self.menu(
                        Menu::Options,
                        vec![Item::Prompt("vm-mismatch"), Item::Prompt("vm-options")],
                    );
                }
            }
        }
    }

    fn failed_login(&mut self) {
        self.login_attempts += 1;
        if self.login_attempts >= self.start.max_logins.max(1) {
            self.close(
                Status::Failed,
                None,
                vec![Item::Prompt("vm-incorrect"), Item::Prompt("vm-goodbye")],
            );
            return;
        }
        if self.start.mailbox.is_empty() {
            self.mailbox = None;
            self.entry(
                Entry::Mailbox,
                vec![Item::Prompt("vm-incorrect"), Item::Prompt("vm-login")],
            );
        } else {
            self.entry(
                Entry::Password,
                vec![Item::Prompt("vm-incorrect"), Item::Prompt("vm-password")],
            );
        }
    }

    fn logged_in(&mut self) {
        self.query(Query::Counts, Pending::MainCounts);
    }

    fn menu_words(&self, menu: Menu) -> Vec<Item> {
        vec![Item::Prompt(match menu {
            Menu::Main => "vm-mainmenu",
            Menu::Message => "vm-msgmenu",
            Menu::SaveTo | Menu::ChangeFolder => "vm-savefolder",
            Menu::Options => "vm-options",
        })]
    }

    fn open_folder(&mut self, folder: &str) {
        self.leave_message();
        self.folder = folder.to_owned();
        self.query(
            Query::List {
                folder: folder.to_owned(),
            },
            Pending::List,
        );
    }

    fn load_current(&mut self) {
        let Some(m) = self.messages.get(self.current) else {
            return;
        };
        let query = Query::Audio {
            folder: m.folder.clone(),
            id: m.id.clone(),
        };
        self.query(query, Pending::Audio);
    }

    fn play_current(&mut self, clip: Option<Clip>) {
        let Some(m) = self.messages.get(self.current).cloned() else {
            return;
        };
        let mut words = std::mem::take(&mut self.preface);
        if self.current == 0 {
            words.push(Item::Prompt("vm-first"));
        } else if self.current + 1 == self.messages.len() {
            words.push(Item::Prompt("vm-last"));
        }
        words.push(Item::Prompt("vm-message"));
        number(self.current as u32 + 1, &mut words);
        words.extend(self.envelope(&m));
        words.push(Item::Silence { ms: 300 });
        if let Some(clip) = clip {
            words.push(Item::Audio(clip));
        }
        self.heard = m.folder == FOLDERS[0];
        self.play(words);
        self.state = State::Playing;
    }

    fn envelope(&self, m: &MessageInfo) -> Vec<Item> {
        let (tz, format) = match &self.mailbox {
            Some(b) => (b.tz, b.say_format.as_str()),
            None => (chrono_tz::UTC, saydate::DEFAULT_FORMAT),
        };
        let now = self.epoch + chrono::Duration::milliseconds(self.now_ms as i64);
        let mut words = saydate::say(format, tz, m.origtime, now);
        words.push(Item::Prompt("vm-from"));
        let number: String = m
            .caller_id_number
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        if number.is_empty() {
            words.push(Item::Prompt("vm-unknown"));
        } else {
            digits(&number, &mut words);
        }
        words
    }

    /// Leaving the current message: a heard new message becomes old.
    fn leave_message(&mut self) {
        if !std::mem::take(&mut self.heard) {
            return;
        }
        let Some(m) = self.messages.get_mut(self.current) else {
            return;
        };
        if m.folder != FOLDERS[0] {
            return;
        }
        self.actions.push_back(Action::Apply(Change::Move {
            id: m.id.clone(),
            from: FOLDERS[0].to_owned(),
            to: FOLDERS[1].to_owned(),
        }));
        m.folder = FOLDERS[1].to_owned();
    }

    fn no_more(&mut self) {
        let words = vec![Item::Prompt("vm-nomore"), Item::Prompt("vm-msgmenu")];
        self.menu(Menu::Message, words);
    }

    fn menu_digit(&mut self, menu: Menu, digit: char) {
        match (menu, digit) {
            (Menu::Main, '1') => {
                let folder = self.folder.clone();
                self.open_folder(&folder);
            }
            (Menu::Main | Menu::Message, '2') => {
                self.menu(Menu::ChangeFolder, vec![Item::Prompt("vm-savefolder")]);
            }
            (Menu::Main | Menu::Message, '0') => {
                self.leave_message();
                self.menu(Menu::Options, vec![Item::Prompt("vm-options")]);
            }
            (Menu::Main | Menu::Message, '#') => self.goodbye(),
            (Menu::Main, '*') => self.menu(Menu::Main, vec![Item::Prompt("vm-mainmenu")]),
            (Menu::Message, '1') => {
                self.leave_message();
                self.current = 0;
                self.load_current();
            }
            (Menu::Message, '4') => {
                if self.current == 0 {
                    self.no_more();
                } else {
                    self.leave_message();
                    self.current -= 1;
                    self.load_current();
                }
            }
            (Menu::Message, '5') => self.load_current(),
            (Menu::Message, '6') => {
                if self.current + 1 >= self.messages.len() {
                    self.no_more();
                } else {
                    self.leave_message();
                    self.current += 1;
                    self.load_current();
                }
            }
            (Menu::Message, '7') => {
                if let Some(m) = self.messages.get(self.current).cloned() {
                    self.heard = false;
                    self.actions.push_back(Action::Apply(Change::Delete {
                        id: m.id,
                        folder: m.folder,
                    }));
                    self.messages.remove(self.current);
                    self.after_removal(vec![Item::Prompt("vm-deleted")]);
                }
            }
            (Menu::Message, '9') => self.menu(Menu::SaveTo, vec![Item::Prompt("vm-savefolder")]),
            (Menu::Message, '3') => {
                if let Some(m) = self.messages.get(self.current).cloned() {
                    let mut words = self.envelope(&m);
                    words.push(Item::Prompt("vm-msgmenu"));
                    self.menu(Menu::Message, words);
                }
            }
            (Menu::SaveTo, d @ '0'..='4') => {
                let to = FOLDERS[d as usize - '0' as usize];
                if let Some(m) = self.messages.get(self.current).cloned() {
                    self.heard = false;
                    if m.folder != to {
                        self.actions.push_back(Action::Apply(Change::Move {
                            id: m.id,
                            from: m.folder,
                            to: to.to_owned(),
                        }));
                    }
                    self.messages.remove(self.current);
                    let words = vec![
                        Item::Prompt("vm-savedto"),
                        Item::Named(format!("vm-{to}")),
                        Item::Prompt("vm-folder"),
                    ];
                    self.after_removal(words);
                }
            }
            (Menu::SaveTo, _) => self.menu(Menu::Message, vec![Item::Prompt("vm-msgmenu")]),
            (Menu::ChangeFolder, d @ '0'..='4') => {
                let folder = FOLDERS[d as usize - '0' as usize];
                self.open_folder(folder);
            }
            (Menu::ChangeFolder, _) => self.menu(Menu::Main, vec![Item::Prompt("vm-mainmenu")]),
            (Menu::Options, d @ ('1' | '2' | '3')) => {
                let (greeting, prompt) = match d {
                    '1' => (Greeting::Unavailable, "vm-rec-unv"),
                    '2' => (Greeting::Busy, "vm-rec-busy"),
                    _ => (Greeting::Name, "vm-rec-name"),
                };
                // The instructions, the beep, then the recorder (started by tick).
                self.play(vec![Item::Prompt(prompt), Item::Beep]);
                self.state = State::GreetingPrompt(greeting);
            }
            (Menu::Options, '5') => {
                if self.mailbox.as_ref().is_some_and(|m| m.pin_locked) {
                    self.menu(
                        Menu::Options,
                        vec![Item::Prompt("vm-locked"), Item::Prompt("vm-options")],
                    );
                } else {
                    self.entry(Entry::NewPin, vec![Item::Prompt("vm-newpassword")]);
                }
            }
            (Menu::Options, '*') => self.menu(Menu::Main, vec![Item::Prompt("vm-mainmenu")]),
            (Menu::Options, '#') => self.goodbye(),
            (menu, _) => {
                let mut words = vec![Item::Prompt("vm-invalid")];
                words.extend(self.menu_words(menu));
                self.menu(menu, words);
            }
        }
    }

    /// After a delete or a save: the next message plays, or "no more".
    fn after_removal(&mut self, mut words: Vec<Item>) {
        if self.current < self.messages.len() {
            self.preface = words;
            self.load_current();
        } else {
            self.current = self.messages.len().saturating_sub(1);
            words.extend([Item::Prompt("vm-nomore"), Item::Prompt("vm-msgmenu")]);
            self.menu(Menu::Message, words);
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
