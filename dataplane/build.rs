//! Builds the DPDK shim (`csrc/dpdk_shim.c`) when the `dpdk` feature is on.
//!
//! DPDK's burst and mbuf functions are `static inline` in its headers, so they cannot be linked
//! from Rust directly: the shim wraps each one in a real function. Compiler and linker flags come
//! from `pkg-config libdpdk`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/dpdk_shim.c");
    if std::env::var_os("CARGO_FEATURE_DPDK").is_none() {
        return;
    }
    let cflags = pkg_config(&["--cflags", "libdpdk"]);
    let libs = pkg_config(&["--libs", "libdpdk"]);
    let mut build = cc::Build::new();
    build.file("csrc/dpdk_shim.c").warnings(true).opt_level(3);
    let mut flags = cflags.split_whitespace().peekable();
    while let Some(flag) = flags.next() {
        if let Some(dir) = flag.strip_prefix("-I") {
            build.include(dir);
        } else if flag == "-include" {
            if let Some(header) = flags.next() {
                build.flag("-include").flag(header);
            }
        } else {
            build.flag(flag);
        }
    }
    build.compile("nexus_dpdk_shim");
    for flag in libs.split_whitespace() {
        if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={lib}");
        } else if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else {
            println!("cargo:rustc-link-arg={flag}");
        }
    }
}

fn pkg_config(args: &[&str]) -> String {
    let out = Command::new("pkg-config")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the dpdk feature needs pkg-config and libdpdk (Debian: apt-get install dpdk-dev \
             libdpdk-dev pkg-config): running pkg-config failed: {e}"
            )
        });
    if !out.status.success() {
        panic!(
            "the dpdk feature needs libdpdk (Debian: apt-get install dpdk-dev libdpdk-dev \
             pkg-config): pkg-config {} said: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}
