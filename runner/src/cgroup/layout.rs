//! Where a container's cgroups go: which hierarchies are mounted (from `/proc/self/mountinfo`), which
//! one serves each controller strata uses, and which v2 cgroup is delegated to a rootless caller
//! (from `/proc/self/cgroup`). Pure: it takes file contents and returns paths, so every host shape
//! (hybrid, pure v2, v1 with co-mounted controllers) is tested from text. It must not read or
//! write files; `mod.rs` does the I/O and `values` decides what to write.

use std::path::{Component, Path, PathBuf};

/// The directory under each hierarchy's root (or under the delegated cgroup) that holds all
/// containers, so they are easy to find and never mixed with the host's cgroups.
pub const PARENT: &str = "strata";

/// The leaf that processes of a delegated cgroup are moved into, so that the cgroup itself holds
/// none and may enable controllers for its children (cgroup v2's "no internal processes" rule).
pub const LEAF: &str = "strata-leaf";

/// The controllers whose limits strata sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    /// The name in `cgroup.controllers`, `cgroup.subtree_control` and v1 mount options.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }

    fn from_name(name: &str) -> Option<Controller> {
        Controller::ALL.into_iter().find(|c| c.name() == name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One mount of a cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The cgroup shown at the mount point, relative to the caller's cgroup namespace ("/" for the
    /// whole hierarchy).
    pub root: String,
    pub point: PathBuf,
}

/// A v1 hierarchy that carries at least one of the controllers strata uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Hierarchy {
    pub mount: Mount,
    /// Only strata's controllers; a `cpu,cpuacct` hierarchy is listed with `[Cpu]`.
    pub controllers: Vec<Controller>,
}

/// The cgroup hierarchies visible in this mount namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hierarchies {
    pub v2: Option<Mount>,
    pub v1: Vec<V1Hierarchy>,
}

/// Reads `/proc/self/mountinfo`. A hierarchy mounted more than once (bind mounts) is taken from
/// the mount showing its whole tree, else from its first mount.
pub fn parse_mountinfo(text: &str) -> Hierarchies {
    let mut found = Hierarchies::default();
    for line in strata_fs::mountinfo::parse(text) {
        let mount = Mount { root: line.root.to_string_lossy().into_owned(), point: line.mount_point };
        match line.fstype {
            "cgroup2" if better(found.v2.as_ref(), &mount) => found.v2 = Some(mount),
            "cgroup" => {
                // The controllers of a v1 hierarchy are its superblock options: "rw,cpu,cpuacct".
                let controllers: Vec<Controller> =
                    line.super_options.split(',').filter_map(Controller::from_name).collect();
                if controllers.is_empty() {
                    continue;
                }
                match found.v1.iter_mut().find(|h| h.controllers == controllers) {
                    Some(known) if better(Some(&known.mount), &mount) => known.mount = mount,
                    Some(_) => {}
                    None => found.v1.push(V1Hierarchy { mount, controllers }),
                }
            }
            _ => {}
        }
    }
    found
}

fn better(known: Option<&Mount>, candidate: &Mount) -> bool {
    match known {
        None => true,
        Some(k) => k.root != "/" && candidate.root == "/",
    }
}

/// strata's controllers listed in a `cgroup.controllers` or `cgroup.subtree_control` file.
pub fn controllers(text: &str) -> Vec<Controller> {
    text.split_whitespace().filter_map(Controller::from_name).collect()
}

/// The caller's cgroup v2 path from `/proc/self/cgroup` (its `0::/path` line).
pub fn own_v2_path(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The directory of the caller's v2 cgroup, which is the candidate for rootless delegation. A
/// caller that an earlier run moved into [`LEAF`] is placed from the cgroup above it, so that
/// successive runs from one shell do not nest ever deeper.
pub fn delegated_base(v2: &Mount, own: &str) -> Option<PathBuf> {
    let rel = Path::new(own).strip_prefix(&v2.root).ok()?;
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    // Joining an empty path would add a trailing '/' to messages.
    let dir = if rel.as_os_str().is_empty() { v2.point.clone() } else { v2.point.join(rel) };
    match dir.file_name() {
        Some(leaf) if leaf == LEAF && dir != v2.point => dir.parent().map(Path::to_path_buf),
        _ => Some(dir),
    }
}

/// One cgroup to create: `<base>/strata/<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub version: Version,
    /// A v1 hierarchy's mount point, the v2 mount point, or the delegated v2 cgroup.
    pub base: PathBuf,
    /// The controllers whose limits go into this cgroup. On v2 these are also the controllers to
    /// enable in the `cgroup.subtree_control` of `base` and `base/strata`.
    pub controllers: Vec<Controller>,
}

impl Target {
    pub fn dir(&self, name: &str) -> PathBuf {
        self.base.join(PARENT).join(name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub targets: Vec<Target>,
    /// Controllers the limits need that no target serves.
    pub missing: Vec<Controller>,
}

/// Placement for root. Each of strata's controllers is taken from cgroup v2 when its root offers
/// it (`v2_offered`: the root's `cgroup.controllers`), else from the v1 hierarchy that has it. The
/// container gets a cgroup in every hierarchy serving one of them, whether or not its limit was
/// asked for, so that its processes are grouped (and removable) the same way every time; on v2,
/// only the controllers that `needed` names are enabled. With none served anywhere, a bare v2
/// cgroup still groups the processes.
pub fn plan_root(h: &Hierarchies, v2_offered: &[Controller], needed: &[Controller]) -> Plan {
    let mut targets = Vec::new();
    let mut missing = Vec::new();
    let v2 = h.v2.as_ref().filter(|_| Controller::ALL.iter().any(|c| v2_offered.contains(c)));
    if let Some(v2) = v2 {
        let enabled = needed.iter().copied().filter(|c| v2_offered.contains(c)).collect();
        targets.push(Target { version: Version::V2, base: v2.point.clone(), controllers: enabled });
    }
    for c in Controller::ALL {
        if v2.is_some() && v2_offered.contains(&c) {
            continue;
        }
        let Some(v1) = h.v1.iter().find(|v1| v1.controllers.contains(&c)) else {
            if needed.contains(&c) {
                missing.push(c);
            }
            continue;
        };
        match targets.iter_mut().find(|t| t.base == v1.mount.point) {
            Some(t) => t.controllers.push(c),
            None => targets.push(Target { version: Version::V1, base: v1.mount.point.clone(), controllers: vec![c] }),
        }
    }
    if let (true, Some(v2)) = (targets.is_empty(), &h.v2) {
        targets.push(Target { version: Version::V2, base: v2.point.clone(), controllers: Vec::new() });
    }
    Plan { targets, missing }
}

/// Placement for a rootless caller whose own v2 cgroup `base` is delegated to it and offers
/// `offered` (its `cgroup.controllers`).
pub fn plan_delegated(base: PathBuf, offered: &[Controller], needed: &[Controller]) -> Plan {
    let (enabled, missing) = needed.iter().partition(|c| offered.contains(c));
    Plan { targets: vec![Target { version: Version::V2, base, controllers: enabled }], missing }
}

#[cfg(test)]
mod tests {
    use super::Controller::{Cpu, Memory, Pids};
    use super::*;

    /// This host: v1 controllers under a tmpfs, an empty cgroup2 at /sys/fs/cgroup/unified.
    const HYBRID: &str = "\
22 1 8:1 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const HYBRID_SELF: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/c23b\n1:cpu:/\n0::/\n";

    /// A systemd host on cgroup v2 only.
    const PURE_V2: &str = "\
24 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    const PURE_V2_SELF: &str = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/run-u42.scope\n";

    /// An older systemd host: v1 with cpu and cpuacct co-mounted, bind-mounted a second time.
    const V1_COMOUNT: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 /docker/abc /mnt/cpu\\040bind rw,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
32 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
33 25 0:29 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
34 25 0:30 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpuset
";

    fn mount(root: &str, point: &str) -> Mount {
        Mount { root: root.into(), point: point.into() }
    }

    fn v1(point: &str, controllers: &[Controller]) -> V1Hierarchy {
        V1Hierarchy { mount: mount("/", point), controllers: controllers.to_vec() }
    }

    fn target(version: Version, base: &str, controllers: &[Controller]) -> Target {
        Target { version, base: base.into(), controllers: controllers.to_vec() }
    }

    #[test]
    fn hybrid_host_has_v1_controllers_and_an_empty_v2() {
        let h = parse_mountinfo(HYBRID);
        assert_eq!(h.v2, Some(mount("/", "/sys/fs/cgroup/unified")));
        assert_eq!(
            h.v1,
            [
                v1("/sys/fs/cgroup/cpu", &[Cpu]),
                v1("/sys/fs/cgroup/memory", &[Memory]),
                v1("/sys/fs/cgroup/pids", &[Pids])
            ]
        );
        // The unified hierarchy's cgroup.controllers here says "hugetlb": none of strata's.
        let plan = plan_root(&h, &controllers("hugetlb\n"), &[Memory, Pids, Cpu]);
        assert_eq!(
            plan.targets,
            [
                target(Version::V1, "/sys/fs/cgroup/memory", &[Memory]),
                target(Version::V1, "/sys/fs/cgroup/pids", &[Pids]),
                target(Version::V1, "/sys/fs/cgroup/cpu", &[Cpu]),
            ]
        );
        assert!(plan.missing.is_empty());
        assert_eq!(plan_root(&h, &[], &[]).targets, plan.targets, "no limits: same grouping");
        assert_eq!(plan.targets[0].dir("web"), Path::new("/sys/fs/cgroup/memory/strata/web"));
    }

    #[test]
    fn hybrid_host_offers_no_delegation_below_the_v2_root() {
        let h = parse_mountinfo(HYBRID);
        let own = own_v2_path(HYBRID_SELF).unwrap();
        assert_eq!(own, "/");
        assert_eq!(delegated_base(h.v2.as_ref().unwrap(), own), Some("/sys/fs/cgroup/unified".into()));
        let plan = plan_delegated("/sys/fs/cgroup/unified".into(), &controllers("hugetlb"), &[Memory, Cpu]);
        assert_eq!(plan.targets, [target(Version::V2, "/sys/fs/cgroup/unified", &[])]);
        assert_eq!(plan.missing, [Memory, Cpu]);
    }

    #[test]
    fn pure_v2_host_uses_v2_and_enables_only_what_limits_need() {
        let h = parse_mountinfo(PURE_V2);
        assert_eq!(h, Hierarchies { v2: Some(mount("/", "/sys/fs/cgroup")), v1: vec![] });
        let offered = controllers("cpuset cpu io memory hugetlb pids rdma misc\n");
        assert_eq!(offered, [Cpu, Memory, Pids]);
        let plan = plan_root(&h, &offered, &[Memory, Pids]);
        assert_eq!(
            plan,
            Plan { targets: vec![target(Version::V2, "/sys/fs/cgroup", &[Memory, Pids])], missing: vec![] }
        );
        let empty = plan_root(&h, &offered, &[]);
        assert_eq!(empty.targets, [target(Version::V2, "/sys/fs/cgroup", &[])]);
    }

    #[test]
    fn pure_v2_host_without_a_controller_reports_it_missing() {
        let h = parse_mountinfo(PURE_V2);
        let plan = plan_root(&h, &controllers("memory pids"), &[Memory, Cpu]);
        assert_eq!(plan.targets, [target(Version::V2, "/sys/fs/cgroup", &[Memory])]);
        assert_eq!(plan.missing, [Cpu]);
        // Nothing offered at all: a bare cgroup still groups the processes.
        let bare = plan_root(&h, &[], &[Pids]);
        assert_eq!(bare.targets, [target(Version::V2, "/sys/fs/cgroup", &[])]);
        assert_eq!(bare.missing, [Pids]);
    }

    #[test]
    fn pure_v2_delegation_is_the_callers_own_cgroup_or_the_one_above_its_leaf() {
        let h = parse_mountinfo(PURE_V2);
        let v2 = h.v2.as_ref().unwrap();
        let scope = "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/run-u42.scope";
        assert_eq!(delegated_base(v2, own_v2_path(PURE_V2_SELF).unwrap()), Some(scope.into()));
        let again = format!("{}/{LEAF}", PURE_V2_SELF.trim_end().strip_prefix("0::").unwrap());
        assert_eq!(delegated_base(v2, &again), Some(scope.into()));
        let plan = plan_delegated(scope.into(), &controllers("memory pids"), &[Memory, Pids, Cpu]);
        assert_eq!(plan.targets, [target(Version::V2, scope, &[Memory, Pids])]);
        assert_eq!(plan.missing, [Cpu]);
    }

    #[test]
    fn delegation_follows_the_mount_root_and_refuses_paths_outside_it() {
        let inside = mount("/kubepods/pod1", "/sys/fs/cgroup");
        assert_eq!(delegated_base(&inside, "/kubepods/pod1/ctr"), Some("/sys/fs/cgroup/ctr".into()));
        assert_eq!(delegated_base(&inside, "/kubepods/pod2"), None);
        assert_eq!(delegated_base(&mount("/", "/sys/fs/cgroup"), "/../.."), None);
        assert_eq!(own_v2_path("1:cpu:/\n"), None);
    }

    #[test]
    fn co_mounted_cpu_cpuacct_serves_cpu_from_its_whole_tree_mount() {
        let h = parse_mountinfo(V1_COMOUNT);
        assert_eq!(h.v2, Some(mount("/", "/sys/fs/cgroup/unified")));
        assert_eq!(
            h.v1,
            [
                v1("/sys/fs/cgroup/cpu,cpuacct", &[Cpu]),
                v1("/sys/fs/cgroup/memory", &[Memory]),
                v1("/sys/fs/cgroup/pids", &[Pids]),
            ]
        );
        let plan = plan_root(&h, &[], &[Cpu]);
        assert_eq!(plan.targets[2], target(Version::V1, "/sys/fs/cgroup/cpu,cpuacct", &[Cpu]));
    }

    #[test]
    fn co_mounted_controllers_share_one_cgroup_and_v2_wins_per_controller() {
        let h = Hierarchies {
            v2: Some(mount("/", "/sys/fs/cgroup/unified")),
            v1: vec![v1("/sys/fs/cgroup/memory,pids", &[Memory, Pids]), v1("/sys/fs/cgroup/cpu", &[Cpu])],
        };
        let plan = plan_root(&h, &[Pids], &[Memory, Pids]);
        assert_eq!(
            plan.targets,
            [
                target(Version::V2, "/sys/fs/cgroup/unified", &[Pids]),
                target(Version::V1, "/sys/fs/cgroup/memory,pids", &[Memory]),
                target(Version::V1, "/sys/fs/cgroup/cpu", &[Cpu]),
            ]
        );
    }

    #[test]
    fn no_cgroup_mounted_means_no_target() {
        let h = parse_mountinfo("22 1 8:1 / / rw - ext4 /dev/vda rw\n");
        assert_eq!(h, Hierarchies::default());
        assert_eq!(plan_root(&h, &[], &[Memory]), Plan { targets: vec![], missing: vec![Memory] });
    }
}
