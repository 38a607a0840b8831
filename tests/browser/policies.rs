//! Pool policies in the portal: a pool closed by its schedule is shown with when it opens and
//! cannot be asked for; a desktop about to end is announced on its card, then given back.

use std::time::Duration;

use poolgate_test_common::helpers::{OK, POOL_WIN_1, POOL_WIN_2, TestApp, fast_sim};

use super::Browser;

/// RFC 3339 → epoch ms.
fn ms(at: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(at)
        .unwrap()
        .timestamp_millis() as u64
}

fn card(pool: &str, part: &str) -> String {
    format!("document.querySelector('#pools .pool[data-pool-id=\"{pool}\"] {part}')")
}

/// pool-win-1 is open Mon–Fri 07:00–19:00 in Moscow; on a Saturday its card says "Not
/// available now: opens Monday …" with the button held, while pool-win-2 works: a desktop
/// there with `max_session` is warned of its end on its card, then given back.
pub async fn a_closed_pool_says_when_it_opens_and_a_desktop_about_to_end_is_announced(b: Browser) {
    let app = TestApp::spawn_with(|c| {
        fast_sim(c, OK, OK);
        let win1 = c.pools.iter_mut().find(|p| p.name == "pool-win-1").unwrap();
        win1.schedule = vec![poolgate::pools::ScheduleWindow {
            days: "Mon-Fri".parse().unwrap(),
            hours: "07:00-19:00".parse().unwrap(),
            timezone: Some("Europe/Moscow".parse().unwrap()),
        }];
        let win2 = c.pools.iter_mut().find(|p| p.name == "pool-win-2").unwrap();
        win2.max_session = Some(Duration::from_secs(3600));
    })
    .await;
    let clock = &app.state.audit.clock;
    // Saturday 2026-12-12, 10:00 UTC.
    let saturday = ms("2026-12-12T10:00:00Z");
    clock.set_ms(saturday);
    b.admin_with_pools(&app, false).await;

    let closed = b
        .text(&format!("{}.textContent", card(POOL_WIN_1, ".unavailable")))
        .await;
    assert!(
        closed.starts_with("Not available now: opens Monday"),
        "{closed}"
    );
    assert_eq!(
        b.text(&format!("{}.disabled", card(POOL_WIN_1, ".connect")))
            .await,
        "true"
    );
    assert_eq!(
        b.text(&format!("{}.hidden", card(POOL_WIN_2, ".unavailable")))
            .await,
        "true",
        "pool-win-2 has no schedule"
    );
    b.shot("01-closed-pool").await;

    b.click(&format!(
        "#pools .pool[data-pool-id=\"{POOL_WIN_2}\"] .connect"
    ))
    .await;
    b.until(
        &format!("!{}.hidden", card(POOL_WIN_2, ".result")),
        "the desktop",
    )
    .await;
    // 55 minutes into the hour's session: within warn_before (10 min) of its end.
    clock.set_ms(saturday + 3_300_000);
    app.state.pools.enforce_policies().await.unwrap();
    b.until(
        &format!("!{}.hidden", card(POOL_WIN_2, ".notice")),
        "the warning",
    )
    .await;
    let warning = b
        .text(&format!("{}.textContent", card(POOL_WIN_2, ".notice")))
        .await;
    assert!(
        warning.starts_with("Your desktop ends at ")
            && warning.ends_with("(the longest session allowed): save your work."),
        "{warning}"
    );
    assert_eq!(
        b.text(&format!("{}.hidden", card(POOL_WIN_2, ".result")))
            .await,
        "false",
        "a warning leaves the desktop's data on the card"
    );
    b.shot("02-desktop-ending").await;

    clock.set_ms(saturday + 3_600_000);
    app.state.pools.enforce_policies().await.unwrap();
    b.until(
        &format!("!{}.hidden", card(POOL_WIN_2, ".error")),
        "the release",
    )
    .await;
    assert_eq!(
        b.text(&format!("{}.hidden", card(POOL_WIN_2, ".notice")))
            .await,
        "true"
    );
    assert_eq!(
        b.text(&format!("{}.hidden", card(POOL_WIN_2, ".result")))
            .await,
        "true"
    );
    b.shot("03-desktop-given-back").await;
    app.stop().await;
}
