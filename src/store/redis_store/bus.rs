//! The event bus on Redis: the publisher (one task, revocations first), the reader of the
//! connection's pushes (events, lost connections, sharded channels a master dropped), and the
//! subscriptions that carry out the per-user watches ([`super::watches`]).

use super::*;
use crate::store::routing::Routing;

/// Events waiting to be published, at most; past it they are shed.
pub const OUTBOX_CAPACITY: usize = 16_384;

/// Revocations waiting to be published, at most (they are rare: sign-outs, admin revokes).
pub const REVOCATIONS_CAPACITY: usize = 4_096;

/// Carries out the router's subscription changes on the store's connection.
pub(super) struct Subscriptions {
    pub(super) con: Con,
    pub(super) keys: Keys,
    /// Buckets whose slot moved to another master (a failover, a reshard) since their last
    /// subscription: the client's slot map may still name the old master, which — demoted to
    /// a replica — would accept a sharded subscription (and lose it when the client drops
    /// that connection), so the next subscription there first makes the client learn the
    /// slot's new owner.
    pub(super) moved: Arc<dashmap::DashSet<u16>>,
}

impl Subscriptions {
    pub(super) async fn change(&self, subscribe: bool, users: &[Uuid]) -> redis::RedisResult<()> {
        match &self.con {
            Con::One(con) => {
                let channels: Vec<String> = users.iter().map(|u| self.keys.channel(*u)).collect();
                let mut con = con.get();
                if subscribe {
                    con.subscribe(&channels).await
                } else {
                    con.unsubscribe(&channels).await
                }
            }
            // One command per slot (a bucket's channels share one): a sharded subscription
            // cannot span slots.
            Con::Cluster(con) => {
                let mut by_bucket: std::collections::HashMap<u16, Vec<String>> =
                    std::collections::HashMap::new();
                for user in users {
                    by_bucket
                        .entry(user_bucket(*user))
                        .or_default()
                        .push(self.keys.channel(*user));
                }
                let changes = by_bucket.into_iter().map(|(bucket, channels)| {
                    let mut con = con.get();
                    async move {
                        if subscribe {
                            if self.moved.remove(&bucket).is_some() {
                                // A read of the slot: the old master answers MOVED, and the
                                // client refreshes its slot map before the subscription.
                                if let Err(e) = con.exists::<_, bool>(&channels[0]).await {
                                    self.moved.insert(bucket);
                                    return Err(e);
                                }
                            }
                            con.ssubscribe(&channels).await
                        } else {
                            con.sunsubscribe(&channels).await
                        }
                    }
                });
                futures_util::future::join_all(changes)
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }
}

impl watches::Subscriber for Subscriptions {
    async fn apply(&self, subscribe: bool, users: &[Uuid]) -> bool {
        match self.change(subscribe, users).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, users = users.len(), subscribe, "a change of the bus subscriptions failed; retrying");
                false
            }
        }
    }
}

/// Subscribes the connection to the global channel.
pub(super) async fn subscribe_global(con: &mut Con, channel: &str) -> redis::RedisResult<()> {
    match con {
        Con::One(con) => con.get().subscribe(channel).await,
        Con::Cluster(con) => con.get().subscribe(channel).await,
    }
}

impl Bus for RedisStore {
    fn is_shared(&self) -> bool {
        true
    }

    fn publish(&self, event: BusEvent) {
        let lane = match event {
            BusEvent::SessionRevoked { .. }
            | BusEvent::SessionsEnded { .. }
            | BusEvent::JwtRevoked { .. }
            | BusEvent::JwtUserRevoked { .. } => &self.revocations,
            _ => &self.outbox,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = lane.try_send(event) {
            let shed = self
                .router
                .shed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            // 1, 2, 4, 8…: the log says it happens without flooding while it does.
            if shed.is_power_of_two() {
                tracing::warn!(
                    shed,
                    "Redis is not keeping up with the events to publish: events shed (clients can ask for a task's state)"
                );
            }
        }
    }

    fn announced_writes_origin(&self) -> Option<u64> {
        Some(self.origin)
    }

    fn router(&self) -> Option<Arc<dyn Routing>> {
        Some(self.router.clone() as Arc<dyn Routing>)
    }
}

impl RedisStore {
    /// The announcement a write of `user`'s records (and of task `task`) publishes with it.
    pub(super) fn announcement(&self, user: Uuid, task: Option<Uuid>) -> String {
        serde_json::to_string(&BusEvent::Invalidate {
            origin: self.origin,
            user_id: user,
            task_id: task,
        })
        .expect("events serialize")
    }
}

/// Reads the connection's pushes for as long as the application listens: events go to the
/// sink, a lost connection and the global channel's re-subscription as the bus's gap
/// ([`BusEvent::BusGap`]), and a sharded channel a master dropped back to the watches.
pub(super) struct Reader {
    pub(super) watches: Arc<watches::Watches>,
    /// The global channel: its subscription stands for the connection's.
    pub(super) channel: String,
    pub(super) con: Con,
    pub(super) prefix: String,
    /// Shared with [`Subscriptions`].
    pub(super) moved: Arc<dashmap::DashSet<u16>>,
    pub(super) sink: mpsc::UnboundedSender<BusEvent>,
}

impl Reader {
    pub(super) async fn run(self, mut push_rx: mpsc::UnboundedReceiver<redis::PushInfo>) {
        while let Some(push) = push_rx.recv().await {
            // A gap in the subscription: what is published until it is back is missed.
            // (The global channel's subscription stands for the connection's; each
            // user's is confirmed by the watches.)
            let gap = match push.kind {
                PushKind::Message | PushKind::SMessage => None,
                PushKind::Disconnection => {
                    self.disconnected();
                    Some(false)
                }
                PushKind::SUnsubscribe => {
                    self.unsubscribed(&push);
                    continue;
                }
                PushKind::Subscribe if self.is_global(&push) => Some(true),
                _ => continue,
            };
            let delivered = match gap {
                Some(resumed) => self.sink.send(BusEvent::BusGap { resumed }).is_ok(),
                None => self.deliver(push),
            };
            if !delivered {
                return;
            }
        }
    }

    fn disconnected(&self) {
        self.watches.disconnected();
        // A cluster reports each node's connection: the one that dropped may not carry the
        // global channel, whose re-subscription tells when the gap is over — so subscribe it
        // again (a no-op where it stands).
        if let Con::Cluster(_) = self.con {
            let (mut con, channel) = (self.con.clone(), self.channel.clone());
            tokio::spawn(async move {
                while subscribe_global(&mut con, &channel).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
        }
    }

    /// On a cluster, a master that loses a slot (failover, reshard) unsubscribes its clients
    /// from the slot's sharded channels: subscribe again where the slot is now (our own
    /// unsubscriptions end watches that are gone already).
    fn unsubscribed(&self, push: &redis::PushInfo) {
        let Some(user) = push
            .data
            .first()
            .and_then(|c| redis::from_redis_value_ref::<String>(c).ok())
            .and_then(|c| user_of_channel(&self.prefix, &c))
        else {
            return;
        };
        self.moved.insert(user_bucket(user));
        self.watches.lost(user);
        // The client learns the new owner from a MOVED, but refreshes its slot map in the
        // background: the subscription may still follow the old map to the demoted master,
        // which takes it and loses it when the client drops that connection. So once the
        // topology has settled, subscribe once more (a no-op for a user no longer watched;
        // the catch-up covers what the gap missed).
        let (watches, moved) = (self.watches.clone(), self.moved.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            moved.insert(user_bucket(user));
            watches.lost(user);
        });
    }

    /// Whether a subscription confirmed is the global channel's.
    fn is_global(&self, push: &redis::PushInfo) -> bool {
        push.data.first().is_some_and(|c| {
            redis::from_redis_value_ref::<String>(c).is_ok_and(|c| c == self.channel)
        })
    }

    /// Passes a message's event on; false once nobody listens any more.
    fn deliver(&self, push: redis::PushInfo) -> bool {
        self.watches
            .received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(payload) = push.data.into_iter().nth(1) else {
            return true;
        };
        let Ok(text) = redis::from_redis_value::<String>(payload) else {
            return true;
        };
        match serde_json::from_str::<BusEvent>(&text) {
            Ok(event) => self.sink.send(event).is_ok(),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable event on the bus");
                true
            }
        }
    }
}

/// Publishes the events queued by [`Bus::publish`], one at a time and in order, revocations
/// first; ends when the store is gone.
pub(super) async fn publish_in_order(
    mut con: Con,
    keys: Keys,
    mut revocations: mpsc::Receiver<BusEvent>,
    mut outbox: mpsc::Receiver<BusEvent>,
) {
    loop {
        let event = tokio::select! {
            biased;
            Some(event) = revocations.recv() => event,
            Some(event) = outbox.recv() => event,
            else => break,
        };
        let text = serde_json::to_string(&event).expect("events serialize");
        let publish = match event.user() {
            Some(user) => redis::cmd(keys.publish_command())
                .arg(keys.channel(user))
                .arg(&text)
                .to_owned(),
            None => redis::cmd("PUBLISH")
                .arg(global_channel(&keys.prefix))
                .arg(&text)
                .to_owned(),
        };
        // Retry briefly across a reconnect; an event lost here is a missed push, and
        // clients can always ask for the task's state.
        for attempt in 0..3 {
            match publish.query_async::<()>(&mut con).await {
                Ok(()) => break,
                Err(e) if attempt == 2 => tracing::warn!(error = %e, "event not published"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}
