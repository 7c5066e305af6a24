//! A real phone: baresip (Debian's package) with one account, a WAV file as its
//! microphone (`aufile`), what it hears written to WAV files (`sndfile`), RFC 4733 DTMF,
//! and its control interface (`ctrl_tcp`) to dial, answer, send digits and hang up. Its
//! console output (call events, MWI) is read through a pseudo-terminal (util-linux's
//! `script`), since on a pipe baresip would hold it in a buffer until it exits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a phone is set up.
pub struct PhoneConfig<'a> {
    /// `user@host:port` of its account (the registrar).
    pub aor: String,
    pub password: &'a str,
    /// Answers incoming calls at once.
    pub auto_answer: bool,
    /// Marks the account for message-summary (MWI); [`Phone::subscribe_mwi`] starts it.
    pub mwi: bool,
    /// What it says into the call: 8 kHz mono samples, repeated.
    pub voice: Vec<i16>,
}

impl PhoneConfig<'_> {
    /// A phone that registers as `aor` with `password`, answers nothing and says
    /// nothing.
    pub fn silent<'a>(aor: String, password: &'a str) -> PhoneConfig<'a> {
        PhoneConfig {
            aor,
            password,
            auto_answer: false,
            mwi: false,
            voice: vec![0; 160],
        }
    }
}

pub struct Phone {
    child: Option<Child>,
    pub control: SocketAddr,
    dir: tempfile::TempDir,
    lines: Arc<Mutex<Vec<String>>>,
    account: String,
    _stdin: Option<std::process::ChildStdin>,
}

/// A 16-bit 8 kHz mono WAV.
pub fn wav(samples: &[i16]) -> Vec<u8> {
    phone_audio::Format::Wav.encode(samples)
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Phone {
    pub fn start(config: PhoneConfig<'_>) -> Self {
        Self::spawn(None, [127, 0, 0, 1].into(), config)
    }

    /// A phone in the network namespace `netns` at its address `ip` (the test
    /// cluster's outside world); its control socket listens there too.
    pub fn start_in(netns: &str, ip: std::net::IpAddr, config: PhoneConfig<'_>) -> Self {
        Self::spawn(Some(netns), ip, config)
    }

    fn spawn(netns: Option<&str>, ip: std::net::IpAddr, config: PhoneConfig<'_>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let voice = dir.path().join("voice.wav");
        // The file is played once; make it long enough for any call of a test.
        let mut samples = Vec::with_capacity(8000 * 120);
        while samples.len() < 8000 * 120 && !config.voice.is_empty() {
            samples.extend_from_slice(&config.voice);
        }
        std::fs::write(&voice, wav(&samples)).unwrap();
        let heard = dir.path().join("heard");
        std::fs::create_dir_all(&heard).unwrap();
        let control = SocketAddr::new(
            if netns.is_some() {
                ip
            } else {
                [127, 0, 0, 1].into()
            },
            free_tcp_port(),
        );
        std::fs::write(
            dir.path().join("config"),
            format!(
                "poll_method\tepoll\n\
                 net_interface\t{ip}\n\
                 sip_listen\t{ip}:0\n\
                 module_path\t/usr/lib/baresip/modules\n\
                 module\tg711.so\n\
                 module\taufile.so\n\
                 module\tsndfile.so\n\
                 module\taubridge.so\n\
                 snd_path\t{heard}\n\
                 audio_source\taufile,{voice}\n\
                 audio_player\taubridge,spk\n\
                 module_tmp\tuuid.so\n\
                 module_tmp\taccount.so\n\
                 module_app\tmenu.so\n\
                 module_app\tctrl_tcp.so\n\
                 ctrl_tcp_listen\t{control}\n",
                heard = heard.display(),
                voice = voice.display(),
            ),
        )
        .unwrap();
        let answer = if config.auto_answer {
            ";answermode=auto"
        } else {
            ";answermode=manual"
        };
        let mwi = if config.mwi { ";mwi=yes" } else { ";mwi=no" };
        let account = format!(
            "<sip:{}>;auth_pass={};regint=600{answer}{mwi};audio_codecs=PCMU",
            config.aor, config.password
        );
        // With MWI the account is added after the module (see Phone::subscribe_mwi).
        std::fs::write(
            dir.path().join("accounts"),
            if config.mwi {
                String::new()
            } else {
                format!("{account}\n")
            },
        )
        .unwrap();
        let mut child = Command::new("script")
            .args([
                "-qfec",
                &format!(
                    "{}baresip -f {}",
                    netns
                        .map(|n| format!("ip netns exec {n} "))
                        .unwrap_or_default(),
                    dir.path().display()
                ),
                "/dev/null",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("baresip and script are installed (scripts/install-deps)");
        let lines = crate::collect_lines(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        Phone {
            child: Some(child),
            control,
            dir,
            lines,
            account,
            _stdin: stdin,
        }
    }

    /// What baresip printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until the phone's registration is answered `200 OK` (20 s at most);
    /// panics with its output, naming it `who`, when it is not.
    pub async fn assert_registers(&self, who: &str) {
        assert!(
            self.wait_for_output("200 OK", Duration::from_secs(20))
                .await,
            "the {who} phone registers:\n{}",
            self.output()
        );
    }

    /// Waits until the output contains `text`.
    pub async fn wait_for_output(&self, text: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.output().contains(text) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// A command over the control socket (netstring JSON); the answer's text.
    pub async fn command(&self, command: &str, params: &str) -> String {
        let mut stream = None;
        for _ in 0..100 {
            if let Ok(s) = tokio::net::TcpStream::connect(self.control).await {
                stream = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut stream = stream.expect("baresip's control socket");
        let body = format!(r#"{{"command":"{command}","params":"{params}","token":"t"}}"#);
        stream
            .write_all(format!("{}:{body},", body.len()).as_bytes())
            .await
            .unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut answer))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        String::from_utf8_lossy(&answer[..n]).into_owned()
    }

    /// For a phone started with `mwi`: loads the MWI module, then adds the account,
    /// whose registration starts the subscription. (baresip 1.0's module loaded from
    /// the config races the first registration and may resubscribe forever.)
    pub async fn subscribe_mwi(&self) {
        self.command("insmod", "mwi.so").await;
        self.command("uanew", &self.account).await;
    }

    pub async fn dial(&self, uri: &str) {
        self.command("dial", uri).await;
    }

    pub async fn answer(&self) {
        self.command("accept", "").await;
    }

    pub async fn hangup(&self) {
        self.command("hangup", "").await;
    }

    /// Sends DTMF digits (RFC 4733 in the call), one at a time with a pause.
    pub async fn digits(&self, digits: &str) {
        for d in digits.chars() {
            self.command("sndcode", &d.to_string()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Everything the phone heard in its calls so far (the decoded far end, in the
    /// order of the calls).
    pub fn heard(&self) -> Vec<Vec<i16>> {
        dec_files(&self.dir.path().join("heard"))
            .iter()
            .filter_map(|p| read_wav(p))
            .collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts watching the next call's audio as it arrives: see [`HeardWatch`].
    pub fn watch_heard(&self) -> HeardWatch {
        HeardWatch::start(self.dir.path().join("heard"))
    }
}

/// Watches, in a thread of its own, how the WAV file of what a phone hears in its next
/// call grows (baresip writes each decoded packet as it comes, and nothing while no
/// packet comes): the longest time the file did not grow is the longest the phone
/// heard nothing. Polled every 5 ms; how late the polls ran is reported too, so that a
/// stall of the test machine is not taken for a gap in the call.
pub struct HeardWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Gaps>>,
    state: Arc<Mutex<Gaps>>,
}

/// What a [`HeardWatch`] saw.
#[derive(Debug, Clone, Default)]
pub struct Gaps {
    /// The file it followed.
    pub file: Option<PathBuf>,
    /// How much audio arrived.
    pub bytes: u64,
    /// The longest time without new audio, after the first, and when it ended
    /// (from the first audio).
    pub longest: Duration,
    pub longest_ended_after: Duration,
    /// The longest time between two polls (the watch's own lateness).
    pub worst_poll: Duration,
}

impl HeardWatch {
    fn start(folder: PathBuf) -> Self {
        let existing = dec_files(&folder);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let state = Arc::new(Mutex::new(Gaps::default()));
        let thread = {
            let stop = stop.clone();
            let state = state.clone();
            std::thread::spawn(move || {
                let mut file: Option<PathBuf> = None;
                let mut size = 0u64;
                let mut first: Option<std::time::Instant> = None;
                let mut changed = std::time::Instant::now();
                let mut polled = std::time::Instant::now();
                let mut seen = Gaps::default();
                loop {
                    let now = std::time::Instant::now();
                    seen.worst_poll = seen.worst_poll.max(now - polled);
                    polled = now;
                    if file.is_none() {
                        file = dec_files(&folder)
                            .into_iter()
                            .find(|f| !existing.contains(f));
                    }
                    if let Some(path) = &file {
                        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                        if len > size {
                            if let Some(first) = first {
                                let quiet = now - changed;
                                if quiet > seen.longest {
                                    seen.longest = quiet;
                                    seen.longest_ended_after = now - first;
                                }
                            } else {
                                first = Some(now);
                            }
                            size = len;
                            changed = now;
                        }
                    }
                    seen.file.clone_from(&file);
                    seen.bytes = size;
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        // Up to the end: silence before the stop counts too.
                        if first.is_some() && now - changed > seen.longest {
                            seen.longest = now - changed;
                            seen.longest_ended_after = now - first.unwrap_or(now);
                        }
                        return seen;
                    }
                    *state.lock().unwrap() = seen.clone();
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        HeardWatch {
            stop,
            thread: Some(thread),
            state,
        }
    }

    /// What it saw so far.
    pub fn now(&self) -> Gaps {
        self.state.lock().unwrap().clone()
    }

    /// Stops watching: what it saw, the silence up to now included.
    pub fn stop(mut self) -> Gaps {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for HeardWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn dec_files(folder: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A WAV file's samples (baresip's sndfile writes 16-bit PCM; a file still being
/// written may have a header that does not count its data yet).
fn read_wav(path: &Path) -> Option<Vec<i16>> {
    let bytes = std::fs::read(path).ok()?;
    let data = bytes.windows(4).position(|w| w == b"data")? + 8;
    Some(
        bytes[data.min(bytes.len())..]
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect(),
    )
}

impl Drop for Phone {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // script's child (baresip) goes with the pseudo-terminal; make sure of it.
        let _ = Command::new("pkill")
            .args(["-f", &format!("baresip -f {}", self.dir.path().display())])
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_pause_in_the_heard_file_is_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let watch = HeardWatch::start(dir.path().to_owned());
        let mut file = std::fs::File::create(dir.path().join("dump-1-dec.wav")).unwrap();
        let mut write = |packets: usize| {
            for _ in 0..packets {
                file.write_all(&[0; 320]).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        write(10);
        std::thread::sleep(Duration::from_millis(300));
        write(10);
        let gaps = watch.stop();
        assert_eq!(gaps.bytes, 20 * 320);
        assert!(gaps.longest >= Duration::from_millis(290), "{gaps:?}");
        assert!(
            gaps.longest_ended_after >= Duration::from_millis(490),
            "{gaps:?}"
        );
    }
}
