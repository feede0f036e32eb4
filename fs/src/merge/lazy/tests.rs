use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::layer::index::LayerIndex;
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
    fn index(&self) -> LayerIndex {
        let mut entries = vec![Entry::new(b"", Kind::Dir)];
        entries.extend(self.objects.iter().map(|(p, k)| Entry::new(p.as_bytes(), *k)));
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
                .map(|(p, k)| (Entry::new(p.as_bytes(), *k), *k != Kind::Dir))
                .collect(),
        })
    }

    fn complete(&self, _layer: usize, placeholder: &Entry) -> Entry {
        let mut full = placeholder.clone();
        full.mode = 0o644;
        full
    }
}

fn lazy(layers: &InMemory) -> LazyTree {
    LazyTree::new((0..layers.0.len() as u16).rev().map(|l| (l, Entry::new(b"", Kind::Dir))).collect())
}

/// Every path of the lazy tree (merging all of it), with its layer and kind.
fn lazy_view(layers: &InMemory) -> BTreeMap<String, (u16, Kind)> {
    let tree = lazy(layers);
    tree.merge_all(layers).unwrap();
    tree.nodes()
        .into_iter()
        .skip(1)
        .map(|(_, n)| (String::from_utf8(n.entry.path.to_vec()).unwrap(), (n.layer, n.kind())))
        .collect()
}

fn eager_view(layers: &InMemory) -> BTreeMap<String, (u16, Kind)> {
    let indexes: Vec<LayerIndex> = layers.0.iter().map(DirLayer::index).collect();
    let tree = MergedTree::build(&indexes.iter().collect::<Vec<_>>()).unwrap();
    tree.iter()
        .skip(1)
        .map(|(id, n)| {
            let kind = indexes[n.layer as usize].entries[n.entry as usize].kind;
            (String::from_utf8(tree.path_of(id)).unwrap(), (n.layer, kind))
        })
        .collect()
}

fn stack(specs: &[&[&str]]) -> InMemory {
    InMemory(specs.iter().map(|s| DirLayer::of(&s.iter().map(|i| i.to_string()).collect::<Vec<_>>())).collect())
}

#[test]
fn a_directory_is_merged_only_when_looked_into() {
    let layers = stack(&[&["f:a/x", "f:b/y"], &["f:a/z"]]);
    let tree = lazy(&layers);
    assert_eq!(tree.len(), 1, "nothing read at first");
    let a = tree.lookup_child(&layers, ROOT, b"a").unwrap().unwrap();
    assert_eq!(tree.len(), 3, "the root's two children");
    let names: Vec<Vec<u8>> =
        tree.children(&layers, a).unwrap().iter().map(|&c| tree.node(c).name().to_vec()).collect();
    assert_eq!(names, [b"x".to_vec(), b"z".to_vec()], "a/ merged from both layers");
    assert!(tree.node(a).is_merged_dir());
    assert_eq!(tree.len(), 5, "b/ still unread");
    assert_eq!(tree.lookup_child(&layers, ROOT, b"nope").unwrap(), None);
}

#[test]
fn whiteouts_opaque_directories_and_replacements_hide_the_layers_below() {
    let layers = stack(&[
        &["f:a/old", "f:gone", "d:keep/in", "f:file_then_dir", "d:dir_then_file/x"],
        &["w:gone", "o:a", "f:a/new", "d:file_then_dir/now", "f:dir_then_file"],
    ]);
    let view = lazy_view(&layers);
    let paths: Vec<&str> = view.keys().map(|p| p.as_str()).collect();
    assert_eq!(paths, ["a", "a/new", "dir_then_file", "file_then_dir", "file_then_dir/now", "keep", "keep/in"]);
    assert_eq!(view, eager_view(&layers));
}

#[test]
fn a_deferred_entry_is_completed_once_on_first_use() {
    let layers = stack(&[&["f:f"]]);
    let tree = lazy(&layers);
    let f = tree.node(tree.lookup_child(&layers, ROOT, b"f").unwrap().unwrap());
    assert_eq!(f.entry.mode, 0, "a placeholder until asked");
    assert_eq!(f.entry(&layers).mode, 0o644);
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
        prop_assert_eq!(lazy_view(&layers), eager_view(&layers));
    }
}
