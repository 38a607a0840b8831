//! The event bus under a Redis that cannot keep up: events are shed with a count, never queued
//! without limit, and publishing resumes once Redis answers again.

use std::time::Duration;

use crate::helpers::*;
use crate::redis_server::*;

/// The publish path is bounded: while Redis does not answer, events past the outbox's capacity
/// are shed and counted (`poolgate_bus_events_shed_total`) instead of queued without limit,
/// and publishing goes on once Redis is back.
pub async fn a_redis_that_cannot_keep_up_sheds_events_with_a_count_and_recovers() {
    use poolgate::store::{self, BusEvent};
    let port = free_port();
    let mut redis = spawn_redis(port);
    let url = format!("redis://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let (sink, mut bus) = tokio::sync::mpsc::unbounded_channel();
    let store = store::open(&url.parse().unwrap(), None, "shed", dir.path(), sink)
        .await
        .unwrap();
    let router = store.router().expect("Redis routes by user");
    let user = uuid::Uuid::new_v4();
    let _watch = router.watch(user).await;
    let released = |reason: &str| BusEvent::Released {
        user_id: user,
        pool_id: uuid::Uuid::nil(),
        machine_id: uuid::Uuid::nil(),
        reason: reason.into(),
    };

    // Redis stops answering (every client paused) while far more than the outbox holds is
    // published.
    let paused = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "client", "pause", "2000", "ALL"])
        .output()
        .unwrap();
    assert!(paused.status.success(), "{paused:?}");
    let published = store::redis_store::OUTBOX_CAPACITY + 10_000;
    for _ in 0..published {
        store.publish(released("load"));
    }
    let shed = router.counts().shed;
    assert!(
        (9_000..=10_000).contains(&shed),
        "about what the outbox could not hold is shed: {shed} of {published}"
    );
    // A sign-out after the flood is not shed: revocations wait apart and go first.
    store.publish(BusEvent::SessionRevoked {
        hash: [7; 32],
        user_id: user,
    });
    assert_eq!(
        router.counts().shed,
        shed,
        "a revocation is never shed for task events"
    );

    // Once Redis answers again, every event the outbox took is published, in order, and
    // publishing goes on: a later event arrives after them.
    let kept = published - shed as usize;
    let mut loads = 0;
    let mut revoked = false;
    let arrived = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = bus.recv().await {
            match &event {
                BusEvent::SessionRevoked { hash, .. } if *hash == [7; 32] => {
                    revoked = true;
                }
                BusEvent::Released { reason, .. } if reason == "marker" => return true,
                BusEvent::Released { .. } => {
                    loads += 1;
                    if loads >= kept {
                        store.publish(released("marker"));
                    }
                }
                _ => {}
            }
        }
        false
    })
    .await;
    // (A publish retried after its reply timed out may arrive twice: at least once each.)
    assert!(
        loads >= kept,
        "every event the outbox took was published: {loads} of {kept}"
    );
    assert_eq!(arrived, Ok(true), "publishing resumed after the pause");
    assert!(revoked, "the revocation was published");
    stop_redis(&mut redis, port).await;
}

/// The cases of this file, for `cases()` in main.rs.
pub(crate) fn cases() -> Vec<(&'static str, crate::Needs, crate::harness::Case)> {
    use crate::Needs::*;
    vec![(
        "bus::a_redis_that_cannot_keep_up_sheds_events_with_a_count_and_recovers",
        RedisServer,
        || Box::pin(a_redis_that_cannot_keep_up_sheds_events_with_a_count_and_recovers()),
    )]
}
