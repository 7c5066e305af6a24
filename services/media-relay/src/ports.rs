//! The RTP port pool: even ports of the configured range, each with the odd port after
//! it for RTCP (RFC 3550 §11). A released pair goes to the back of the queue, so a port
//! is reused as late as possible and a late packet of an ended call does not land in
//! the next one. A pair whose ports another program holds is skipped and retried later.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use service_runtime::settings::PortRange;

#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
    total: usize,
}

/// No pair could be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no free RTP/RTCP port pair ({total} pairs configured, {free} not bindable)")]
pub struct Exhausted {
    pub total: usize,
    pub free: usize,
}

impl PortPool {
    pub fn new(range: PortRange) -> Self {
        let first = range.low + range.low % 2;
        let free: VecDeque<u16> = (u32::from(first)..u32::from(range.high))
            .step_by(2)
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        let total = free.len();
        Self { free, total }
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Binds the next free pair on `ip`: the RTP socket on the even port and the RTCP
    /// socket on the one after, both non-blocking.
    pub fn allocate(&mut self, ip: IpAddr) -> Result<(u16, [UdpSocket; 2]), Exhausted> {
        for _ in 0..self.free.len() {
            let Some(port) = self.free.pop_front() else {
                break;
            };
            match bind_pair(ip, port) {
                Ok(sockets) => return Ok((port, sockets)),
                Err(e) => {
                    tracing::warn!(port, error = %e, "RTP port pair in use elsewhere; skipped");
                    self.free.push_back(port);
                }
            }
        }
        Err(Exhausted {
            total: self.total,
            free: self.free.len(),
        })
    }

    /// Gives a pair back (its sockets are closed).
    pub fn release(&mut self, port: u16) {
        self.free.push_back(port);
    }
}

fn bind_pair(ip: IpAddr, port: u16) -> std::io::Result<[UdpSocket; 2]> {
    let rtp = UdpSocket::bind(SocketAddr::new(ip, port))?;
    let rtcp = UdpSocket::bind(SocketAddr::new(ip, port + 1))?;
    rtp.set_nonblocking(true)?;
    rtcp.set_nonblocking(true)?;
    Ok([rtp, rtcp])
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn pairs_are_even_and_odd_and_come_back_last() {
        // 23001-23006 holds the pairs 23002/23003 and 23004/23005.
        let mut pool = PortPool::new(PortRange {
            low: 23001,
            high: 23006,
        });
        assert_eq!(pool.free(), 2);
        let (first, sockets) = pool.allocate(LOOPBACK).unwrap();
        assert_eq!(first % 2, 0);
        assert_eq!(sockets[1].local_addr().unwrap().port(), first + 1);
        let (second, _held) = pool.allocate(LOOPBACK).unwrap();
        assert_eq!(
            pool.allocate(LOOPBACK).unwrap_err(),
            Exhausted { total: 2, free: 0 }
        );
        drop(sockets);
        pool.release(first);
        assert_eq!(pool.allocate(LOOPBACK).unwrap().0, first);
        assert_ne!(first, second);
    }

    #[test]
    fn a_pair_held_by_another_program_is_skipped() {
        let mut pool = PortPool::new(PortRange {
            low: 23010,
            high: 23013,
        });
        let squatter = UdpSocket::bind((LOOPBACK, 23011)).unwrap();
        let (port, _sockets) = pool.allocate(LOOPBACK).unwrap();
        assert_eq!(port, 23012);
        assert_eq!(pool.free(), 1, "the skipped pair stays in the pool");
        drop(squatter);
    }
}
