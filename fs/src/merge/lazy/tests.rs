use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::layer::index::{IndexBuilder, LayerIndex, Listed};
use crate::merge::MergedTree;

/// A directory layer in memory: its objects by path (every parent a directory of the layer),
/// the paths its whiteouts delete, and its opaque directories.
#[derive(Clone, Debug, Default)]
struct DirLayer {
    objects: BTreeMap<String, Kind>,
    whiteouts: BTreeSet<String>,
    opaque: BTreeSet<String>,
}

impl DirLayer {
    /// From a compact description: `d:path`, `f:path`, `w:path` (whiteout), `o:path` (opaque
    /// directory). Parents are made as directories; an item that clashes with the layer is skipped.
    fn of(spec: &[String]) -> DirLayer {
        let mut layer = DirLayer::default();
        for item in spec {
            let (kind, path) = item.split_once(':').unwrap();
            let parents_ok = crate::path::ancestors(path.as_bytes())
                .filter(|a| !a.is_empty())
                .all(|a| layer.objects.get(std::str::from_utf8(a).unwrap()).is_none_or(|k| *k == Kind::Dir));
            let taken = layer.objects.contains_key(path) || layer.whiteouts.contains(path);
            if !parents_ok || (taken && kind != "o") {
                continue;
            }
            for a in crate::path::ancestors(path.as_bytes()).filter(|a| !a.is_empty()) {
                layer.objects.insert(String::from_utf8(a.to_vec()).unwrap(), Kind::Dir);
            }
            match kind {
                "d" => drop(layer.objects.insert(path.into(), Kind::Dir)),
                "f" => drop(layer.objects.insert(path.into(), Kind::File)),
                "w" => drop(layer.whiteouts.insert(path.into())),
                "o" if layer.objects.get(path).is_none_or(|k| *k == Kind::Dir) && !layer.whiteouts.contains(path) => {
                    layer.objects.insert(path.into(), Kind::Dir);
                    layer.opaque.insert(path.into());
                }
                _ => {}
            }
        }
        layer
    }

    /// The same layer as a whole index, for the eager merge.
    fn index(&self, layer: usize) -> LayerIndex {
        let mut entries = vec![entry(b"", Kind::Dir, layer)];
        entries.extend(self.objects.iter().map(|(p, k)| entry(p.as_bytes(), *k, layer)));
        let boxed = |set: &BTreeSet<String>| set.iter().map(|p| p.as_bytes().into()).collect();
        LayerIndex { entries, whiteouts: boxed(&self.whiteouts), opaque_dirs: boxed(&self.opaque) }
    }
}

fn is_child(parent: &str, path: &str) -> bool {
    match path.rsplit_once('/') {
        Some((p, _)) => p == parent,
        None => parent.is_empty(),
    }
}

struct InMemory(Vec<DirLayer>);

impl InMemory {
    fn indexes(&self) -> Vec<LayerIndex> {
        self.0.iter().enumerate().map(|(i, l)| l.index(i)).collect()
    }
}

impl Layers for InMemory {
    fn list(&self, layer: usize, path: &[u8], _dir: &Entry) -> crate::Result<Listing> {
        let l = &self.0[layer];
        let dir = std::str::from_utf8(path).unwrap();
        let name = |p: &str| -> Box<[u8]> { p.rsplit('/').next().unwrap().as_bytes().into() };
        Ok(Listing {
            opaque: l.opaque.contains(dir),
            whiteouts: l.whiteouts.iter().filter(|w| is_child(dir, w)).map(|w| name(w)).collect(),
            objects: l
                .objects
                .iter()
                .filter(|(p, _)| is_child(dir, p))
                .map(|(p, k)| match k {
                    // A file's metadata is deferred: a placeholder without its mode.
                    Kind::Dir => Listed::object(entry(p.as_bytes(), *k, layer), false),
                    _ => Listed::object(Entry { mode: 0, ..entry(p.as_bytes(), *k, layer) }, true),
                })
                .collect(),
        })
    }

    fn complete(&self, _layer: usize, placeholder: &Entry) -> Entry {
        Entry { mode: 0o600, ..placeholder.clone() }
    }

    fn name(&self, layer: usize) -> String {
        format!("dir {layer}")
    }
}

fn lazy(layer_count: usize) -> LazyTree {
    LazyTree::new((0..layer_count as u16).rev().map(|l| (l, entry(b"", Kind::Dir, l as usize), true)).collect())
}

/// An entry that tells which layer it comes from (its data offset) and that it is not implied
/// (its mode): what two merges must agree on.
fn entry(path: &[u8], kind: Kind, layer: usize) -> Entry {
    let mut e = Entry::new(path, kind);
    (e.mode, e.data_offset) = (0o600, layer as u64);
    e
}

/// What a path shows: kind, mode, and the layer its entry comes from (0 for an implied one).
type Shown = (Kind, u32, u64);

fn shown(e: &Entry) -> Shown {
    (e.kind, e.mode, e.data_offset)
}

/// Every path of the lazy tree (merging all of it).
fn lazy_view(layers: &dyn Layers, layer_count: usize) -> BTreeMap<String, Shown> {
    let tree = lazy(layer_count);
    tree.merge_all(layers).unwrap();
    tree.nodes()
        .into_iter()
        .skip(1)
        .map(|(_, n)| (String::from_utf8(n.path().to_vec()).unwrap(), shown(n.entry(layers))))
        .collect()
}

fn eager_view(indexes: &[LayerIndex]) -> BTreeMap<String, Shown> {
    let tree = MergedTree::build(&indexes.iter().collect::<Vec<_>>()).unwrap();
    let implied = Entry::implied_dir();
    tree.iter()
        .skip(1)
        .map(|(id, n)| {
            let e = if n.entry == crate::merge::IMPLICIT {
                &implied
            } else {
                &indexes[n.layer as usize].entries[n.entry as usize]
            };
            (String::from_utf8(tree.path_of(id)).unwrap(), shown(e))
        })
        .collect()
}

fn stack(specs: &[&[&str]]) -> InMemory {
    InMemory(specs.iter().map(|s| DirLayer::of(&s.iter().map(|i| i.to_string()).collect::<Vec<_>>())).collect())
}

#[test]
fn a_directory_is_merged_only_when_looked_into() {
    let layers = stack(&[&["f:a/x", "f:b/y"], &["f:a/z"]]);
    let tree = lazy(layers.0.len());
    assert_eq!(tree.nodes().len(), 1, "nothing read at first");
    let a = tree.lookup_child(&layers, ROOT, b"a").unwrap().unwrap();
    assert_eq!(tree.nodes().len(), 3, "the root's two children");
    let names: Vec<Vec<u8>> =
        tree.children(&layers, a).unwrap().iter().map(|&c| tree.node(c).name().to_vec()).collect();
    assert_eq!(names, [b"x".to_vec(), b"z".to_vec()], "a/ merged from both layers");
    assert!(tree.node(a).is_merged_dir());
    assert_eq!(tree.nodes().len(), 5, "b/ still unread");
    assert_eq!(tree.lookup_child(&layers, ROOT, b"nope").unwrap(), None);
}

#[test]
fn whiteouts_opaque_directories_and_replacements_hide_the_layers_below() {
    let layers = stack(&[
        &["f:a/old", "f:gone", "d:keep/in", "f:file_then_dir", "d:dir_then_file/x"],
        &["w:gone", "o:a", "f:a/new", "d:file_then_dir/now", "f:dir_then_file"],
    ]);
    let view = lazy_view(&layers, layers.0.len());
    let paths: Vec<&str> = view.keys().map(|p| p.as_str()).collect();
    assert_eq!(paths, ["a", "a/new", "dir_then_file", "file_then_dir", "file_then_dir/now", "keep", "keep/in"]);
    assert_eq!(view, eager_view(&layers.indexes()));
}

#[test]
fn a_deferred_entry_is_completed_once_on_first_use() {
    let layers = stack(&[&["f:f"]]);
    let tree = lazy(layers.0.len());
    let f = tree.node(tree.lookup_child(&layers, ROOT, b"f").unwrap().unwrap());
    assert_eq!(f.entry.mode, 0, "a placeholder until asked");
    assert_eq!(f.entry(&layers).mode, 0o600);
}

fn item() -> impl Strategy<Value = String> {
    let path = prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..=3).prop_map(|v| v.join("/"));
    (prop::sample::select(vec!["d", "f", "f", "w", "o"]), path).prop_map(|(k, p)| format!("{k}:{p}"))
}

proptest! {
    /// Merged a directory at a time, top layer first, a stack of directory layers gives the tree
    /// the whole-stack merge (applying the layers bottom first) gives.
    #[test]
    fn the_lazy_merge_equals_the_whole_stack_merge(specs in prop::collection::vec(prop::collection::vec(item(), 0..8), 1..5)) {
        let layers = InMemory(specs.iter().map(|s| DirLayer::of(s)).collect());
        prop_assert_eq!(lazy_view(&layers, layers.0.len()), eager_view(&layers.indexes()));
    }
}

/// A tar layer from items `d:path`, `f:path`, `w:path`, `o:path` in archive order (parents
/// left out, as a tar may); None when the layer names an entry below its own file.
fn tar_layer(layer: usize, items: &[String]) -> Option<LayerIndex> {
    let mut b = IndexBuilder::default();
    for item in items {
        let (kind, path) = item.split_once(':').unwrap();
        match kind {
            "d" => b.add(entry(path.as_bytes(), Kind::Dir, layer)).ok()?,
            "f" => b.add(entry(path.as_bytes(), Kind::File, layer)).ok()?,
            "w" => b.add_whiteout(path.as_bytes()),
            _ => b.add_opaque_dir(path.as_bytes()),
        }
    }
    Some(b.finish())
}

#[test]
fn a_tar_layer_that_only_implies_a_directory_keeps_the_lower_directorys_metadata() {
    let mut lower = Entry::new(b"a", Kind::Dir);
    lower.mode = 0o700;
    let bottom = LayerIndex { entries: vec![lower, Entry::new(b"a/old", Kind::File)], ..LayerIndex::default() };
    let top = tar_layer(1, &["f:a/new".into(), "w:a/old".into(), "o:b".into()]).unwrap();
    let tars = IndexStack::new(vec![bottom, top]);
    let tree = lazy(2);
    let a = tree.lookup_child(&tars, ROOT, b"a").unwrap().unwrap();
    assert_eq!((tree.node(a).layer, tree.node(a).entry(&tars).mode), (0, 0o700), "a/ is the bottom layer's");
    let names: Vec<Vec<u8>> = tree.children(&tars, a).unwrap().iter().map(|&c| tree.node(c).name().to_vec()).collect();
    assert_eq!(names, [b"new".to_vec()]);
    assert_eq!(tree.lookup_child(&tars, ROOT, b"b").unwrap(), None, "an opaque marker alone makes nothing");
}

#[test]
fn entries_a_tar_layer_puts_below_a_lower_file_are_an_error_naming_both() {
    let bottom = tar_layer(0, &["f:a".into()]).unwrap();
    let top = tar_layer(1, &["f:a/x".into()]).unwrap();
    let tars = IndexStack::new(vec![bottom, top]);
    let err = lazy(2).lookup_child(&tars, ROOT, b"a").unwrap_err().to_string();
    assert!(err.contains("tar 1") && err.contains("tar 0") && err.contains("a file"), "{err}");
}

proptest! {
    /// The same with tar layers, whose entries come in any order and leave parents out, listed
    /// through [`ByDirectory`]; stacks the whole-stack merge refuses are left out.
    #[test]
    fn the_lazy_merge_of_tar_layers_equals_the_whole_stack_merge(specs in prop::collection::vec(prop::collection::vec(item(), 0..8), 1..5)) {
        let Some(indexes) = specs.iter().enumerate().map(|(i, s)| tar_layer(i, s)).collect::<Option<Vec<_>>>() else { return Ok(()) };
        // Refused stacks put entries below a lower layer's file; the lazy merge refuses the
        // directory where a layer only implies it, but accepts a layer that names the directory
        // after its children (extraction order matters to the whole-stack merge only).
        if MergedTree::build(&indexes.iter().collect::<Vec<_>>()).is_err() {
            return Ok(());
        }
        let eager = eager_view(&indexes);
        let tars = IndexStack::new(indexes);
        prop_assert_eq!(lazy_view(&tars, tars.len()), eager);
    }
}
