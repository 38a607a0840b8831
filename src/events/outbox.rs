//! A socket's outbound queue, and the registry of open sockets that shutdown kicks: what the
//! event hub pushes to, and what wakes a socket's task (`ws::connection`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::task::AtomicWaker;
use tokio_util::sync::CancellationToken;

use super::{Frame, Subscriptions};

/// A socket's outbound queue: bounded, never blocks a sender, wakes its one reader (the
/// socket's task) through an `AtomicWaker` and a flag, and costs nothing while empty. (A
/// tokio `Notify` took its mutex on every poll of the socket's loop, and its waiter lived in
/// every idle socket's future.) (A tokio mpsc channel reserves a 32-slot block up front: about
/// 1.3 KiB of every idle socket, measured in bench/.)
///
/// It also carries the socket's kick — a socket that fell behind (its queue full) is told to
/// close through the same wake-up as its events, rather than through a cancellation token of
/// its own (a child of the shutdown token: 123 bytes of every idle socket) — and which events
/// the socket takes (in the queue's padding rather than an allocation of their own).
pub struct Outbox {
    queue: std::sync::Mutex<VecDeque<Frame>>,
    /// The socket's task, while it waits.
    waker: AtomicWaker,
    /// A wake-up not yet taken by [`Outbox::poll_ready`].
    woken: AtomicBool,
    capacity: u32,
    kicked: AtomicBool,
    subscriptions: Subscriptions,
}

impl Outbox {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Outbox {
            queue: std::sync::Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            woken: AtomicBool::new(false),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            kicked: AtomicBool::new(false),
            subscriptions: true.into(),
        })
    }

    /// Which events the socket takes (all, until `events/unsubscribe`).
    pub fn subscriptions(&self) -> &Subscriptions {
        &self.subscriptions
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Frame>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame and wakes the socket's task; gives the frame back when the queue is full.
    pub fn push(&self, frame: Frame) -> Result<(), Frame> {
        {
            let mut queue = self.lock();
            if queue.len() >= self.capacity as usize {
                return Err(frame);
            }
            queue.push_back(frame);
        }
        self.wake();
        Ok(())
    }

    /// The next queued frame, if any.
    pub fn pop(&self) -> Option<Frame> {
        let mut queue = self.lock();
        let frame = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 64 {
            // A burst is over: give its memory back.
            queue.shrink_to_fit();
        }
        frame
    }

    /// Forgets the events waiting to be written (the socket signed out, or in as someone
    /// else: what was queued for the old sign-in is not for this one). Close and ping frames
    /// stay.
    pub fn drop_events(&self) {
        self.lock().retain(|f| !matches!(f, Frame::Text(_)));
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready when a frame was pushed (or [`Outbox::rearm`] or [`Outbox::kick`] called) since
    /// the last time it was; several wake-ups before then are one. For the socket's own task
    /// only (one waker is kept).
    pub fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.poll_until(cx, || self.woken.swap(false, Ordering::AcqRel))
    }

    /// Ready once `done` says so, else the socket's task is woken at the next wake-up.
    fn poll_until(
        &self,
        cx: &mut std::task::Context<'_>,
        done: impl Fn() -> bool,
    ) -> std::task::Poll<()> {
        if done() {
            return std::task::Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A wake-up between the check and the registration found no waker: look again.
        if done() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// [`Outbox::poll_ready`] as a future.
    pub fn ready(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_ready(cx))
    }

    /// Makes the next `ready` complete at once (the writer stopped with frames still queued).
    pub fn rearm(&self) {
        self.wake();
    }

    /// Tells the socket to close as too slow (4002): its loop sees it at its next wake-up,
    /// which this causes.
    pub fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        self.wake();
    }

    /// Whether the socket was kicked.
    pub fn kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    /// Completes once the socket is kicked; other wake-ups are left for
    /// [`Outbox::poll_ready`]. For the socket's own task.
    pub fn stopped(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_until(cx, || self.kicked()))
    }
}

/// Every open socket's outbound queue, by connection id: how shutdown reaches each socket (it
/// is kicked, and closes with 1001) without every socket's task waiting on the shutdown token
/// itself — a waiter of 72 bytes in each idle socket's future, and a lock taken on each of its
/// wake-ups.
#[derive(Default)]
pub struct OpenSockets(std::sync::Mutex<HashMap<u64, std::sync::Weak<Outbox>>>);

impl OpenSockets {
    /// A new socket: `shutdown` stops it too, also when it began while the socket opened.
    pub fn open(&self, conn_id: u64, outbox: &Arc<Outbox>, shutdown: &CancellationToken) {
        self.lock().insert(conn_id, Arc::downgrade(outbox));
        // After the insertion: either the sweep sees this socket or this sees the shutdown.
        if shutdown.is_cancelled() {
            outbox.kick();
        }
    }

    pub fn close(&self, conn_id: u64) {
        self.lock().remove(&conn_id);
    }

    /// Kicks every open socket: called once `shutdown` is cancelled.
    pub fn stop_all(&self) {
        for outbox in self.lock().values().filter_map(std::sync::Weak::upgrade) {
            outbox.kick();
        }
    }

    /// Kicks every socket once `shutdown` is cancelled (a task of its own).
    pub fn stop_at(self: &Arc<Self>, shutdown: &CancellationToken) {
        let (sockets, shutdown) = (self.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            sockets.stop_all();
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, std::sync::Weak<Outbox>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_outbox_is_bounded_ordered_and_wakes_its_reader() {
        let outbox = Outbox::new(2);
        let ready = outbox.ready();
        assert!(outbox.push(Frame::Text("a".into())).is_ok());
        assert!(outbox.push(Frame::Text("b".into())).is_ok());
        assert!(
            outbox.push(Frame::Text("c".into())).is_err(),
            "full at capacity"
        );
        tokio::time::timeout(std::time::Duration::from_secs(1), ready)
            .await
            .expect("a push wakes the reader");
        let texts: Vec<String> = std::iter::from_fn(|| outbox.pop())
            .map(|f| match f {
                Frame::Text(t) => String::from_utf8(t.into_bytes().to_vec()).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(texts, ["a", "b"]);
        // Events queued for a sign-in that ended are dropped; a close stays.
        outbox.push(Frame::Text("old".into())).unwrap();
        outbox.push(Frame::Close(1000, "bye".into())).unwrap();
        outbox.drop_events();
        assert!(matches!(outbox.pop(), Some(Frame::Close(1000, _))));
        assert!(outbox.pop().is_none());
        // A push before the reader waits is not lost either.
        outbox.push(Frame::Ping).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.ready())
            .await
            .expect("the wake-up was kept");
    }

    #[tokio::test]
    async fn a_kick_stops_a_socket_and_an_event_does_not() {
        let outbox = Outbox::new(4);
        outbox.push(Frame::Ping).unwrap();
        let short = std::time::Duration::from_millis(50);
        assert!(
            tokio::time::timeout(short, outbox.stopped()).await.is_err(),
            "an event is not a stop"
        );
        outbox.ready().await;
        outbox.kick();
        tokio::time::timeout(short, outbox.stopped())
            .await
            .expect("a kick stops");
        assert!(outbox.kicked());
    }

    #[tokio::test]
    async fn shutdown_kicks_every_open_socket_also_one_opened_after_it() {
        let (sockets, shutdown) = (Arc::new(OpenSockets::default()), CancellationToken::new());
        sockets.stop_at(&shutdown);
        let (open, closed) = (Outbox::new(4), Outbox::new(4));
        sockets.open(1, &open, &shutdown);
        sockets.open(2, &closed, &shutdown);
        sockets.close(2);
        shutdown.cancel();
        let second = std::time::Duration::from_secs(1);
        tokio::time::timeout(second, open.stopped())
            .await
            .expect("an open socket is kicked at shutdown");
        assert!(!closed.kicked(), "a closed socket is forgotten");
        let late = Outbox::new(4);
        sockets.open(3, &late, &shutdown);
        assert!(
            late.kicked(),
            "a socket opened after shutdown is kicked at once"
        );
    }
}
