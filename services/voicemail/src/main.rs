//! The `voicemail` binary: flags and environment to [`voicemail::run`].
fn main() -> std::process::ExitCode {
    service_runtime::main(voicemail::NAME, voicemail::run)
}
