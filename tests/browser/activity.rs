//! The portal's Activity page, for admins and auditors: who is signed in, the tasks under way
//! and the audit log, filtered by user and pool, with nothing on it that changes anything.

use poolgate_test_common::helpers::{PASSWORD, TestApp, add_auditor, fast_sim};
use serde_json::json;

use super::{Browser, visible};

/// The rows' text of one of the page's tables.
async fn rows(b: &Browser, table: &str) -> Vec<String> {
    let text = b
        .text(&format!(
            "[...document.querySelectorAll('#{table} tbody tr')].map((r) => r.innerText.replaceAll('\\t', ' | ')).join('\\n')"
        ))
        .await;
    text.lines().map(str::to_owned).collect()
}

/// An auditor signs in, finds the Activity page, sees astravdi signed in with a step under way
/// and the audit log's refusals, filters by user and by pool, and has no button that changes
/// anything; a plain user is offered no Activity page.
pub async fn an_auditor_sees_sessions_tasks_and_the_audit_log_filtered(b: Browser) {
    let app = TestApp::spawn_with(|c| {
        // Step 1 runs long enough to be seen under way.
        fast_sim(c, (1.0, 0.0, 0.0), (1.0, 0.0, 0.0));
        let sim = c.provisioners.get_mut("simulated").unwrap();
        *sim = toml::from_str(
            "kind = \"simulated\"\npending = 0.05\nrunning = [60, 60]\nexpand = { completed = 1.0, cancelled = 0.0, failed = 0.0 }\nconnect = { completed = 1.0, cancelled = 0.0, failed = 0.0 }",
        )
        .unwrap();
        add_auditor(c);
    })
    .await;
    // astravdi, elsewhere: signed in, a step 1 under way in pool-win-1; and a wrong password.
    let (mut admin, _) = app.login("astravdi").await;
    let reply = admin
        .rpc(
            "pool_request",
            json!({"pool_id": poolgate_test_common::helpers::POOL_WIN_1}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    let mut guess = app.connect().await;
    guess
        .rpc("auth", json!({"username": "user-2", "password": "not it"}))
        .await;

    // A plain user: no Activity button.
    b.client.goto(&app.url("/")).await.unwrap();
    b.sign_in("user-2", PASSWORD, false).await;
    b.until(&visible("pools-view"), "user-2's pools").await;
    b.until(
        "document.getElementById('activity-button').dataset.offered === 'no'",
        "the page's look at user-2's roles",
    )
    .await;
    assert_eq!(
        b.text("document.getElementById('activity-button').hidden")
            .await,
        "true"
    );
    b.click("#signout").await;
    b.until(&visible("signin-view"), "signed out").await;

    b.sign_in("auditor", PASSWORD, false).await;
    b.until(&visible("activity-button"), "the Activity button")
        .await;
    b.shot("01-signed-in").await;
    b.click("#activity-button").await;
    b.until(
        "document.querySelectorAll('#activity-audit tbody tr').length > 0",
        "the audit log",
    )
    .await;
    b.shot("02-activity").await;
    let sessions = rows(&b, "activity-sessions").await;
    assert!(
        sessions
            .iter()
            .any(|r| r.starts_with("astravdi | 127.0.0.1 | "))
            && sessions.iter().any(|r| r.starts_with("auditor | ")),
        "{sessions:#?}"
    );
    let tasks = rows(&b, "activity-tasks").await;
    assert!(
        tasks
            .iter()
            .any(|r| r.starts_with("astravdi | pool-win-1 | Getting a machine | ")),
        "{tasks:#?}"
    );
    let events = rows(&b, "activity-audit").await;
    assert!(
        events
            .iter()
            .any(|r| r.contains("| sign in refused | refused | user-2 |")
                && r.contains("401: password: Invalid credentials.")),
        "{events:#?}"
    );
    // The only buttons are the page's own: read again, and back.
    assert_eq!(
        b.text(
            "[...document.querySelectorAll('#activity-view button')].map((x) => x.id).join(',')"
        )
        .await,
        "activity-refresh,activity-back"
    );

    // Filter by user: astravdi's rows only, in every table.
    b.type_into("activity-user", "astra").await;
    b.until(
        "[...document.querySelectorAll('#activity-sessions tbody tr')].every((r) => r.innerText.startsWith('astravdi'))",
        "the sessions filtered",
    )
    .await;
    let events = rows(&b, "activity-audit").await;
    assert!(
        !events.is_empty() && events.iter().all(|r| r.contains("astravdi")),
        "{events:#?}"
    );
    assert!(rows(&b, "activity-tasks").await.len() == 1);
    // And by pool: the sessions have none; the task is in pool-win-1, not in pool-win-2.
    b.type_into("activity-pool", "pool-win-2").await;
    b.until(&visible("tasks-empty"), "no task in pool-win-2")
        .await;
    assert!(rows(&b, "activity-sessions").await.is_empty());
    b.type_into("activity-pool", "pool-win-1").await;
    b.until(
        "document.querySelectorAll('#activity-tasks tbody tr').length == 1",
        "the task in pool-win-1",
    )
    .await;
    b.shot("03-filtered").await;
    b.click("#activity-back").await;
    b.until(&visible("pools-view"), "back to the desktops")
        .await;
    app.stop().await;
}

/// Reading again every few seconds is a request each time, which keeps a session alive: an
/// Activity page nobody touches stops reading after half the token's lifetime, and the session
/// then ends as any unattended one does.
pub async fn an_unattended_activity_page_lets_the_session_expire(b: Browser) {
    let app = TestApp::spawn_with(|c| {
        c.token_ttl = std::time::Duration::from_secs(12);
    })
    .await;
    b.admin_with_pools(&app, false).await;
    b.until(&visible("activity-button"), "the Activity button")
        .await;
    b.click("#activity-button").await;
    b.until(&visible("activity-status"), "reading paused").await;
    b.shot("01-paused").await;
    b.until(
        &visible("signin-view"),
        "signed out after the token's lifetime",
    )
    .await;
    let notice = b
        .text("document.getElementById('notice').textContent")
        .await;
    assert!(notice.contains("no activity for 12 seconds"), "{notice}");
    app.stop().await;
}
