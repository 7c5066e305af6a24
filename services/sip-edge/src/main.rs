//! The `sip-edge` binary: flags and environment to [`sip_edge::run`].
fn main() -> std::process::ExitCode {
    service_runtime::main(sip_edge::NAME, sip_edge::run)
}
