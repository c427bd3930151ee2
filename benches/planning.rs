//! The planner's math: which chunks a batch touches and the copies it implies, and looking
//! inner chunks up in a shard index.

use criterion::{criterion_group, criterion_main, Criterion};
use lsio_torch::plan::plan_batch;
use lsio_torch::sampler::Sampler;
use lsio_torch::window::Window;
use lsio_torch::zarr::region::CopyLayout;
use lsio_torch::zarr::shard_index::ShardIndex;

fn region_math(c: &mut Criterion) {
    // sat-zstd: 16 crops (4, 256, 256) on inner chunks (1, 256, 256).
    let shape = [256u64, 1024, 1024];
    let crop = [4u64, 256, 256];
    let leaf = [1u64, 256, 256];
    let window = Window::crop(&crop);
    let sampler = Sampler::new(&shape, &crop, 0).unwrap();
    let origins: Vec<Vec<u64>> = (0..16).map(|i| sampler.origin(0, i)).collect();
    c.bench_function(
        "plan_batch: 16 crops (4,256,256) over (1,256,256) chunks",
        |b| {
            b.iter(|| std::hint::black_box(plan_batch(&leaf, &window, &origins).len()));
        },
    );
    let tasks = plan_batch(&leaf, &window, &origins);
    c.bench_function("copy runs of one batch", |b| {
        b.iter(|| {
            let mut runs = 0usize;
            for task in &tasks {
                for t in &task.targets {
                    CopyLayout {
                        element_size: 2,
                        region: &t.in_chunk.shape,
                        src_shape: &leaf,
                        src_start: &t.in_chunk.start,
                        dst_shape: &crop,
                        dst_start: &t.in_crop,
                    }
                    .for_each_run(|_, _, n| runs += n);
                }
            }
            std::hint::black_box(runs)
        });
    });
}

fn shard_index(c: &mut Criterion) {
    // A (16, 1024, 1024) shard of (1, 256, 256) chunks: 256 entries.
    let words: Vec<u64> = (0..256u64).flat_map(|i| [i * 70_000, 70_000]).collect();
    c.bench_function("shard index: check 256 entries", |b| {
        b.iter(|| std::hint::black_box(ShardIndex::from_words(&words, 256, 256 * 70_000).is_ok()));
    });
    let index = ShardIndex::from_words(&words, 256, 256 * 70_000).unwrap();
    c.bench_function("shard index: 256 slot lookups", |b| {
        b.iter(|| {
            (0..256)
                .map(|i| index.slot(i))
                .filter(|s| matches!(s, lsio_torch::zarr::shard_index::Slot::Bytes { .. }))
                .count()
        });
    });
}

criterion_group!(benches, region_math, shard_index);
criterion_main!(benches);
