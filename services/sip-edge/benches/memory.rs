//! Memory per registration: the heap the registrar holds for each binding, measured
//! exactly with a counting allocator. 10,000 lines each go through the whole exchange
//! (REGISTER, 401, REGISTER with digest credentials, 200) as wire bytes; the live heap
//! before and after, less the responses (dropped), divided by the bindings made.
//!
//! `cargo bench -p sip-edge --bench memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering};

use sip_edge::digest::{self, Challenge};
use sip_edge::registrar::{Line, Registrar, RegistrarConfig, Source};
use sip_edge::wire::{parse, Parsed};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const LINES: usize = 10_000;

fn request(user: &str, source: SocketAddr, auth: &str) -> rsip::Request {
    let text = format!(
        "REGISTER sip:pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP {source};branch=z9hG4bK{user}{};rport\r\n\
Max-Forwards: 70\r\nTo: <sip:{user}@pbx.example.com>\r\nFrom: <sip:{user}@pbx.example.com>;tag=t{user}\r\n\
Call-ID: {user}@phone\r\nCSeq: {} REGISTER\r\nUser-Agent: Yealink SIP-T46U 108.86.0.90\r\n\
Contact: <sip:{user}@{source};transport=udp>;expires=3600\r\n{auth}Content-Length: 0\r\n\r\n",
        auth.len(),
        1 + usize::from(!auth.is_empty())
    );
    match parse(text.as_bytes(), true, "t") {
        Ok(Parsed::Sip(m)) => match *m {
            rsip::SipMessage::Request(r) => r,
            _ => unreachable!("a request"),
        },
        other => panic!("{other:?}"),
    }
}

fn main() {
    let lines: Vec<Line> = (0..LINES)
        .map(|n| Line {
            name: format!("1323555{n:04}"),
            secret: Some(format!("secret{n}")),
            nat: true,
        })
        .collect();
    let mut registrar = Registrar::new(RegistrarConfig::default(), lines, [1; 32]);
    let now = 1_700_000_000;
    let before = LIVE.load(Ordering::Relaxed);
    for n in 0..LINES {
        let user = format!("1323555{n:04}");
        let source: SocketAddr = format!("10.{}.{}.{}:5060", n / 65_536, (n / 256) % 256, n % 256)
            .parse()
            .unwrap();
        let src = Source {
            addr: source,
            reliable: false,
        };
        let challenged = registrar.handle(now, &request(&user, source, ""), src, "r");
        let challenge = challenged
            .response
            .headers
            .iter()
            .find_map(|h| match h {
                rsip::Header::Other(name, value) if name == "WWW-Authenticate" => {
                    Challenge::parse(value).ok()
                }
                _ => None,
            })
            .expect("a challenge");
        let creds = digest::authorize(
            &challenge,
            &user,
            &format!("secret{n}"),
            "REGISTER",
            "sip:pbx.example.com",
            "c",
            1,
        );
        let auth = format!("Authorization: {}\r\n", creds.to_header());
        let ok = registrar.handle(now, &request(&user, source, &auth), src, "r");
        assert_eq!(ok.response.status_code.code(), 200);
    }
    let after = LIVE.load(Ordering::Relaxed);
    let bindings = registrar.binding_count();
    assert_eq!(bindings, LINES);
    let per = (after - before) as f64 / bindings as f64;
    println!(
        "memory per registration: {per:.0} bytes ({:.2} KiB) over {bindings} bindings (heap {} -> {} bytes)",
        per / 1024.0,
        before,
        after
    );
    let _ = registrar.contacts("13235550000", now).len();
}
