//! The `media-relay` binary: flags and environment to [`media_relay::run`], or
//! `media-relay probe livez|readyz ADDRESS-FILE` ([`media_relay::probe`]).
fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("probe") {
        return media_relay::probe::run(&args[1..]);
    }
    service_runtime::main(media_relay::NAME, media_relay::run)
}
