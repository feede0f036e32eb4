//! Start-up on one CPU. Between clone and exec the container's first process makes some twenty
//! FUSE requests to its filesystem daemon (mount targets, /etc/passwd, the command's path), each
//! a round trip in which one side sleeps until the other answers. With both on one CPU the
//! answer is a local wake-up; across CPUs it is an inter-processor interrupt and a wake from
//! idle, which on a VM costs a guest exit (~2.4x the round trip, measured here). So the daemon
//! pins itself to the CPU it runs on before cloning the container (which inherits the pin),
//! and each side restores the caller's own affinity once the container has exec'd: the
//! container right before exec, the daemon's threads when it sees the exec. The pin stays
//! within the caller's mask (`taskset` or a cpuset is respected) and is skipped when that mask
//! is a single CPU already.
//!
//! Owns only scheduler affinity; knows nothing of FUSE or containers.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The affinity the calling thread had before [`pin_to_current_cpu`].
pub struct Original(CpuSet);

/// Pins the calling thread (and so every thread or process it creates from now on) to the CPU
/// it runs on. None when there is nothing to gain or the kernel refuses: a best effort.
pub fn pin_to_current_cpu() -> Option<Original> {
    let original = sched_getaffinity(Pid::from_raw(0)).ok()?;
    let allowed = (0..CpuSet::count()).filter(|&cpu| original.is_set(cpu).unwrap_or(false)).count();
    // SAFETY: sched_getcpu has no arguments and no preconditions.
    let current = unsafe { libc::sched_getcpu() };
    if allowed < 2 || current < 0 {
        return None;
    }
    let mut one = CpuSet::new();
    one.set(current as usize).ok()?;
    sched_setaffinity(Pid::from_raw(0), &one).ok()?;
    Some(Original(original))
}

impl Original {
    /// Gives the calling thread its original affinity back.
    pub fn restore_this_thread(&self) {
        let _ = sched_setaffinity(Pid::from_raw(0), &self.0);
    }

    /// Gives every thread of this process its original affinity back (threads started while
    /// pinned, such as the FUSE session's, inherited the pin).
    pub fn restore_all_threads(&self) {
        self.restore_this_thread();
        // A listing of /proc/self/task can skip a thread while others start or end: list again
        // until a pass finds every thread restored.
        for _ in 0..4 {
            let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return };
            let mut restored_any = false;
            for tid in tasks.flatten().filter_map(|task| task.file_name().to_str()?.parse::<i32>().ok()) {
                let task = Pid::from_raw(tid);
                if sched_getaffinity(task).is_ok_and(|set| set != self.0) {
                    restored_any |= sched_setaffinity(task, &self.0).is_ok();
                }
            }
            if !restored_any {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(pid: i32) -> Vec<usize> {
        let set = sched_getaffinity(Pid::from_raw(pid)).unwrap();
        (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap()).collect()
    }

    /// Runs in a thread of its own: affinity is per thread, and the test harness's must not change.
    #[test]
    fn pins_to_one_allowed_cpu_and_restores_every_thread() {
        std::thread::spawn(|| {
            let before = allowed(0);
            let Some(original) = pin_to_current_cpu() else {
                assert!(before.len() < 2, "pinning failed with {before:?} allowed");
                return;
            };
            let pinned = allowed(0);
            assert_eq!(pinned.len(), 1);
            assert!(before.contains(&pinned[0]));
            let (tid_sender, tid) = std::sync::mpsc::channel();
            let (done, wait) = std::sync::mpsc::channel::<()>();
            let helper = std::thread::spawn(move || {
                tid_sender.send(nix::unistd::gettid().as_raw()).unwrap();
                wait.recv().unwrap();
            });
            let helper_tid = tid.recv().unwrap();
            assert_eq!(allowed(helper_tid), pinned, "a thread started while pinned inherits the pin");
            original.restore_all_threads();
            assert_eq!(allowed(0), before);
            assert_eq!(allowed(helper_tid), before);
            done.send(()).unwrap();
            helper.join().unwrap();
        })
        .join()
        .unwrap();
    }
}
