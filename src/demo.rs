//! `strata demo`, README's main job: builds a small multi-layer image from host files (no network),
//! mounts it, prints its merged tree with the layer each path comes from, and unmounts; mounts it
//! writable and shows the upper; then runs a command in a container on it.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result};
use strata_fs::fuse::mount::{self, MountConfig};
use strata_fs::fuse::ImageFs;
use strata_fs::image::{self, Selector};
use strata_fs::inspect;
use strata_fs::layer::{self, cache::Cache, Quiet};
use strata_fs::merge::MergedTree;
use strata_fs::overlay::Lower;
use strata_fs::view::ImageView;
use strata_tools::fixture;

pub fn run() -> Result<()> {
    let work = tempfile::Builder::new().prefix("strata-demo-").tempdir().context("creating a work directory")?;
    let layout = work.path().join("image");
    let mountpoint = work.path().join("rootfs");
    std::fs::create_dir(&mountpoint).context("creating the mountpoint")?;
    fixture::write_oci_layout(&layout, &fixture::demo_image()?).context("building the demo image")?;
    println!("demo image: an OCI layout built from host files at {}\n", layout.display());

    let image = image::open(&layout, &Selector::Default)?;
    let cache = Cache::new(work.path().join("cache"));
    let view = ImageView::new(layer::load_all(&image.layers, &cache, &Quiet)?)?;
    crate::inspect::print_table(&inspect::layer_table(&view.layers));
    let tree = view.tree.clone();

    let config = MountConfig {
        source: layout.display().to_string(),
        allow_other: false,
        devices: false,
        setuid: false,
        threads: 2,
        writable: false,
    };
    mount::serve_in_background(ImageFs::new(view), &mountpoint, &config)?;
    println!("\nmounted at {}; the merged tree, read through the mount:\n", mountpoint.display());
    println!("{:<10} {:>10} {:>6}  PATH", "TYPE", "SIZE", "LAYER");
    let listed = walk(&mountpoint, &mountpoint, &tree);
    let hello = std::fs::read_to_string(mountpoint.join("app/hello.txt"));
    mount::unmount(&mountpoint, false)?;
    listed?;
    println!("\n/app/hello.txt (the top layer's version): {}", hello.context("reading through the mount")?.trim());
    println!("unmounted");
    show_writable(work.path(), &image, &cache, &mountpoint)?;
    run_container(work.path(), &image, &cache)?;
    println!("done");
    Ok(())
}

/// Mounts the same image writable, changes it, and shows what landed in the upper directory.
fn show_writable(work: &Path, image: &image::Image, cache: &Cache, mountpoint: &Path) -> Result<()> {
    let (upper, scratch) = (work.join("upper"), work.join("work"));
    let overlay = strata_fs::overlay::open(Lower::load(&image.layers, cache, &Quiet)?, &upper, &scratch, None)?;
    let config = MountConfig {
        source: "demo".into(),
        allow_other: false,
        devices: false,
        setuid: false,
        threads: 2,
        writable: true,
    };
    mount::serve_in_background(strata_fs::fuse::overlay_fs::OverlayFs::new(overlay), mountpoint, &config)?;
    let changed = (|| -> std::io::Result<()> {
        std::fs::write(mountpoint.join("app/hello.txt"), "hello, changed in the container\n")?;
        std::fs::remove_file(mountpoint.join("app/config.json"))?;
        std::fs::write(mountpoint.join("app/new.txt"), "new\n")
    })();
    mount::unmount(mountpoint, false)?;
    changed.context("writing through the writable mount")?;
    println!("\nmounted writable, changed /app/hello.txt, deleted /app/config.json, added /app/new.txt;");
    println!("the upper directory now holds (kernel overlayfs format, the layers untouched):");
    let mut entries: Vec<_> = std::fs::read_dir(upper.join("app"))?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let meta = entry.metadata()?;
        let what =
            if meta.file_type().is_char_device() && meta.rdev() == 0 { "whiteout (0/0 char device)" } else { "file" };
        println!("  upper/app/{:<12} {what}", entry.file_name().to_string_lossy());
    }
    Ok(())
}

/// Shell builtins only: the demo image's one binary is the host's shell (busybox when installed).
const CONTAINER_SCRIPT: &str =
    "read -r name < /etc/hostname; echo \"in the container: pid $$, hostname $name, cwd $PWD\"; \
     while read -r line; do echo \"/app/hello.txt: $line\"; done < /app/hello.txt; \
     echo written-inside > /app/from-container; echo \"wrote /app/from-container (in the container's upper)\"";

/// Runs a command in a container whose root is the image, mounted writable by strata.
fn run_container(work: &Path, image: &image::Image, cache: &Cache) -> Result<()> {
    use strata_runner::container::{self, Launch};
    use strata_runner::spec::{RunOptions, Spec};
    let dirs = strata_runner::state::StateDirs { run: work.join("state/run"), data: work.join("state/data") };
    let lower = Lower::load(&image.layers, cache, &Quiet)?;
    let command = ["/bin/sh", "-c", CONTAINER_SCRIPT].map(String::from).to_vec();
    let options = RunOptions { command, ..RunOptions::default() };
    let name = "strata-demo";
    let spec = Spec::build(&image.config, &options, name, |_| None, nix::unistd::geteuid().is_root())?;
    println!(
        "
strata run {name} /bin/sh -c …: new namespaces, the image as its writable root (--rm):"
    );
    let launch = Launch { name: name.into(), image: "demo".into(), lower, cache: cache.clone(), spec, remove: true };
    let code = container::run(launch, &dirs).context("running the demo container")?;
    println!("the container exited with code {code}; its state and upper were removed (--rm)");
    if code != 0 {
        anyhow::bail!("the demo container failed (code {code}): is busybox-static installed? (scripts/setup.sh)");
    }
    Ok(())
}

fn walk(root: &Path, dir: &Path, tree: &MergedTree) -> Result<()> {
    let mut children: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let path = child.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let rel = path.strip_prefix(root).expect("walk stays under root");
        let layer = tree.lookup(rel.as_os_str().as_encoded_bytes()).map(|id| tree.node(id).layer);
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            "special"
        } else {
            "file"
        };
        println!(
            "{:<10} {:>10} {:>6}  /{}",
            kind,
            meta.size(),
            layer.map_or("-".into(), |l| l.to_string()),
            rel.display()
        );
        if ft.is_dir() {
            walk(root, &path, tree)?;
        }
    }
    Ok(())
}
