//! Results of one data set's runs and their markdown rendering: medians per (row, system),
//! ratios to kernel overlayfs, a warning row when systems disagree on what they served, and
//! the raw samples underneath so a median can always be traced back to its runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::systems::System;
use super::workloads::Workload;
use super::writable::Step;

/// Cold: `sync; echo 3 > /proc/sys/vm/drop_caches` right before; warm: repeated right after.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Temp {
    Cold,
    Warm,
}

/// One line of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Row {
    /// Mount with no index cache and dropped caches (strata and ratarmount must index the tars).
    MountCold,
    /// Mount again right after unmounting (indexes cached).
    MountWarm,
    Work(Workload, Temp),
    /// The daemon's VmRSS after reading every file.
    Rss,
    /// A step of the writable benchmark (`strata-bench --writable`).
    Write(Step),
}

impl Row {
    pub fn label(self) -> String {
        match self {
            Row::MountCold => "mount, cold (no index cache, caches dropped)".into(),
            Row::MountWarm => "mount, warm (index cached)".into(),
            Row::Work(w, Temp::Cold) => format!("{}, cold", w.label()),
            Row::Work(w, Temp::Warm) => format!("{}, warm", w.label()),
            Row::Rss => "daemon RSS after reading every file (MiB)".into(),
            Row::Write(step) => step.label().into(),
        }
    }

    fn is_mib(self) -> bool {
        self == Row::Rss
    }

    /// Rows measured as a rate (IOPS) rather than a time: their ratio is kernel / system, so
    /// that a ratio above 1 still means slower than the kernel.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Row::Write(step) if step.is_rate())
    }
}

/// What a consistency check is about: a read-only workload's count, or a writable step's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    Read(Workload),
    Write(Step),
}

impl Check {
    /// What the observed number means, for the warnings.
    pub fn observed(self) -> &'static str {
        match self {
            Check::Read(w) => w.observed(),
            Check::Write(s) => s.observed(),
        }
    }
}

impl From<Workload> for Check {
    fn from(w: Workload) -> Check {
        Check::Read(w)
    }
}

impl From<Step> for Check {
    fn from(s: Step) -> Check {
        Check::Write(s)
    }
}

/// Everything measured for one data set.
#[derive(Debug, Default)]
pub struct Results {
    samples: BTreeMap<(Row, System), Vec<f64>>,
    observed: BTreeMap<(Check, System), BTreeSet<u64>>,
    /// Per-entry errors: total count over all runs and the first message.
    errors: BTreeMap<(Row, System), (u64, String)>,
    /// Labels that replace [`Row::label`] (sizes that depend on the data set).
    labels: BTreeMap<Row, String>,
    /// Failures and skipped systems, printed under the table.
    pub notes: Vec<String>,
    /// Other processes' share of the CPUs measured right before each step, and whether the
    /// step had to start without the host becoming quiet.
    pub background: Vec<(f64, bool)>,
}

impl Results {
    pub fn record(&mut self, row: Row, system: System, value: f64) {
        self.samples.entry((row, system)).or_default().push(value);
    }

    /// What a workload observed (entries, bytes), for the consistency checks.
    pub fn observe(&mut self, check: impl Into<Check>, system: System, value: u64) {
        self.observed.entry((check.into(), system)).or_default().insert(value);
    }

    /// Counts per-entry errors a workload hit; its cells get a ⚠ and a note under the table.
    pub fn errors(&mut self, row: Row, system: System, count: u64, first: Option<&str>) {
        if count > 0 {
            let slot = self.errors.entry((row, system)).or_insert_with(|| (0, first.unwrap_or("").to_string()));
            slot.0 += count;
        }
    }

    /// Shows `label` instead of [`Row::label`] for `row`.
    pub fn relabel(&mut self, row: Row, label: String) {
        self.labels.insert(row, label);
    }

    fn label(&self, row: Row) -> String {
        self.labels.get(&row).cloned().unwrap_or_else(|| row.label())
    }

    /// A sentence on how busy the host was before the steps, for the report.
    pub fn background_summary(&self) -> Option<String> {
        let busy: Vec<f64> = self.background.iter().map(|(b, _)| b * 100.0).collect();
        let noisy = self.background.iter().filter(|(_, quiet)| !quiet).count();
        let med = median(&busy)?;
        let max = busy.iter().copied().fold(0.0, f64::max);
        let mut line = format!(
            "other processes' CPU use in the 1 s before each of {} steps: median {med:.0}%, max {max:.0}% of all CPUs",
            busy.len()
        );
        if noisy > 0 {
            line += &format!("; ⚠ {noisy} step(s) started on a busy host after waiting");
        }
        Some(line)
    }

    /// One line per (row, system) that hit per-entry errors.
    pub fn error_notes(&self) -> Vec<String> {
        self.errors
            .iter()
            .map(|((row, system), (count, first))| {
                format!(
                    "{} hit {count} error(s) over all runs in \"{}\", e.g. {first}",
                    system.label(),
                    self.label(*row)
                )
            })
            .collect()
    }

    pub fn median(&self, row: Row, system: System) -> Option<f64> {
        self.samples.get(&(row, system)).and_then(|v| median(v))
    }

    fn rows(&self) -> BTreeSet<Row> {
        self.samples.keys().map(|(row, _)| *row).collect()
    }

    fn checks(&self) -> BTreeSet<Check> {
        self.observed.keys().map(|(check, _)| *check).collect()
    }

    /// One line per check (workload) whose observations differ between systems or between runs.
    pub fn disagreements(&self) -> Vec<(Check, String)> {
        let systems: BTreeSet<System> = self.observed.keys().map(|(_, s)| *s).collect();
        let mut out = Vec::new();
        for check in self.checks() {
            let per_system: Vec<(System, &BTreeSet<u64>)> =
                systems.iter().filter_map(|s| self.observed.get(&(check, *s)).map(|v| (*s, v))).collect();
            let all: BTreeSet<u64> = per_system.iter().flat_map(|(_, v)| v.iter().copied()).collect();
            if all.len() > 1 {
                let detail = per_system
                    .iter()
                    .map(|(s, v)| {
                        format!("{}={}", s.label(), v.iter().map(u64::to_string).collect::<Vec<_>>().join("/"))
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                out.push((check, format!("{} differ: {detail}", check.observed())));
            }
        }
        out
    }

    /// The value every system agreed on for `check`, if they did.
    pub fn agreed(&self, check: impl Into<Check>) -> Option<u64> {
        let check = check.into();
        let all: BTreeSet<u64> =
            self.observed.iter().filter(|((c, _), _)| *c == check).flat_map(|(_, v)| v.iter().copied()).collect();
        (all.len() == 1).then(|| *all.iter().next().unwrap())
    }

    /// The markdown table of the read-only benchmark's systems: medians and ratios to the kernel.
    pub fn table(&self) -> String {
        self.table_for(&System::ALL)
    }

    /// The markdown table with one column per system in `systems` (the kernel first), then one
    /// ratio column per other system.
    pub fn table_for(&self, systems: &[System]) -> String {
        let ratio_of: Vec<System> = systems.iter().copied().filter(|s| *s != System::Kernel).collect();
        let mut out = String::from("| workload |");
        for s in systems {
            let _ = write!(out, " {} |", s.label());
        }
        for s in &ratio_of {
            let _ = write!(out, " {}/kernel |", s.label());
        }
        out.push_str("\n|---|");
        out.push_str(&"---:|".repeat(systems.len() + ratio_of.len()));
        out.push('\n');
        for row in self.rows() {
            let _ = write!(out, "| {} |", self.label(row));
            for &s in systems {
                let cell = match self.median(row, s) {
                    Some(v) if row.is_mib() => format!("{v:.1}"),
                    Some(v) => {
                        let shown = if row.higher_is_better() { format_rate(v) } else { format_ms(v) };
                        if self.errors.contains_key(&(row, s)) {
                            format!("{shown} ⚠")
                        } else {
                            shown
                        }
                    }
                    None if row.is_mib() && s == System::Kernel => "—".into(),
                    None => "n/a".into(),
                };
                let _ = write!(out, " {cell} |");
            }
            for &s in &ratio_of {
                let kernel = self.median(row, System::Kernel);
                let cell = if row.is_mib() {
                    "—".to_string()
                } else if row.higher_is_better() {
                    ratio(kernel, self.median(row, s)).map_or("n/a".into(), format_ratio)
                } else {
                    ratio(self.median(row, s), kernel).map_or("n/a".into(), format_ratio)
                };
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        for (check, _) in self.disagreements() {
            let _ = write!(out, "| ⚠ {} differ |", check.observed());
            for s in systems {
                let cell = self
                    .observed
                    .get(&(check, *s))
                    .map_or("n/a".into(), |v| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" / "));
                let _ = write!(out, " {cell} |");
            }
            out.push_str(&" |".repeat(ratio_of.len()));
            out.push('\n');
        }
        out
    }

    /// Every sample, in run order, for the appendix.
    pub fn raw(&self) -> String {
        let mut out = String::new();
        for ((row, system), values) in &self.samples {
            let values: Vec<String> = values
                .iter()
                .map(|v| {
                    if row.is_mib() {
                        format!("{v:.1}")
                    } else if row.higher_is_better() {
                        format_rate(*v)
                    } else {
                        format_ms(*v)
                    }
                })
                .collect();
            let _ = writeln!(out, "- {} / {}: {}", self.label(*row), system.label(), values.join(", "));
        }
        out
    }
}

/// The nearest-rank percentile `p` (0 < p ≤ 1) of `values`; None when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

/// The value of a `Key:   123 kB` line (/proc/meminfo, smaps_rollup).
pub fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        if fields.next()? != key {
            return None;
        }
        fields.next()?.parse().ok()
    })
}

/// The median; the mean of the middle two for an even count. None when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

/// `value / base`, when both exist and the base is positive.
pub fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => Some(v / b),
        _ => None,
    }
}

/// Milliseconds with about three significant digits.
pub fn format_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// A rate (IOPS) as a whole number with thousands separated by commas.
pub fn format_rate(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn format_ratio(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}x")
    } else if r >= 10.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.2}x")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        assert_eq!(percentile(&[], 0.9), None);
        assert_eq!(percentile(&[7.0], 0.9), Some(7.0));
        let values: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 0.9), Some(18.0));
        assert_eq!(percentile(&values, 0.5), Some(10.0));
    }

    #[test]
    fn reads_kib_fields_by_exact_key() {
        let text = "00400000-7ffc rw-p 00000000 00:00 0 [rollup]\nRss:  2048 kB\nPss:  1024 kB\nPss_Anon:  512 kB\n";
        assert_eq!(kib_field(text, "Pss:"), Some(1024));
        assert_eq!(kib_field(text, "Rss:"), Some(2048));
        assert_eq!(kib_field(text, "Swap:"), None);
    }

    #[test]
    fn median_handles_odd_even_and_empty() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[9.0, 1.0, 5.0]), Some(5.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn ratio_needs_a_positive_base() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
    }

    #[test]
    fn formats_keep_three_significant_digits() {
        assert_eq!(format_ms(1234.4), "1234");
        assert_eq!(format_ms(12.34), "12.3");
        assert_eq!(format_ms(1.234), "1.23");
        assert_eq!(format_ratio(0.5), "0.50x");
        assert_eq!(format_ratio(12.34), "12.3x");
        assert_eq!(format_ratio(123.4), "123x");
    }

    #[test]
    fn rates_print_with_separators() {
        assert_eq!(format_rate(0.4), "0");
        assert_eq!(format_rate(999.0), "999");
        assert_eq!(format_rate(1234.6), "1,235");
        assert_eq!(format_rate(12_345_678.0), "12,345,678");
    }

    #[test]
    fn writable_table_inverts_rate_ratios_and_uses_its_own_columns_and_labels() {
        let mut r = Results::default();
        let create = Row::Write(Step::Create);
        let fio = Row::Write(Step::RandRw);
        r.record(create, System::Kernel, 100.0);
        r.record(create, System::Strata, 300.0);
        r.record(create, System::StrataTar, 250.0);
        r.record(fio, System::Kernel, 20_000.0);
        r.record(fio, System::Strata, 5_000.0);
        r.record(fio, System::FuseOverlayfs, 4_000.0);
        r.relabel(create, "create+write 10 files".into());
        r.observe(Step::GitCold, System::Kernel, 0);
        r.observe(Step::GitCold, System::Strata, 3);
        r.observe(Step::Upper, System::Kernel, 4);
        r.observe(Step::Upper, System::Strata, 4);
        let table = r.table_for(&System::WRITABLE);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| workload | kernel overlayfs | strata | strata (tar lowers) | fuse-overlayfs | strata/kernel | \
             strata (tar lowers)/kernel | fuse-overlayfs/kernel |"
        );
        assert_eq!(lines[1], "|---|---:|---:|---:|---:|---:|---:|---:|");
        assert_eq!(lines[2], "| create+write 10 files | 100 | 300 | 250 | n/a | 3.00x | 2.50x | n/a |");
        assert_eq!(
            lines[3],
            "| fio random 4k read/write (IOPS, higher is better) | 20,000 | 5,000 | n/a | 4,000 | 4.00x | n/a | 5.00x |"
        );
        assert_eq!(lines[4], "| ⚠ lines of `git status --porcelain` (cold) differ | 0 | 3 | n/a | n/a | | | |");
        assert_eq!(lines.len(), 5, "agreeing checks add no row");
        assert_eq!(r.disagreements().len(), 1);
        assert_eq!(r.agreed(Step::Upper), Some(4));
        assert!(r.raw().contains("- create+write 10 files / strata: 300"));
        assert!(r.raw().contains("(IOPS, higher is better) / kernel overlayfs: 20,000"));
        r.errors(create, System::Strata, 1, Some("short file"));
        assert!(r.error_notes()[0].contains("in \"create+write 10 files\""));
        assert!(r.table_for(&System::WRITABLE).contains("| 300 ⚠ |"));
    }

    #[test]
    fn table_has_medians_ratios_and_a_warning_row() {
        let mut r = Results::default();
        let find = Row::Work(Workload::Find, Temp::Cold);
        for v in [10.0, 30.0, 20.0] {
            r.record(find, System::Kernel, v);
        }
        for v in [40.0, 60.0, 50.0] {
            r.record(find, System::Strata, v);
        }
        r.record(Row::Rss, System::Strata, 12.34);
        r.observe(Workload::Find, System::Kernel, 100);
        r.observe(Workload::Find, System::Strata, 100);
        assert_eq!(r.agreed(Workload::Find), Some(100));
        assert!(r.disagreements().is_empty());
        let table = r.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| workload | kernel overlayfs | strata | fuse-overlayfs | ratarmount | strata/kernel | \
             fuse-overlayfs/kernel | ratarmount/kernel |"
        );
        assert_eq!(lines[2], "| `find MNT \\| wc -l`, cold | 20.0 | 50.0 | n/a | n/a | 2.50x | n/a | n/a |");
        assert_eq!(lines[3], "| daemon RSS after reading every file (MiB) | — | 12.3 | n/a | n/a | — | — | — |");
        assert_eq!(lines.len(), 4);

        r.observe(Workload::Find, System::FuseOverlayfs, 99);
        assert_eq!(r.agreed(Workload::Find), None);
        let table = r.table();
        let warning = table.lines().last().unwrap();
        assert_eq!(warning, "| ⚠ entries listed by find differ | 100 | 100 | 99 | n/a | | | |");
        assert!(r.disagreements()[0].1.contains("fuse-overlayfs=99"));
        assert!(r.raw().contains("strata: 40.0, 60.0, 50.0"));

        r.errors(find, System::Strata, 2, Some("find: x: Input/output error"));
        r.errors(find, System::Strata, 2, Some("find: y: Input/output error"));
        r.errors(find, System::Kernel, 0, None);
        assert!(r.table().lines().nth(2).unwrap().contains("| 20.0 | 50.0 ⚠ |"));
        assert_eq!(r.error_notes().len(), 1);
        assert!(r.error_notes()[0].contains("strata hit 4 error(s)"));
        assert!(r.error_notes()[0].ends_with("e.g. find: x: Input/output error"));

        assert_eq!(r.background_summary(), None);
        r.background = vec![(0.01, true), (0.05, true), (0.5, false)];
        let summary = r.background_summary().unwrap();
        assert!(summary.contains("3 steps: median 5%, max 50%"), "{summary}");
        assert!(summary.contains("1 step(s) started on a busy host"), "{summary}");
    }
}
