//! Per-user fan-out of task status changes to every signed-in socket of that user.
//!
//! Delivery never waits: each socket has a bounded outbound queue, and a socket whose queue is
//! full is told to close (with a reason) rather than silently skipped or allowed to block the
//! others.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::pools::task::Task;

/// A frame on a socket's outbound queue. Transport-neutral: the socket's writer turns it into
/// a WebSocket message.
#[derive(Debug)]
pub enum Frame {
    Text(String),
    Close(u16, String),
    /// A keep-alive probe (status sockets).
    Ping,
}

/// How a subscriber wants task events rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFormat {
    /// `{"namespace":"events","name":"task","id":"","args":<task>}` on the RPC socket.
    Rpc,
    /// `{"status","id","kind",...}` on the v2 status socket.
    V2Status,
}

impl EventFormat {
    pub fn render(self, task: &Task) -> String {
        match self {
            EventFormat::Rpc => {
                crate::ws::envelope::event("task", &serde_json::to_value(task).unwrap_or_default())
            }
            EventFormat::V2Status => {
                let mut v = serde_json::json!({
                    "status": task.status,
                    "id": task.id,
                    "kind": task.kind,
                    "pool_id": task.pool_id,
                });
                if let Some(p) = task.progress {
                    v["progress"] = p.into();
                }
                v.to_string()
            }
        }
    }
}

/// One socket's registration.
pub struct Subscriber {
    pub conn_id: u64,
    pub format: EventFormat,
    pub tx: mpsc::Sender<Frame>,
    /// Turned off by `events/unsubscribe`.
    pub enabled: Arc<AtomicBool>,
    /// Cancelled to make the socket close itself because it fell behind.
    pub kick: CancellationToken,
    /// Whether the socket's credentials still hold (token not expired or revoked); events
    /// stop the moment they do not, even before the socket's next message.
    pub alive: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Subscriber {
    /// Queues a frame without waiting; a full queue kicks the socket.
    pub fn push(&self, text: String) {
        match self.tx.try_send(Frame::Text(text)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    conn_id = self.conn_id,
                    "outbound queue full: closing slow socket"
                );
                self.kick.cancel();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

#[derive(Default)]
pub struct EventHub {
    subscribers: DashMap<Uuid, Vec<Subscriber>>,
}

impl EventHub {
    /// Registers a socket and first queues the current state of the user's active tasks
    /// (`catch_up`). Both happen under the user's entry lock, which `publish` also takes, so a
    /// change racing with the sign-in is never delivered before an older state.
    pub fn subscribe(&self, user: Uuid, sub: Subscriber, catch_up: impl FnOnce() -> Vec<Task>) {
        let mut subs = self.subscribers.entry(user).or_default();
        if sub.enabled.load(Ordering::Relaxed) {
            for task in catch_up() {
                sub.push(sub.format.render(&task));
            }
        }
        subs.push(sub);
    }

    pub fn unsubscribe(&self, user: Uuid, conn_id: u64) {
        if let dashmap::Entry::Occupied(mut e) = self.subscribers.entry(user) {
            e.get_mut().retain(|s| s.conn_id != conn_id);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    /// Sends a task's new state to every enabled socket of its user.
    /// Never waits: queueing is `try_send`, so holding the entry's read lock here is cheap.
    pub fn publish(&self, task: &Task) {
        let Some(subs) = self.subscribers.get(&task.user_id) else {
            return;
        };
        let mut rendered: [Option<String>; 2] = [None, None];
        for sub in subs
            .iter()
            .filter(|s| s.enabled.load(Ordering::Relaxed) && (s.alive)())
        {
            let slot = &mut rendered[sub.format as usize];
            let text = slot.get_or_insert_with(|| sub.format.render(task)).clone();
            sub.push(text);
        }
    }

    /// Signed-in sockets, for metrics and admin views.
    pub fn socket_count(&self) -> usize {
        self.subscribers.iter().map(|e| e.len()).sum()
    }
}
