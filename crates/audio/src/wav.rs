//! The WAV files of Asterisk's `format=`: `wav` is 16-bit PCM at 8 kHz, mono (written
//! and read with `hound`); `wav49` is GSM 06.10 in Microsoft's WAV framing (format tag
//! 0x0031, 65-byte blocks of 320 samples, a `fact` chunk with the sample count), which
//! `hound` does not handle, so its RIFF chunks are written and walked here.

use crate::gsm;

/// A recording format of `voicemail.conf`'s `format=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Wav,
    Wav49,
}

#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("not a WAV file: {0}")]
    NotWav(String),
    #[error("unsupported WAV: {0}")]
    Unsupported(String),
}

const GSM610: u16 = 0x0031;
const BLOCK: usize = 65;
const BLOCK_SAMPLES: usize = 2 * gsm::FRAME_SAMPLES;

impl Format {
    /// The name in `format=`; `gsm`, `g729` and the others have no writer here.
    pub fn from_name(name: &str) -> Option<Format> {
        match name.trim().to_ascii_lowercase().as_str() {
            "wav" => Some(Format::Wav),
            "wav49" => Some(Format::Wav49),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Wav => "wav",
            Format::Wav49 => "wav49",
        }
    }

    /// The file extension Asterisk gives it (`msg0000.WAV` for wav49).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Wav => "wav",
            Format::Wav49 => "WAV",
        }
    }

    pub fn mime_type(self) -> &'static str {
        "audio/x-wav"
    }

    /// Encodes 8 kHz samples.
    pub fn encode(self, samples: &[i16]) -> Vec<u8> {
        match self {
            Format::Wav => encode_pcm(samples),
            Format::Wav49 => encode_wav49(samples),
        }
    }
}

fn encode_pcm(samples: &[i16]) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
    {
        // Writing to memory cannot fail short of running out of it.
        let mut writer = hound::WavWriter::new(&mut out, spec).expect("in-memory WAV writer");
        let mut i16_writer = writer.get_i16_writer(samples.len() as u32);
        for &s in samples {
            i16_writer.write_sample(s);
        }
        i16_writer.flush().expect("in-memory WAV writer");
        writer.finalize().expect("in-memory WAV writer");
    }
    out.into_inner()
}

fn encode_wav49(samples: &[i16]) -> Vec<u8> {
    let blocks = samples.len().div_ceil(BLOCK_SAMPLES);
    let data_len = blocks * BLOCK;
    let pad = data_len % 2;
    let mut out = Vec::with_capacity(60 + data_len + pad);
    let riff_len = 4 + (8 + 20) + (8 + 4) + (8 + data_len + pad);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(riff_len as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&20u32.to_le_bytes());
    out.extend_from_slice(&GSM610.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&1625u32.to_le_bytes()); // bytes per second
    out.extend_from_slice(&(BLOCK as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(&2u16.to_le_bytes()); // extra bytes
    out.extend_from_slice(&(BLOCK_SAMPLES as u16).to_le_bytes());
    out.extend_from_slice(b"fact");
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    let mut encoder = gsm::Encoder::new();
    for chunk in samples.chunks(BLOCK_SAMPLES) {
        let mut pcm = [0i16; BLOCK_SAMPLES];
        pcm[..chunk.len()].copy_from_slice(chunk);
        let (first, second) = pcm.split_at(gsm::FRAME_SAMPLES);
        let frames = [
            encoder.encode(first.try_into().expect("160 samples")),
            encoder.encode(second.try_into().expect("160 samples")),
        ];
        out.extend_from_slice(&gsm::pack_wav49(&frames));
    }
    out.resize(out.len() + pad, 0);
    out
}

/// Decodes a WAV file of either format to 8 kHz samples. PCM must be 8 kHz, 16-bit
/// (or 8-bit), mono: prompts are converted to that when they are made.
pub fn decode(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
    let chunks = riff_chunks(bytes)?;
    let fmt = chunks
        .iter()
        .find(|(id, _)| id == b"fmt ")
        .map(|(_, body)| *body)
        .ok_or_else(|| WavError::NotWav("no fmt chunk".into()))?;
    if fmt.len() < 16 {
        return Err(WavError::NotWav("short fmt chunk".into()));
    }
    let tag = u16::from_le_bytes([fmt[0], fmt[1]]);
    let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
    let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
    if channels != 1 || rate != 8000 {
        return Err(WavError::Unsupported(format!(
            "{channels} channels at {rate} Hz (8 kHz mono wanted)"
        )));
    }
    if tag == GSM610 {
        let data = chunks
            .iter()
            .find(|(id, _)| id == b"data")
            .map(|(_, body)| *body)
            .ok_or_else(|| WavError::NotWav("no data chunk".into()))?;
        let fact = chunks
            .iter()
            .find(|(id, body)| id == b"fact" && body.len() >= 4)
            .map(|(_, b)| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let mut decoder = gsm::Decoder::new();
        let mut out = Vec::with_capacity(data.len() / BLOCK * BLOCK_SAMPLES);
        for block in data.chunks_exact(BLOCK) {
            let block: &[u8; BLOCK] = block.try_into().expect("65 bytes");
            for frame in gsm::unpack_wav49(block) {
                out.extend_from_slice(&decoder.decode(&frame));
            }
        }
        if let Some(n) = fact {
            out.truncate(n);
        }
        return Ok(out);
    }
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes))
        .map_err(|e| WavError::NotWav(e.to_string()))?;
    let spec = reader.spec();
    match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, 16) => reader
            .into_samples::<i16>()
            .collect::<Result<_, _>>()
            .map_err(|e| WavError::NotWav(e.to_string())),
        (hound::SampleFormat::Int, 8) => reader
            .into_samples::<i8>()
            .map(|s| s.map(|s| i16::from(s) << 8))
            .collect::<Result<_, _>>()
            .map_err(|e| WavError::NotWav(e.to_string())),
        (format, bits) => Err(WavError::Unsupported(format!("{bits}-bit {format:?}"))),
    }
}

/// A RIFF chunk: its id and body.
type Chunk<'a> = ([u8; 4], &'a [u8]);

/// The chunks of a RIFF/WAVE file, in order.
fn riff_chunks(bytes: &[u8]) -> Result<Vec<Chunk<'_>>, WavError> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWav("no RIFF/WAVE header".into()));
    }
    let mut chunks = Vec::new();
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id: [u8; 4] = bytes[at..at + 4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let start = at + 8;
        let end = start.saturating_add(len).min(bytes.len());
        chunks.push((id, &bytes[start..end]));
        at = end + (len % 2);
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(samples: usize) -> Vec<i16> {
        (0..samples)
            .map(|n| {
                let t = n as f64 / 8000.0;
                (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                    + 4000.0 * (2.0 * std::f64::consts::PI * 1250.0 * t).sin())
                    as i16
            })
            .collect()
    }

    #[test]
    fn pcm_round_trips_exactly() {
        let samples = tone(8000);
        let bytes = Format::Wav.encode(&samples);
        assert_eq!(bytes.len(), 44 + 16000);
        assert_eq!(decode(&bytes).unwrap(), samples);
    }

    #[test]
    fn wav49_has_asterisks_header_and_decodes_to_the_audio() {
        let samples = tone(8000 + 100);
        let bytes = Format::Wav49.encode(&samples);
        // A 60-byte header, then whole 65-byte blocks, padded to an even length.
        assert_eq!(&bytes[20..22], &[0x31, 0x00]);
        assert_eq!(bytes.len(), 60 + 26 * 65);
        assert_eq!(Format::Wav49.encode(&tone(320)).len(), 60 + 65 + 1);
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.len(), samples.len());
        let c = crate::analysis::correlation(&samples[800..], &decoded[800..]);
        assert!(c > 0.9, "correlation {c:.3}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"").is_err());
        assert!(decode(b"RIFF\x04\0\0\0WAVE").is_err());
        let mut truncated = Format::Wav49.encode(&tone(1000));
        truncated.truncate(100);
        assert!(decode(&truncated).is_ok());
        let mut bad = Format::Wav.encode(&tone(100));
        bad[24] = 0x44; // 44.1 kHz-ish rate
        assert!(decode(&bad).is_err());
    }
}
