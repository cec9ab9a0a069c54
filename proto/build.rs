//! Compiles every `.proto` under `plankton/v1` and `inference` (the Open Inference Protocol) with a vendored
//! protoc (no system protoc needed), into one descriptor set.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let mut protos = Vec::new();
    for proto_dir in ["plankton/v1", "inference"] {
        protos.extend(
            std::fs::read_dir(proto_dir)?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "proto")),
        );
    }
    protos.sort();
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("plankton_descriptor.bin"))
        .compile_protos(&protos, &[std::path::PathBuf::from(".")])?;
    println!("cargo:rerun-if-changed=plankton/v1");
    println!("cargo:rerun-if-changed=inference");
    Ok(())
}
