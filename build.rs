//! Builds the shim (`src/launch/shim/shim.c`) as a shared library that the
//! rcluster binary embeds: `--adopt-bind` and `--http-drain` hand it to
//! each worker through a memfd, so there is nothing to install.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "src/launch/shim/shim.c";
    println!("cargo:rerun-if-changed={source}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("rcluster-shim.so");
    // cc knows the target's C compiler; a shared library is one command.
    let compiler = cc::Build::new().get_compiler();
    let mut cmd: Command = compiler.to_command();
    cmd.args(["-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-o"])
        .arg(&out)
        .arg(source)
        .args(["-pthread", "-ldl"]);
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run the C compiler ({e}): install gcc (Debian: apt install gcc)")
    });
    assert!(status.success(), "the C compiler failed on {source}");
}
