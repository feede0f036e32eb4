//! The container as data: the image's config (Entrypoint, Cmd, Env, WorkingDir, User) and the
//! user's `strata run` options resolved into exactly what to start. Pure and unit-tested; nothing
//! here touches the host (paths are checked for shape, not existence — the container code does that).

use std::path::PathBuf;

use strata_fs::image::ImageConfig;

use crate::cgroup::Limits;
use crate::error::{Error, Result};

/// PATH when neither the image nor the user sets one (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The network a container gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// A new network namespace with only loopback, up.
    #[default]
    None,
    /// The host's network namespace.
    Host,
}

impl std::str::FromStr for Network {
    type Err = Error;
    fn from_str(s: &str) -> Result<Network> {
        match s {
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            other => Err(Error::invalid(format!("--net {other:?}: expected none or host"))),
        }
    }
}

/// A host directory or file bind-mounted into the container, bypassing the union filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub source: PathBuf,
    /// Absolute, normalised path inside the container.
    pub target: String,
    pub read_only: bool,
}

/// What the user asked for on the `strata run` command line.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub name: Option<String>,
    pub remove: bool,
    /// `KEY=VALUE`, or `KEY` to pass the host's value through.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    /// `HOST:CONTAINER[:ro|rw]`.
    pub volumes: Vec<String>,
    pub read_only: bool,
    pub tmpfs: Vec<String>,
    pub limits: Limits,
    pub network: Network,
    pub tty: bool,
    pub interactive: bool,
    pub init: bool,
    /// Some(true): a user namespace even as root; None: rootless exactly when not root.
    pub rootless: Option<bool>,
    /// COMMAND and ARGs after the image; empty for the image's Cmd.
    pub command: Vec<String>,
}

/// Everything the container code needs to start the container.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub args: Vec<String>,
    /// `KEY=VALUE`, the image's first, then the user's, later keys replacing earlier ones in place.
    pub env: Vec<String>,
    pub cwd: String,
    /// The `--user`/image `User` string, resolved inside the container's root (see [`crate::user`]).
    pub user: String,
    pub hostname: String,
    pub volumes: Vec<Volume>,
    pub tmpfs: Vec<String>,
    pub read_only: bool,
    pub limits: Limits,
    pub network: Network,
    pub tty: bool,
    pub interactive: bool,
    pub init: bool,
    pub rootless: bool,
}

impl Spec {
    /// Resolves `options` over the image's `config`. `host_env` looks up host variables for
    /// `-e KEY`; `is_root` is whether the caller is root (rootless auto-detection).
    pub fn build(
        config: &ImageConfig,
        options: &RunOptions,
        name: &str,
        host_env: impl Fn(&str) -> Option<String>,
        is_root: bool,
    ) -> Result<Spec> {
        let entrypoint = config.entrypoint.clone().unwrap_or_default();
        let command =
            if options.command.is_empty() { config.cmd.clone().unwrap_or_default() } else { options.command.clone() };
        let args: Vec<String> = entrypoint.into_iter().chain(command).collect();
        if args.is_empty() {
            return Err(Error::invalid("no command: the image has no Entrypoint or Cmd; give one after the image"));
        }
        let hostname = match &options.hostname {
            Some(h) => validate_hostname(h)?.to_string(),
            None => name.chars().take(63).collect(),
        };
        let mut env = Vec::new();
        for var in config.env.iter().flatten() {
            set_env(&mut env, var.clone());
        }
        for var in &options.env {
            match var.split_once('=') {
                Some(("", _)) => return Err(Error::invalid(format!("-e {var:?}: empty variable name"))),
                Some(_) => set_env(&mut env, var.clone()),
                None => {
                    if let Some(value) = host_env(var) {
                        set_env(&mut env, format!("{var}={value}"));
                    }
                }
            }
        }
        set_default_env(&mut env, "PATH", DEFAULT_PATH);
        set_default_env(&mut env, "HOSTNAME", &hostname);
        if options.tty {
            set_default_env(&mut env, "TERM", "xterm");
        }
        let cwd = match options.workdir.as_deref().or(config.working_dir.as_deref()).filter(|w| !w.is_empty()) {
            None => "/".to_string(),
            Some(w) => absolute_container_path(w, "working directory")?,
        };
        let volumes = options.volumes.iter().map(|v| parse_volume(v)).collect::<Result<_>>()?;
        let tmpfs = options.tmpfs.iter().map(|t| absolute_container_path(t, "--tmpfs")).collect::<Result<_>>()?;
        options.limits.validate()?;
        Ok(Spec {
            args,
            env,
            cwd,
            user: options.user.clone().or_else(|| config.user.clone()).unwrap_or_default(),
            hostname,
            volumes,
            tmpfs,
            read_only: options.read_only,
            limits: options.limits.clone(),
            network: options.network,
            tty: options.tty,
            interactive: options.interactive,
            init: options.init,
            rootless: options.rootless.unwrap_or(!is_root),
        })
    }

    /// The value of `key` in the container's environment.
    pub fn env_value(&self, key: &str) -> Option<&str> {
        self.env.iter().find_map(|v| v.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }
}

/// Sets `KEY=VALUE`, replacing an earlier value of the same key where it stood.
pub fn set_env(env: &mut Vec<String>, var: String) {
    let key_len = var.find('=').unwrap_or(var.len());
    match env.iter_mut().find(|v| v.split('=').next() == Some(&var[..key_len])) {
        Some(slot) => *slot = var,
        None => env.push(var),
    }
}

/// Sets `KEY=VALUE` only if `key` is not set yet.
pub fn set_default_env(env: &mut Vec<String>, key: &str, value: &str) {
    if !env.iter().any(|v| v.split('=').next() == Some(key)) {
        env.push(format!("{key}={value}"));
    }
}

fn validate_hostname(h: &str) -> Result<&str> {
    let valid = !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(h)
    } else {
        Err(Error::invalid(format!("--hostname {h:?}: not a valid host name (letters, digits, '-', '.'; at most 64)")))
    }
}

/// Normalises an absolute container path (`//`, `.`, trailing `/`); `..` is refused rather than
/// resolved, since what it climbs out of depends on symlinks inside the image.
fn absolute_container_path(path: &str, what: &str) -> Result<String> {
    if !path.starts_with('/') {
        return Err(Error::invalid(format!("{what} {path:?}: must be an absolute path inside the container")));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(Error::invalid(format!("{what} {path:?}: '..' is not allowed"))),
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Parses `HOST:CONTAINER[:ro|rw]`.
pub fn parse_volume(spec: &str) -> Result<Volume> {
    let fields: Vec<&str> = spec.split(':').collect();
    let (source, target, read_only) = match fields.as_slice() {
        [s, t] => (s, t, false),
        [s, t, "ro"] => (s, t, true),
        [s, t, "rw"] => (s, t, false),
        [_, _, mode] => return Err(Error::invalid(format!("-v {spec:?}: unknown mode {mode:?}; use ro or rw"))),
        _ => return Err(Error::invalid(format!("-v {spec:?}: expected HOST:CONTAINER[:ro|rw]"))),
    };
    if !source.starts_with('/') {
        return Err(Error::invalid(format!("-v {spec:?}: the host path must be absolute")));
    }
    let target = absolute_container_path(target, "-v target")?;
    if target == "/" {
        return Err(Error::invalid(format!("-v {spec:?}: cannot mount over the container's root")));
    }
    Ok(Volume { source: PathBuf::from(source), target, read_only })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ImageConfig {
        ImageConfig {
            entrypoint: None,
            cmd: Some(vec!["/bin/sh".into()]),
            env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
            working_dir: Some("/app".into()),
            user: Some("app".into()),
        }
    }

    fn build(options: &RunOptions) -> Result<Spec> {
        Spec::build(&config(), options, "c1", |k| (k == "HOSTVAR").then(|| "from-host".to_string()), true)
    }

    #[test]
    fn image_defaults_apply_when_the_user_gives_nothing() {
        let spec = build(&RunOptions::default()).unwrap();
        assert_eq!(spec.args, ["/bin/sh"]);
        assert_eq!(spec.env, ["PATH=/bin", "A=1", "HOSTNAME=c1"]);
        assert_eq!((spec.cwd.as_str(), spec.user.as_str(), spec.hostname.as_str()), ("/app", "app", "c1"));
        assert!(!spec.rootless);
    }

    #[test]
    fn command_replaces_cmd_and_follows_entrypoint() {
        let mut cfg = config();
        cfg.entrypoint = Some(vec!["/entry".into(), "--flag".into()]);
        let options = RunOptions { command: vec!["echo".into(), "hi".into()], ..Default::default() };
        let spec = Spec::build(&cfg, &options, "c1", |_| None, true).unwrap();
        assert_eq!(spec.args, ["/entry", "--flag", "echo", "hi"]);
    }

    #[test]
    fn no_command_at_all_is_an_error() {
        let cfg = ImageConfig { cmd: None, ..config() };
        let err = Spec::build(&cfg, &RunOptions::default(), "c", |_| None, true).unwrap_err();
        assert!(err.to_string().contains("no command"), "{err}");
    }

    #[test]
    fn user_env_overrides_in_place_and_passes_host_values() {
        let options = RunOptions {
            env: vec!["A=2".into(), "HOSTVAR".into(), "UNSET_ON_HOST".into(), "B=x=y".into()],
            tty: true,
            ..Default::default()
        };
        let spec = build(&options).unwrap();
        assert_eq!(spec.env, ["PATH=/bin", "A=2", "HOSTVAR=from-host", "B=x=y", "HOSTNAME=c1", "TERM=xterm"]);
        assert_eq!(spec.env_value("B"), Some("x=y"));
    }

    #[test]
    fn default_path_when_the_image_has_none() {
        let cfg = ImageConfig { env: None, ..config() };
        let spec = Spec::build(&cfg, &RunOptions::default(), "c", |_| None, false).unwrap();
        assert_eq!(spec.env_value("PATH"), Some(DEFAULT_PATH));
        assert!(spec.rootless, "not root means rootless");
    }

    #[test]
    fn volumes_parse_and_refuse_bad_shapes() {
        assert_eq!(
            parse_volume("/srv/data:/data//x/:ro").unwrap(),
            Volume { source: "/srv/data".into(), target: "/data/x".into(), read_only: true }
        );
        assert!(!parse_volume("/a:/b").unwrap().read_only);
        for bad in ["rel:/b", "/a:rel", "/a:/b:rx", "/a", "/a:/", "/a:/b/../../etc", "/a:/b:ro:x"] {
            assert!(parse_volume(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn workdir_and_hostname_are_checked() {
        let options = RunOptions { workdir: Some("relative".into()), ..Default::default() };
        assert!(build(&options).is_err());
        let options =
            RunOptions { workdir: Some("/w/./x/".into()), hostname: Some("box-1.local".into()), ..Default::default() };
        let spec = build(&options).unwrap();
        assert_eq!((spec.cwd.as_str(), spec.hostname.as_str()), ("/w/x", "box-1.local"));
        for bad in ["", "-x", "a..b", "bad host", &"x".repeat(65)] {
            let options = RunOptions { hostname: Some(bad.to_string()), ..Default::default() };
            assert!(build(&options).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn network_names() {
        assert_eq!("none".parse::<Network>().unwrap(), Network::None);
        assert_eq!("host".parse::<Network>().unwrap(), Network::Host);
        assert!("bridge".parse::<Network>().is_err());
    }
}
