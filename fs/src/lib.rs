//! strata's filesystem library.
//!
//! - [`image`]: where layers come from (OCI layout, `docker save` archive, explicit `--layer` list).
//! - [`layer`]: one read-only layer: tar parsing into an index, the persisted index cache, byte access.
//! - [`merge`]: the pure merged view across a stack of layers (whiteouts, opaque directories).
//! - [`inspect`]: layer tables and per-path provenance for `strata inspect`.
//! - [`fuse`]: the FUSE adapter and mount lifecycle; a thin translation onto the modules above.
//!
//! Layers and their indexes are immutable once built and shared through `Arc`, so one process can
//! serve many mounts of the same image without copying them.

pub mod error;
pub mod fuse;
pub mod idshift;
pub mod image;
pub mod inspect;
pub mod layer;
pub mod merge;
pub mod mount_attr;
pub mod mountinfo;
pub mod overlay;
pub mod path;
pub mod upper;
pub mod view;

pub use error::{Error, Result};
