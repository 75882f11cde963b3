//! The `process_*` series of Prometheus' Go client (its process collector), read from
//! `/proc/self` at scrape time, so Gardener's ServiceMonitor (which keeps `process_*`) sees the
//! same series for this binary as for a Go provider: CPU, memory, file descriptors, start
//! time and network bytes. On a system without `/proc` nothing is exported.
//!
//! | series | type | source |
//! |---|---|---|
//! | `process_cpu_seconds_total` | counter | `stat` utime + stime |
//! | `process_open_fds` | gauge | entries of `fd/` |
//! | `process_max_fds` | gauge | `limits` "Max open files" (soft) |
//! | `process_virtual_memory_bytes` | gauge | `stat` vsize |
//! | `process_virtual_memory_max_bytes` | gauge | `limits` "Max address space" (soft; unlimited = 2^64−1) |
//! | `process_resident_memory_bytes` | gauge | `stat` rss × page size |
//! | `process_start_time_seconds` | gauge | `stat` starttime / ticks + boot time |
//! | `process_network_receive_bytes_total` | counter | `net/netstat` IpExt InOctets |
//! | `process_network_transmit_bytes_total` | counter | `net/netstat` IpExt OutOctets |

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// One reading of `/proc/self`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub cpu_seconds: f64,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
    pub virtual_memory_bytes: f64,
    pub virtual_memory_max_bytes: Option<f64>,
    pub resident_memory_bytes: f64,
    pub start_time_seconds: Option<f64>,
    pub network: Option<(f64, f64)>,
}

/// Parses `/proc/self/stat`: (cpu seconds, vsize, rss pages, starttime ticks).
pub fn parse_stat(stat: &str, ticks_per_second: f64) -> Option<(f64, f64, f64, f64)> {
    // The command name (field 2) may contain spaces and parentheses: fields restart after
    // the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let cpu = (field(14)? + field(15)?) / ticks_per_second;
    Some((cpu, field(23)?, field(24)?, field(22)?))
}

/// A soft limit from `/proc/self/limits` (`unlimited` → u64::MAX, as Go's procfs reads it).
pub fn parse_limit(limits: &str, name: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    let soft = line[name.len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        Some(u64::MAX as f64)
    } else {
        soft.parse().ok()
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …).
pub fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// `IpExt` InOctets and OutOctets from `/proc/self/net/netstat`.
pub fn parse_netstat(netstat: &str) -> Option<(f64, f64)> {
    let mut lines = netstat.lines();
    while let Some(header) = lines.next() {
        let values = lines.next()?;
        if !header.starts_with("IpExt:") {
            continue;
        }
        let names: Vec<&str> = header.split_whitespace().collect();
        let nums: Vec<&str> = values.split_whitespace().collect();
        let get = |key: &str| {
            names
                .iter()
                .position(|n| *n == key)
                .and_then(|i| nums.get(i))
                .and_then(|v| v.parse::<f64>().ok())
        };
        return Some((get("InOctets")?, get("OutOctets")?));
    }
    None
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Clock ticks per second, the unit of `stat`'s CPU and start times (100 if unknown).
#[allow(unsafe_code)]
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Reads `/proc/self` now; `None` without `/proc`.
#[allow(unsafe_code)]
pub fn read() -> Option<Reading> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let ticks = ticks_per_second();
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = if page > 0 { page as f64 } else { 4096.0 };
    let (cpu_seconds, vsize, rss_pages, start_ticks) = parse_stat(&stat, ticks)?;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    Some(Reading {
        cpu_seconds,
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64),
        max_fds: parse_limit(&limits, "Max open files"),
        virtual_memory_bytes: vsize,
        virtual_memory_max_bytes: parse_limit(&limits, "Max address space"),
        resident_memory_bytes: rss_pages * page,
        start_time_seconds: boot_time().map(|b| b + start_ticks / ticks),
        network: std::fs::read_to_string("/proc/self/net/netstat")
            .ok()
            .and_then(|n| parse_netstat(&n)),
    })
}

/// Scrape-time collector of the `process_*` series.
#[derive(Debug, Default)]
pub struct ProcessCollector;

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let Some(r) = read() else { return Ok(()) };
        counter(
            &mut e,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            r.cpu_seconds,
        )?;
        if let Some(v) = r.open_fds {
            gauge(
                &mut e,
                "process_open_fds",
                "Number of open file descriptors.",
                v,
            )?;
        }
        if let Some(v) = r.max_fds {
            gauge(
                &mut e,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                v,
            )?;
        }
        gauge(
            &mut e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            r.virtual_memory_bytes,
        )?;
        if let Some(v) = r.virtual_memory_max_bytes {
            gauge(
                &mut e,
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
                v,
            )?;
        }
        gauge(
            &mut e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            r.resident_memory_bytes,
        )?;
        if let Some(v) = r.start_time_seconds {
            gauge(
                &mut e,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                v,
            )?;
        }
        if let Some((rx, tx)) = r.network {
            counter(
                &mut e,
                "process_network_receive_bytes",
                "Number of bytes received by the process over the network.",
                rx,
            )?;
            counter(
                &mut e,
                "process_network_transmit_bytes",
                "Number of bytes sent by the process over the network.",
                tx,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // A command name with a space and a parenthesis must not shift the fields.
        let stat = "4242 (metal (drv) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 8 0 123456 104857600 2560 18446744073709551615";
        let (cpu, vsize, rss, start) = parse_stat(stat, 100.0).unwrap();
        assert!((cpu - 3.0).abs() < 1e-9);
        assert_eq!(vsize, 104_857_600.0);
        assert_eq!(rss, 2560.0);
        assert_eq!(start, 123_456.0);
    }

    #[test]
    fn status_kb_fields_parse_by_exact_key() {
        let status = "Name:\tmetal-driver\nVmHWM:\t   12345 kB\nVmRSS:\t    9876 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(9876));
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(12345));
        assert_eq!(parse_status_kb(status, "Vm"), None);
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn limits_and_netstat_parse() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1048576              1048576              files     \n\
                      Max address space         unlimited            unlimited            bytes     \n";
        assert_eq!(parse_limit(limits, "Max open files"), Some(1_048_576.0));
        assert_eq!(
            parse_limit(limits, "Max address space"),
            Some(u64::MAX as f64)
        );
        let netstat = "TcpExt: SyncookiesSent SyncookiesRecv\nTcpExt: 0 0\n\
                       IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets\n\
                       IpExt: 0 0 0 0 0 0 12345 678\n";
        assert_eq!(parse_netstat(netstat), Some((12345.0, 678.0)));
    }

    #[test]
    fn this_process_is_readable_on_linux() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let r = read().expect("reading /proc/self");
        assert!(r.resident_memory_bytes > 0.0);
        assert!(r.open_fds.is_some_and(|n| n >= 3.0));
        let start = r.start_time_seconds.expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start}"
        );
    }
}
