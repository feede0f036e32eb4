//! fuse-overlayfs' command line, so strata is a drop-in `mount_program` for containers-storage
//! (podman, buildah) and a `mount -t fuse.strata-overlayfs` helper:
//! `strata-overlayfs [-f] [-d] -o lowerdir=TOP:…:BOTTOM[,upperdir=U,workdir=W][,opts] MOUNTPOINT`,
//! or as called by mount.fuse3: `strata-overlayfs SOURCE MOUNTPOINT -o opts`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use strata_fs::fuse::mount::MountConfig;
use strata_fs::idshift::{parse_ranges, IdShift};
use strata_fs::image;
use strata_fs::layer::override_stat;

/// Options fuse-overlayfs users pass that strata accepts without acting on, and why.
const ACCEPTED_AS_IS: &[(&str, &str)] = &[
    ("fsync", "strata passes fsync through to the upper file; fsync=0 is accepted"),
    ("noacl", "strata stores ACLs as ordinary xattrs and enforces none itself"),
    ("static_nlink", "strata reports real link counts"),
    ("volatile", "strata does not sync the upper unless asked"),
    ("timeout", "strata uses its own cache lifetimes"),
    ("threaded", "strata always serves on several threads"),
    ("writeback", "strata always uses the kernel's writeback cache"),
    ("xino", "inode numbers are always unique within the mount"),
    ("default_permissions", "always on"),
    ("noatime", "always on"),
    ("rw", "a mount with upperdir is read-write"),
    ("context", "SELinux contexts are passed to nothing"),
    ("fscontext", "SELinux contexts are passed to nothing"),
    ("defcontext", "SELinux contexts are passed to nothing"),
    ("rootcontext", "SELinux contexts are passed to nothing"),
];

#[derive(Debug, Default, PartialEq, Eq)]
pub struct OverlayArgs {
    /// Lower directories, top first (as overlayfs lists them).
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub allow_other: bool,
    /// `suid`/`dev` given: honour setuid bits and device nodes.
    pub dev_suid: bool,
    /// `nosuid`/`nodev` given: neither, even as root.
    pub no_dev_suid: bool,
    /// uidmapping=, gidmapping=, squash_to_root, squash_to_uid=, squash_to_gid=.
    pub ids: IdShift,
    /// xattr_permissions=1|2: the xattr owners and permissions are kept in.
    pub stored_modes: Option<&'static [u8]>,
}

pub fn called_as_overlayfs() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|n| n == "strata-overlayfs")
}

/// Splits `lowerdir=` on `:`, honouring `\:` as a literal colon.
fn split_lowers(value: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ':' => out.push(PathBuf::from(std::mem::take(&mut current))),
            c => current.push(c),
        }
    }
    out.push(PathBuf::from(current));
    out.into_iter().filter(|p| !p.as_os_str().is_empty()).collect()
}

pub fn parse(args: &[String]) -> Result<OverlayArgs> {
    let mut parsed = OverlayArgs::default();
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-f" => parsed.foreground = true,
            "-d" | "--debug" => parsed.foreground = true,
            "-o" => options.push(it.next().context("-o needs a value")?.clone()),
            o if o.starts_with("-o") => options.push(o[2..].to_string()),
            o if o.starts_with('-') => bail!("unknown flag {o}"),
            p => positional.push(PathBuf::from(p)),
        }
    }
    parsed.mountpoint = match positional.as_slice() {
        [mnt] | [_, mnt] => mnt.clone(),
        _ => bail!("expected MOUNTPOINT (or SOURCE MOUNTPOINT as mount.fuse3 passes them)"),
    };
    for option in options.iter().flat_map(|o| o.split(',')).filter(|o| !o.is_empty()) {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        match key {
            "lowerdir" => parsed.lowers = split_lowers(value),
            "upperdir" => parsed.upper = Some(PathBuf::from(value)),
            "workdir" => parsed.work = Some(PathBuf::from(value)),
            "allow_other" | "allow_root" => parsed.allow_other = true,
            "suid" | "dev" => parsed.dev_suid = true,
            "nosuid" | "nodev" => parsed.no_dev_suid = true,
            "exec" | "noexec" | "ro" => {}
            "uidmapping" => parsed.ids.uids = parse_ranges(value).map_err(|e| anyhow::anyhow!("uidmapping={e}"))?,
            "gidmapping" => parsed.ids.gids = parse_ranges(value).map_err(|e| anyhow::anyhow!("gidmapping={e}"))?,
            "squash_to_root" => {
                // squash_to_uid/gid take precedence, whichever order the options come in.
                parsed.ids.squash_uid.get_or_insert(0);
                parsed.ids.squash_gid.get_or_insert(0);
            }
            "squash_to_uid" => parsed.ids.squash_uid = Some(value.parse().context("squash_to_uid= needs a uid")?),
            "squash_to_gid" => parsed.ids.squash_gid = Some(value.parse().context("squash_to_gid= needs a gid")?),
            "xattr_permissions" => {
                parsed.stored_modes = match value {
                    "0" => None,
                    "1" => Some(override_stat::PRIVILEGED),
                    "2" => Some(override_stat::USER),
                    other => bail!("xattr_permissions={other}: expected 0, 1 (security.* xattr) or 2 (user.* xattr)"),
                }
            }
            k if ACCEPTED_AS_IS.iter().any(|(name, _)| *name == k) => {}
            k => bail!("unknown option {k}"),
        }
    }
    if parsed.lowers.is_empty() {
        bail!("no lowerdir= given");
    }
    if parsed.upper.is_some() != parsed.work.is_some() {
        bail!("upperdir= and workdir= go together");
    }
    Ok(parsed)
}

/// The mount's options. As fuse-overlayfs does, root's mounts let every user in (a container's
/// processes run as other users) and honour setuid bits and devices, unless nosuid/nodev say not.
fn mount_config(parsed: &OverlayArgs, source: String, as_root: bool) -> MountConfig {
    MountConfig {
        source,
        allow_other: parsed.allow_other || as_root,
        devices: (parsed.dev_suid || as_root) && !parsed.no_dev_suid,
        setuid: (parsed.dev_suid || as_root) && !parsed.no_dev_suid,
        threads: 4,
        writable: false,
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let parsed = parse(args)?;
    strata_fs::fuse::mount::check_mountpoint(&parsed.mountpoint)?;
    // overlayfs lists the top layer first; strata stacks bottom first.
    let bottom_first: Vec<PathBuf> = parsed.lowers.iter().rev().cloned().collect();
    let image = image::from_layers(&bottom_first)?;
    let source = parsed.lowers.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
    let config = mount_config(&parsed, source, nix::unistd::geteuid().is_root());
    if (!parsed.ids.is_identity() || parsed.stored_modes.is_some()) && parsed.upper.is_none() {
        bail!(
            "uidmapping=, gidmapping=, squash_to_* and xattr_permissions= need a writable mount (upperdir=, workdir=)"
        );
    }
    let upper = parsed.upper.zip(parsed.work);
    crate::MountLayers { image, upper, ids: parsed.ids, stored_modes: parsed.stored_modes }.mount(
        &parsed.mountpoint,
        config,
        parsed.foreground,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn parses_the_containers_storage_form() {
        let p = parse(&args("-o lowerdir=/l/top:/l/b\\:c,upperdir=/u,workdir=/w,fsync=0,noacl /mnt")).unwrap();
        assert_eq!(p.lowers, vec![PathBuf::from("/l/top"), PathBuf::from("/l/b:c")]);
        assert_eq!(p.upper, Some(PathBuf::from("/u")));
        assert_eq!(p.mountpoint, PathBuf::from("/mnt"));
        assert!(!p.foreground);
    }

    #[test]
    fn parses_the_mount_helper_form() {
        let p = parse(&args("none /mnt -o rw,lowerdir=/l,upperdir=/u,workdir=/w,allow_other,dev,suid")).unwrap();
        assert_eq!(p.mountpoint, PathBuf::from("/mnt"));
        assert!(p.allow_other && p.dev_suid);
    }

    #[test]
    fn roots_mounts_are_open_to_every_user_and_honour_setuid_as_fuse_overlayfs_does() {
        let config = |options: &str, as_root: bool| {
            let c =
                mount_config(&parse(&args(&format!("-o lowerdir=/l{options} /mnt"))).unwrap(), String::new(), as_root);
            assert_eq!(c.devices, c.setuid);
            (c.allow_other, c.devices)
        };
        assert_eq!(config("", true), (true, true));
        assert_eq!(config("", false), (false, false));
        assert_eq!(config(",allow_other,suid", false), (true, true));
        assert_eq!(config(",nosuid", true), (true, false));
    }

    #[test]
    fn parses_ownership_options() {
        let p = parse(&args("-o lowerdir=/l,uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1 /mnt")).unwrap();
        assert_eq!(p.ids.uids.len(), 2);
        assert_eq!(p.ids.shown_gid(0), 1000);
        let p = parse(&args("-o lowerdir=/l,squash_to_uid=5,squash_to_root /mnt")).unwrap();
        assert_eq!((p.ids.squash_uid, p.ids.squash_gid), (Some(5), Some(0)), "squash_to_uid wins over squash_to_root");
        assert!(parse(&args("-o lowerdir=/l,uidmapping=0:1000 /mnt")).unwrap_err().to_string().contains("uidmapping"));
    }

    #[test]
    fn parses_xattr_permissions() {
        let stored =
            |o: &str| parse(&args(&format!("-o lowerdir=/l,xattr_permissions={o} /mnt"))).map(|p| p.stored_modes);
        assert_eq!(stored("0").unwrap(), None);
        assert_eq!(stored("1").unwrap(), Some(override_stat::PRIVILEGED));
        assert_eq!(stored("2").unwrap(), Some(override_stat::USER));
        assert!(stored("3").unwrap_err().to_string().contains("xattr_permissions=3"));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert!(parse(&args("-o lowerdir=/l,bogus /mnt")).unwrap_err().to_string().contains("bogus"));
        assert!(parse(&args("-o upperdir=/u,workdir=/w /mnt")).is_err());
        assert!(parse(&args("-o lowerdir=/l,upperdir=/u /mnt")).is_err());
    }
}
