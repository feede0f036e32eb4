//! `strata cache`: what the cache holds, and `strata cache prune` to shrink it.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde_json::json;
use strata_fs::layer::cache::prune::{self, Item, ItemKind, Scope};
use strata_fs::layer::cache::Cache;

/// Count and bytes per kind of item.
fn totals(items: impl IntoIterator<Item = (ItemKind, u64)>) -> BTreeMap<ItemKind, (usize, u64)> {
    let mut totals = BTreeMap::new();
    for (kind, bytes) in items {
        let entry = totals.entry(kind).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += bytes;
    }
    totals
}

fn totals_json(totals: &BTreeMap<ItemKind, (usize, u64)>) -> serde_json::Value {
    ItemKind::ALL
        .iter()
        .map(|kind| {
            let (files, bytes) = totals.get(kind).copied().unwrap_or_default();
            (key(*kind).to_string(), json!({ "files": files, "bytes": bytes }))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn key(kind: ItemKind) -> &'static str {
    match kind {
        ItemKind::Index => "indexes",
        ItemKind::StaleIndex => "stale_indexes",
        ItemKind::Blob => "decompressed_layers",
        ItemKind::SharedCopy => "shared_copies",
        ItemKind::Leftover => "leftovers",
    }
}

fn print_totals(totals: &BTreeMap<ItemKind, (usize, u64)>) {
    for kind in ItemKind::ALL {
        let (files, bytes) = totals.get(&kind).copied().unwrap_or_default();
        println!("  {:<34} {files:>8} files {:>12}", kind.label(), human(bytes));
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn show(as_json: bool) -> Result<()> {
    let cache = Cache::from_env();
    let items = prune::inventory(&cache)?;
    let totals = totals(items.iter().map(|i| (i.kind, i.bytes)));
    if as_json {
        let doc = json!({ "cache": cache.root(), "contents": totals_json(&totals) });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("cache {}", cache.root().display());
        print_totals(&totals);
    }
    Ok(())
}

pub fn prune(all: bool, as_json: bool) -> Result<()> {
    let cache = Cache::from_env();
    let items = prune::inventory(&cache)?;
    let open = prune::open_files();
    let scope = if all { Scope::All } else { Scope::Rebuildable };
    let chosen = prune::plan(&items, &open, scope);
    let in_use: Vec<&Item> = items.iter().filter(|i| open.contains(&i.path)).collect();
    let outcome = prune::remove(&cache, &chosen);
    let removed = totals(outcome.removed.iter().copied());
    let kept_in_use = totals(in_use.iter().map(|i| (i.kind, i.bytes)));
    if as_json {
        let doc = json!({
            "cache": cache.root(),
            "removed": totals_json(&removed),
            "kept_in_use": totals_json(&kept_in_use),
            "failed": outcome.failed.iter().map(|(path, e)| json!({ "path": path, "error": e.to_string() })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("cache {}: removed", cache.root().display());
        print_totals(&removed);
        if !in_use.is_empty() {
            println!("kept, open by running processes:");
            print_totals(&kept_in_use);
        }
    }
    if let Some((path, e)) = outcome.failed.first() {
        bail!("{} file(s) could not be removed, first {}: {e}", outcome.failed.len(), path.display());
    }
    Ok(())
}
