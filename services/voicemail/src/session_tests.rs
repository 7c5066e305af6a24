//! The session on simulated time: ticks of 20 ms, prompts that can be read back
//! ([`Prompts::for_tests`]), and an in-memory store answering its queries.

use super::*;
use chrono::TimeZone;

const LOUD: [i16; FRAME] = {
    let mut f = [0i16; FRAME];
    let mut i = 0;
    while i < FRAME {
        f[i] = if i % 2 == 0 { 3000 } else { -3000 };
        i += 1;
    }
    f
};
const QUIET: [i16; FRAME] = [0; FRAME];

fn mailbox() -> MailboxInfo {
    MailboxInfo {
        mailbox: "13235550100".into(),
        context: "default".into(),
        pin: "1234".into(),
        pin_locked: false,
        max_msg: 100,
        skip_ms: 3000,
        limits: Limits {
            max_silence_secs: 10,
            silence_threshold: 128,
            max_secs: 60,
            min_secs: 2,
        },
        tz: "America/Los_Angeles".parse().unwrap(),
        say_format: "'vm-received' Q 'digits/at' IMp".into(),
    }
}

#[derive(Default)]
struct Store {
    messages: Vec<(MessageInfo, Clip)>,
    greeting: Option<Clip>,
    pin: Option<String>,
}

impl Store {
    fn with_messages(new: usize, old: usize) -> Self {
        let mut store = Store::default();
        for i in 0..new + old {
            let folder = if i < new { "INBOX" } else { "Old" };
            let info = MessageInfo {
                id: format!("m{i}"),
                folder: folder.into(),
                caller_id_number: "2065550123".into(),
                caller_id_name: "Caller".into(),
                origtime: Utc.with_ymd_and_hms(2026, 11, 26, 20, 5, 0).unwrap()
                    + chrono::Duration::hours(i as i64),
                duration_secs: 2,
            };
            // Message i sounds as the constant -1000 * (i + 1) for 2 s.
            let clip = Clip::from(vec![-1000 * (i as i16 % 30 + 1); 16_000]);
            store.messages.push((info, clip));
        }
        store
    }

    fn count(&self, folder: &str) -> u32 {
        self.messages
            .iter()
            .filter(|(m, _)| m.folder == folder)
            .count() as u32
    }

    fn reply(&self, query: Query) -> Reply {
        match query {
            Query::Mailbox { mailbox: number } => {
                Reply::Mailbox((number == "13235550100").then(|| {
                    let mut m = mailbox();
                    if let Some(pin) = &self.pin {
                        m.pin = pin.clone();
                    }
                    Box::new(m)
                }))
            }
            Query::Counts => Reply::Counts {
                new: self.count("INBOX"),
                old: self.count("Old"),
            },
            Query::Greeting(_) => Reply::Greeting(self.greeting.clone()),
            Query::List { folder } => Reply::List(
                self.messages
                    .iter()
                    .filter(|(m, _)| m.folder == folder)
                    .map(|(m, _)| m.clone())
                    .collect(),
            ),
            Query::Audio { id, .. } => Reply::Audio(
                self.messages
                    .iter()
                    .find(|(m, _)| m.id == id)
                    .map(|(_, c)| c.clone()),
            ),
        }
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::Move { id, to, .. } => {
                if let Some((m, _)) = self.messages.iter_mut().find(|(m, _)| &m.id == id) {
                    m.folder = to.clone();
                }
            }
            Change::Delete { id, .. } => self.messages.retain(|(m, _)| &m.id != id),
            Change::SetPin { pin } => self.pin = Some(pin.clone()),
            Change::SaveMessage { .. } | Change::SaveGreeting { .. } => {}
        }
    }
}

struct Sim {
    s: Session,
    store: Store,
    heard: Vec<String>,
    /// What the last frame played (None: silence), to merge a prompt's frames.
    last: Option<String>,
    applied: Vec<Change>,
    finished: Option<(Status, Option<&'static str>)>,
}

impl Sim {
    fn new(start: Start, store: Store) -> Self {
        let known = (!start.main).then(mailbox);
        let epoch = Utc.with_ymd_and_hms(2026, 11, 27, 1, 0, 0).unwrap();
        let mut sim = Sim {
            s: Session::new(start, known, Arc::new(Prompts::for_tests()), epoch),
            store,
            heard: Vec::new(),
            last: None,
            applied: Vec::new(),
            finished: None,
        };
        sim.pump();
        sim
    }

    fn leave(options: &str, store: Store) -> Self {
        Self::new(
            Start {
                main: false,
                mailbox: "13235550100".into(),
                context: "default".into(),
                options: options.into(),
                caller_id_number: "2065550123".into(),
                caller_id_name: "Caller".into(),
                max_logins: 3,
            },
            store,
        )
    }

    fn main(mailbox: &str, options: &str, store: Store) -> Self {
        Self::new(
            Start {
                main: true,
                mailbox: mailbox.into(),
                context: "default".into(),
                options: options.into(),
                caller_id_number: "13235550100".into(),
                caller_id_name: String::new(),
                max_logins: 3,
            },
            store,
        )
    }

    fn pump(&mut self) {
        while let Some(action) = self.s.poll_action() {
            match action {
                Action::Query(q) => {
                    let reply = self.store.reply(q);
                    self.s.on_reply(reply);
                }
                Action::Apply(change) => {
                    self.store.apply(&change);
                    self.applied.push(change);
                }
                Action::Finished {
                    status,
                    exit_extension,
                } => self.finished = Some((status, exit_extension)),
            }
        }
    }

    fn step(&mut self, input: &[i16; FRAME]) {
        let mut out = [0i16; FRAME];
        self.s.tick(Heard::Audio(input), &mut out);
        let first = out[0];
        let name = if out.iter().all(|&v| v == first) {
            match first {
                0 => None,
                v if v <= -1000 => Some(format!("msg{}", -v / 1000 - 1)),
                v => Prompts::test_name(v).map(str::to_owned),
            }
        } else {
            Some("~".to_owned())
        };
        if let Some(name) = &name {
            if self.last.as_ref() != Some(name) {
                self.heard.push(name.clone());
            }
        }
        self.last = name;
        self.pump();
    }

    fn wait(&mut self, ms: u64) {
        for _ in 0..ms / TICK_MS {
            self.step(&QUIET);
        }
    }

    /// Runs until the recorder runs (after the greeting and the beep).
    fn until_recording(&mut self) {
        for _ in 0..1000 {
            if self.s.is_recording() {
                return;
            }
            self.step(&QUIET);
        }
        panic!("not recording; heard {}", self.heard());
    }

    fn speak(&mut self, ms: u64) {
        for _ in 0..ms / TICK_MS {
            self.step(&LOUD);
        }
    }

    fn press(&mut self, keys: &str) {
        for k in keys.chars() {
            self.s.on_dtmf(k);
            self.pump();
            self.wait(100);
        }
    }

    /// What was heard since the last call, prompts by name, `~` for the beep.
    fn heard(&mut self) -> String {
        std::mem::take(&mut self.heard).join(" ")
    }

    fn saved(&self) -> Vec<u32> {
        self.applied
            .iter()
            .filter_map(|c| match c {
                Change::SaveMessage { duration_secs, .. } => Some(*duration_secs),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn leave_a_message_ended_by_pound() {
    let mut sim = Sim::leave("u", Store::default());
    sim.until_recording();
    assert_eq!(
        sim.heard(),
        "vm-theperson digits/1 digits/3 digits/2 digits/3 digits/5 digits/0 digits/1 digits/0 vm-isunavail vm-intro ~"
    );
    sim.speak(5000);
    sim.press("#");
    assert_eq!(sim.saved(), vec![5]);
    sim.wait(1000);
    assert_eq!(sim.heard(), "vm-msgsaved vm-goodbye");
    assert_eq!(sim.finished, Some((Status::Success, None)));
    assert!(sim.s.is_done());
}

#[test]
fn a_recorded_greeting_replaces_the_built_in_one_and_s_skips_the_instructions() {
    let store = Store {
        greeting: Some(Clip::from(vec![-5000i16; 1600])),
        ..Store::default()
    };
    let mut sim = Sim::leave("bs", store);
    sim.wait(1000);
    assert_eq!(sim.heard(), "msg4 ~");
}

#[test]
fn pound_skips_the_greeting_to_the_beep() {
    let mut sim = Sim::leave("u", Store::default());
    sim.wait(100);
    sim.press("#");
    sim.wait(300);
    assert_eq!(sim.heard(), "vm-theperson ~");
}

#[test]
fn ten_seconds_of_silence_end_the_recording_without_the_silence() {
    let mut sim = Sim::leave("u", Store::default());
    sim.until_recording();
    sim.speak(4000);
    sim.wait(9900);
    assert!(sim.saved().is_empty());
    sim.wait(200);
    assert_eq!(sim.saved(), vec![4]);
    match &sim.applied[0] {
        Change::SaveMessage { audio, .. } => assert_eq!(audio.len(), 4 * 8000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn maxsecs_ends_the_recording() {
    let mut sim = Sim::leave("u", Store::default());
    sim.until_recording();
    sim.speak(59_900);
    assert!(sim.saved().is_empty());
    sim.speak(200);
    assert_eq!(sim.saved(), vec![60]);
}

#[test]
fn shorter_than_minsecs_is_not_kept() {
    let mut sim = Sim::leave("u", Store::default());
    sim.until_recording();
    sim.speak(1500);
    sim.press("#");
    sim.wait(500);
    assert!(sim.saved().is_empty());
    assert_eq!(sim.finished, Some((Status::Failed, None)));
}

#[test]
fn hanging_up_keeps_the_message() {
    let mut sim = Sim::leave("u", Store::default());
    sim.until_recording();
    sim.speak(3000);
    sim.s.hang_up();
    sim.pump();
    assert_eq!(sim.saved(), vec![3]);
    assert_eq!(sim.finished, Some((Status::Success, None)));
}

#[test]
fn zero_and_star_leave_for_o_and_a() {
    let mut sim = Sim::leave("u", Store::default());
    sim.wait(300);
    sim.press("0");
    assert_eq!(sim.finished, Some((Status::UserExit, Some("o"))));
    let mut sim = Sim::leave("u", Store::default());
    sim.wait(300);
    sim.press("*");
    assert_eq!(sim.finished, Some((Status::UserExit, Some("a"))));
    // 0 while recording keeps the message, then goes to o.
    let mut sim = Sim::leave("u", Store::default());
    sim.until_recording();
    sim.speak(3000);
    sim.press("0");
    assert_eq!(sim.saved(), vec![3]);
    assert_eq!(sim.finished, Some((Status::UserExit, Some("o"))));
}

#[test]
fn a_full_mailbox_says_so_and_records_nothing() {
    let mut sim = Sim::leave("u", Store::with_messages(60, 40));
    sim.wait(3000);
    assert_eq!(sim.heard(), "vm-mailboxfull vm-goodbye");
    assert_eq!(sim.finished, Some((Status::Failed, None)));
    assert!(sim.saved().is_empty());
}

#[test]
fn three_wrong_passwords_and_goodbye() {
    let mut sim = Sim::main("", "", Store::default());
    sim.wait(200);
    sim.press("13235550100#");
    sim.press("1111#");
    sim.wait(200);
    sim.press("13235550100#");
    sim.press("2222#");
    sim.wait(200);
    assert!(sim.finished.is_none());
    sim.press("13235550100#");
    sim.press("3333#");
    sim.wait(1000);
    assert_eq!(sim.finished, Some((Status::Failed, None)));
    let heard = sim.heard();
    assert_eq!(heard.matches("vm-incorrect").count(), 3, "{heard}");
    assert!(heard.ends_with("vm-goodbye"), "{heard}");
}

#[test]
fn an_unknown_mailbox_is_asked_for_a_password_too() {
    let mut sim = Sim::main("", "", Store::default());
    sim.wait(100);
    sim.press("999#");
    sim.wait(300);
    assert_eq!(sim.heard(), "vm-login vm-password");
    sim.press("1234#");
    sim.wait(300);
    assert_eq!(sim.heard(), "vm-incorrect vm-login");
}

#[test]
fn digit_entry_ends_after_five_quiet_seconds() {
    let mut sim = Sim::main("13235550100", "", Store::with_messages(1, 0));
    sim.wait(200);
    sim.press("1234");
    sim.wait(4800);
    assert_eq!(sim.heard(), "vm-password");
    sim.wait(400);
    let heard = sim.heard();
    assert!(heard.starts_with("vm-youhave digits/1 vm-INBOX"), "{heard}");
}

#[test]
fn listen_save_delete_and_mark_heard_messages_old() {
    let mut sim = Sim::main("13235550100", "s", Store::with_messages(2, 1));
    sim.wait(2500);
    assert_eq!(
        sim.heard(),
        "vm-youhave digits/2 vm-INBOX vm-messages vm-and digits/1 vm-Old vm-message vm-mainmenu"
    );
    sim.press("1");
    sim.wait(6000);
    // First message: its envelope (received today at 12:05 PM, the caller's number), then its audio.
    assert_eq!(
        sim.heard(),
        "vm-first vm-message digits/1 vm-received digits/today digits/at digits/12 digits/oh digits/5 digits/p-m vm-from digits/2 digits/0 digits/6 digits/5 digits/0 digits/1 digits/2 digits/3 msg0 vm-msgmenu"
    );
    // 3: the envelope again, then the menu.
    sim.press("3");
    sim.wait(3000);
    assert_eq!(
        sim.heard(),
        "vm-received digits/today digits/at digits/12 digits/oh digits/5 digits/p-m vm-from digits/2 digits/0 digits/6 digits/5 digits/0 digits/1 digits/2 digits/3 vm-msgmenu"
    );
    sim.press("6");
    sim.wait(6000);
    assert!(sim.heard().ends_with("msg1 vm-msgmenu"));
    // The first, heard, moved to Old when left.
    assert_eq!(
        sim.applied,
        vec![Change::Move {
            id: "m0".into(),
            from: "INBOX".into(),
            to: "Old".into()
        }]
    );
    // 9 then 2: the second goes to Work.
    sim.press("92");
    sim.wait(2000);
    assert!(sim
        .heard()
        .contains("vm-savedto vm-Work vm-folder vm-nomore"));
    assert_eq!(sim.store.count("Work"), 1);
    // 2 then 1: the Old folder, now two messages; delete the first.
    sim.press("21");
    sim.wait(6000);
    sim.heard();
    sim.press("7");
    sim.wait(6000);
    let heard = sim.heard();
    assert!(
        heard.starts_with("vm-deleted vm-first vm-message digits/1"),
        "{heard}"
    );
    assert_eq!(sim.store.count("Old"), 1);
    assert_eq!(sim.store.messages.len(), 2);
    sim.press("#");
    sim.wait(500);
    assert_eq!(sim.finished, Some((Status::UserExit, None)));
}

#[test]
fn star_and_pound_rewind_and_skip_during_playback() {
    let mut store = Store::with_messages(1, 0);
    // A 10 s message whose samples count up, so the position can be read.
    store.messages[0].1 = Clip::from(
        (0..80_000)
            .map(|i| -1000 - (i / 160) as i16)
            .collect::<Vec<_>>(),
    );
    let mut sim = Sim::main("13235550100", "s", store);
    sim.wait(2500);
    sim.press("1");
    // Envelope, then 1 s into the message.
    let mut out = [0i16; FRAME];
    let mut position = |sim: &mut Sim| {
        sim.s.tick(Heard::Audio(&QUIET), &mut out);
        sim.pump();
        -(i32::from(out[0]) + 1000)
    };
    let mut p = position(&mut sim);
    while !(0..=1000).contains(&p) {
        p = position(&mut sim);
    }
    for _ in 0..49 {
        p = position(&mut sim);
    }
    assert_eq!(p, 49, "1 s in (50 frames played)");
    sim.s.on_dtmf('#');
    assert_eq!(position(&mut sim), 50 + 150, "3 s further");
    sim.s.on_dtmf('*');
    sim.s.on_dtmf('*');
    assert_eq!(position(&mut sim), 0, "rewound past the start: the start");
}

#[test]
fn change_the_pin_then_log_in_with_it() {
    let mut sim = Sim::main("13235550100", "", Store::default());
    sim.press("1234#");
    sim.wait(2000);
    sim.press("0");
    sim.wait(200);
    sim.press("5");
    sim.press("4321#");
    sim.press("4321#");
    sim.wait(500);
    assert!(sim.heard().contains("vm-passchanged"));
    assert_eq!(sim.store.pin.as_deref(), Some("4321"));
    // The next session logs in with the new PIN.
    let store = std::mem::take(&mut sim.store);
    let mut sim = Sim::main("13235550100", "", store);
    sim.press("1234#");
    sim.wait(300);
    assert!(sim.heard().contains("vm-incorrect"));
    sim.press("4321#");
    sim.wait(300);
    assert!(sim.heard().contains("vm-youhave"));
}

#[test]
fn record_the_unavailable_greeting() {
    let mut sim = Sim::main("13235550100", "s", Store::default());
    sim.wait(1500);
    sim.press("0");
    sim.press("1");
    sim.wait(600);
    sim.speak(3000);
    sim.press("#");
    let saved: Vec<_> = sim
        .applied
        .iter()
        .filter_map(|c| match c {
            Change::SaveGreeting { greeting, audio } => Some((*greeting, audio.len())),
            _ => None,
        })
        .collect();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].0, Greeting::Unavailable);
    assert!(
        (3 * 8000..=4 * 8000).contains(&saved[0].1),
        "{}",
        saved[0].1
    );
}

#[test]
fn an_unanswered_menu_repeats_then_says_goodbye() {
    let mut sim = Sim::main("13235550100", "s", Store::default());
    sim.wait(60_000);
    assert_eq!(sim.finished, Some((Status::UserExit, None)));
    let heard = sim.heard();
    assert_eq!(heard.matches("vm-mainmenu").count(), 3, "{heard}");
}

#[test]
fn hanging_up_in_the_menu_marks_the_heard_message_old() {
    let mut sim = Sim::main("13235550100", "s", Store::with_messages(1, 0));
    sim.wait(2500);
    sim.press("1");
    sim.wait(1000);
    sim.s.hang_up();
    sim.pump();
    assert_eq!(sim.store.count("Old"), 1);
    assert_eq!(sim.finished, Some((Status::UserExit, None)));
}
