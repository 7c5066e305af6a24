//! The `router` binary: flags and environment to [`router::run`].
fn main() -> std::process::ExitCode {
    service_runtime::main(router::NAME, router::run)
}
