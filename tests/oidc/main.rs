//! Single sign-on against a real OpenID provider: panva's `oidc-provider` (the OpenID-certified
//! implementation, from the npm registry) run by `node` on loopback, under a harness that can
//! tell "skipped" from "passed" (libtest-mimic, `harness = false`, like the LDAP cases).
//!
//! Each case starts its own provider (tests/common/oidc_provider.rs) and drives the sign-in over HTTP
//! (agent.rs). Without `node` or without the provider installed
//! (`npm ci --prefix tests/oidc/provider`), the run prints one line saying so and every case
//! counts as *ignored*, never as passed; `POOLGATE_TEST_REQUIRE_OIDC=1` (set by `.ci/run`,
//! which installs it) turns that into a failure.

use std::process::ExitCode;

use libtest_mimic::{Arguments, Trial};

#[allow(dead_code)]
use poolgate_test_common::harness;

mod agent;
mod cases;
mod flows;
mod guards;

use harness::{Case, run, selected};

fn cases() -> Vec<(&'static str, Case)> {
    vec![
        (
            "oidc::discovery_finds_the_endpoints_and_the_algorithms_each_client_may_accept",
            || {
                Box::pin(
                    cases::discovery_finds_the_endpoints_and_the_algorithms_each_client_may_accept(
                    ),
                )
            },
        ),
        (
            "oidc::the_code_flow_gives_the_username_groups_and_admin_from_the_id_token",
            || {
                Box::pin(
                    cases::the_code_flow_gives_the_username_groups_and_admin_from_the_id_token(),
                )
            },
        ),
        (
            "oidc::a_public_client_signs_in_with_pkce_and_groups_may_be_one_string",
            || Box::pin(cases::a_public_client_signs_in_with_pkce_and_groups_may_be_one_string()),
        ),
        (
            "oidc::a_wrong_state_or_nonce_and_a_replayed_code_are_refused",
            || Box::pin(cases::a_wrong_state_or_nonce_and_a_replayed_code_are_refused()),
        ),
        (
            "oidc::expired_and_future_dated_id_tokens_are_refused",
            || Box::pin(cases::expired_and_future_dated_id_tokens_are_refused()),
        ),
        (
            "oidc::a_rotated_key_is_fetched_once_then_at_most_once_a_minute",
            || Box::pin(cases::a_rotated_key_is_fetched_once_then_at_most_once_a_minute()),
        ),
        (
            "oidc::tokens_of_another_issuer_or_audience_are_refused",
            || Box::pin(cases::tokens_of_another_issuer_or_audience_are_refused()),
        ),
        ("oidc::hs256_is_accepted_only_when_advertised", || {
            Box::pin(cases::hs256_is_accepted_only_when_advertised())
        }),
        (
            "oidc::access_denied_at_the_provider_is_said_as_such",
            || Box::pin(cases::access_denied_at_the_provider_is_said_as_such()),
        ),
        (
            "oidc::a_provider_down_or_silent_fails_within_the_timeout",
            || Box::pin(cases::a_provider_down_or_silent_fails_within_the_timeout()),
        ),
        ("oidc::a_bad_discovery_document_is_said_plainly", || {
            Box::pin(cases::a_bad_discovery_document_is_said_plainly())
        }),
        (
            "oidc::check_config_connect_reports_what_the_provider_offers",
            || Box::pin(cases::check_config_connect_reports_what_the_provider_offers()),
        ),
        (
            "sso::the_portals_code_signs_in_only_the_browser_that_came_back",
            || Box::pin(guards::the_portals_code_signs_in_only_the_browser_that_came_back()),
        ),
        (
            "sso::a_local_account_is_pinned_and_names_passing_for_another_are_refused",
            || {
                Box::pin(
                    guards::a_local_account_is_pinned_and_names_passing_for_another_are_refused(),
                )
            },
        ),
        (
            "sso::another_sites_images_cannot_spend_an_addresss_sign_ins",
            || Box::pin(guards::another_sites_images_cannot_spend_an_addresss_sign_ins()),
        ),
        ("sso::signing_out_gives_up_a_waiting_hand_off", || {
            Box::pin(guards::signing_out_gives_up_a_waiting_hand_off())
        }),
        (
            "sso::hand_offs_count_against_the_address_until_used_and_never_lock_their_user",
            || {
                Box::pin(
                    guards::hand_offs_count_against_the_address_until_used_and_never_lock_their_user(),
                )
            },
        ),
        (
            "sso::a_thin_client_is_signed_in_by_the_browser_hand_off",
            || Box::pin(flows::a_thin_client_is_signed_in_by_the_browser_hand_off()),
        ),
        ("sso::a_rest_client_polls_for_its_jwt", || {
            Box::pin(flows::a_rest_client_polls_for_its_jwt())
        }),
        (
            "sso::totp_is_still_asked_after_the_providers_sign_in",
            || Box::pin(flows::totp_is_still_asked_after_the_providers_sign_in()),
        ),
        (
            "sso::replayed_state_reused_and_guessed_codes_are_refused_and_counted",
            || Box::pin(flows::replayed_state_reused_and_guessed_codes_are_refused_and_counted()),
        ),
        ("sso::access_denied_at_the_provider_signs_nobody_in", || {
            Box::pin(flows::access_denied_at_the_provider_signs_nobody_in())
        }),
        (
            "sso::poolgate_connect_sso_prints_the_link_and_is_signed_in",
            || Box::pin(flows::poolgate_connect_sso_prints_the_link_and_is_signed_in()),
        ),
        (
            "sso::a_provider_down_is_a_503_within_seconds_and_healthz_degraded",
            || Box::pin(flows::a_provider_down_is_a_503_within_seconds_and_healthz_degraded()),
        ),
    ]
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let missing = poolgate_test_common::oidc_provider::missing();
    let required = std::env::var("POOLGATE_TEST_REQUIRE_OIDC").is_ok_and(|v| v == "1");
    let cases = cases();
    if let Some(why) = &missing
        && !required
        && !args.list
    {
        let n = cases
            .iter()
            .filter(|(name, _)| selected(&args, name))
            .count();
        if n > 0 {
            println!("skipped {n} oidc cases (ignored): {why}");
        }
    }
    let trials = cases
        .into_iter()
        .map(|(name, case)| match &missing {
            None => Trial::test(name, move || run(case)),
            Some(why) if required => {
                let why = why.clone();
                Trial::test(name, move || {
                    Err(format!("POOLGATE_TEST_REQUIRE_OIDC=1, but {why}").into())
                })
            }
            Some(_) => Trial::test(name, move || run(case)).with_ignored_flag(true),
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
