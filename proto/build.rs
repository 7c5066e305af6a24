//! Compiles `phone/**/*.proto` with protox (no protoc needed) and generates tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "phone/edge/v1/edge.proto",
        "phone/router/v1/router.proto",
        "phone/media/v1/media.proto",
        "phone/voicemail/v1/voicemail.proto",
        "phone/mailer/v1/mailer.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
