//! The merged view's hot paths on an index of 100k entries: building the tree (mount time), path
//! lookup, and listing a large directory; plus lookups through a stack of 100 layers. The same
//! for the merge a writable mount uses, a directory at a time (`merge::lazy`): arranging an
//! index by directory (mount time), first lookups (each merging the directories on the way),
//! lookups once merged, and decoding entries from an encoded index.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use strata_fs::layer::by_dir::ByDirectory;
use strata_fs::layer::codec;
use strata_fs::layer::index::{Entry, IndexBuilder, Kind, LayerIndex};
use strata_fs::layer::LayerInfo;
use strata_fs::merge::lazy::{IndexStack, LazyTree};
use strata_fs::merge::MergedTree;

/// 100 directories of 1000 files (100k entries) below `usr/share`.
fn big_index() -> LayerIndex {
    let mut b = IndexBuilder::default();
    for d in 0..100 {
        b.add(Entry::new(format!("usr/share/d{d:03}").as_bytes(), Kind::Dir)).unwrap();
        for f in 0..1000 {
            b.add(Entry::new(format!("usr/share/d{d:03}/f{f:04}").as_bytes(), Kind::File)).unwrap();
        }
    }
    b.finish()
}

/// `n` layers, each adding a file to a shared directory and whiting out the previous layer's.
fn deep_stack(n: usize) -> Vec<LayerIndex> {
    (0..n)
        .map(|i| {
            let mut b = IndexBuilder::default();
            b.add(Entry::new(b"etc", Kind::Dir)).unwrap();
            b.add(Entry::new(format!("etc/conf{i}").as_bytes(), Kind::File)).unwrap();
            b.add(Entry::new(format!("opt/layer{i}/bin/tool").as_bytes(), Kind::File)).unwrap();
            if i > 0 {
                b.add_whiteout(format!("etc/conf{}", i - 1).as_bytes());
            }
            b.finish()
        })
        .collect()
}

fn merged_view(c: &mut Criterion) {
    let index = big_index();
    let mut group = c.benchmark_group("merge");
    group.sample_size(20);
    group.bench_function("build_100k_entries", |b| b.iter(|| MergedTree::build(&[&index]).unwrap()));
    let tree = MergedTree::build(&[&index]).unwrap();
    let paths: Vec<String> =
        (0..1000).map(|i| format!("usr/share/d{:03}/f{:04}", i * 37 % 100, i * 7919 % 1000)).collect();
    group.bench_function("lookup_1000_paths_100k", |b| {
        b.iter(|| paths.iter().filter(|p| tree.lookup(p.as_bytes()).is_some()).count())
    });
    let dir = tree.lookup(b"usr/share/d050").unwrap();
    group.bench_function("list_1000_entry_dir", |b| {
        b.iter(|| tree.children(dir).iter().map(|&k| tree.name(k).len()).sum::<usize>())
    });
    for layers in [10, 100] {
        let stack = deep_stack(layers);
        let refs: Vec<&LayerIndex> = stack.iter().collect();
        let tree = MergedTree::build(&refs).unwrap();
        let target = format!("opt/layer{}/bin/tool", layers / 2);
        group.bench_with_input(BenchmarkId::new("lookup_in_stack", layers), &target, |b, t| {
            b.iter(|| tree.lookup(t.as_bytes()).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("build_stack", layers), &refs, |b, r| {
            b.iter(|| MergedTree::build(r).unwrap())
        });
    }
    group.finish();
}

/// A fresh lazy tree over `layers`, whose roots the layers only imply.
fn fresh_tree(layers: &IndexStack) -> LazyTree {
    LazyTree::new((0..layers.len() as u16).rev().map(|l| (l, Entry::implied_dir(), false)).collect())
}

fn lookup_all(tree: &LazyTree, layers: &IndexStack, paths: &[String]) -> usize {
    paths.iter().filter(|p| tree.lookup(layers, p.as_bytes()).unwrap().is_some()).count()
}

fn lazy_merge(c: &mut Criterion) {
    let index = big_index();
    let mut group = c.benchmark_group("lazy");
    group.sample_size(20);
    group.bench_function("by_directory_100k_entries", |b| b.iter(|| ByDirectory::new(&index)));
    let paths: Vec<String> =
        (0..1000).map(|i| format!("usr/share/d{:03}/f{:04}", i * 37 % 100, i * 7919 % 1000)).collect();
    let layers = IndexStack::new(vec![index.clone()]);
    group.bench_function("first_lookup_1000_paths_100k", |b| {
        b.iter(|| lookup_all(&fresh_tree(&layers), &layers, &paths))
    });
    let tree = fresh_tree(&layers);
    lookup_all(&tree, &layers, &paths);
    group.bench_function("lookup_1000_paths_100k_merged", |b| b.iter(|| lookup_all(&tree, &layers, &paths)));
    let dir = tree.lookup(&layers, b"usr/share/d050").unwrap().unwrap();
    group.bench_function("list_1000_entry_dir_merged", |b| b.iter(|| tree.children(&layers, dir).unwrap().len()));
    let bytes = codec::encode(&LayerInfo::default(), &index);
    let (_, mut encoded) = codec::decode_lazily(bytes.clone()).unwrap();
    let scattered: Vec<u32> = (0..1000).map(|i| i * 97).collect();
    group.bench_function("decode_1000_encoded_entries", |b| b.iter(|| encoded.entries(&scattered).unwrap().len()));
    // The same index read in place from its cache file (page cache), as a container's daemon
    // reads it: the 1,000 entries of one directory (one read), and 1,000 scattered ones.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    std::fs::write(&path, &bytes).unwrap();
    encoded.set_file(std::fs::File::open(&path).unwrap(), path);
    encoded.read_in_place();
    let d050 = entries_directly_in(&index, b"usr/share/d050/");
    group.bench_function("read_in_place_1000_entry_dir", |b| b.iter(|| encoded.entries(&d050).unwrap().len()));
    group.bench_function("read_in_place_1000_scattered_entries", |b| {
        b.iter(|| encoded.entries(&scattered).unwrap().len())
    });
    let stack = IndexStack::new(deep_stack(100));
    group.bench_function("first_lookup_in_stack_100", |b| {
        b.iter(|| fresh_tree(&stack).lookup(&stack, b"opt/layer50/bin/tool").unwrap().unwrap())
    });
    group.finish();
}

/// The indices of the entries directly in `dir` (with its trailing slash).
fn entries_directly_in(index: &LayerIndex, dir: &[u8]) -> Vec<u32> {
    let within = |p: &[u8]| p.strip_prefix(dir).is_some_and(|rest| !rest.is_empty() && !rest.contains(&b'/'));
    (0..index.entries.len() as u32).filter(|&i| within(&index.entries[i as usize].path)).collect()
}

criterion_group!(benches, merged_view, lazy_merge);
criterion_main!(benches);
