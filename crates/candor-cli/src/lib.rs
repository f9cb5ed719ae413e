//! Helpers shared by the command-line binaries in `src/bin/`.

/// Peak resident memory of this process (VmHWM from /proc/self/status), in MB; NaN where that
/// file is not available.
pub fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}
