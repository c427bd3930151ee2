//! Decoding one chunk: the zarrs codec chain, our leaf decoder writing into a slot of a batch,
//! and the floor (zstd's bulk decompressor into a reused buffer), on a chunk that compresses
//! like real imagery.

use std::borrow::Cow;
use std::num::NonZeroU64;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lsio_torch::zarr::leaf::LeafCodecs;
use zarrs::array::{ArrayToBytesCodecTraits, CodecChain, CodecOptions, FillValue};
use zarrs_metadata::v3::MetadataV3;

/// A smooth int16 field plus a little noise, `side` x `side`.
fn chunk(side: usize) -> Vec<u8> {
    let mut state = 1u32;
    (0..side * side)
        .flat_map(|n| {
            let (y, x) = ((n / side) as f32, (n % side) as f32);
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (state >> 28) as f32;
            let v = 8000.0 + 2000.0 * ((y * 0.05).sin() + (x * 0.03).cos()) + noise;
            (v as i16).to_le_bytes()
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let codecs: Vec<MetadataV3> = serde_json::from_str(
        r#"[{"name":"bytes","configuration":{"endian":"little"}},{"name":"zstd","configuration":{"level":3,"checksum":false}}]"#,
    )
    .unwrap();
    let chain = CodecChain::from_metadata(&codecs).unwrap();
    let data_type = zarrs::array::data_type::int16();
    let fill = FillValue::new(0i16.to_ne_bytes().to_vec());
    let options = CodecOptions::default();
    let mut group = c.benchmark_group("decode zstd int16 chunk");
    for side in [128usize, 256, 512] {
        let raw = chunk(side);
        let encoded = zstd::bulk::compress(&raw, 3).unwrap();
        let shape = [
            NonZeroU64::MIN,
            NonZeroU64::new(side as u64).unwrap(),
            NonZeroU64::new(side as u64).unwrap(),
        ];
        group.throughput(Throughput::Bytes(raw.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("zarrs CodecChain", side),
            &encoded,
            |b, encoded| {
                b.iter(|| {
                    let out = chain
                        .decode(Cow::Borrowed(encoded), &shape, &data_type, &fill, &options)
                        .unwrap();
                    std::hint::black_box(out.into_fixed().unwrap().len())
                });
            },
        );
        let leaf = LeafCodecs::new(CodecChain::from_metadata(&codecs).unwrap(), &codecs, 2);
        let mut slot = vec![0u8; raw.len() * 2];
        group.bench_with_input(
            BenchmarkId::new("LeafCodecs::decode_into a slot", side),
            &encoded,
            |b, encoded| {
                b.iter(|| {
                    let into = &mut slot[raw.len()..];
                    leaf.decode_into(encoded, into, &shape, &data_type, &fill)
                        .unwrap();
                    std::hint::black_box(into[0])
                });
            },
        );
        let mut decompressor = zstd::bulk::Decompressor::new().unwrap();
        let mut out = vec![0u8; raw.len()];
        group.bench_with_input(
            BenchmarkId::new("zstd bulk, reused buffer", side),
            &encoded,
            |b, encoded| {
                b.iter(|| {
                    std::hint::black_box(
                        decompressor
                            .decompress_to_buffer(encoded, &mut out)
                            .unwrap(),
                    )
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
