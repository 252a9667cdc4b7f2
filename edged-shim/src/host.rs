//! What the host is and how loaded it is, read through `sysinfo` and a few `/proc` files.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use sysinfo::{Disks, MemoryRefreshKind, Networks, ProcessRefreshKind, ProcessesToUpdate, System};

/// Facts that do not change while edgecore runs: the Node object's capacity and nodeInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostFacts {
    pub(crate) cpus: usize,
    pub(crate) memory_bytes: u64,
    /// Go's GOARCH spelling (`amd64`, `arm64`, `arm`).
    pub(crate) arch: String,
    pub(crate) kernel_version: String,
    pub(crate) os_image: String,
    pub(crate) machine_id: String,
    pub(crate) system_uuid: String,
    pub(crate) boot_id: String,
    /// First non-loopback address, IPv4 preferred.
    pub(crate) internal_ip: Option<IpAddr>,
}

/// One reading of the pressure signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostSample {
    pub(crate) memory_available_bytes: u64,
    /// (available, total) bytes of the filesystem holding the root directory, when found.
    pub(crate) disk: Option<(u64, u64)>,
    pub(crate) processes: u64,
    pub(crate) pid_max: u64,
}

/// Source of host facts and samples; tests substitute fixed values.
pub(crate) trait HostProbe: Send + 'static {
    fn facts(&mut self) -> HostFacts;
    fn sample(&mut self) -> HostSample;
}

/// The real probe.
pub(crate) struct SysinfoProbe {
    system: Option<System>,
    root_directory: PathBuf,
}

impl SysinfoProbe {
    pub(crate) fn new(root_directory: PathBuf) -> Self {
        let system = match System::new() {
            Ok(s) => Some(s),
            Err(error) => {
                tracing::warn!(%error, "cannot read system information; node reports zero capacity");
                None
            }
        };
        Self {
            system,
            root_directory,
        }
    }
}

/// Go's name for the architecture Rust calls `arch`.
pub(crate) fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "riscv64gc" | "riscv64" => "riscv64",
        other => other,
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `PRETTY_NAME` from os-release text, unquoted.
pub(crate) fn pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let v = line.strip_prefix("PRETTY_NAME=")?;
        Some(v.trim().trim_matches('"').trim_matches('\'').to_owned())
    })
}

fn first_address(networks: &Networks) -> Option<IpAddr> {
    let mut addrs: Vec<(&std::ffi::OsString, IpAddr)> = networks
        .iter()
        .flat_map(|(name, data)| data.ip_networks().iter().map(move |n| (name, n.addr)))
        .filter(|(_, a)| !a.is_loopback() && !a.is_unspecified() && !is_link_local(a))
        .collect();
    // Stable choice: IPv4 first, then interface name.
    addrs.sort_by_key(|(name, a)| (a.is_ipv6(), (*name).clone(), *a));
    addrs.first().map(|(_, a)| *a)
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The disk whose mount point is the longest prefix of `path`.
fn disk_for(path: &Path) -> Option<(u64, u64)> {
    let disks = Disks::new_with_refreshed_list().ok()?;
    disks
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| (d.available_space(), d.total_space()))
}

impl HostProbe for SysinfoProbe {
    fn facts(&mut self) -> HostFacts {
        let (cpus, memory_bytes) = match self.system.as_mut() {
            Some(sys) => {
                sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
                sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
                (sys.cpus().len(), sys.total_memory())
            }
            None => (0, 0),
        };
        let os_image = pretty_name(&std::fs::read_to_string("/etc/os-release").unwrap_or_default())
            .or_else(|| System::long_os_version().ok())
            .unwrap_or_default();
        HostFacts {
            cpus,
            memory_bytes,
            arch: go_arch(std::env::consts::ARCH).to_owned(),
            kernel_version: System::kernel_version().unwrap_or_default(),
            os_image,
            machine_id: read_trimmed("/etc/machine-id"),
            system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            internal_ip: Networks::new_with_refreshed_list()
                .ok()
                .and_then(|n| first_address(&n)),
        }
    }

    fn sample(&mut self) -> HostSample {
        let (memory_available_bytes, processes) = match self.system.as_mut() {
            Some(sys) => {
                sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
                sys.refresh_processes_specifics(
                    ProcessesToUpdate::All,
                    true,
                    ProcessRefreshKind::nothing(),
                );
                (sys.available_memory(), sys.processes().len() as u64)
            }
            None => (u64::MAX, 0),
        };
        HostSample {
            memory_available_bytes,
            disk: disk_for(&self.root_directory),
            processes,
            pid_max: read_trimmed("/proc/sys/kernel/pid_max")
                .parse()
                .unwrap_or(32_768),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_arch_names() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(go_arch("arm"), "arm");
    }

    #[test]
    fn pretty_name_unquotes() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            pretty_name(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(pretty_name("ID=debian"), None);
    }

    #[test]
    fn real_probe_reads_this_host() {
        let mut probe = SysinfoProbe::new(PathBuf::from("/"));
        let facts = probe.facts();
        assert!(facts.cpus >= 1);
        assert!(facts.memory_bytes > 0);
        let sample = probe.sample();
        assert!(sample.processes >= 1);
        assert!(sample.pid_max >= sample.processes);
    }
}
