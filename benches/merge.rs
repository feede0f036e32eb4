//! The merged view's hot paths on an index of 100k entries: building the tree (mount time), path
//! lookup, and listing a large directory; plus lookups through a stack of 100 layers.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use strata_fs::layer::index::{Entry, IndexBuilder, Kind, LayerIndex};
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

criterion_group!(benches, merged_view);
criterion_main!(benches);
