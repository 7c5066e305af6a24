//! The `mailer` binary: flags and environment to [`mailer::run`].
fn main() -> std::process::ExitCode {
    service_runtime::main(mailer::NAME, mailer::run)
}
