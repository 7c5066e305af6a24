//! Dialplan speed, in the core (no IO):
//!
//! - `lookup/10k`: finding the extension for a number in a generated dialplan of
//!   10,000 extensions (9,000 plain four-digit extensions, 800 North American area-code
//!   patterns `_1<area>NXXXXXX`, 200 international patterns `_011<cc>.`), over a mix of
//!   plain hits, pattern hits, international numbers and misses.
//! - `seed/outbound`: a whole outbound call of the seed's `extensions.conf` from the
//!   phone: 10 digits, `Goto` to `_1NXXNXXXXXX`, `Set`, `GotoIf`, `Set(CALLERID(num))`,
//!   `Dial`, the answer, the hang-up.
//!
//! `cargo bench -p router --bench dialplan`; figures in BENCHMARKS.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use router::call::{Action, Call, ChannelInfo, Command, DialStatus, Event};
use router::Dialplan;

fn generated_dialplan() -> Arc<Dialplan> {
    let mut text = String::from("[big]\n");
    for ext in 1000..10_000 {
        text.push_str(&format!("exten => {ext},1,Dial(SIP/{ext},20)\n"));
    }
    for area in 200..1000 {
        text.push_str(&format!(
            "exten => _1{area}NXXXXXX,1,Dial(SIP/${{EXTEN}}@trunk)\n"
        ));
    }
    for cc in 1..=200 {
        text.push_str(&format!("exten => _011{cc}.,1,Dial(SIP/${{EXTEN}}@intl)\n"));
    }
    let ast = asterisk_conf::extensions::from_config(
        asterisk_conf::parse_str("generated.conf", &text).unwrap(),
    )
    .unwrap();
    let plan = Dialplan::compile(&ast);
    assert_eq!(plan.context("big").unwrap().extensions().len(), 10_000);
    plan
}

fn numbers() -> Vec<String> {
    let mut numbers = Vec::new();
    for i in 0..250u32 {
        numbers.push(format!("{}", 1000 + (i * 37) % 9000)); // plain hit
        numbers.push(format!("1{}5550{:03}", 200 + (i * 7) % 800, i)); // area-code pattern
        numbers.push(format!("011{}20794600{:02}", 1 + i % 200, i % 100)); // international
        numbers.push(format!("{}", 10 + i % 90)); // miss
    }
    numbers
}

fn lookup(c: &mut Criterion) {
    let plan = generated_dialplan();
    let numbers = numbers();
    let found = numbers
        .iter()
        .filter(|n| plan.find("big", n, "").is_some())
        .count();
    assert_eq!(found, 750, "three in four numbers match");
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(numbers.len() as u64));
    group.bench_function("10k", |b| {
        b.iter(|| {
            let mut hits = 0usize;
            for number in &numbers {
                hits += usize::from(plan.find("big", std::hint::black_box(number), "").is_some());
            }
            hits
        })
    });
    group.finish();
}

fn seed_outbound(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/freelancer");
    let (plan, _) = router::load_dialplan(&dir).unwrap();
    let info = ChannelInfo {
        channel: "SIP/13235550100-0000002a".into(),
        unique_id: "1700000000.42".into(),
        context: "localexts".into(),
        exten: "3105550199".into(),
        caller_number: "13235550100".into(),
        caller_name: "First Last".into(),
        variables: Vec::new(),
        epoch: 1_700_000_000.0,
    };
    let mut group = c.benchmark_group("seed");
    group.throughput(Throughput::Elements(1));
    group.bench_function("outbound", |b| {
        b.iter(|| {
            let now = Instant::now();
            let mut call = Call::new(plan.clone(), info.clone(), now);
            let mut dial = None;
            while let Some(action) = call.poll_action() {
                if let Action::Command {
                    id,
                    command: Command::Dial { .. },
                } = action
                {
                    dial = Some(id);
                }
            }
            let id = dial.expect("the seed dials the carrier");
            call.handle_event(
                now,
                Event::DialResult {
                    id,
                    status: DialStatus::Answer,
                    answered_secs: 60,
                },
            );
            while call.poll_action().is_some() {}
            assert!(call.is_finished());
        })
    });
    group.finish();
}

criterion_group!(benches, lookup, seed_outbound);
criterion_main!(benches);
