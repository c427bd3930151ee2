//! The engine end to end, without Python, on fixtures written by zarr-python
//! (`tests/fixtures/write.py`, whose value formula these tests recompute).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lsio_torch::io::Backend;
use lsio_torch::pipeline::{Engine, EngineConfig, OutBuffer, Part};
use lsio_torch::sampler::Sampler;
use lsio_torch::zarr::ZarrArray;
use lsio_torch::Error;

const SHAPE: [u64; 3] = [6, 10, 9];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Whether zarr-python left element (i, j, k) at the fill value.
fn is_fill(i: u64, j: u64, k: u64) -> bool {
    (i < 2 && (4..8).contains(&j) && k < 3) || i >= 4
}

fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Pread];
    if lsio_torch::io::choose_backend().is_ok_and(|c| c.backend == Backend::IoUring) {
        out.push(Backend::IoUring);
    }
    out
}

/// Reads crops at `origins` into a fresh buffer with `backend` (and `io_threads` threads that
/// only read).
fn read(
    path: &Path,
    crop: &[u64],
    origins: &[Vec<u64>],
    backend: Backend,
    io_threads: usize,
) -> Result<Vec<u8>, Error> {
    let array = Arc::new(ZarrArray::open(path)?);
    let element = array.dtype.size();
    let config = EngineConfig {
        threads: 2,
        io_threads,
        backend,
        direct_io: false,
        cache: None,
        disk_cache: None,
    };
    let engine = Engine::start(vec![Part::crop(array, crop)], config)?;
    let mut out = vec![0u8; origins.len() * engine.crop_bytes(0)];
    assert_eq!(out.len() % element, 0);
    // SAFETY: `out` outlives the engine's writes: we wait for the ticket before reading it,
    // and the engine is dropped (joining its threads) before `out` on every path.
    let buffer = unsafe { OutBuffer::new(out.as_mut_ptr(), out.len()) };
    let mut ticket = engine.submit(vec![(origins.to_vec(), buffer)])?;
    ticket.wait()?;
    drop(engine);
    Ok(out)
}

/// Every crop element equals the fixture's formula, or its fill value where nothing was written.
fn check<T: PartialEq + std::fmt::Debug + Copy>(
    name: &str,
    decode: impl Fn(&[u8]) -> T,
    expected: impl Fn(u64, u64, u64) -> T,
    fill: T,
) {
    let crop = [3u64, 5, 4];
    let sampler = Sampler::new(&SHAPE, &crop, 9).unwrap();
    let mut origins: Vec<Vec<u64>> = (0..40).map(|i| sampler.origin(0, i)).collect();
    origins.push(vec![0, 0, 0]);
    origins.push(vec![3, 5, 5]);
    for (backend, io_threads) in backends().into_iter().flat_map(|b| [(b, 0), (b, 1)]) {
        let out = read(&fixture(name), &crop, &origins, backend, io_threads).unwrap();
        let size = out.len() / origins.len() / 60;
        for (c, origin) in origins.iter().enumerate() {
            for n in 0..60u64 {
                let (i, j, k) = (origin[0] + n / 20, origin[1] + n / 4 % 5, origin[2] + n % 4);
                let at = (c * 60 + n as usize) * size;
                let got = decode(&out[at..at + size]);
                let want = if is_fill(i, j, k) {
                    fill
                } else {
                    expected(i, j, k)
                };
                assert_eq!(
                    got, want,
                    "{name} {backend:?} io_threads={io_threads} crop at {origin:?}, element ({i}, {j}, {k})"
                );
            }
        }
    }
}

#[test]
fn sharded_index_at_end_int16() {
    check(
        "sharded_end_int16.zarr",
        |b| i16::from_le_bytes([b[0], b[1]]),
        |i, j, k| (i * 1000 + j * 10 + k) as i16,
        -1,
    );
}

#[test]
fn sharded_index_at_start_float32() {
    check(
        "sharded_start_float32.zarr",
        |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        |i, j, k| (i * 100 + j) as f32 + k as f32 * 0.25,
        0.5,
    );
}

#[test]
fn unsharded_uint8() {
    check(
        "unsharded_uint8.zarr",
        |b| b[0],
        |i, j, k| ((i * 10 + j * 3 + k) % 256) as u8,
        255,
    );
}

#[test]
fn v2_blosc_bitshuffle_order_f_with_slash_keys() {
    check(
        "v2_blosc_order_f_float32.zarr",
        |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        |i, j, k| (i * 100 + j) as f32 + k as f32 * 0.25,
        0.5,
    );
}

#[test]
fn v2_dimension_names_come_from_array_dimensions() {
    let array = ZarrArray::open(fixture("v2_blosc_order_f_float32.zarr")).unwrap();
    assert_eq!(array.zarr_format, 2);
    let names: Vec<_> = ["time", "y", "x"]
        .iter()
        .map(|n| Some(n.to_string()))
        .collect();
    assert_eq!(array.dimension_names, Some(names));
}

#[test]
fn v3_transpose_big_endian_gzip_crc32c_with_dot_keys() {
    check(
        "v3_transpose_big_gzip_int16.zarr",
        |b| i16::from_le_bytes([b[0], b[1]]),
        |i, j, k| (i * 1000 + j * 10 + k) as i16,
        -1,
    );
}

#[test]
fn v3_nested_shards() {
    check(
        "v3_nested_shards_uint8.zarr",
        |b| b[0],
        |i, j, k| ((i * 10 + j * 3 + k) % 256) as u8,
        255,
    );
}

#[test]
fn an_origin_outside_the_array_is_refused_before_reading() {
    let err = read(
        &fixture("unsharded_uint8.zarr"),
        &[3, 5, 4],
        &[vec![4, 0, 0]],
        Backend::Pread,
        0,
    )
    .unwrap_err();
    assert!(matches!(err, Error::OutOfBounds(_)), "{err}");
    assert!(err.to_string().contains("origin [4, 0, 0]"), "{err}");
}

#[test]
fn a_corrupt_inner_chunk_names_the_shard_and_the_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("a.zarr");
    std::fs::create_dir_all(copy.join("c/0/0")).unwrap();
    std::fs::copy(
        fixture("sharded_end_int16.zarr/zarr.json"),
        copy.join("zarr.json"),
    )
    .unwrap();
    let mut shard = std::fs::read(fixture("sharded_end_int16.zarr/c/0/0/0")).unwrap();
    shard[..4].copy_from_slice(b"junk"); // inner chunk 0 starts the shard
    std::fs::write(copy.join("c/0/0/0"), shard).unwrap();
    for (backend, io_threads) in backends().into_iter().flat_map(|b| [(b, 0), (b, 1)]) {
        let err = read(&copy, &[1, 1, 1], &[vec![0, 0, 0]], backend, io_threads).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::Corrupt { .. }), "{message}");
        assert!(
            message.contains("c/0/0/0: corrupt chunk [0, 0, 0]"),
            "{message}"
        );
    }
}
