//! Indexing throughput: MB/s of uncompressed tar turned into a layer index, read with pread from a
//! file in the page cache, as `strata mount` does on a cold cache. Also the warm path: decoding a
//! persisted index.

use std::io::Write;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use strata_fs::layer::blob::BlobRange;
use strata_fs::layer::{codec, tar_index, LayerInfo};
use strata_tools::fixture::{layer_tar, pseudo_random, Item, Meta};

/// A rootfs-shaped layer: `dirs` directories of `files` files with sizes from 0 to 64 KiB.
pub fn synthetic_layer(dirs: usize, files: usize) -> Vec<u8> {
    let blob = pseudo_random(64 << 10);
    let mut items = Vec::with_capacity(dirs * (files + 1));
    for d in 0..dirs {
        items.push(Item::Dir { path: format!("usr/lib/pkg{d:04}"), meta: Meta::with_mode(0o755) });
        for f in 0..files {
            let size = ((d * 7919 + f * 104_729) % (1 << 16)) >> (f % 4 * 3);
            let path = format!("usr/lib/pkg{d:04}/file-{f:04}.so");
            items.push(Item::File { path, data: blob[..size].to_vec(), meta: Meta::default(), xattrs: vec![] });
        }
    }
    let mut all = vec![Item::Dir { path: "usr".into(), meta: Meta::with_mode(0o755) }];
    all.push(Item::Dir { path: "usr/lib".into(), meta: Meta::with_mode(0o755) });
    all.extend(items);
    layer_tar(&all).expect("building the benchmark layer")
}

fn indexing(c: &mut Criterion) {
    let tar = synthetic_layer(300, 100);
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&tar).unwrap();
    let range = BlobRange { file: Arc::new(file), path: "bench.tar".into(), offset: 0, len: tar.len() as u64 };
    let mut group = c.benchmark_group("index");
    group.throughput(Throughput::Bytes(tar.len() as u64));
    group.sample_size(20);
    group.bench_function("tar_30k_entries", |b| {
        b.iter(|| tar_index::index_tar(range.reader(), range.len, "bench", &|_| {}).unwrap())
    });
    let index = tar_index::index_tar(range.reader(), range.len, "bench", &|_| {}).unwrap();
    let encoded = codec::encode(&LayerInfo::default(), &index);
    group.throughput(Throughput::Elements(index.entries.len() as u64));
    group.bench_function("decode_cached_30k_entries", |b| b.iter(|| codec::decode(&encoded).unwrap()));
    // What every container start pays per layer: checking a cached index kept encoded.
    group.bench_function("validate_cached_30k_entries", |b| {
        b.iter_batched(|| encoded.clone(), |bytes| codec::decode_lazily(bytes).unwrap(), BatchSize::LargeInput)
    });
    group.finish();
}

criterion_group!(benches, indexing);
criterion_main!(benches);
