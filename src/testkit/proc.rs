//! Readings of another process (a driver or controller started as a subprocess) from
//! `/proc/<pid>`, parsed by the same functions as the driver's own `process_*` metrics.

use crate::telemetry::process::{parse_stat, parse_status_kb, ticks_per_second};

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`); `None` when the process or the
/// field is gone.
pub fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kb(&status, key)
}

/// CPU seconds (user + system) the process has used so far; `None` when it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat, ticks_per_second()).map(|(cpu, ..)| cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_read() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let pid = std::process::id();
        assert!(status_kb(pid, "VmRSS").is_some_and(|kb| kb > 0));
        assert!(cpu_seconds(pid).is_some_and(|s| s >= 0.0));
    }
}
