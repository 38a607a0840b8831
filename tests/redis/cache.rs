//! The read cache across instances: a write is announced to the other instances' caches by
//! the write itself, so no instance serves what another replaced.

use std::time::Duration;

use crate::redis_server::*;

/// A write announces itself to the other instances' read caches even when its writer dies the
/// moment the write returns (the announcement once left after the write, from the writer's outbox, and another instance then served the replaced task and
/// a machine the user no longer held for up to `cache::MAX_AGE`, 60 s). The announcement is
/// now published by the write's own script or transaction.
pub async fn a_write_is_announced_even_when_its_writer_dies_as_it_returns() {
    use poolgate::domain::{Machine, Task, TaskKind, TaskStatus};
    use poolgate::store::{self, Assignment, Store, now_ms};
    use std::sync::Arc;
    use tokio::sync::mpsc;
    use uuid::Uuid;

    let url = redis_url();
    let prefix = format!("announce-{}", Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let open = {
        let (url, prefix, data) = (url.clone(), prefix.clone(), data.clone());
        move |sink| {
            let (url, prefix, data) = (url.clone(), prefix.clone(), data.clone());
            async move {
                store::open(&url.parse().unwrap(), None, &prefix, &data, sink)
                    .await
                    .unwrap()
            }
        }
    };
    // Runs `write` on an instance of its own (its own runtime), which then dies at once: the
    // write has returned, the announcement it queued never leaves.
    type Write =
        Box<dyn FnOnce(Arc<dyn Store>) -> futures_util::future::BoxFuture<'static, ()> + Send>;
    let write_then_die = |write: Write| {
        let open = open.clone();
        tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let (sink, _bus) = mpsc::unbounded_channel();
            let a = rt.block_on(open(sink));
            rt.block_on(write(a.clone()));
            drop(a);
            drop(rt); // killed: its outbox task never runs again
        })
    };

    let (user, pool) = (Uuid::new_v4(), Uuid::new_v4());
    let machine = Arc::new(Machine {
        id: Uuid::new_v4(),
        verbose_name: "vm".into(),
        host: "10.0.0.1".into(),
        port: 3389,
        protocol_id: 1,
        permissions: vec![],
    });
    let mut task = Task::new(TaskKind::PoolExpand, user, pool);
    task.start();

    // Set up through an instance that stays alive long enough to announce.
    let (sink_setup, _bus_setup) = mpsc::unbounded_channel();
    let setup = open(sink_setup).await;
    assert!(setup.task_create(None, &task).await.unwrap());
    assert!(
        setup
            .assignment_create(&Assignment {
                user_id: user,
                pool_id: pool,
                machine: machine.clone(),
                lease_until_ms: now_ms() + 600_000,
                since_ms: now_ms(),
            })
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Instance B: reads, and so caches, the RUNNING task and the assignment.
    let (sink_b, _bus_b) = mpsc::unbounded_channel();
    let b = open(sink_b).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.task_get(task.user_id, task.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        TaskStatus::Running
    );
    assert!(b.assignment_get(user, pool).await.unwrap().is_some());
    assert!(
        b.task_latest((user, pool, TaskKind::PoolExpand))
            .await
            .unwrap()
            .is_some()
    );

    // Instance A1 completes the task and dies; A2 takes the machine away and dies.
    let mut done = task.clone();
    done.finish(TaskStatus::Completed, None);
    let d = done.clone();
    write_then_die(Box::new(move |a| {
        Box::pin(async move { assert!(a.task_update(&d).await.unwrap()) })
    }))
    .await
    .unwrap();
    write_then_die(Box::new(move |a| {
        Box::pin(async move {
            a.assignment_remove(user, pool)
                .await
                .unwrap()
                .expect("it was held");
        })
    }))
    .await
    .unwrap();

    // What Redis holds now, read by an instance with an empty cache.
    let (sink_c, _bus_c) = mpsc::unbounded_channel();
    let c = open(sink_c).await;
    let truth_status = c
        .task_get(task.user_id, task.id)
        .await
        .unwrap()
        .unwrap()
        .status;
    let truth_held = c.assignment_get(user, pool).await.unwrap().is_some();
    assert_eq!((truth_status, truth_held), (TaskStatus::Completed, false));

    // B — connected all along, no gap in its bus — sees the writes well within its cache's
    // 60 s age limit (asked until then; the announcements arrive in milliseconds).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = b
            .task_get(task.user_id, task.id)
            .await
            .unwrap()
            .unwrap()
            .status;
        let latest = b
            .task_latest((user, pool, TaskKind::PoolExpand))
            .await
            .unwrap()
            .unwrap()
            .status;
        let held = b.assignment_get(user, pool).await.unwrap();
        let now = (status, latest, held.as_ref().map(|a| a.machine.id));
        if now == (TaskStatus::Completed, TaskStatus::Completed, None) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "instance B still serves {now:?} 10 s after the writes (Redis: COMPLETED, no \
             assignment)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cases of this file, for `cases()` in main.rs.
pub(crate) fn cases() -> Vec<(&'static str, crate::Needs, crate::harness::Case)> {
    use crate::Needs::*;
    vec![(
        "cache::a_write_is_announced_even_when_its_writer_dies_as_it_returns",
        Redis,
        || Box::pin(a_write_is_announced_even_when_its_writer_dies_as_it_returns()),
    )]
}
