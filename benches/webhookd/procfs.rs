//! What the kernel says about a process and the machine: CPU time, resident memory, load.
//!
//! Read from `/proc` rather than asked of webhookd, so the figures cover everything the process
//! does (every thread, the allocator, the TLS and AMQP stacks), and webhookd needs no benchmark
//! hooks.

use std::sync::OnceLock;

use anyhow::{bail, Context};

/// User plus system CPU time of every thread of `pid`, in seconds (`/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; the fields after its `)` do not. utime and
    // stime are fields 14 and 15, i.e. the 12th and 13th after the name.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let mut fields = after_name.split_whitespace().skip(11);
    let mut ticks = || -> anyhow::Result<u64> {
        Ok(fields
            .next()
            .context("short /proc/<pid>/stat")?
            .parse::<u64>()?)
    };
    let total = ticks()? + ticks()?;
    Ok(total as f64 / clock_ticks_per_second()? as f64)
}

/// The machine's CPU time so far, in clock ticks summed over its CPUs (`/proc/stat`): what was
/// busy, idle, and stolen by the hypervisor for other guests. Whether a run left the CPUs idle
/// tells a rate bound by CPU from one bound by something else (a window, a round trip), and
/// steal shows the host's share of the noise.
pub struct MachineCpu {
    busy: u64,
    idle: u64,
    steal: u64,
}

/// Shares of the machine's CPU time over a stretch of time, each in 0..=1.
pub struct CpuShares {
    pub idle: f64,
    pub steal: f64,
}

impl MachineCpu {
    pub fn now() -> anyhow::Result<MachineCpu> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat.lines().next().unwrap_or_default();
        let ticks: Vec<u64> = line
            .strip_prefix("cpu ")
            .context("/proc/stat does not start with the `cpu` line")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("parsing the `cpu` line of /proc/stat")?;
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = ticks[..] else {
            bail!("the `cpu` line of /proc/stat has {} fields", ticks.len());
        };
        Ok(MachineCpu {
            busy: user + nice + system + irq + softirq,
            idle: idle + iowait,
            steal,
        })
    }

    /// The shares of the time since `self`.
    pub fn shares_since(&self) -> anyhow::Result<CpuShares> {
        let now = MachineCpu::now()?;
        let busy = now.busy.saturating_sub(self.busy);
        let idle = now.idle.saturating_sub(self.idle);
        let steal = now.steal.saturating_sub(self.steal);
        let total = (busy + idle + steal).max(1) as f64;
        Ok(CpuShares {
            idle: idle as f64 / total,
            steal: steal as f64 / total,
        })
    }
}

/// The process listening on TCP `port` (`/proc/net/tcp{,6}` for the socket's inode, then the
/// `/proc/<pid>/fd` link that names it): the broker node, whose CPU the benchmark counts beside
/// webhookd's. Needs the right to read that process's fds (root, or the same user).
pub fn listener_pid(port: u16) -> anyhow::Result<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|table| listening_inode(&table, port))
        .with_context(|| format!("nothing listens on TCP port {port}"))?;
    let link = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == link.as_str())
        });
        if holds {
            return Ok(pid);
        }
    }
    bail!("no process of those this one may see holds the listener on TCP port {port}")
}

/// The inode of the socket listening on `port` in a `/proc/net/tcp` table: local address
/// `ADDR:PORT` in hex (field 2), state `0A` LISTEN (field 4), inode (field 10).
fn listening_inode(table: &str, port: u16) -> Option<u64> {
    let port = format!(":{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listens = fields.get(1)?.ends_with(&port) && *fields.get(3)? == "0A";
        listens.then(|| fields.get(9)?.parse().ok()).flatten()
    })
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    kib_field(&format!("/proc/{pid}/status"), field)
}

/// `field: <n> kB` in a `/proc` file of such lines.
fn kib_field(path: &str, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix(field).and_then(|l| l.strip_prefix(':')) {
            let kib = value.trim().trim_end_matches("kB").trim();
            return kib.parse().with_context(|| format!("{field} in {path}"));
        }
    }
    bail!("no {field} in {path}")
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The CPU model and the number of CPUs this process may run on.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let memory_gib =
        kib_field("/proc/meminfo", "MemTotal").map_or(0.0, |kib| kib as f64 / (1024.0 * 1024.0));
    format!("{cpus} × {model}, {memory_gib:.0} GiB RAM")
}

/// `/proc/<pid>/stat` counts in clock ticks; `getconf` knows how many a second (100 on Linux,
/// almost always, but not by definition).
fn clock_ticks_per_second() -> anyhow::Result<u64> {
    static TICKS: OnceLock<Option<u64>> = OnceLock::new();
    let ticks = TICKS.get_or_init(|| {
        let output = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()?;
        String::from_utf8(output.stdout).ok()?.trim().parse().ok()
    });
    ticks.context("`getconf CLK_TCK` failed")
}
