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
use poolgate_test_common::{backend_cases, backends, harness, helpers};

mod bus;
mod cache;
mod cluster;
mod cluster_failover;
mod cluster_keys;
mod cluster_server;
mod durability;
mod failover;
mod instances;
mod policies;
mod redis_server;
mod routing;
mod secrets;
mod warm;

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
/// tests/common/backends.rs), then the Redis-only ones, each file's `cases()` (a case is
/// registered as `FILE::NAME`).
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
                (|| Box::pin(async { backends::$any(&cluster_server::cluster_url()).await })) as Case,
            ),)* $((
                concat!("backends::redis_cluster::", stringify!($durable)),
                Needs::RedisCluster,
                (|| Box::pin(async { backends::$durable(&cluster_server::cluster_url()).await })) as Case,
            ),)*]
        };
    }
    let mut all = backend_cases!(redis_suite);
    all.extend(backend_cases!(cluster_suite));
    // The Redis-only cases: each file registers its own, under its own name.
    for cases in [
        cluster::cases,
        instances::cases,
        bus::cases,
        cache::cases,
        failover::cases,
        cluster_keys::cases,
        durability::cases,
        secrets::cases,
        routing::cases,
        cluster_failover::cases,
        policies::cases,
        warm::cases,
    ] {
        all.extend(cases());
    }
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
            cluster_tools: cluster_server::can_start().is_some(),
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
