//! How connections end: a socket that notices shutdown while a request runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use poolgate::provision::{ConnectionData, Machine, Progress, Provisioner, StepError, StepRequest};
use serde_json::json;
use tokio::sync::Notify;

use crate::helpers::*;

/// A provisioner whose release never ends: an in-flight request that only shutdown can stop.
struct ReleaseHangs {
    entered: Arc<Notify>,
}

#[async_trait]
impl Provisioner for ReleaseHangs {
    async fn expand(&self, _: &StepRequest, progress: Progress) -> Result<Machine, StepError> {
        progress.running();
        Ok(Machine {
            id: uuid::Uuid::new_v4(),
            verbose_name: "hangs-1".into(),
            host: "10.0.0.1".into(),
            port: 3389,
            protocol_id: 1,
            permissions: Vec::new(),
        })
    }
    async fn connect(&self, _: &StepRequest, _: Progress) -> Result<ConnectionData, StepError> {
        unreachable!()
    }
    async fn release(&self, _: &Machine) {
        self.entered.notify_one();
        std::future::pending::<()>().await;
    }
}

#[tokio::test]
async fn a_socket_notices_shutdown_while_a_request_runs() {
    let entered = Arc::new(Notify::new());
    let mut config = demo_config();
    config.seed_tasks.clear();
    let pool = config
        .pools
        .iter_mut()
        .find(|p| p.id.to_string() == POOL_WIN_1)
        .unwrap();
    pool.provisioner = "hangs".into();
    let extra: HashMap<String, Arc<dyn Provisioner>> = HashMap::from([(
        "hangs".to_owned(),
        Arc::new(ReleaseHangs {
            entered: entered.clone(),
        }) as Arc<dyn Provisioner>,
    )]);
    let app = TestApp::spawn_with_provisioners(config, extra).await;
    let (mut c, _) = app.login("astravdi").await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    let (_, task) = c.follow(&id).await;
    assert_eq!(task["status"], "COMPLETED", "{task}");

    // admin_release reaches the provisioner's release, which never returns.
    c.send_text(
        json!({"namespace": "rpc", "name": "admin_release", "id": "r",
               "args": {"username": "astravdi", "pool_id": POOL_WIN_1}})
        .to_string(),
    )
    .await;
    tokio::time::timeout(REPLY_TIMEOUT, entered.notified())
        .await
        .expect("the release started");
    use futures_util::StreamExt;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), c.ws.next())
            .await
            .is_err(),
        "the request is still running (if admin_release now answers at once, pick another \
         request that cannot finish for this test)"
    );

    let state = app.state.clone();
    let stopping = Instant::now();
    let stop = tokio::spawn(app.stop());
    let (code, reason) = c.expect_close(Duration::from_secs(3)).await;
    assert_eq!(code, 1001);
    assert!(reason.contains("shutting down"), "{reason}");
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "closed promptly: {:?}",
        stopping.elapsed()
    );
    stop.await.unwrap();
    assert!(state.shutdown.is_cancelled());
}
