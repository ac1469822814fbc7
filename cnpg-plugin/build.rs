//! Compiles the vendored CNPG-I protocol (proto/, see proto/README.md) into Rust with
//! protox (a protobuf compiler in Rust: no `protoc` on the build machine) and
//! tonic-prost-build. Writes only into OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Only the services the plugin implements or calls; the others stay vendored as data.
    let files = [
        "proto/identity.proto",
        "proto/operator_lifecycle.proto",
        "proto/backup.proto",
        "proto/wal.proto",
        "proto/restore_job.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
