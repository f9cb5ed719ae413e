//! Test helpers shared by every crate: a test that cannot check something says so and is
//! counted ([`skip`]), never reported as a plain `ok`.
//!
//! Rust's test harness has no run-time "skipped": a test either passes, fails or was marked
//! `#[ignore]` at compile time. So a test that finds a tool missing calls [`skip`], which
//! prints `SKIPPED` and appends a line to the file named by `CANDOR_SKIP_LOG`.
//! `scripts/test.sh` (the README's test command) sets that variable, prints the count and
//! reasons at the end of the run, and under `CANDOR_TEST_STRICT=1` (`.ci/run`) fails when a
//! test skipped for a tool that CI installs.

use std::io::Write;
use std::path::PathBuf;

/// Why a test could not check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// A tool that `.ci/run` installs is missing (a Vulkan driver, the `gguf` Python package):
    /// a failure in CI, a counted skip elsewhere.
    Tool,
    /// The package registry that test models come from could not be reached.
    Registry,
    /// Needs hardware or an explicit opt-in (an NVIDIA GPU, `CANDOR_TEST_CUDA=1`).
    Gpu,
}

impl Why {
    pub fn name(self) -> &'static str {
        match self {
            Why::Tool => "tool",
            Why::Registry => "registry",
            Why::Gpu => "gpu",
        }
    }
}

/// Record that the running test could not check something (all of it, or the part that needs
/// what is missing), and why. The caller returns, or leaves out that part, right after.
pub fn skip(why: Why, reason: &str) {
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("(unnamed test)")
        .to_string();
    eprintln!("SKIPPED ({}): {reason}", why.name());
    if let Some(log) = std::env::var_os("CANDOR_SKIP_LOG") {
        let line = format!("{}\t{test}\t{}\n", why.name(), reason.replace('\n', " "));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!(
                "cannot record the skip in {}: {e}",
                PathBuf::from(log).display()
            );
        }
    }
}

/// The Vulkan driver manifests (ICD files) the loader would find: the files named by
/// `VK_DRIVER_FILES` / `VK_ICD_FILENAMES` when set, else those in the standard folders.
/// Empty when there is no driver, which is what `wgpu` needs to start an adapter.
pub fn vulkan_drivers() -> Vec<PathBuf> {
    for var in ["VK_DRIVER_FILES", "VK_ICD_FILENAMES"] {
        if let Some(v) = std::env::var_os(var) {
            return std::env::split_paths(&v).filter(|p| p.is_file()).collect();
        }
    }
    let mut found = vec![];
    for dir in [
        "/usr/share/vulkan/icd.d",
        "/usr/local/share/vulkan/icd.d",
        "/etc/vulkan/icd.d",
    ] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            found.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json")),
            );
        }
    }
    found
}

/// Whether the Vulkan loader library (`libvulkan.so.1`, Debian's `libvulkan1`) is in one of the
/// usual library folders.
pub fn vulkan_loader() -> bool {
    let dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
        "/lib/x86_64-linux-gnu",
    ];
    dirs.iter()
        .any(|d| std::path::Path::new(d).join("libvulkan.so.1").exists())
}

/// For a test that needs a Vulkan driver: `true` when there is one (a driver manifest and the
/// loader); otherwise records the skip and returns `false`.
pub fn have_vulkan() -> bool {
    if vulkan_drivers().is_empty() || !vulkan_loader() {
        skip(
            Why::Tool,
            "no Vulkan driver (apt-get install mesa-vulkan-drivers libvulkan1 gives lavapipe; .ci/run does)",
        );
        return false;
    }
    true
}

/// The repository's root folder, from the running test's crate folder as cargo reports it at
/// run time (not when the test was built: a test binary reused from another checkout's build
/// must still read this checkout's files). Every test crate sits two levels down
/// (`crates/<name>`, `tests/support`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../..")
    .canonicalize()
    .expect("the repository root exists")
}
