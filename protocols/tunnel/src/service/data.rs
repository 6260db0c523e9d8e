//! The data thread: a single-threaded runtime of its own that watches the readiness of
//! the datagram socket and the TUN devices, and runs the tasks that read them.
//!
//! Why: on the node's shared runtime, a readable socket woke whichever worker held the
//! IO driver, which then often handed the task to the other worker. Each hop of a packet
//! could cost a cross-CPU wake-up, and on this 2-vCPU machine one of those takes 300 to
//! 370 µs, more than the rest of a round trip. Here the thread that the kernel wakes for
//! a packet is the one that seals or opens it and passes it on, as in boringtun.
//!
//! Tasks on the node's runtime (the stream path, the probes) still use the same socket
//! and devices: their readiness is then reported across runtimes, which tokio supports.

use std::future::Future;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Started on first use, stopped when dropped (its tasks are cancelled then).
#[derive(Default)]
pub(super) struct DataThread {
    running: Option<Running>,
}

struct Running {
    handle: Handle,
    /// Dropping it ends the thread's `block_on`; the runtime is dropped on that thread.
    _stop: oneshot::Sender<()>,
}

impl DataThread {
    /// The data thread's runtime, started now if it is not running. Where a thread cannot
    /// be started, the current runtime (the node's): slower, never wrong.
    pub(super) fn handle(&mut self) -> Handle {
        if self.running.is_none() {
            match start() {
                Ok(r) => self.running = Some(r),
                Err(e) => {
                    tracing::warn!("tunnel: no data thread, packets run on the node's: {e}");
                    return Handle::current();
                }
            }
        }
        self.running
            .as_ref()
            .map_or_else(Handle::current, |r| r.handle.clone())
    }
}

fn start() -> std::io::Result<Running> {
    let runtime = Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("tunnel-data".into())
        .spawn(move || {
            // Either a stop or the sender dropped ends it.
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })?;
    Ok(Running {
        handle,
        _stop: stop,
    })
}

/// Spawns `task` on `handle` in the current span.
pub(super) fn spawn<F>(handle: &Handle, task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle.spawn(tracing::Instrument::in_current_span(task))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::UdpSocket;

    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_data_thread_and_are_cancelled_when_it_stops() {
        let mut data = DataThread::default();
        let io = data.handle();
        let on = spawn(&io, async {
            std::thread::current().name().map(str::to_owned)
        });
        assert_eq!(on.await.unwrap().as_deref(), Some("tunnel-data"));
        // Started once: a second call gives the same runtime.
        assert_eq!(data.handle().id(), io.id());

        let stuck = spawn(&io, std::future::pending::<()>());
        drop(data);
        let ended = tokio::time::timeout(Duration::from_secs(10), stuck)
            .await
            .expect("the data thread's task ends when it stops");
        assert!(ended.unwrap_err().is_cancelled());
    }

    #[tokio::test]
    async fn a_socket_the_data_thread_watches_works_from_the_nodes_runtime_too() {
        let mut data = DataThread::default();
        let io = data.handle();
        let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        std_socket.set_nonblocking(true).unwrap();
        let socket = {
            let _io = io.enter();
            std::sync::Arc::new(UdpSocket::from_std(std_socket).unwrap())
        };
        let addr = socket.local_addr().unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();

        // Received on the data thread.
        let on_data = {
            let socket = socket.clone();
            spawn(&io, async move {
                let mut buf = [0u8; 16];
                let (n, from) = socket.recv_from(&mut buf).await.unwrap();
                (buf[..n].to_vec(), from)
            })
        };
        peer.send_to(b"one", addr).await.unwrap();
        let (got, from) = tokio::time::timeout(Duration::from_secs(10), on_data)
            .await
            .expect("received on the data thread")
            .unwrap();
        assert_eq!(got, b"one");

        // Sent and received from this (the node's) runtime: readiness crosses runtimes.
        socket.send_to(b"two", from).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"two");
        peer.send_to(b"three", addr).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
            .await
            .expect("received on the node's runtime")
            .unwrap();
        assert_eq!(&buf[..n], b"three");
    }
}
