//! A container's limits as the user states them, with Docker's semantics (`--memory`,
//! `--memory-swap`, `--pids-limit`, `--cpus`): parsing and consistency checks. Pure; it knows
//! nothing of cgroup versions or files, which belong to `values` and `layout`.

use super::layout::Controller;
use crate::error::{Error, Result};

/// The kernel's smallest CFS quota is 1 ms per 100 ms period; Docker has the same floor.
const MIN_CPUS: f64 = 0.01;

/// Limits of one container, Docker's semantics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// Bytes of memory.
    pub memory: Option<u64>,
    /// Memory plus swap; unset with `memory` set means twice `memory`, as in Docker.
    pub memory_swap: Option<SwapLimit>,
    /// Processes and threads.
    pub pids: Option<u64>,
    /// CPUs' worth of time per period, e.g. 0.5.
    pub cpus: Option<f64>,
}

/// `docker --memory-swap`: the total of memory and swap, or "-1" for unlimited swap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SwapLimit {
    Unlimited,
    Total(u64),
}

/// Parses a size such as "32m", "1g", "1.5G", "512k", "1024", "100b", "64MiB": a number with an
/// optional binary unit (b, k, m, g, t, p; an "i" and a "b" may follow), case-insensitive.
pub fn parse_memory(s: &str) -> Result<u64> {
    let bad = || {
        Error::invalid(format!(
            "invalid memory size {s:?}: expected a number with an optional unit b, k, m, g, t or p \
             (multiples of 1024), e.g. 512m or 1.5g"
        ))
    };
    let text = s.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len()));
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        "p" | "pb" | "pi" | "pib" => 50,
        _ => return Err(bad()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || number.ends_with('.') || fraction.len() > 18 {
        return Err(bad());
    }
    let too_large = || Error::invalid(format!("memory size {s:?} is too large: at most {} bytes", u64::MAX));
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let fraction_bytes = match fraction {
        "" => 0,
        f => (f.parse::<u128>().map_err(|_| bad())? << shift) / 10u128.pow(f.len() as u32),
    };
    let bytes = whole.checked_mul(1 << shift).and_then(|b| b.checked_add(fraction_bytes)).ok_or_else(too_large)?;
    match u64::try_from(bytes) {
        Ok(0) => Err(Error::invalid(format!("memory size {s:?} must be greater than 0"))),
        Ok(bytes) => Ok(bytes),
        Err(_) => Err(too_large()),
    }
}

/// Parses a `--memory-swap` value: "-1" for unlimited swap, else a total size as [`parse_memory`].
pub fn parse_memory_swap(s: &str) -> Result<SwapLimit> {
    if s.trim() == "-1" {
        return Ok(SwapLimit::Unlimited);
    }
    parse_memory(s)
        .map(SwapLimit::Total)
        .map_err(|e| Error::invalid(format!("{e} (for the memory+swap total; -1 means unlimited swap)")))
}

/// Parses a number of CPUs such as "0.5" or "2".
pub fn parse_cpus(s: &str) -> Result<f64> {
    let cpus: f64 = s.trim().parse().map_err(|_| {
        Error::invalid(format!("invalid number of CPUs {s:?}: expected a positive number such as 0.5 or 2"))
    })?;
    check_cpus(cpus)?;
    Ok(cpus)
}

fn check_cpus(cpus: f64) -> Result<()> {
    if cpus.is_finite() && cpus >= MIN_CPUS {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "number of CPUs {cpus} is out of range: it must be finite and at least {MIN_CPUS} (1 ms per 100 ms)"
        )))
    }
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Checks the limits together, as Docker does: a swap total needs a memory limit and may not
    /// be below it.
    pub fn validate(&self) -> Result<()> {
        match (self.memory, self.memory_swap) {
            (Some(0), _) => return Err(Error::invalid("memory limit must be greater than 0")),
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "a memory+swap limit needs a memory limit too: set the memory limit, or drop the swap limit",
                ))
            }
            (Some(memory), Some(SwapLimit::Total(total))) if total < memory => {
                return Err(Error::invalid(format!(
                    "memory+swap limit ({total} bytes) is below the memory limit ({memory} bytes): it is the \
                     total of memory and swap, so it must be at least the memory limit (-1: unlimited swap)"
                )))
            }
            _ => {}
        }
        if self.pids == Some(0) {
            return Err(Error::invalid("pids limit must be at least 1"));
        }
        self.cpus.map_or(Ok(()), check_cpus)
    }

    /// Each requested limit, named for warnings, with the controller that enforces it.
    pub(super) fn requested(&self) -> Vec<(&'static str, Controller)> {
        let set = [
            (self.memory.is_some(), "memory limit", Controller::Memory),
            (self.memory_swap.is_some(), "swap limit", Controller::Memory),
            (self.pids.is_some(), "pids limit", Controller::Pids),
            (self.cpus.is_some(), "cpus limit", Controller::Cpu),
        ];
        set.into_iter().filter(|(on, ..)| *on).map(|(_, name, c)| (name, c)).collect()
    }

    /// The controllers the limits need, each once.
    pub(super) fn controllers(&self) -> Vec<Controller> {
        let requested = self.requested();
        Controller::ALL.into_iter().filter(|c| requested.iter().any(|(_, r)| r == c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn message(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(Error::Invalid(m)) => m,
            other => panic!("expected Error::Invalid, got {other:?}"),
        }
    }

    #[test]
    fn memory_sizes_parse_with_binary_units_in_any_case() {
        let cases = [
            ("32m", 32 * MIB),
            ("32M", 32 * MIB),
            ("1g", 1 << 30),
            ("1GB", 1 << 30),
            ("64MiB", 64 * MIB),
            ("512k", 512 << 10),
            ("512Ki", 512 << 10),
            ("1024", 1024),
            ("100b", 100),
            ("100B", 100),
            (" 2 t ", 2 << 40),
            ("1p", 1 << 50),
            ("1.5g", 3 << 29),
            ("0.5k", 512),
            ("16383p", 16_383 << 50),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_memory(text).unwrap(), bytes, "{text}");
        }
    }

    #[test]
    fn memory_junk_zero_and_overflow_are_clear_errors() {
        for junk in ["", "m", "abc", "12x", "1.2.3g", "1.g", ".5g", "-1", "1e3", "3mbb", "1 kk", "½g"] {
            let m = message(parse_memory(junk));
            assert!(m.contains("invalid memory size") && m.contains("512m"), "{junk}: {m}");
        }
        for zero in ["0", "0m", "0.0001b"] {
            assert!(message(parse_memory(zero)).contains("greater than 0"), "{zero}");
        }
        for huge in ["16384p", "18446744073709551616", "99999999999999999999999999999999999999999"] {
            assert!(message(parse_memory(huge)).contains("too large"), "{huge}");
        }
        assert_eq!(parse_memory("18446744073709551615").unwrap(), u64::MAX);
    }

    #[test]
    fn memory_swap_is_a_total_or_minus_one() {
        assert_eq!(parse_memory_swap("-1").unwrap(), SwapLimit::Unlimited);
        assert_eq!(parse_memory_swap("1g").unwrap(), SwapLimit::Total(1 << 30));
        let m = message(parse_memory_swap("-2"));
        assert!(m.contains("-1 means unlimited"), "{m}");
    }

    #[test]
    fn cpus_must_be_positive_and_finite() {
        assert_eq!(parse_cpus("0.5").unwrap(), 0.5);
        assert_eq!(parse_cpus("2").unwrap(), 2.0);
        assert_eq!(parse_cpus(" 0.01 ").unwrap(), 0.01);
        for bad in ["", "two", "0.5.1"] {
            assert!(message(parse_cpus(bad)).contains("invalid number of CPUs"), "{bad}");
        }
        for out in ["0", "-1", "0.001", "inf", "NaN", "1e400"] {
            assert!(message(parse_cpus(out)).contains("out of range"), "{out}");
        }
    }

    #[test]
    fn validate_follows_docker() {
        let memory = Limits { memory: Some(64 * MIB), ..Limits::default() };
        assert!(memory.validate().is_ok());
        let swap = |s| Limits { memory_swap: Some(s), ..memory.clone() };
        assert!(swap(SwapLimit::Total(64 * MIB)).validate().is_ok(), "equal: no swap");
        assert!(swap(SwapLimit::Total(128 * MIB)).validate().is_ok());
        assert!(swap(SwapLimit::Unlimited).validate().is_ok());
        assert!(message(swap(SwapLimit::Total(32 * MIB)).validate()).contains("below the memory limit"));
        let swap_alone = Limits { memory_swap: Some(SwapLimit::Unlimited), ..Limits::default() };
        assert!(message(swap_alone.validate()).contains("needs a memory limit"));
        assert!(message(Limits { memory: Some(0), ..Limits::default() }.validate()).contains("greater than 0"));
        assert!(message(Limits { pids: Some(0), ..Limits::default() }.validate()).contains("at least 1"));
        assert!(message(Limits { cpus: Some(f64::NAN), ..Limits::default() }.validate()).contains("out of range"));
        assert!(Limits::default().validate().is_ok());
    }

    #[test]
    fn requested_limits_name_their_controllers() {
        assert!(Limits::default().is_empty());
        assert!(Limits::default().controllers().is_empty());
        let all = Limits { memory: Some(MIB), memory_swap: Some(SwapLimit::Unlimited), pids: Some(5), cpus: Some(1.0) };
        assert!(!all.is_empty());
        assert_eq!(
            all.requested(),
            [
                ("memory limit", Controller::Memory),
                ("swap limit", Controller::Memory),
                ("pids limit", Controller::Pids),
                ("cpus limit", Controller::Cpu),
            ]
        );
        assert_eq!(all.controllers(), Controller::ALL);
        assert_eq!(Limits { cpus: Some(1.0), ..Limits::default() }.controllers(), [Controller::Cpu]);
    }
}
