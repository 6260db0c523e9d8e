//! [`Writer`]: a transfer's writes into its [`Disk`], beside the transfer.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::super::FilesError;
use super::{CHECKPOINT_EVERY, Checked, Disk};
use crate::GroupRef;

/// What one write job gives back: the disk, when it last checkpointed, and how it went.
type Step = (Box<Disk>, Instant, Result<(), FilesError>);

/// A transfer's writes: one batch at a time as a short job on the blocking pool, while
/// the driver goes on receiving and verifying the next. Short jobs, not a thread for the
/// transfer's life: a runtime on a paused clock (the simulator's) moves its clock only
/// while no blocking job runs, so a long-lived one froze every timer there.
pub(in crate::service) struct Writer {
    idle: Option<(Box<Disk>, Instant)>,
    busy: Option<tokio::task::JoinHandle<Step>>,
    /// The first write that failed; nothing more is written after it.
    failed: Option<FilesError>,
    checkpoint_every: usize,
    /// One of the service's writers, held until the last checkpoint is done (the
    /// service's shutdown waits for them all).
    permit: Option<OwnedSemaphorePermit>,
}

/// The writer stopped (a write failed): [`Writer::finish`] says why.
pub(in crate::service) struct Stopped;

impl Writer {
    /// Writes what it is given into `disk`, with a checkpoint every `checkpoint_every`
    /// groups or [`CHECKPOINT_EVERY`], whichever comes first; it holds one of `writers`
    /// until its last checkpoint is done.
    pub(in crate::service) async fn start(
        disk: Disk,
        checkpoint_every: usize,
        writers: Arc<Semaphore>,
    ) -> Result<Self, FilesError> {
        let permit = writers
            .acquire_owned()
            .await
            .map_err(|_| FilesError::Busy("shutting down".into()))?;
        Ok(Self {
            idle: Some((Box::new(disk), Instant::now())),
            busy: None,
            failed: None,
            checkpoint_every,
            permit: Some(permit),
        })
    }

    /// Waits for the job under way, if any, and keeps what it gave back.
    async fn settle(&mut self) {
        let Some(job) = self.busy.take() else {
            return;
        };
        match job.await {
            Ok((disk, at, done)) => {
                self.idle = Some((disk, at));
                if let Err(e) = done {
                    self.failed.get_or_insert(e);
                }
            }
            Err(e) => {
                self.failed
                    .get_or_insert(FilesError::Io(format!("the writer failed: {e}")));
            }
        }
    }

    /// Hands verified groups to be written, once the batch before them is written.
    pub(in crate::service) async fn write(
        &mut self,
        groups: Vec<(GroupRef, Checked)>,
    ) -> Result<(), Stopped> {
        self.settle().await;
        if self.failed.is_some() {
            return Err(Stopped);
        }
        let Some((mut disk, mut at)) = self.idle.take() else {
            return Err(Stopped);
        };
        let every = self.checkpoint_every;
        self.busy = Some(tokio::task::spawn_blocking(move || {
            let mut step = || -> Result<(), FilesError> {
                disk.write(&groups)?;
                // Syncing is what costs: a checkpoint every so many groups or so often,
                // not per group.
                if disk.unsynced.len() >= every || at.elapsed() >= CHECKPOINT_EVERY {
                    disk.checkpoint()?;
                    at = Instant::now();
                }
                Ok(())
            };
            let done = step();
            (disk, at, done)
        }));
        Ok(())
    }

    /// Waits for the writes, checkpoints what was written and verified (after a failure
    /// too, so a resume keeps it), and gives the first error met.
    pub(in crate::service) async fn finish(mut self) -> Result<(), FilesError> {
        self.settle().await;
        let failed = self.failed.take();
        let synced = match self.idle.take() {
            Some((mut disk, _)) => tokio::task::spawn_blocking(move || disk.checkpoint())
                .await
                .map_err(|e| FilesError::Io(format!("the writer failed: {e}")))
                .and_then(|r| r),
            None => Ok(()),
        };
        drop(self.permit.take());
        match failed {
            Some(e) => Err(e),
            None => synced,
        }
    }
}

impl Drop for Writer {
    /// A transfer ended without [`Writer::finish`] (its task was aborted): the last
    /// checkpoint still runs, holding the permit, so a resume keeps what was written.
    fn drop(&mut self) {
        let (busy, idle, permit) = (self.busy.take(), self.idle.take(), self.permit.take());
        if busy.is_none() && idle.is_none() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let _permit = permit;
            let disk = match busy {
                Some(job) => job.await.ok().map(|(disk, _, _)| disk),
                None => idle.map(|(disk, _)| disk),
            };
            if let Some(mut disk) = disk {
                let synced = tokio::task::spawn_blocking(move || disk.checkpoint()).await;
                if let Ok(Err(e)) = synced {
                    tracing::warn!("cannot checkpoint an ended transfer: {e}");
                }
            }
        });
    }
}
