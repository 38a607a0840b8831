//! Directory sign-in against a real OpenLDAP server, under a harness that can tell "skipped"
//! from "passed" (libtest-mimic, `harness = false`, like the Redis and browser cases).
//!
//! Each case starts its own `slapd` (Debian: `slapd`) on a free loopback port and loads it with
//! `ldapadd` (Debian: `ldap-utils`); see slapd.rs for the people and groups. Without both
//! programs every case prints one line saying so and counts as *ignored*, never as passed;
//! `POOLGATE_TEST_REQUIRE_LDAP=1` (set by `.ci/run`, which installs them) turns that into a
//! failure.

use std::path::PathBuf;
use std::process::ExitCode;

use libtest_mimic::{Arguments, Trial};
use poolgate_test_common::{harness, helpers};

mod app;
mod cases;
mod identity_review;
mod keys;
mod recheck;
mod review;
mod slapd;
mod totp;
mod totp_review;

use harness::{Case, run, selected};

fn cases() -> Vec<(&'static str, Case)> {
    vec![
        (
            "directory::a_person_signs_in_with_the_directory_password_and_gets_name_mail_and_groups",
            || Box::pin(cases::a_person_signs_in_with_the_directory_password()),
        ),
        (
            "directory::wrong_unknown_and_empty_passwords_are_one_answer_and_empty_never_binds",
            || Box::pin(cases::wrong_unknown_and_empty_passwords_are_refused()),
        ),
        (
            "directory::filter_metacharacters_in_a_username_are_literal",
            || Box::pin(cases::filter_metacharacters_in_a_username_are_literal()),
        ),
        (
            "directory::disabled_is_said_only_after_the_right_password",
            || Box::pin(cases::disabled_is_said_only_after_the_right_password()),
        ),
        (
            "directory::groups_come_from_memberof_or_from_a_group_search",
            || Box::pin(cases::groups_come_from_memberof_or_from_a_group_search()),
        ),
        (
            "directory::a_directory_down_or_silent_is_unavailable_within_the_timeout_and_recovers",
            || Box::pin(cases::a_directory_down_is_unavailable_and_recovers()),
        ),
        (
            "app::directory_users_sign_in_on_both_transports_and_get_their_groups_pools",
            || {
                Box::pin(
                    app::directory_users_sign_in_on_both_transports_and_get_their_groups_pools(),
                )
            },
        ),
        (
            "app::a_directory_group_in_auditor_groups_makes_auditors",
            || Box::pin(app::a_directory_group_in_auditor_groups_makes_auditors()),
        ),
        (
            "app::a_directory_down_answers_503_local_users_still_sign_in_and_it_recovers",
            || {
                Box::pin(
                    app::a_directory_down_answers_503_local_users_still_sign_in_and_it_recovers(),
                )
            },
        ),
        (
            "app::the_lockout_and_revocation_apply_to_directory_users",
            || Box::pin(app::the_lockout_and_revocation_apply_to_directory_users()),
        ),
        (
            "app::a_group_change_takes_effect_at_the_next_sign_in",
            || Box::pin(app::a_group_change_takes_effect_at_the_next_sign_in()),
        ),
        (
            "app::a_pool_wide_reset_clears_the_failed_steps_of_its_group_members",
            || Box::pin(app::a_pool_wide_reset_clears_the_failed_steps_of_its_group_members()),
        ),
        (
            "app::check_config_reads_the_service_password_and_connect_binds_it",
            || Box::pin(app::check_config_reads_the_service_password_and_connect_binds_it()),
        ),
        (
            "app::a_directory_user_and_the_local_user_of_the_same_name_are_two_guacamole_users",
            || {
                Box::pin(
                    app::a_directory_user_and_the_local_user_of_the_same_name_are_two_guacamole_users(),
                )
            },
        ),
        ("review::odd_passwords_names_and_dns_are_handled", || {
            Box::pin(review::odd_passwords_names_and_dns_are_handled())
        }),
        ("review::escaped_commas_keep_two_groups_apart", || {
            Box::pin(review::escaped_commas_keep_two_groups_apart())
        }),
        ("review::case_variants_of_a_name_share_its_lockout", || {
            Box::pin(review::case_variants_of_a_name_share_its_lockout())
        }),
        (
            "review::a_name_shared_by_a_local_and_a_directory_user_is_never_guessed",
            || Box::pin(review::a_name_shared_by_a_local_and_a_directory_user_is_never_guessed()),
        ),
        (
            "review::the_uid_value_signed_in_with_is_the_identity",
            || Box::pin(review::the_uid_value_signed_in_with_is_the_identity()),
        ),
        (
            "keys::a_directory_users_passkey_signs_in_only_while_the_directory_admits_them",
            || {
                Box::pin(
                    keys::a_directory_users_passkey_signs_in_only_while_the_directory_admits_them(),
                )
            },
        ),
        (
            "keys::a_directory_user_adds_a_key_only_with_the_directory_password_again",
            || Box::pin(keys::a_directory_user_adds_a_key_only_with_the_directory_password_again()),
        ),
        (
            "keys::a_directory_user_signs_in_with_a_key_after_the_directory_password",
            || Box::pin(keys::a_directory_user_signs_in_with_a_key_after_the_directory_password()),
        ),
        (
            "totp::an_enrolled_directory_user_gives_a_code_on_both_transports",
            || Box::pin(totp::an_enrolled_directory_user_gives_a_code_on_both_transports()),
        ),
        (
            "totp::an_enrolment_by_dn_covers_every_name_of_the_entry_and_survives_a_restart",
            || {
                Box::pin(
                    totp::an_enrolment_by_dn_covers_every_name_of_the_entry_and_survives_a_restart(
                    ),
                )
            },
        ),
        ("totp::enrolments_are_refused_clearly", || {
            Box::pin(totp::enrolments_are_refused_clearly())
        }),
        (
            "totp::the_cli_enrols_a_directory_user_through_the_server",
            || Box::pin(totp::the_cli_enrols_a_directory_user_through_the_server()),
        ),
        (
            "totp_review::a_unicode_variant_of_an_enrolled_name_is_asked_for_the_code",
            || Box::pin(totp_review::a_unicode_variant_of_an_enrolled_name_is_asked_for_the_code()),
        ),
        (
            "totp_review::a_code_used_under_one_name_is_refused_under_another_name_of_the_entry",
            || {
                Box::pin(totp_review::a_code_used_under_one_name_is_refused_under_another_name_of_the_entry())
            },
        ),
        (
            "totp_review::a_name_added_to_an_enrolled_entry_later_is_asked_for_the_code",
            || {
                Box::pin(
                    totp_review::a_name_added_to_an_enrolled_entry_later_is_asked_for_the_code(),
                )
            },
        ),
        (
            "totp_review::an_enrolled_disabled_account_gets_the_challenge_whatever_the_password",
            || {
                Box::pin(totp_review::an_enrolled_disabled_account_gets_the_challenge_whatever_the_password())
            },
        ),
        (
            "totp_review::the_other_paths_ask_for_the_code_and_fail_closed",
            || Box::pin(totp_review::the_other_paths_ask_for_the_code_and_fail_closed()),
        ),
        (
            "identity_review::a_deleted_directory_users_sessions_can_still_be_revoked",
            || Box::pin(identity_review::a_deleted_directory_users_sessions_can_still_be_revoked()),
        ),
        (
            "identity_review::a_directory_users_sessions_can_be_revoked_while_the_directory_is_down",
            || {
                Box::pin(identity_review::a_directory_users_sessions_can_be_revoked_while_the_directory_is_down())
            },
        ),
        (
            "identity_review::during_an_outage_a_shared_name_is_never_taken_for_the_local_user",
            || {
                Box::pin(identity_review::during_an_outage_a_shared_name_is_never_taken_for_the_local_user())
            },
        ),
        (
            "identity_review::name_variants_of_one_entry_share_its_lockout",
            || Box::pin(identity_review::name_variants_of_one_entry_share_its_lockout()),
        ),
        (
            "identity_review::the_lockout_does_not_tell_an_enrolled_users_right_password_from_a_wrong_one",
            || {
                Box::pin(identity_review::the_lockout_does_not_tell_an_enrolled_users_right_password_from_a_wrong_one())
            },
        ),
        (
            "identity_review::a_utf8_valid_objectguid_is_the_identity_not_the_dn",
            || Box::pin(identity_review::a_utf8_valid_objectguid_is_the_identity_not_the_dn()),
        ),
        (
            "identity_review::an_entry_without_a_readable_uuid_is_refused_not_identified_by_its_dn",
            || {
                Box::pin(identity_review::an_entry_without_a_readable_uuid_is_refused_not_identified_by_its_dn())
            },
        ),
        (
            "identity_review::signing_in_under_another_name_of_the_entry_keeps_the_first_names_jwt",
            || {
                Box::pin(identity_review::signing_in_under_another_name_of_the_entry_keeps_the_first_names_jwt())
            },
        ),
        ("identity_review::identity_probes_that_held", || {
            Box::pin(identity_review::identity_probes_that_held())
        }),
        (
            "recheck::a_deleted_directory_user_loses_every_session_within_directory_recheck",
            || {
                Box::pin(
                    recheck::a_deleted_directory_user_loses_every_session_within_directory_recheck(
                    ),
                )
            },
        ),
        (
            "recheck::a_disabled_directory_user_loses_every_session_within_directory_recheck",
            || {
                Box::pin(
                    recheck::a_disabled_directory_user_loses_every_session_within_directory_recheck(
                    ),
                )
            },
        ),
        (
            "recheck::a_user_removed_from_every_pool_group_loses_every_session",
            || Box::pin(recheck::a_user_removed_from_every_pool_group_loses_every_session()),
        ),
        ("recheck::a_directory_outage_keeps_sessions", || {
            Box::pin(recheck::a_directory_outage_keeps_sessions())
        }),
        (
            "recheck::the_directory_is_asked_once_per_user_per_period",
            || Box::pin(recheck::the_directory_is_asked_once_per_user_per_period()),
        ),
    ]
}

/// A program on the `PATH`, or for `slapd` in Debian's `/usr/sbin` (not on every `PATH`).
pub fn on_path(name: &str) -> Option<PathBuf> {
    harness::on_path_or(name, &["/usr/sbin"])
}

/// Why the cases cannot run here, with how to make them run; `None` if they can.
fn missing() -> Option<String> {
    let absent: Vec<&str> = ["slapd", "ldapadd"]
        .into_iter()
        .filter(|p| on_path(p).is_none())
        .collect();
    (!absent.is_empty()).then(|| {
        format!(
            "no {} on the PATH or in /usr/sbin; to run it: apt-get install slapd ldap-utils",
            absent.join(" and no ")
        )
    })
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let missing = missing();
    let required = std::env::var("POOLGATE_TEST_REQUIRE_LDAP").is_ok_and(|v| v == "1");
    let mut trials = Vec::new();
    for (name, case) in cases() {
        let trial = match &missing {
            None => Trial::test(name, move || run(case)),
            Some(why) if required => {
                let why = why.clone();
                Trial::test(name, move || {
                    Err(format!("POOLGATE_TEST_REQUIRE_LDAP=1, but {why}").into())
                })
            }
            Some(why) => {
                if !args.list && selected(&args, name) {
                    println!("skipped ldap case {name}: {why}");
                }
                Trial::test(name, move || run(case)).with_ignored_flag(true)
            }
        };
        trials.push(trial);
    }
    libtest_mimic::run(&args, trials).exit_code()
}
