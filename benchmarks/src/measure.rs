//! CPU time and memory of this process, read from `/proc` (Linux).

use std::fs;

/// Measures the CPU time (user + system, all threads) this process spends from `start`.
pub struct CpuTimer {
    start: f64,
}

impl CpuTimer {
    pub fn start() -> Self {
        Self { start: cpu_secs() }
    }

    pub fn elapsed_secs(&self) -> f64 {
        cpu_secs() - self.start
    }
}

/// User + system CPU seconds of this process so far.
fn cpu_secs() -> f64 {
    stat_cpu_secs("/proc/self/stat")
}

/// User + system CPU seconds of the calling thread so far.
pub fn thread_cpu_secs() -> f64 {
    stat_cpu_secs("/proc/thread-self/stat")
}

/// User + system CPU seconds process `pid` has used so far (another process: a server the
/// benchmark started).
pub fn process_cpu_secs(pid: u32) -> f64 {
    stat_cpu_secs(&format!("/proc/{pid}/stat"))
}

fn stat_cpu_secs(path: &str) -> f64 {
    // Fields 14 and 15 of a stat file, in clock ticks (100 per second on Linux).
    let Ok(stat) = fs::read_to_string(path) else {
        return 0.0;
    };
    let Some(after_name) = stat.rsplit_once(") ").map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // after_name starts at field 3, so utime (14) is index 11 and stime (15) index 12.
    (ticks(11) + ticks(12)) / 100.0
}

fn status_kb(key: &str) -> usize {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory now, in bytes.
pub fn rss_bytes() -> usize {
    status_kb("VmRSS:") * 1024
}

/// The most resident memory this process has had, in bytes.
pub fn peak_rss_bytes() -> usize {
    status_kb("VmHWM:") * 1024
}

/// Prints figures side by side: a header naming the two columns (what is measured, then its
/// baseline), then one line per figure, as whole numbers.
pub fn print_side_by_side(columns: (&str, &str), figures: &[(&str, f64, f64)]) {
    println!("  {:<44} {:>14} {:>14}", "", columns.0, columns.1);
    for (label, ours, baseline) in figures {
        println!("  {label:<44} {ours:>14.0} {baseline:>14.0}");
    }
}
