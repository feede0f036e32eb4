//! strata's tools: the image fixture builder used by the integration tests and benchmarks, and
//! the benchmark helpers.
//!
//! This crate produces inputs (layer tars, OCI layouts, `docker save` archives) from scratch with
//! the `tar` crate. It must not depend on `strata-fs`: fixtures are an independent reference, so
//! a bug in strata's reader cannot hide itself by also shaping the test data.

pub mod bench;
pub mod fixture;
