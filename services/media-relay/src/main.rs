//! The `media-relay` binary: flags and environment to [`media_relay::run`].
fn main() -> std::process::ExitCode {
    service_runtime::main(media_relay::NAME, media_relay::run)
}
