//! The I/O stage, for engines started with `io_threads > 0`: threads that only read, each
//! with its own ring, handing each group of chunks it read to the decode pool.
//!
//! ```text
//! planner ─groups─▶ I/O threads: read a group into a free buffer ─▶ pool: decode ─▶ buffer freed
//! ```
//! A batch is finished when the last of its parts (its groups, and the fill of its missing
//! chunks) is: only then is its ticket resolved, so nothing writes its output afterwards.
//! Read buffers are a fixed set passed around a channel, which bounds the bytes in flight.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::batch::{decode_group, read_group, BatchRun};
use super::groups::read_groups;
use super::planned::Planned;
use super::shared::{guarded, Job, Shared};
use crate::error::{Error, Result};
use crate::io::{new_reader, ReadBuf};

/// One group of a batch's reads, for an I/O thread.
pub(super) struct GroupWork {
    batch: Arc<BatchRun>,
    group: Range<usize>,
}

/// The running I/O threads, and the channel that feeds them.
pub(super) struct IoStage {
    work: Option<Sender<GroupWork>>,
    threads: Vec<JoinHandle<()>>,
}

/// Groups that may wait for an I/O thread.
const QUEUED_GROUPS: usize = 64;

impl IoStage {
    /// Starts `io_threads` I/O threads handing groups to `pool`. Each holds a read buffer
    /// while it reads, and each decode thread one while it decodes: `threads + 2 * io_threads`
    /// buffers let either stage work while the other does.
    ///
    /// # Errors
    /// [`Error::Stopped`] when a thread cannot be started.
    pub(super) fn start(
        shared: &Arc<Shared>,
        io_threads: usize,
        threads: usize,
        pool: &Arc<rayon::ThreadPool>,
    ) -> Result<Self> {
        let (work, work_rx) = crossbeam_channel::bounded::<GroupWork>(QUEUED_GROUPS);
        let buffers = threads + 2 * io_threads;
        let (free, free_rx) = crossbeam_channel::bounded::<ReadBuf>(buffers);
        for _ in 0..buffers {
            let _ = free.send(ReadBuf::new());
        }
        let mut stage = Self {
            work: Some(work),
            threads: Vec::with_capacity(io_threads),
        };
        for i in 0..io_threads {
            let (shared, work_rx) = (Arc::clone(shared), work_rx.clone());
            let (free, free_rx, pool) = (free.clone(), free_rx.clone(), Arc::clone(pool));
            let thread = std::thread::Builder::new()
                .name(format!("lsio-io-{i}"))
                .spawn(move || io_loop(&shared, &work_rx, &free, &free_rx, &pool))
                .map_err(|e| Error::Stopped(format!("starting an I/O thread: {e}")))?;
            stage.threads.push(thread);
        }
        Ok(stage)
    }

    /// Runs a planned batch: its missing chunks filled on the pool, its groups read by the
    /// I/O threads and decoded on the pool.
    pub(super) fn run(
        &self,
        shared: &Arc<Shared>,
        planned: Planned,
        job: Job,
        pool: &rayon::ThreadPool,
    ) {
        let groups = read_groups(&planned.reads);
        let batch = BatchRun::start(shared, planned, job, pool, groups.len());
        for group in groups {
            let work = GroupWork {
                batch: Arc::clone(&batch),
                group,
            };
            let unsent = match &self.work {
                Some(sender) => sender.send(work).err().map(|e| e.0),
                None => Some(work),
            };
            if let Some(work) = unsent {
                let stopped = Error::Stopped("the I/O threads have exited".into());
                work.batch.finish_part(Err(stopped));
            }
        }
    }

    /// Lets the I/O threads finish the groups queued and waits for them to exit.
    pub(super) fn stop(&mut self) {
        self.work = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for IoStage {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An I/O thread: reads each group it is given into a free buffer with its own reader, then
/// hands the buffer to the pool to decode.
fn io_loop(
    shared: &Arc<Shared>,
    work: &Receiver<GroupWork>,
    free: &Sender<ReadBuf>,
    free_rx: &Receiver<ReadBuf>,
    pool: &Arc<rayon::ThreadPool>,
) {
    let mut reader = new_reader(shared.backend);
    while let Ok(GroupWork { batch, group }) = work.recv() {
        if shared.cancel.load(Ordering::Relaxed) {
            batch.finish_part(Err(Error::Stopped("the engine was closed".into())));
            continue;
        }
        if batch.failed() {
            batch.finish_part(Ok(()));
            continue;
        }
        let reader = match &mut reader {
            Ok(reader) => reader,
            Err(e) => {
                batch.finish_part(Err(Error::Stopped(format!(
                    "no reader on this thread: {e}"
                ))));
                continue;
            }
        };
        let Ok(mut buf) = free_rx.recv() else {
            batch.finish_part(Err(Error::Stopped("the read buffers are gone".into())));
            continue;
        };
        let reads = &batch.planned.reads[group.clone()];
        let starts = guarded("I/O thread", &batch.shared.array.path, || {
            read_group(
                &batch.shared,
                &batch.planned,
                reads,
                reader.as_mut(),
                &mut buf,
                &batch.job.out,
            )
        });
        let starts = match starts {
            Ok(starts) => starts,
            Err(e) => {
                let _ = free.send(buf);
                batch.finish_part(Err(e));
                continue;
            }
        };
        let free = free.clone();
        pool.spawn_fifo(move || {
            let reads = &batch.planned.reads[group];
            let result = guarded("engine thread", &batch.shared.array.path, || {
                decode_group(
                    &batch.shared,
                    &batch.planned,
                    reads,
                    &buf,
                    &starts,
                    &batch.job.out,
                )
            });
            let _ = free.send(buf);
            batch.finish_part(result);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crossbeam_channel::bounded;
    use crossbeam_utils::sync::WaitGroup;

    use super::*;
    use crate::io::pread::PreadReader;
    use crate::io::Backend;
    use crate::pipeline::batch::run_batch;
    use crate::pipeline::files::PlanCache;
    use crate::pipeline::planned::plan_reads;
    use crate::pipeline::OutBuffer;
    use crate::window::Window;
    use crate::zarr::ZarrArray;

    const CROP: [u64; 3] = [3, 5, 4];

    fn shared() -> Arc<Shared> {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sharded_end_int16.zarr");
        let array = Arc::new(ZarrArray::open(path).unwrap());
        Arc::new(Shared::new(array, Window::crop(&CROP), Backend::Pread, None).unwrap())
    }

    /// Runs one batch at `origins` with `run` and returns its bytes, or its error.
    fn batch_with(
        shared: &Arc<Shared>,
        origins: &[Vec<u64>],
        run: impl FnOnce(Planned, Job),
    ) -> Result<Vec<u8>> {
        let mut cache = PlanCache::default();
        let planned = plan_reads(shared, &mut PreadReader, None, &mut cache, origins, &[])?;
        let mut out = vec![0u8; origins.len() * shared.crop_bytes];
        let (done, done_rx) = bounded(1);
        // SAFETY: the batch's ticket is waited for before `out` is read or dropped.
        let buffer = unsafe { OutBuffer::new(out.as_mut_ptr(), out.len()) };
        let job = Job {
            part: 0,
            origins: origins.to_vec(),
            out: buffer,
            done,
            _in_use: WaitGroup::new(),
        };
        run(planned, job);
        done_rx.recv().unwrap()?;
        Ok(out)
    }

    #[test]
    fn groups_read_by_io_threads_decode_as_those_read_by_the_pool() {
        let shared = shared();
        let origins = vec![vec![0, 0, 0], vec![1, 3, 2], vec![3, 5, 5], vec![2, 1, 4]];
        let (pool, _threads) = crate::pool::build_pool("lsio-test", 2).unwrap();
        let pool = Arc::new(pool);
        let by_pool = batch_with(&shared, &origins, |p, j| run_batch(&shared, p, j, &pool));
        let mut stage = IoStage::start(&shared, 2, 2, &pool).unwrap();
        let by_stage = batch_with(&shared, &origins, |p, j| stage.run(&shared, p, j, &pool));
        assert_eq!(by_stage.unwrap(), by_pool.unwrap());
        // Stopped, its threads have exited, and a batch handed to it ends in an error.
        stage.stop();
        assert!(stage.threads.is_empty());
        let after = batch_with(&shared, &origins, |p, j| stage.run(&shared, p, j, &pool));
        let e = after.unwrap_err().to_string();
        assert!(e.contains("the I/O threads have exited"), "{e}");
    }
}
