//! `strata run`, `strata ps` and `strata rm`: argument parsing onto strata-runner.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use strata_runner::cgroup::{self, Limits};
use strata_runner::container::{self, Launch};
use strata_runner::spec::{Network, RunOptions, Spec};
use strata_runner::state::{self, Liveness, StateDirs};

use crate::image_args::{load_lower, ImageArgs};
use strata_fs::layer::cache::Cache;

#[derive(Args)]
pub struct RunArgs {
    /// Name of the container (default: a generated one)
    #[arg(long)]
    name: Option<String>,
    /// Delete the container's state and writable layer when it exits
    #[arg(long)]
    rm: bool,
    /// Set an environment variable (KEY=VALUE), or pass the host's (KEY)
    #[arg(short, long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Working directory inside the container
    #[arg(short, long)]
    workdir: Option<String>,
    /// User to run as: name, uid, name:group or uid:gid (of the container's /etc/passwd)
    #[arg(short, long)]
    user: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    /// Bind-mount a host path: HOST:CONTAINER[:ro|rw]
    #[arg(short, long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    volume: Vec<String>,
    /// Mount the container's root filesystem read-only
    #[arg(long)]
    read_only: bool,
    /// Mount a tmpfs at this container path
    #[arg(long, value_name = "PATH")]
    tmpfs: Vec<String>,
    /// Memory limit (e.g. 32m, 1g)
    #[arg(long, value_parser = cgroup::parse_memory)]
    memory: Option<u64>,
    /// Memory plus swap limit, or -1 for unlimited swap
    #[arg(long, value_parser = cgroup::parse_memory_swap)]
    memory_swap: Option<cgroup::SwapLimit>,
    /// Maximum number of processes
    #[arg(long)]
    pids_limit: Option<u64>,
    /// CPU quota in cores (e.g. 0.5)
    #[arg(long, value_parser = cgroup::parse_cpus)]
    cpus: Option<f64>,
    /// Network: none (a new namespace with loopback only) or host
    #[arg(long, default_value = "none")]
    net: Network,
    /// Give the container a pseudo-terminal
    #[arg(short, long)]
    tty: bool,
    /// Keep stdin open and pass it to the container
    #[arg(short, long)]
    interactive: bool,
    /// Run a minimal init as PID 1 that forwards signals and reaps zombies
    #[arg(long)]
    init: bool,
    /// Use a user namespace (the default when not root)
    #[arg(long)]
    rootless: bool,
    /// A layer (tar, tar.gz, tar.zst or directory), bottom first; repeat for a stack instead of IMAGE
    #[arg(long = "layer", value_name = "PATH")]
    layers: Vec<PathBuf>,
    /// Image to pick from a layout or archive: tag or manifest digest
    #[arg(long)]
    tag: Option<String>,
    /// IMAGE (unless --layer is given), then COMMAND and its arguments
    #[arg(value_name = "IMAGE [COMMAND [ARG...]]", trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

/// Runs the container and returns its exit code.
pub fn run(args: RunArgs) -> Result<i32> {
    let mut rest = args.rest.into_iter();
    let image_path = if args.layers.is_empty() {
        Some(rest.next().context("no image given: pass IMAGE or --layer PATH")?)
    } else {
        None
    };
    let image_args =
        ImageArgs { positional: image_path.iter().map(PathBuf::from).collect(), layers: args.layers, tag: args.tag };
    let image = image_args.resolve()?;
    let dirs = StateDirs::for_current_user()?;
    let name = match args.name {
        Some(n) => {
            state::validate_name(&n)?;
            n
        }
        None => state::generate_name(),
    };
    crate::logging::init_appending(&dirs.data_dir(&name).join("strata.log"))?;
    let options = RunOptions {
        name: Some(name.clone()),
        remove: args.rm,
        env: args.env,
        workdir: args.workdir,
        user: args.user,
        hostname: args.hostname,
        volumes: args.volume,
        read_only: args.read_only,
        tmpfs: args.tmpfs,
        limits: Limits { memory: args.memory, memory_swap: args.memory_swap, pids: args.pids_limit, cpus: args.cpus },
        network: args.net,
        tty: args.tty,
        interactive: args.interactive,
        init: args.init,
        rootless: args.rootless.then_some(true),
        command: rest.collect(),
    };
    let is_root = nix::unistd::geteuid().is_root();
    let spec = Spec::build(&image.config, &options, &name, |k| std::env::var(k).ok(), is_root)?;
    for volume in &spec.volumes {
        if !volume.source.exists() {
            bail!("-v {}: the host path does not exist", volume.source.display());
        }
    }
    let cache = Cache::from_env();
    let lower = load_lower(&image, &cache)?;
    let launch = Launch { name: name.clone(), image: image_args.source_name(), lower, cache, spec, remove: args.rm };
    container::run(launch, &dirs).with_context(|| format!("container {name}"))
}

/// `strata ps`: every container of this user, running or not.
pub fn ps(json: bool) -> Result<()> {
    let dirs = StateDirs::for_current_user()?;
    let listed = dirs.list()?;
    if json {
        let rows: Vec<_> = listed
            .iter()
            .map(|l| {
                serde_json::json!({
                    "name": l.name,
                    "status": describe(&l.liveness),
                    "record": l.record,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<24} {:<16} {:<30} COMMAND", "NAME", "STATUS", "IMAGE");
    for l in listed {
        let (image, command) = l.record.as_ref().map(|r| (r.image.clone(), r.command.join(" "))).unwrap_or_default();
        println!("{:<24} {:<16} {:<30} {}", l.name, describe(&l.liveness), image, command);
    }
    Ok(())
}

fn describe(liveness: &Liveness) -> String {
    match liveness {
        Liveness::Running => "running".into(),
        Liveness::Exited { code } => format!("exited ({code})"),
        Liveness::Stale => "stale (crashed)".into(),
        Liveness::Broken(why) => format!("broken: {why}"),
    }
}

/// `strata rm`: deletes containers' state, writable layer and any leftover cgroup.
pub fn rm(names: &[String], force: bool) -> Result<()> {
    let dirs = StateDirs::for_current_user()?;
    for name in names {
        state::validate_name(name)?;
        container::remove(&dirs, name, force).with_context(|| format!("removing container {name}"))?;
        println!("{name}");
    }
    Ok(())
}
