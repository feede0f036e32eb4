//! The cgroup files and values that enforce a [`Limits`], per cgroup version, in the order they must
//! be written. Pure, so the v2 side is tested even on hosts without v2 controllers. It must not
//! decide placement (`layout`) or touch files (`mod.rs`).

use super::layout::{Controller, Version};
use super::limits::{Limits, SwapLimit};

/// The CFS period strata uses on both versions, as Docker does: quota = CPUs × period.
const CPU_PERIOD_US: u64 = 100_000;

/// What to do when a setting's file does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfMissing {
    /// The controller is there, so the file must be too: an error.
    Fail,
    /// Swap accounting is off (v1 without `swapaccount=1`, v2 without `CONFIG_MEMCG_SWAP`): swap
    /// stays unlimited, which a user who asked for a swap limit must be told.
    Warn,
    /// The value only restates the default (unlimited swap).
    Skip,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub controller: Controller,
    pub file: &'static str,
    pub value: String,
    pub if_missing: IfMissing,
}

fn setting(controller: Controller, file: &'static str, value: impl ToString) -> Setting {
    Setting { controller, file, value: value.to_string(), if_missing: IfMissing::Fail }
}

/// The settings for `limits`, in write order. v1's memsw limit must stay at least the memory
/// limit at every step; a fresh cgroup has both unlimited, so the memory limit goes first.
pub fn settings(version: Version, limits: &Limits) -> Vec<Setting> {
    let mut out = Vec::new();
    if let Some(memory) = limits.memory {
        // Docker: --memory without --memory-swap allows as much swap as memory.
        let swap = limits.memory_swap.unwrap_or(SwapLimit::Total(memory.saturating_mul(2)));
        let (memory_file, swap_file) = match version {
            Version::V2 => ("memory.max", "memory.swap.max"),
            Version::V1 => ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"),
        };
        out.push(setting(Controller::Memory, memory_file, memory));
        // v2 limits swap alone, v1 limits memory and swap together.
        let (value, if_missing) = match (swap, version) {
            (SwapLimit::Unlimited, Version::V2) => ("max".to_string(), IfMissing::Skip),
            (SwapLimit::Unlimited, Version::V1) => ("-1".to_string(), IfMissing::Skip),
            (SwapLimit::Total(total), Version::V2) => (total.saturating_sub(memory).to_string(), IfMissing::Warn),
            (SwapLimit::Total(total), Version::V1) => (total.to_string(), IfMissing::Warn),
        };
        out.push(Setting { controller: Controller::Memory, file: swap_file, value, if_missing });
    }
    if let Some(pids) = limits.pids {
        out.push(setting(Controller::Pids, "pids.max", pids));
    }
    if let Some(cpus) = limits.cpus {
        let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
        match version {
            Version::V2 => out.push(setting(Controller::Cpu, "cpu.max", format!("{quota} {CPU_PERIOD_US}"))),
            Version::V1 => {
                out.push(setting(Controller::Cpu, "cpu.cfs_period_us", CPU_PERIOD_US));
                out.push(setting(Controller::Cpu, "cpu.cfs_quota_us", quota));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Controller::{Cpu, Memory, Pids};
    use super::*;

    const MIB: u64 = 1 << 20;

    fn files(version: Version, limits: &Limits) -> Vec<(&'static str, String, IfMissing)> {
        settings(version, limits).into_iter().map(|s| (s.file, s.value, s.if_missing)).collect()
    }

    fn all() -> Limits {
        Limits { memory: Some(32 * MIB), memory_swap: None, pids: Some(20), cpus: Some(0.5) }
    }

    #[test]
    fn v2_values_with_docker_default_swap() {
        use IfMissing::*;
        assert_eq!(
            files(Version::V2, &all()),
            [
                ("memory.max", "33554432".to_string(), Fail),
                ("memory.swap.max", "33554432".to_string(), Warn),
                ("pids.max", "20".to_string(), Fail),
                ("cpu.max", "50000 100000".to_string(), Fail),
            ]
        );
        let controllers: Vec<_> = settings(Version::V2, &all()).iter().map(|s| s.controller).collect();
        assert_eq!(controllers, [Memory, Memory, Pids, Cpu]);
    }

    #[test]
    fn v1_values_in_write_order() {
        use IfMissing::*;
        assert_eq!(
            files(Version::V1, &all()),
            [
                ("memory.limit_in_bytes", "33554432".to_string(), Fail),
                ("memory.memsw.limit_in_bytes", "67108864".to_string(), Warn),
                ("pids.max", "20".to_string(), Fail),
                ("cpu.cfs_period_us", "100000".to_string(), Fail),
                ("cpu.cfs_quota_us", "50000".to_string(), Fail),
            ]
        );
    }

    #[test]
    fn swap_total_and_unlimited_per_version() {
        let total =
            Limits { memory: Some(64 * MIB), memory_swap: Some(SwapLimit::Total(96 * MIB)), ..Limits::default() };
        assert_eq!(files(Version::V2, &total)[1], ("memory.swap.max", (32 * MIB).to_string(), IfMissing::Warn));
        assert_eq!(
            files(Version::V1, &total)[1],
            ("memory.memsw.limit_in_bytes", (96 * MIB).to_string(), IfMissing::Warn)
        );
        let no_swap = Limits { memory_swap: Some(SwapLimit::Total(64 * MIB)), ..total.clone() };
        assert_eq!(files(Version::V2, &no_swap)[1].1, "0");
        let unlimited = Limits { memory_swap: Some(SwapLimit::Unlimited), ..total };
        assert_eq!(files(Version::V2, &unlimited)[1], ("memory.swap.max", "max".to_string(), IfMissing::Skip));
        assert_eq!(
            files(Version::V1, &unlimited)[1],
            ("memory.memsw.limit_in_bytes", "-1".to_string(), IfMissing::Skip)
        );
        let huge = Limits { memory: Some(u64::MAX), ..Limits::default() };
        assert_eq!(files(Version::V1, &huge)[1].1, u64::MAX.to_string());
    }

    #[test]
    fn cpu_quota_rounds_to_microseconds() {
        let cpus = |c| Limits { cpus: Some(c), ..Limits::default() };
        assert_eq!(files(Version::V2, &cpus(2.0))[0].1, "200000 100000");
        assert_eq!(files(Version::V2, &cpus(0.01))[0].1, "1000 100000");
        assert_eq!(files(Version::V1, &cpus(1.333333))[1].1, "133333");
    }

    #[test]
    fn no_limits_no_settings() {
        assert!(settings(Version::V1, &Limits::default()).is_empty());
        assert!(settings(Version::V2, &Limits::default()).is_empty());
    }
}
