//! Who the container's process runs as: `--user` or the image's `User` (`name`, `uid`,
//! `name:group`, `uid:gid`) resolved against the container's own `/etc/passwd` and `/etc/group`
//! text. Pure: the caller reads the files (inside the container's root) and applies the result.

use crate::error::{Error, Result};

/// The identity the container's process gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every group of /etc/group that lists the user by name.
    pub groups: Vec<u32>,
    /// The user's home from /etc/passwd, for `HOME` when the environment does not set it.
    pub home: Option<String>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry { name: f[0], uid: f[2].parse().ok()?, gid: f[3].parse().ok()?, home: f[5] })
    })
}

/// (name, gid, members) of each well-formed /etc/group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `spec` (empty means root). A numeric uid absent from passwd is allowed (gid 0 then,
/// as Docker does); a name absent from passwd is an error.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let found = match user_part.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(passwd_entries(passwd).find(|e| e.name == user_part).ok_or_else(|| {
            Error::invalid(format!("user {user_part:?} is not in the container's /etc/passwd; use a numeric uid"))
        })?),
    };
    let uid = match &found {
        Some(e) => e.uid,
        None => user_part.parse().expect("a name without a passwd entry was refused above"),
    };
    let gid = match group_part {
        None => found.as_ref().map_or(0, |e| e.gid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group).find(|(name, ..)| *name == g).map(|(_, gid, _)| gid).ok_or_else(|| {
                Error::invalid(format!("group {g:?} is not in the container's /etc/group; use a numeric gid"))
            })?,
        },
    };
    let mut groups: Vec<u32> = match &found {
        Some(e) => group_entries(group).filter(|(_, _, m)| m.contains(&e.name)).map(|(_, gid, _)| gid).collect(),
        None => Vec::new(),
    };
    if group_part.is_none() && !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    groups.dedup();
    Ok(Identity { uid, gid, groups, home: found.map(|e| e.home.to_string()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
                          app:x:1000:1000::/home/app:/bin/sh\nbroken line\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app,other\napp:x:1000:\nnogroup:x:65534:\n";

    #[test]
    fn empty_spec_is_root() {
        let id = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid, id.home.as_deref()), (0, 0, Some("/root")));
    }

    #[test]
    fn name_gets_primary_and_supplementary_groups() {
        let id = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!(id, Identity { uid: 1000, gid: 1000, groups: vec![1000, 10], home: Some("/home/app".into()) });
    }

    #[test]
    fn numeric_uid_without_entry_gets_gid_zero() {
        let id = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid, id.home), (4242, 0, None));
    }

    #[test]
    fn explicit_group_by_name_and_number() {
        assert_eq!(resolve("app:wheel", PASSWD, GROUP).unwrap().gid, 10);
        let id = resolve("1000:77", PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 77));
        assert_eq!(id.groups, vec![10], "supplementary groups still come from /etc/group");
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let err = resolve("ghost", PASSWD, GROUP).unwrap_err().to_string();
        assert!(err.contains("\"ghost\"") && err.contains("/etc/passwd"), "{err}");
        let err = resolve("app:ghosts", PASSWD, GROUP).unwrap_err().to_string();
        assert!(err.contains("/etc/group"), "{err}");
    }
}
