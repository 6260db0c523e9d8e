//! Serving incoming raw streams: one bounded accept loop that every service (echo, hole
//! punching, the secure gate) runs its handler in, and the echo service behind
//! `p2pnode ping`.

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};

/// Protocol of the echo service behind `p2pnode ping`: it proves that application traffic
/// flows over the current connection, whatever path it takes.
pub const ECHO_PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pnode/echo/1.0.0");

/// Size of one echo probe.
pub(crate) const ECHO_SIZE: usize = 32;

/// Serves the echo protocol: each incoming stream gets its bytes back until it closes.
/// At most `max_streams` echo streams run at once; more are refused by dropping them.
pub(crate) async fn serve_echo(incoming: libp2p_stream::IncomingStreams, max_streams: usize) {
    serve_streams(incoming, max_streams, "echo", |_, mut stream| async move {
        let mut buf = [0u8; ECHO_SIZE];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
                        break;
                    }
                }
            }
        }
    })
    .await;
}

/// Runs `handle` on each incoming stream, at most `max_streams` at once; streams beyond
/// that are refused by dropping them. Ends when the node stops accepting streams.
pub(crate) async fn serve_streams<F, Fut>(
    incoming: libp2p_stream::IncomingStreams,
    max_streams: usize,
    what: &str,
    handle: F,
) where
    F: Fn(PeerId, libp2p::Stream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    serve_streams_until(incoming, max_streams, what, handle, std::future::pending()).await;
}

/// [`serve_streams`] that also ends when `stop` completes; either way it ends only once
/// every stream's task has ended.
pub(crate) async fn serve_streams_until<F, Fut>(
    mut incoming: libp2p_stream::IncomingStreams,
    max_streams: usize,
    what: &str,
    handle: F,
    stop: impl std::future::Future<Output = ()>,
) where
    F: Fn(PeerId, libp2p::Stream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::StreamExt;
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(max_streams));
    let mut tasks = tokio::task::JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let next = tokio::select! {
            next = incoming.next() => next,
            () = &mut stop => None,
        };
        let Some((peer, stream)) = next else {
            break;
        };
        // Reap finished tasks so the set stays bounded by the semaphore.
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many {what} streams; refusing one");
            continue;
        };
        let work = handle(peer, stream);
        tasks.spawn(tracing::Instrument::in_current_span(async move {
            let _permit = permit;
            work.await;
        }));
    }
    tasks.shutdown().await;
}

/// Tasks that serve incoming streams for the node's whole life (the secure gate's accept
/// loops), kept so that stopping the node ends them for certain, with every stream task
/// they run: an aborted task is only dropped at the runtime's next look at it, and until
/// then it holds what it borrowed (the trust store, and with it the database file). Each
/// task's future is owned by the runtime, not by this list, so holding the list creates no
/// reference cycle.
#[derive(Debug)]
pub(crate) struct ServeTasks {
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Default for ServeTasks {
    fn default() -> Self {
        Self {
            tasks: std::sync::Mutex::default(),
            stop: tokio::sync::watch::channel(false).0,
        }
    }
}

impl ServeTasks {
    /// Completes once [`ServeTasks::shutdown`] starts: a task's signal to end.
    pub(crate) fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    }

    /// Spawns `task` in the current span and keeps its handle.
    pub(crate) fn spawn(
        &self,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::AbortHandle {
        let handle = tokio::spawn(tracing::Instrument::in_current_span(task));
        let abort = handle.abort_handle();
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(handle);
        }
        abort
    }

    /// Tells every task to end and waits until each has.
    pub(crate) async fn shutdown(&self) {
        self.stop.send_replace(true);
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for task in tasks {
            let _ = task.await;
        }
    }
}
