//! An engine's connection to object stores: a runtime of its own and the bounds on what is in
//! flight, shared by every array the engine reads (the stores' clients are the arrays').

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{RemoteStore, Settings};
use crate::error::{Error, Result};

/// Threads of an engine's runtime: they only wait for sockets and copy bytes off them.
const NET_THREADS: usize = 2;
/// The unit of the bytes-in-flight bound.
const BYTE_UNIT: usize = 1 << 10;
/// How long stopping waits for the runtime's threads to exit.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// An engine's runtime and bounds, started with the engine and stopped with it.
pub struct Net {
    runtime: Option<tokio::runtime::Runtime>,
    /// Requests open at once ([`Settings::max_requests`]).
    pub requests: Arc<Semaphore>,
    /// Bytes fetched and not yet decoded, in [`BYTE_UNIT`]s
    /// ([`Settings::max_bytes_in_flight`]).
    bytes: Arc<Semaphore>,
    byte_units: usize,
    part_bytes: u64,
}

impl Net {
    /// Starts the runtime's threads, with the bounds of `settings` for every request of the
    /// engine, whatever array and store it is for.
    ///
    /// # Errors
    /// [`Error::Stopped`] when the runtime cannot start.
    pub fn start(settings: &Settings) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(NET_THREADS)
            .thread_name("lsio-net")
            .enable_all()
            .build()
            .map_err(|e| Error::Stopped(format!("starting the network runtime: {e}")))?;
        let byte_units = settings.max_bytes_in_flight.div_ceil(BYTE_UNIT).max(1);
        Ok(Self {
            runtime: Some(runtime),
            requests: Arc::new(Semaphore::new(settings.max_requests)),
            bytes: Arc::new(Semaphore::new(byte_units)),
            byte_units,
            part_bytes: settings.part_bytes,
        })
    }

    /// The client of a store, for an array of the engine: one already made for a store of the
    /// same location and options among `made`, else a new one (added to `made`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the store refuses its configuration.
    pub fn client(
        remote: &Arc<RemoteStore>,
        made: &mut Vec<(Arc<RemoteStore>, Arc<dyn ObjectStore>)>,
    ) -> Result<Arc<dyn ObjectStore>> {
        if let Some((_, store)) = made.iter().find(|(r, _)| r.same_client(remote)) {
            return Ok(Arc::clone(store));
        }
        let store = remote.build()?;
        made.push((Arc::clone(remote), Arc::clone(&store)));
        Ok(store)
    }

    /// Runs `future` to completion on the runtime, from a thread that is not one of its own.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime().block_on(future)
    }

    /// Runs `future` on the runtime's threads.
    pub fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.runtime().spawn(future);
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .unwrap_or_else(|| unreachable!("the runtime lives until the Net is dropped"))
    }

    /// What another thread needs to fetch from `store` while the engine runs.
    #[must_use]
    pub fn link(&self, stores: &[Arc<dyn ObjectStore>]) -> Link {
        Link {
            runtime: self.runtime().handle().clone(),
            stores: stores.to_vec(),
            requests: Arc::clone(&self.requests),
            part_bytes: self.part_bytes,
        }
    }

    /// A future that waits until `len` more bytes may be in flight; the permit it gives frees
    /// them when dropped. A request larger than the whole bound waits for all of it.
    pub fn bytes_permit(
        &self,
        len: usize,
    ) -> impl Future<Output = Option<OwnedSemaphorePermit>> + Send + 'static {
        let units = len.div_ceil(BYTE_UNIT).clamp(1, self.byte_units);
        let bytes = Arc::clone(&self.bytes);
        async move {
            let units = u32::try_from(units).unwrap_or(u32::MAX);
            bytes.acquire_many_owned(units).await.ok()
        }
    }
}

/// A handle on an engine's runtime and client, for threads that are not the planner's.
#[derive(Clone)]
pub struct Link {
    pub runtime: tokio::runtime::Handle,
    /// The array's stores' clients, numbered as its stores.
    pub stores: Vec<Arc<dyn ObjectStore>>,
    pub requests: Arc<Semaphore>,
    pub part_bytes: u64,
}

impl Drop for Net {
    /// Cancels the requests still open and joins the runtime's threads.
    fn drop(&mut self) {
        self.requests.close();
        self.bytes.close();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(STOP_WAIT);
        }
    }
}

/// Runs `future` on a runtime made for it on the calling thread, gone when this returns:
/// opening an array reads its metadata this way and leaves no thread behind.
///
/// # Errors
/// [`Error::Stopped`] when the runtime cannot start.
pub fn on_this_thread<F: Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Stopped(format!("starting a network runtime: {e}")))?;
    Ok(runtime.block_on(future))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(max_bytes_in_flight: usize) -> Net {
        let options = [
            (
                "max_bytes_in_flight".to_string(),
                max_bytes_in_flight.to_string(),
            ),
            ("max_requests".to_string(), "3".to_string()),
        ];
        let remote = RemoteStore::parse("http://127.0.0.1:9/a.zarr", &options).unwrap();
        Net::start(&remote.settings).unwrap()
    }

    #[test]
    fn bytes_in_flight_are_bounded_in_whole_units_and_freed_by_their_permits() {
        let net = net(8 * BYTE_UNIT);
        assert_eq!(net.requests.available_permits(), 3);
        let first = net.block_on(net.bytes_permit(5 * BYTE_UNIT)).unwrap();
        // 1 byte takes a unit; 3 units are left, so 4 units must wait.
        let second = net.block_on(net.bytes_permit(1)).unwrap();
        assert_eq!(net.bytes.available_permits(), 2);
        let waiting = net.bytes_permit(4 * BYTE_UNIT);
        let late =
            net.block_on(async { tokio::time::timeout(Duration::from_millis(20), waiting).await });
        assert!(late.is_err(), "4 units were given with 2 free");
        drop((first, second));
        assert_eq!(net.bytes.available_permits(), 8);
        // A request larger than the bound waits for all of it, not forever.
        let whole = net.block_on(net.bytes_permit(100 * BYTE_UNIT)).unwrap();
        assert_eq!(whole.num_permits(), 8);
    }

    #[test]
    fn a_stopped_net_gives_no_more_permits() {
        let net = net(BYTE_UNIT);
        let pending = net.bytes_permit(1);
        let bytes = Arc::clone(&net.bytes);
        drop(net);
        assert!(bytes.is_closed());
        assert!(on_this_thread(pending).unwrap().is_none());
        assert_eq!(on_this_thread(async { 6 * 7 }).unwrap(), 42);
    }
}
