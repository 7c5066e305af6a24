//! The few bytes of RTP and RTCP (RFC 3550 §5.1, §6.4) the relay reads. Payloads are
//! never touched or copied: the relay forwards the datagram it received, byte for byte.

/// The RTP fixed header fields the relay uses for latching and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// Why a datagram is not RTP or RTCP. Counted per reason, never an error to anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than the fixed header")]
    Short,
    #[error("not RTP version 2")]
    Version,
    #[error("CSRC list, extension or padding runs past the end")]
    Length,
    #[error("RTCP packet type outside 192-223")]
    RtcpType,
}

/// Reads the RTP header of `packet` (§5.1): version 2, the CSRC list, the header
/// extension (§5.3.1) and the padding count (§5.1 P bit) must fit in the datagram.
pub fn parse_rtp(packet: &[u8]) -> Result<RtpHeader, Malformed> {
    if packet.len() < 12 {
        return Err(Malformed::Short);
    }
    if packet[0] >> 6 != 2 {
        return Err(Malformed::Version);
    }
    let csrc_count = usize::from(packet[0] & 0x0f);
    let mut header_len = 12 + 4 * csrc_count;
    if packet[0] & 0x10 != 0 {
        // Extension: 16-bit profile, 16-bit length in 32-bit words.
        let ext = packet
            .get(header_len..header_len + 4)
            .ok_or(Malformed::Length)?;
        header_len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    let padding = if packet[0] & 0x20 != 0 {
        usize::from(*packet.last().ok_or(Malformed::Length)?)
    } else {
        0
    };
    if header_len + padding > packet.len() {
        return Err(Malformed::Length);
    }
    Ok(RtpHeader {
        payload_type: packet[1] & 0x7f,
        marker: packet[1] & 0x80 != 0,
        sequence: u16::from_be_bytes([packet[2], packet[3]]),
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
    })
}

/// Checks the first RTCP packet of a compound datagram (§6.1): version 2, a packet type
/// in the RTCP range (RFC 5761 §4: 192-223), and a length that fits.
pub fn check_rtcp(packet: &[u8]) -> Result<(), Malformed> {
    if packet.len() < 8 {
        return Err(Malformed::Short);
    }
    if packet[0] >> 6 != 2 {
        return Err(Malformed::Version);
    }
    if !(192..=223).contains(&packet[1]) {
        return Err(Malformed::RtcpType);
    }
    let words = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if 4 * (words + 1) > packet.len() {
        return Err(Malformed::Length);
    }
    Ok(())
}

/// Builds an RTP packet: the fixed header then `payload`. For tests and the load tool.
pub fn build_rtp(header: &RtpHeader, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(12 + payload.len());
    packet.push(0x80);
    packet.push(header.payload_type & 0x7f | if header.marker { 0x80 } else { 0 });
    packet.extend_from_slice(&header.sequence.to_be_bytes());
    packet.extend_from_slice(&header.timestamp.to_be_bytes());
    packet.extend_from_slice(&header.ssrc.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A G.711 u-law packet as a desk phone sends it: V=2, PT=0, seq 0x1234,
    /// timestamp 0x000a0000, SSRC 0xdeadbeef, 160 bytes of payload.
    fn pcmu() -> Vec<u8> {
        let mut packet = vec![
            0x80, 0x00, 0x12, 0x34, 0x00, 0x0a, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef,
        ];
        packet.extend_from_slice(&[0xff; 160]);
        packet
    }

    #[test]
    fn reads_the_fixed_header() {
        let header = parse_rtp(&pcmu()).unwrap();
        assert_eq!(
            header,
            RtpHeader {
                payload_type: 0,
                marker: false,
                sequence: 0x1234,
                timestamp: 0x000a_0000,
                ssrc: 0xdead_beef,
            }
        );
        assert_eq!(build_rtp(&header, &[0xff; 160]), pcmu());
    }

    #[test]
    fn a_telephone_event_with_marker() {
        // RFC 4733 §2.3: dynamic PT 101 with the marker bit on the first packet.
        let mut packet = pcmu();
        packet[1] = 0x80 | 101;
        let header = parse_rtp(&packet).unwrap();
        assert_eq!((header.payload_type, header.marker), (101, true));
    }

    #[test]
    fn refuses_what_is_not_rtp() {
        assert_eq!(parse_rtp(&[0x80; 11]), Err(Malformed::Short));
        let mut packet = pcmu();
        packet[0] = 0x40;
        assert_eq!(parse_rtp(&packet), Err(Malformed::Version));
        // 15 CSRCs need 60 more bytes than a 12-byte packet has.
        assert_eq!(
            parse_rtp(&[0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Malformed::Length)
        );
        // Extension bit set, extension header missing.
        assert_eq!(
            parse_rtp(&[0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Malformed::Length)
        );
        // Padding count larger than the packet.
        let mut padded = pcmu();
        padded[0] |= 0x20;
        *padded.last_mut().unwrap() = 200;
        assert_eq!(parse_rtp(&padded), Err(Malformed::Length));
    }

    #[test]
    fn rtcp_sender_report_and_garbage() {
        // An empty receiver report (PT 201, length 1 word after the header).
        assert_eq!(check_rtcp(&[0x80, 201, 0, 1, 0, 0, 0, 1]), Ok(()));
        assert_eq!(
            check_rtcp(&[0x80, 201, 0, 9, 0, 0, 0, 1]),
            Err(Malformed::Length)
        );
        assert_eq!(
            check_rtcp(&[0x80, 0, 0, 1, 0, 0, 0, 1]),
            Err(Malformed::RtcpType)
        );
        assert_eq!(check_rtcp(&[0x80, 201]), Err(Malformed::Short));
    }
}
