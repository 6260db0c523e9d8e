//! The data thread: one plain thread, outside any async runtime, that waits with epoll on
//! the datagram socket and the TUN devices and reads whichever is ready.
//!
//! Why a thread of its own: on the node's shared runtime, a readable socket woke
//! whichever worker held the IO driver, which then often handed the task to the other
//! worker. Each hop of a packet could cost a cross-CPU wake-up, and on this 2-vCPU
//! machine one of those takes 300 to 370 µs, more than the rest of a round trip.
//!
//! Why no runtime on it: an idle round trip is mostly wake-ups, and what runs between a
//! wake-up and the read counts with cold caches. Measured with the kernel's syscall
//! tracepoints (100 echoes at 20 ms): a current-thread tokio runtime took a median 23 µs
//! from `epoll_wait`'s return to the TUN read where boringtun's loop took 5 µs. Here the
//! thread goes from `epoll_wait` straight to the reader's `read`, as boringtun does.
//!
//! A reader that wrote one packet into a TUN device hands the thread to that device's
//! reader at once, before the thread waits again: the kernel often answers a packet inside
//! the write (an echo reply, a TCP acknowledgement), so the answer is read straight away
//! instead of after an empty read of the socket and a wait that returns at once (see
//! [`Done::Wrote`]). The wait is level-triggered, so what the first reader left unread
//! is reported at the next one.
//!
//! Only this thread waits on these descriptors. Others (the stream path writing into a
//! device, the probes) use them with non-blocking calls and never register them with a
//! runtime: a registration would wake that runtime for every packet's write space.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::oneshot;

/// What the data thread runs: a descriptor to wait on, and what to do when it is
/// readable.
pub(super) trait Reader: Send {
    /// The descriptor to wait on (the same for the reader's whole life).
    fn fd(&self) -> BorrowedFd<'_>;
    /// Reads what is waiting, at most a bounded burst so that no reader starves another
    /// (the wait is level-triggered: what is left is reported again). `Err` ends the
    /// reader, with why.
    fn on_readable(&mut self) -> Result<Done, String>;
}

/// What a reader did at a readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Done {
    /// It read what there was, or a bounded burst of it.
    Read,
    /// It wrote one packet into the device with this descriptor and stopped reading: that
    /// device's reader runs next, then this reader again (to finish what it put off; it
    /// does not answer `Wrote` then, and what it left unread the next wait reports).
    Wrote(RawFd),
}

/// The waker's key in the epoll set; readers' keys start above it.
const WAKER: u64 = 0;
/// Most events taken from one wait.
const EVENTS: usize = 64;

enum Command {
    Add(u64, Box<dyn Reader>),
    /// Drop this reader; the sender hears when it is gone.
    Remove(u64, Option<oneshot::Sender<()>>),
    Stop,
}

/// The way to the thread: commands, and the eventfd that wakes it to read them.
struct Control {
    commands: mpsc::Sender<Command>,
    waker: EventFd,
}

impl Control {
    /// Sends `c` and wakes the thread; `false` when the thread has ended.
    fn send(&self, c: Command) -> bool {
        // The channel is unbounded, but each command stands for a reader added or
        // removed by the service (a network going up or down), not for a packet.
        if self.commands.send(c).is_err() {
            return false;
        }
        if let Err(e) = self.waker.write(1) {
            tracing::warn!("tunnel: cannot wake the data thread: {e}");
        }
        true
    }
}

/// Started on first use, stopped when dropped (its readers are dropped then).
#[derive(Default)]
pub(super) struct DataThread {
    running: Option<Spawner>,
}

impl DataThread {
    /// Runs `reader` on the data thread (started now if it is not running) until the
    /// returned handle is stopped or dropped, or the reader ends.
    pub(super) fn add(&mut self, reader: Box<dyn Reader>) -> std::io::Result<ReaderHandle> {
        let added = self.spawner()?.add(reader);
        if added.is_err() {
            self.running = None;
        }
        added
    }

    /// A way to add readers from elsewhere (a datagram link's task), starting the thread
    /// if it is not running.
    pub(super) fn spawner(&mut self) -> std::io::Result<Spawner> {
        if let Some(s) = &self.running {
            return Ok(s.clone());
        }
        let s = Spawner {
            control: start()?,
            next: Arc::new(AtomicU64::new(WAKER + 1)),
        };
        self.running = Some(s.clone());
        Ok(s)
    }
}

impl Drop for DataThread {
    fn drop(&mut self) {
        if let Some(s) = self.running.take() {
            s.control.send(Command::Stop);
        }
    }
}

/// Adds readers to a running data thread; once the thread has ended, every add fails.
#[derive(Clone)]
pub(super) struct Spawner {
    control: Arc<Control>,
    next: Arc<AtomicU64>,
}

impl Spawner {
    /// Runs `reader` on the data thread until the returned handle is stopped or dropped,
    /// or the reader ends.
    pub(super) fn add(&self, reader: Box<dyn Reader>) -> std::io::Result<ReaderHandle> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if !self.control.send(Command::Add(id, reader)) {
            return Err(std::io::Error::other("the data thread has ended"));
        }
        Ok(ReaderHandle {
            id,
            control: Some(self.control.clone()),
        })
    }
}

/// A reader on the data thread; dropping it removes the reader.
pub(super) struct ReaderHandle {
    id: u64,
    control: Option<Arc<Control>>,
}

impl ReaderHandle {
    /// Removes the reader and waits until the thread has dropped it (with it, what it
    /// holds: a device is closed when this returns, if nothing else holds it).
    pub(super) async fn stop(mut self) {
        let Some(control) = self.control.take() else {
            return;
        };
        let (done, gone) = oneshot::channel();
        if control.send(Command::Remove(self.id, Some(done))) {
            // An error means the thread ended first: the reader is gone either way.
            let _ = gone.await;
        }
    }
}

impl Drop for ReaderHandle {
    fn drop(&mut self) {
        if let Some(control) = self.control.take() {
            control.send(Command::Remove(self.id, None));
        }
    }
}

fn start() -> std::io::Result<Arc<Control>> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let waker = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    epoll.add(&waker, EpollEvent::new(EpollFlags::EPOLLIN, WAKER))?;
    let (commands, inbox) = mpsc::channel();
    let control = Arc::new(Control { commands, waker });
    let on_thread = control.clone();
    std::thread::Builder::new()
        .name("tunnel-data".into())
        .spawn(move || run(&epoll, &on_thread.waker, &inbox))?;
    Ok(control)
}

/// The readers on the thread. The epoll key of each is its place in a list (and that
/// place's generation, so a key from before a removal never reaches the reader added in
/// its place), not its id: a readiness costs an index, not a hash and a table's cold
/// lines.
#[derive(Default)]
struct Readers {
    places: Vec<Place>,
    /// Free places, taken before the list grows.
    free: Vec<usize>,
    /// Each reader's place, by the id its handle knows.
    by_id: HashMap<u64, usize>,
    /// And by its descriptor, for [`Done::Wrote`].
    by_fd: BTreeMap<RawFd, usize>,
}

#[derive(Default)]
struct Place {
    generation: u32,
    /// The reader here, its handle's id and its descriptor.
    reader: Option<(u64, RawFd, Box<dyn Reader>)>,
}

impl Readers {
    /// Where `reader` goes, and its key in the epoll set.
    fn add(&mut self, id: u64, reader: Box<dyn Reader>) -> (usize, u64) {
        let at = self.free.pop().unwrap_or_else(|| {
            self.places.push(Place::default());
            self.places.len() - 1
        });
        let fd = reader.fd().as_raw_fd();
        let place = &mut self.places[at];
        place.reader = Some((id, fd, reader));
        self.by_id.insert(id, at);
        self.by_fd.insert(fd, at);
        (at, key(at, place.generation))
    }

    /// The place of epoll key `key`, if its reader is still there.
    fn place(&self, key: u64) -> Option<usize> {
        let at = usize::try_from((key & u64::from(u32::MAX)).checked_sub(1)?).ok()?;
        let place = self.places.get(at)?;
        (u64::from(place.generation) == key >> 32 && place.reader.is_some()).then_some(at)
    }

    /// The reader at place `at`.
    fn at(&mut self, at: usize) -> Option<&mut Box<dyn Reader>> {
        let (_, _, reader) = self.places.get_mut(at)?.reader.as_mut()?;
        Some(reader)
    }

    /// Takes the reader at `at` out, its place free for another.
    fn take(&mut self, at: usize) -> Option<Box<dyn Reader>> {
        let place = self.places.get_mut(at)?;
        let (id, fd, reader) = place.reader.take()?;
        place.generation = place.generation.wrapping_add(1);
        self.free.push(at);
        self.by_id.remove(&id);
        if self.by_fd.get(&fd) == Some(&at) {
            self.by_fd.remove(&fd);
        }
        Some(reader)
    }

    /// Where the reader with handle id `id` is.
    fn place_of(&self, id: u64) -> Option<usize> {
        self.by_id.get(&id).copied()
    }
}

/// The epoll key of place `at` in generation `generation` (above [`WAKER`]).
fn key(at: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | (at as u64 + 1)
}

/// The loop: wait, then read what is ready; commands between reads.
fn run(epoll: &Epoll, waker: &EventFd, inbox: &mpsc::Receiver<Command>) {
    let mut readers = Readers::default();
    let mut events = [EpollEvent::empty(); EVENTS];
    loop {
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("tunnel: the data thread cannot wait: {e}");
                return;
            }
        };
        for event in &events[..n] {
            let key = event.data();
            if key == WAKER {
                // Nothing to read means another wake-up already took the count.
                let _ = waker.read();
                if !commands(epoll, inbox, &mut readers) {
                    return;
                }
                continue;
            }
            // A reader removed earlier in this batch is simply not found.
            let Some(at) = readers.place(key) else {
                continue;
            };
            if let Some(Done::Wrote(fd)) = read(epoll, &mut readers, at) {
                // The device's reader, unless it is the same one (it never is: a device's
                // reader writes only ICMP errors into it, and says `Read`).
                if let Some(&next) = readers.by_fd.get(&fd)
                    && next != at
                {
                    read(epoll, &mut readers, next);
                }
                read(epoll, &mut readers, at);
            }
        }
    }
}

/// Runs the reader at `at`; one that fails is removed.
fn read(epoll: &Epoll, readers: &mut Readers, at: usize) -> Option<Done> {
    match readers.at(at)?.on_readable() {
        Ok(done) => Some(done),
        Err(reason) => {
            tracing::warn!("tunnel: {reason}");
            remove(epoll, readers, at);
            None
        }
    }
}

/// Carries out the waiting commands; `false` on stop (or when every handle is gone).
fn commands(epoll: &Epoll, inbox: &mpsc::Receiver<Command>, readers: &mut Readers) -> bool {
    loop {
        match inbox.try_recv() {
            Ok(Command::Add(id, reader)) => {
                let (at, key) = readers.add(id, reader);
                let event = EpollEvent::new(EpollFlags::EPOLLIN, key);
                let watched = match &readers.places[at].reader {
                    Some((_, _, r)) => epoll.add(r.fd(), event),
                    None => Ok(()),
                };
                if let Err(e) = watched {
                    tracing::warn!("tunnel: the data thread cannot watch a reader: {e}");
                    readers.take(at);
                }
            }
            Ok(Command::Remove(id, done)) => {
                if let Some(at) = readers.place_of(id) {
                    remove(epoll, readers, at);
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => return false,
            Err(mpsc::TryRecvError::Empty) => return true,
        }
    }
}

fn remove(epoll: &Epoll, readers: &mut Readers, at: usize) {
    if let Some(reader) = readers.take(at) {
        // Closed descriptors leave the set by themselves; this covers shared ones.
        let _ = epoll.delete(reader.fd());
    }
}

/// Waits until `fd` is writable or `timeout_ms` pass: the data thread's back-pressure
/// when a socket's send buffer is full. `true` when writable.
pub(super) fn wait_writable(fd: BorrowedFd<'_>, timeout_ms: u16) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    matches!(poll(&mut fds, PollTimeout::from(timeout_ms)), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::time::Duration;

    use super::*;

    /// A datagram read, and the name of the thread that read it.
    type Seen = (Vec<u8>, Option<String>);

    /// Sends each datagram it reads to the test.
    struct Echo {
        socket: UdpSocket,
        out: Sender<Seen>,
    }

    impl Reader for Echo {
        fn fd(&self) -> BorrowedFd<'_> {
            self.socket.as_fd()
        }
        fn on_readable(&mut self) -> Result<Done, String> {
            let mut buf = [0u8; 64];
            loop {
                match self.socket.recv(&mut buf) {
                    Ok(n) if &buf[..n] == b"end" => return Err("asked to end".into()),
                    Ok(n) => {
                        let name = std::thread::current().name().map(str::to_owned);
                        let _ = self.out.send((buf[..n].to_vec(), name));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Done::Read),
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }

    fn echo() -> (Echo, std::net::SocketAddr, Receiver<Seen>) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let (out, got) = channel();
        (Echo { socket, out }, addr, got)
    }

    fn next(got: &Receiver<Seen>) -> Seen {
        got.recv_timeout(Duration::from_secs(10))
            .expect("the reader ran")
    }

    #[tokio::test]
    async fn readers_run_on_the_data_thread_until_stopped() {
        let mut data = DataThread::default();
        let (a, a_addr, a_got) = echo();
        let (b, b_addr, b_got) = echo();
        let a = data.add(Box::new(a)).unwrap();
        let _b = data.add(Box::new(b)).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();

        peer.send_to(b"one", a_addr).unwrap();
        peer.send_to(b"two", b_addr).unwrap();
        assert_eq!(next(&a_got), (b"one".to_vec(), Some("tunnel-data".into())));
        assert_eq!(next(&b_got), (b"two".to_vec(), Some("tunnel-data".into())));

        // Stopped: the reader is dropped (its channel closes), the other goes on.
        tokio::time::timeout(Duration::from_secs(10), a.stop())
            .await
            .expect("stop returns once the reader is gone");
        assert!(a_got.recv_timeout(Duration::from_secs(10)).is_err());
        peer.send_to(b"three", b_addr).unwrap();
        assert_eq!(next(&b_got).0, b"three");
    }

    #[test]
    fn a_reader_that_fails_is_dropped_and_the_thread_stops_with_its_owner() {
        let mut data = DataThread::default();
        let (a, a_addr, a_got) = echo();
        let (b, b_addr, b_got) = echo();
        let _a = data.add(Box::new(a)).unwrap();
        let _b = data.add(Box::new(b)).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();

        peer.send_to(b"end", a_addr).unwrap();
        // Its channel closes once the thread has dropped it.
        assert!(a_got.recv_timeout(Duration::from_secs(10)).is_err());
        peer.send_to(b"still", b_addr).unwrap();
        assert_eq!(next(&b_got).0, b"still");

        // The owner gone, the thread drops every reader and ends.
        drop(data);
        assert!(b_got.recv_timeout(Duration::from_secs(10)).is_err());
    }

    /// A place freed and taken again gets a new key: the old key (an event from before
    /// the removal, in the same batch) finds nothing, and no id leads to a gone reader.
    #[test]
    fn a_removed_readers_key_never_reaches_the_reader_in_its_place() {
        let mut readers = Readers::default();
        let (a, _, _) = echo();
        let (b, _, _) = echo();
        let (c, _, _) = echo();
        let (at_a, key_a) = readers.add(7, Box::new(a));
        let (at_b, key_b) = readers.add(8, Box::new(b));
        assert_ne!(at_a, at_b);
        assert!(key_a != WAKER && key_b != WAKER);
        assert_eq!(readers.place(key_a), Some(at_a));

        assert!(readers.take(readers.place_of(7).unwrap()).is_some());
        assert!(readers.place(key_a).is_none());
        assert_eq!(readers.place_of(7), None);
        let (at_c, key_c) = readers.add(9, Box::new(c));
        assert_eq!(at_c, at_a, "the free place is taken first");
        assert_ne!(key_c, key_a);
        assert!(readers.place(key_a).is_none());
        assert_eq!(readers.place(key_c), Some(at_c));
        assert_eq!(readers.place(key_b), Some(at_b));
        assert!(readers.place(0).is_none() && readers.place(u64::MAX).is_none());
    }

    /// Logs each call; `socket`'s datagram `w` answers [`Done::Wrote`] with `to`'s descriptor.
    struct Logged {
        name: &'static str,
        socket: UdpSocket,
        to: Option<std::os::fd::RawFd>,
        log: Sender<&'static str>,
    }

    impl Reader for Logged {
        fn fd(&self) -> BorrowedFd<'_> {
            self.socket.as_fd()
        }
        fn on_readable(&mut self) -> Result<Done, String> {
            let _ = self.log.send(self.name);
            let mut buf = [0u8; 8];
            loop {
                match self.socket.recv(&mut buf) {
                    Ok(n) if &buf[..n] == b"w" && self.to.is_some() => {
                        return Ok(Done::Wrote(self.to.take().unwrap_or(-1)));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Done::Read),
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }

    /// A reader that wrote into a device hands the thread to that device's reader at once
    /// (which runs though nothing woke it: its socket is empty), then runs again itself.
    #[test]
    fn a_write_hands_the_thread_to_the_devices_reader_then_back() {
        use std::os::fd::AsRawFd;
        let mut data = DataThread::default();
        let (log, seen) = channel();
        let bind = || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        };
        let (device, socket) = (bind(), bind());
        let socket_addr = socket.local_addr().unwrap();
        let device_fd = device.as_raw_fd();
        let _device = data
            .add(Box::new(Logged {
                name: "device",
                socket: device,
                to: None,
                log: log.clone(),
            }))
            .unwrap();
        let _socket = data
            .add(Box::new(Logged {
                name: "socket",
                socket,
                to: Some(device_fd),
                log,
            }))
            .unwrap();
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"w", socket_addr)
            .unwrap();
        let next = || {
            seen.recv_timeout(Duration::from_secs(10))
                .expect("a reader ran")
        };
        assert_eq!([next(), next(), next()], ["socket", "device", "socket"]);
        // Nothing more: the device's socket never became readable.
        assert!(seen.recv_timeout(Duration::from_millis(200)).is_err());
    }
}
