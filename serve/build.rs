//! Embeds libtorch's library folder as an rpath so binaries and tests find libtorch_cpu.so.
fn main() {
    let libtorch_lib =
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch_lib}");
}
