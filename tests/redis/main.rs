//! The cases that need a real Redis, under a harness that can tell "skipped" from "passed".
//!
//! libtest decides what is ignored at compile time; whether a Redis is there is only known when
//! the tests run. So this target has its own `main` (libtest-mimic, `harness = false`): each case
//! is a trial that is *ignored* — with one line saying which case and how to run it — when no
//! Redis can be had, and counted as ignored in the summary, never as passed.
//!
//! Where a Redis comes from: `POOLGATE_TEST_REDIS=redis://host:port` if set (`.ci/run` sets it),
//! else a `redis-server` on the `PATH` that the helpers start on a free loopback port. A few cases
//! start and stop their own `redis-server` (a restart, a password) and need the program itself.
//! `POOLGATE_TEST_REQUIRE_REDIS=1` turns every would-be skip into a failure, so CI cannot pass
//! without running them.

use std::path::PathBuf;
use std::process::ExitCode;

use libtest_mimic::{Arguments, Failed, Trial};

#[allow(dead_code)]
#[path = "../common/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

#[allow(dead_code)]
#[macro_use]
#[path = "../api/backends.rs"]
mod backends;

mod cases;
mod cluster;
mod cluster_cases;
mod cluster_review;
mod failover;
mod redis_server;
mod routing_review;

/// What a case needs to run.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Needs {
    /// Any Redis: `POOLGATE_TEST_REDIS`, or a `redis-server` the helpers start.
    Redis,
    /// The `redis-server` program itself: the case starts, stops or configures its own.
    RedisServer,
    /// A Redis Cluster: `POOLGATE_TEST_REDIS_CLUSTER`, or three masters the helpers start
    /// (`redis-server` and `redis-cli`).
    RedisCluster,
    /// A cluster the case starts itself, with replicas (it kills nodes).
    RedisClusterServers,
}

use harness::{Case, on_path, run, selected};

/// Every Redis case: the backend suite's cases (both lists of `backend_cases!` in
/// tests/api/backends.rs), then the Redis-only ones.
fn cases() -> Vec<(&'static str, Needs, Case)> {
    macro_rules! redis_suite {
        (any: [$($any:ident),* $(,)?], durable: [$($durable:ident),* $(,)?] $(,)?) => {
            vec![$((
                concat!("backends::redis::", stringify!($any)),
                Needs::Redis,
                (|| Box::pin(async { backends::$any(&redis_server::redis_url()).await })) as Case,
            ),)* $((
                concat!("backends::redis::", stringify!($durable)),
                Needs::Redis,
                (|| Box::pin(async { backends::$durable(&redis_server::redis_url()).await })) as Case,
            ),)*]
        };
    }
    macro_rules! cluster_suite {
        (any: [$($any:ident),* $(,)?], durable: [$($durable:ident),* $(,)?] $(,)?) => {
            vec![$((
                concat!("backends::redis_cluster::", stringify!($any)),
                Needs::RedisCluster,
                (|| Box::pin(async { backends::$any(&cluster::cluster_url()).await })) as Case,
            ),)* $((
                concat!("backends::redis_cluster::", stringify!($durable)),
                Needs::RedisCluster,
                (|| Box::pin(async { backends::$durable(&cluster::cluster_url()).await })) as Case,
            ),)*]
        };
    }
    let mut all = backend_cases!(redis_suite);
    all.extend(backend_cases!(cluster_suite));
    all.push((
        "cluster::two_instances_on_a_cluster_act_as_one",
        Needs::RedisCluster,
        || Box::pin(cluster_cases::two_instances_on_a_cluster_act_as_one()),
    ));
    all.push((
        "cluster::a_master_killed_mid_task_costs_only_the_requests_in_flight",
        Needs::RedisClusterServers,
        || Box::pin(cluster_cases::a_master_killed_mid_task_costs_only_the_requests_in_flight()),
    ));
    all.push((
        "cluster::a_master_restarted_empty_while_another_is_stopped_leaves_no_wedge",
        Needs::RedisClusterServers,
        || {
            Box::pin(
                cluster_cases::a_master_restarted_empty_while_another_is_stopped_leaves_no_wedge(),
            )
        },
    ));
    all.push((
        "cluster::a_cluster_connection_that_keeps_timing_out_is_made_anew",
        Needs::RedisClusterServers,
        || Box::pin(cluster_cases::a_cluster_connection_that_keeps_timing_out_is_made_anew()),
    ));
    all.push((
        "cluster::a_dead_replica_does_not_keep_scripts_from_running",
        Needs::RedisClusterServers,
        || Box::pin(cluster_cases::a_dead_replica_does_not_keep_scripts_from_running()),
    ));
    all.push((
        "cluster::an_instance_killed_mid_task_is_taken_over_on_a_cluster",
        Needs::RedisCluster,
        || Box::pin(cluster_cases::an_instance_killed_mid_task_is_taken_over_on_a_cluster()),
    ));
    all.push((
        "instances::two_instances_on_one_redis_act_as_one",
        Needs::Redis,
        || Box::pin(cases::two_instances_on_one_redis_act_as_one()),
    ));
    all.push((
        "instances::an_instance_hears_only_the_users_with_a_socket_on_it",
        Needs::Redis,
        || Box::pin(cases::an_instance_hears_only_the_users_with_a_socket_on_it()),
    ));
    all.push((
        "bus::a_redis_that_cannot_keep_up_sheds_events_with_a_count_and_recovers",
        Needs::RedisServer,
        || Box::pin(cases::a_redis_that_cannot_keep_up_sheds_events_with_a_count_and_recovers()),
    ));
    all.push((
        "instances::a_write_on_one_instance_is_never_read_stale_on_another_once_announced",
        Needs::Redis,
        || {
            Box::pin(async {
                backends::a_write_on_one_instance_is_never_read_stale_on_another_once_announced(
                    &redis_server::redis_url(),
                )
                .await
            })
        },
    ));
    all.push((
        "instances::a_pushed_status_is_never_contradicted_by_a_request_on_the_same_instance",
        Needs::Redis,
        || {
            Box::pin(
                cases::a_pushed_status_is_never_contradicted_by_a_request_on_the_same_instance(),
            )
        },
    ));
    all.push((
        "instances::revocation_reaches_a_socket_whose_session_the_sweep_dropped_on_another_instance",
        Needs::Redis,
        || {
            Box::pin(
                cases::revocation_reaches_a_socket_whose_session_the_sweep_dropped_on_another_instance(),
            )
        },
    ));
    all.push((
        "instances::redis_restarting_under_load_costs_only_the_requests_in_flight",
        Needs::RedisServer,
        || Box::pin(cases::redis_restarting_under_load_costs_only_the_requests_in_flight()),
    ));
    all.push((
        "cache::a_write_is_announced_even_when_its_writer_dies_as_it_returns",
        Needs::Redis,
        || Box::pin(cases::a_write_is_announced_even_when_its_writer_dies_as_it_returns()),
    ));
    all.push((
        "instances::a_stopped_instance_finishes_its_running_tasks_within_the_drain_timeout",
        Needs::Redis,
        || {
            Box::pin(
                cases::a_stopped_instance_finishes_its_running_tasks_within_the_drain_timeout(),
            )
        },
    ));
    all.push((
        "failover::a_task_ended_elsewhere_while_its_instance_was_cut_off_stays_ended",
        Needs::Redis,
        || Box::pin(failover::a_task_ended_elsewhere_while_its_instance_was_cut_off_stays_ended()),
    ));
    all.push((
        "failover::a_connection_refused_by_authentication_is_made_anew",
        Needs::Redis,
        || Box::pin(failover::a_connection_refused_by_authentication_is_made_anew()),
    ));
    all.push((
        "failover::a_store_outage_as_the_machine_is_assigned_is_ridden_out",
        Needs::RedisServer,
        || Box::pin(failover::a_store_outage_as_the_machine_is_assigned_is_ridden_out()),
    ));
    all.push((
        "cluster::a_redis_url_naming_a_cluster_node_is_refused_with_what_to_write",
        Needs::RedisCluster,
        || {
            Box::pin(
                cluster_cases::a_redis_url_naming_a_cluster_node_is_refused_with_what_to_write(),
            )
        },
    ));
    all.push((
        "cluster::healthz_says_which_masters_are_unreachable",
        Needs::RedisClusterServers,
        || Box::pin(cluster_cases::healthz_says_which_masters_are_unreachable()),
    ));
    all.push((
        "instances::a_state_prefix_with_glob_characters_scans_only_its_own_keys",
        Needs::Redis,
        || Box::pin(cases::a_state_prefix_with_glob_characters_scans_only_its_own_keys()),
    ));
    all.push((
        "durability::a_redis_without_an_append_only_file_is_warned_about",
        Needs::RedisServer,
        || Box::pin(cases::a_redis_without_an_append_only_file_is_warned_about()),
    ));
    all.push((
        "durability::check_config_names_every_cluster_node_without_an_append_only_file",
        Needs::RedisClusterServers,
        || {
            Box::pin(
                cluster_cases::check_config_names_every_cluster_node_without_an_append_only_file(),
            )
        },
    ));
    all.push((
        "secrets::the_redis_password_comes_from_a_file_and_is_required",
        Needs::RedisServer,
        || Box::pin(cases::the_redis_password_comes_from_a_file_and_is_required()),
    ));
    all.push((
        "routing_review::a_session_signed_out_on_one_instance_is_refused_at_once_on_another",
        Needs::Redis,
        || {
            Box::pin(
                routing_review::a_session_signed_out_on_one_instance_is_refused_at_once_on_another(
                ),
            )
        },
    ));
    all.push((
        "routing_review::a_task_that_ended_during_a_bus_gap_is_not_replayed_as_running_afterwards",
        // redis-cli (which comes with redis-server) cuts the instance off with an ACL.
        Needs::RedisServer,
        || Box::pin(routing_review::a_task_that_ended_during_a_bus_gap_is_not_replayed_as_running_afterwards()),
    ));
    all.extend(cluster_review::cases());
    all
}

/// What this machine offers.
struct Found {
    url: Option<String>,
    server: Option<PathBuf>,
    cluster_url: Option<String>,
    cluster_tools: bool,
}

impl Found {
    fn from_env() -> Found {
        Found {
            url: std::env::var("POOLGATE_TEST_REDIS")
                .ok()
                .filter(|u| !u.is_empty()),
            server: on_path("redis-server"),
            cluster_url: std::env::var("POOLGATE_TEST_REDIS_CLUSTER")
                .ok()
                .filter(|u| !u.is_empty()),
            cluster_tools: cluster::can_start().is_some(),
        }
    }

    /// Why a case with these needs cannot run here, with how to make it run; `None` if it can.
    fn missing(&self, needs: Needs) -> Option<&'static str> {
        match needs {
            Needs::Redis if self.url.is_none() && self.server.is_none() => Some(
                "no Redis: POOLGATE_TEST_REDIS is unset and there is no redis-server on the PATH; \
                 to run it: apt-get install redis-server, or POOLGATE_TEST_REDIS=redis://host:port",
            ),
            Needs::RedisServer if self.server.is_none() => Some(
                "it starts its own Redis and there is no redis-server on the PATH \
                 (POOLGATE_TEST_REDIS is not enough); to run it: apt-get install redis-server",
            ),
            Needs::RedisCluster if self.cluster_url.is_none() && !self.cluster_tools => Some(
                "no Redis Cluster: POOLGATE_TEST_REDIS_CLUSTER is unset and redis-server or \
                 redis-cli is not on the PATH; to run it: apt-get install redis-server, or \
                 POOLGATE_TEST_REDIS_CLUSTER=redis-cluster://host:port,…",
            ),
            Needs::RedisClusterServers if !self.cluster_tools => Some(
                "it starts its own Redis Cluster and redis-server or redis-cli is not on the PATH \
                 (POOLGATE_TEST_REDIS_CLUSTER is not enough); to run it: apt-get install redis-server",
            ),
            _ => None,
        }
    }
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let found = Found::from_env();
    let required = std::env::var("POOLGATE_TEST_REQUIRE_REDIS").is_ok_and(|v| v == "1");
    let mut trials = Vec::new();
    for (name, needs, case) in cases() {
        let trial = match found.missing(needs) {
            None => Trial::test(name, move || run(case)),
            Some(why) if required => Trial::test(name, move || {
                Err(format!("POOLGATE_TEST_REQUIRE_REDIS=1, but {why}").into())
            }),
            Some(why) => {
                if !args.list && selected(&args, name) {
                    println!("skipped redis case {name}: {why}");
                }
                Trial::test(name, move || run(case)).with_ignored_flag(true)
            }
        };
        trials.push(trial);
    }
    // The harness's own promises, checked by running this binary again in a changed
    // environment (not inside those runs, which would recurse).
    if std::env::var_os(CHILD).is_none() {
        trials.extend([
            Trial::test(
                "harness::without_redis_every_case_is_skipped_on_one_line_and_counted_as_ignored",
                without_redis_every_case_is_skipped_on_one_line_and_counted_as_ignored,
            ),
            Trial::test(
                "harness::without_redis_the_run_fails_when_redis_is_required",
                without_redis_the_run_fails_when_redis_is_required,
            ),
            Trial::test(
                "harness::a_redis_url_without_the_program_skips_only_the_cases_that_start_their_own",
                a_redis_url_without_the_program_skips_only_the_cases_that_start_their_own,
            ),
        ]);
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// Set in the environment of the runs the harness tests make of this binary.
const CHILD: &str = "POOLGATE_TEST_REDIS_HARNESS_CHILD";

/// This binary, run with a `PATH` that has no redis-server and the given variables.
fn run_self(vars: &[(&str, &str)], args: &[&str]) -> Result<(bool, String), Failed> {
    let empty = tempfile::tempdir().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = std::process::Command::new(exe);
    command
        .args(args)
        .env(CHILD, "1")
        .env("PATH", empty.path())
        .env_remove("POOLGATE_TEST_REDIS")
        .env_remove("POOLGATE_TEST_REDIS_CLUSTER")
        .env_remove("POOLGATE_TEST_REQUIRE_REDIS");
    for (key, value) in vars {
        command.env(key, value);
    }
    let out = command.output().map_err(|e| e.to_string())?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

fn check(ok: bool, what: &str, output: &str) -> Result<(), Failed> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what}; the run printed:\n{output}").into())
    }
}

fn without_redis_every_case_is_skipped_on_one_line_and_counted_as_ignored() -> Result<(), Failed> {
    let (success, out) = run_self(&[], &[])?;
    let n = cases().len();
    check(success, "a run without Redis succeeds", &out)?;
    for (name, _, _) in cases() {
        let line = out
            .lines()
            .find(|l| l.starts_with("skipped redis case ") && l.contains(name));
        check(
            line.is_some_and(|l| l.contains("apt-get install redis-server")),
            &format!("one line says {name} was skipped and how to run it"),
            &out,
        )?;
    }
    check(
        out.contains(&format!("0 passed; 0 failed; {n} ignored")),
        "every case counted as ignored, none as passed",
        &out,
    )
}

fn without_redis_the_run_fails_when_redis_is_required() -> Result<(), Failed> {
    let (success, out) = run_self(&[("POOLGATE_TEST_REQUIRE_REDIS", "1")], &[])?;
    let n = cases().len();
    check(!success, "the run fails", &out)?;
    check(
        out.contains(&format!("0 passed; {n} failed; 0 ignored"))
            && out.contains("POOLGATE_TEST_REQUIRE_REDIS=1, but"),
        "every case fails and says why",
        &out,
    )
}

fn a_redis_url_without_the_program_skips_only_the_cases_that_start_their_own() -> Result<(), Failed>
{
    // `--list --ignored` lists the ignored cases without running anything. (The cluster cases
    // need a cluster or the programs to start one: a Redis URL is not enough for them either.)
    let vars = [("POOLGATE_TEST_REDIS", "redis://127.0.0.1:1")];
    let (success, out) = run_self(&vars, &["--list", "--ignored"])?;
    check(success, "the listing succeeds", &out)?;
    let listed: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .collect();
    let expected: Vec<&str> = cases()
        .into_iter()
        .filter(|(_, needs, _)| *needs != Needs::Redis)
        .map(|(name, _, _)| name)
        .collect();
    check(
        listed == expected,
        &format!("only {expected:?} are ignored"),
        &out,
    )
}
