//! Compiles the eBPF programs in ../ebpf with clang (`-target bpf -g -O2`, CO-RE) into OUT_DIR,
//! where `signals/ebpf` embeds them. Without clang-19 the agent still builds: the objects are
//! empty, and at start every eBPF family reports itself unavailable with that reason.

use std::path::{Path, PathBuf};
use std::process::Command;

const FAMILIES: [&str; 4] = ["tcp", "sock", "sched", "block"];

fn main() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=MEDIC_CLANG");
    println!("cargo:rerun-if-env-changed=PATH");
    let clang = std::env::var("MEDIC_CLANG").unwrap_or_else(|_| "clang-19".into());
    // Rerun when clang or libbpf's headers appear, change or go away: a build made before
    // `.ci/setup` installed them must not stay eBPF-less after it. A path that does not exist
    // makes cargo rerun this script on every build until it does, which is what is wanted then.
    println!("cargo:rerun-if-changed={}", which(&clang).unwrap_or_else(|| PathBuf::from("/usr/bin").join(&clang)).display());
    const HEADER: &str = "/usr/include/bpf/bpf_helpers.h";
    println!("cargo:rerun-if-changed={HEADER}");
    let mut missing = None;
    // libbpf's headers (bpf_helpers.h, bpf_core_read.h) come with libbpf-dev.
    if !Path::new(HEADER).exists() {
        missing = Some("libbpf-dev headers not found in /usr/include/bpf".to_string());
    }
    for f in FAMILIES {
        if missing.is_some() {
            std::fs::write(out.join(format!("{f}.bpf.o")), b"").expect("write OUT_DIR");
            continue;
        }
        let obj = out.join(format!("{f}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-target", "bpf", "-g", "-O2", "-Wall", "-Werror", "-D__TARGET_ARCH_x86", "-I"])
            .arg(&src)
            .arg("-c")
            .arg(src.join(format!("{f}.bpf.c")))
            .arg("-o")
            .arg(&obj)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{clang} failed on ebpf/{f}.bpf.c ({s})"),
            Err(e) => {
                missing = Some(format!("{clang}: {e}"));
                std::fs::write(&obj, b"").expect("write OUT_DIR");
            }
        }
    }
    if let Some(why) = missing {
        println!("cargo:warning=eBPF programs not built ({why}); install clang-19 and libbpf-dev for eBPF signals");
        std::fs::write(out.join("ebpf_missing.txt"), why).expect("write OUT_DIR");
    } else {
        std::fs::write(out.join("ebpf_missing.txt"), "").expect("write OUT_DIR");
    }
}

/// `name` as the shell would find it: itself when it has a `/`, else the first match on PATH.
fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
