//! Pool policies across instances on one shared store (the single-instance cases run on
//! every backend from tests/common/policies.rs).

use crate::cluster_server::cluster_url;
use crate::redis_server::redis_url;

pub(crate) fn cases() -> Vec<(&'static str, crate::Needs, crate::harness::Case)> {
    use crate::Needs::*;
    use poolgate_test_common::policies::idle_release_counts_a_socket_on_another_instance as idle;
    vec![
        (
            "policies::redis::idle_release_counts_a_socket_on_another_instance",
            Redis,
            || Box::pin(async { idle(&redis_url()).await }),
        ),
        (
            "policies::redis_cluster::idle_release_counts_a_socket_on_another_instance",
            RedisCluster,
            || Box::pin(async { idle(&cluster_url()).await }),
        ),
    ]
}
