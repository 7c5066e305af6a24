//! The `phone` binary: see [`phone::run`].
fn main() -> std::process::ExitCode {
    service_runtime::main(phone::NAME, phone::run)
}
