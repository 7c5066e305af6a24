//! A real phone for the tests: baresip (Debian's package, installed by
//! scripts/install-deps), and what it says and hears.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Phone(pub Child);

impl Drop for Phone {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A baresip with one account on the edge at `edge`.
pub fn baresip(dir: &std::path::Path, edge: std::net::SocketAddr, password: &str) -> Phone {
    baresip_with(dir, edge, password, "", "", false)
}

/// The same with extra config lines and account parameters; `piped` captures its
/// output as it comes, through a pseudo-terminal (util-linux's `script`): on a pipe
/// baresip's output would wait in a buffer until it exits.
pub fn baresip_with(
    dir: &std::path::Path,
    edge: std::net::SocketAddr,
    password: &str,
    extra: &str,
    account: &str,
    piped: bool,
) -> Phone {
    std::fs::write(
        dir.join("config"),
        format!(
            "poll_method\tepoll\n\
             net_interface\t127.0.0.1\n\
             module_path\t/usr/lib/baresip/modules\n\
             module\tg711.so\n\
             module_tmp\tuuid.so\n\
             module_tmp\taccount.so\n{extra}"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("accounts"),
        format!("<sip:13235550100@{edge}>;auth_pass={password};regint=600{account}\n"),
    )
    .unwrap();
    let mut command = if piped {
        let mut c = Command::new("script");
        c.args([
            "-qfec",
            &format!("baresip -f {}", dir.display()),
            "/dev/null",
        ]);
        c
    } else {
        let mut c = Command::new("baresip");
        c.arg("-f").arg(dir);
        c
    };
    // script ends when its input does: a pipe held open (in the child handle) keeps it.
    let child = command
        .stdin(if piped { Stdio::piped() } else { Stdio::null() })
        .stdout(if piped { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::null())
        .spawn()
        .expect("baresip is installed (scripts/install-deps)");
    Phone(child)
}

/// A 16-bit 8 kHz mono WAV of a 440 Hz tone, for baresip's `aufile` microphone.
pub fn tone_wav(path: &std::path::Path, seconds: u32) {
    let samples: Vec<i16> = (0..8000 * seconds)
        .map(|i| ((f64::from(i) * 440.0 * std::f64::consts::TAU / 8000.0).sin() * 8000.0) as i16)
        .collect();
    let data_len = (samples.len() * 2) as u32;
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&16000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, wav).unwrap();
}

/// baresip with a tone as its microphone and what it hears looped back out.
pub fn talking_baresip(
    dir: &std::path::Path,
    edge: std::net::SocketAddr,
    extra: &str,
    account: &str,
) -> Phone {
    let tone = dir.join("tone.wav");
    tone_wav(&tone, 30);
    baresip_with(
        dir,
        edge,
        "password",
        &format!(
            "module\taufile.so\nmodule\taubridge.so\naudio_source\taufile,{}\naudio_player\taubridge,spk\n{extra}",
            tone.display()
        ),
        account,
        false,
    )
}

/// RTP packets with sound in them (G.711 u-law silence is 0xff / 0x7f).
pub async fn heard(socket: &tokio::net::UdpSocket, want: usize) -> usize {
    let mut buffer = [0u8; 2048];
    let mut loud = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while loud < want && tokio::time::Instant::now() < deadline {
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buffer)).await
        {
            if n > 12 && buffer[12..n].iter().any(|b| *b != 0xff && *b != 0x7f) {
                loud += 1;
            }
        }
    }
    loud
}

/// Sends `packets` RTP packets of a sound (not silence) to `to`, one each 20 ms, from
/// `socket`: the far end talking.
pub fn speak(
    socket: std::sync::Arc<tokio::net::UdpSocket>,
    to: std::net::SocketAddr,
    packets: u16,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for seq in 0..packets {
            let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
            packet[2..4].copy_from_slice(&seq.to_be_bytes());
            packet[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            packet.extend((0..160).map(|i| if i % 2 == 0 { 0x10 } else { 0x90 }));
            let _ = socket.send_to(&packet, to).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}
