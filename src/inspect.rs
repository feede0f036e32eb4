//! `strata inspect`: prints the layer table or one path's provenance, as text or JSON.

use anyhow::{Context, Result};
use serde_json::json;
use strata_fs::inspect::{self, LayerRow, Mention, PathReport};

use crate::image_args::ImageArgs;

pub fn run(args: &ImageArgs, path: Option<&str>, as_json: bool) -> Result<()> {
    let view = args.load()?;
    let rows = inspect::layer_table(&view.layers);
    match path {
        None if as_json => println!("{}", serde_json::to_string_pretty(&rows_json(&rows))?),
        None => print_table(&rows),
        Some(p) => {
            let report = inspect::path_report(&view.layers, &view.tree, p).with_context(|| format!("path {p:?}"))?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&report_json(&report))?);
            } else {
                print_report(&report, &rows);
            }
        }
    }
    Ok(())
}

fn rows_json(rows: &[LayerRow]) -> serde_json::Value {
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "index": i, "source": r.name, "digest": r.digest, "media_type": r.media_type,
                "stored_size": r.stored_size, "uncompressed_size": r.uncompressed_size,
                "entries": r.entries, "whiteouts": r.whiteouts, "opaque_dirs": r.opaque_dirs,
            })
        })
        .collect()
}

/// The table `strata inspect` and `strata demo` print.
pub fn print_table(rows: &[LayerRow]) {
    println!(
        "{:<5} {:<19} {:<44} {:>12} {:>12} {:>8} {:>9}",
        "LAYER", "DIGEST", "MEDIA TYPE", "STORED", "UNCOMPRESSED", "ENTRIES", "WHITEOUTS"
    );
    for (i, r) in rows.iter().enumerate() {
        let digest = if r.digest.is_empty() { "-".to_string() } else { r.digest.chars().take(19).collect() };
        println!(
            "{:<5} {:<19} {:<44} {:>12} {:>12} {:>8} {:>9}",
            i,
            digest,
            r.media_type,
            r.stored_size,
            r.uncompressed_size,
            r.entries,
            r.whiteouts + r.opaque_dirs
        );
    }
}

fn mention_text(m: &Mention) -> String {
    match m {
        Mention::Entry(kind) => format!("has a {kind}"),
        Mention::Whiteout => "deletes it (whiteout)".into(),
        Mention::WhiteoutOfAncestor(a) => format!("deletes it with /{a} (whiteout)"),
        Mention::OpaqueAncestor(a) => format!("hides lower copies: /{a} is opaque"),
    }
}

fn print_report(report: &PathReport, rows: &[LayerRow]) {
    match (report.visible, report.provided_by) {
        (true, Some(l)) => println!("{}: provided by layer {l} ({})", report.path, rows[l].name),
        (true, None) => println!("{}: a directory implied by deeper entries", report.path),
        (false, _) => println!("{}: not visible in the merged image", report.path),
    }
    for (layer, mention) in &report.mentions {
        let role = match (report.provided_by, mention) {
            (Some(p), Mention::Entry(_)) if *layer < p => " (shadowed)",
            _ => "",
        };
        println!("  layer {layer}: {}{role}", mention_text(mention));
    }
}

fn report_json(report: &PathReport) -> serde_json::Value {
    let mentions: Vec<_> = report
        .mentions
        .iter()
        .map(|(layer, m)| {
            let (what, detail) = match m {
                Mention::Entry(kind) => ("entry", kind.to_string()),
                Mention::Whiteout => ("whiteout", String::new()),
                Mention::WhiteoutOfAncestor(a) => ("whiteout_of_ancestor", format!("/{a}")),
                Mention::OpaqueAncestor(a) => ("opaque_ancestor", format!("/{a}")),
            };
            json!({"layer": layer, "what": what, "detail": detail, "shadowed": matches!(m, Mention::Entry(_)) && report.provided_by.is_some_and(|p| *layer < p)})
        })
        .collect();
    json!({"path": report.path, "visible": report.visible, "provided_by": report.provided_by, "mentions": mentions})
}
