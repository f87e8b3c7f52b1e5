//! A Redis Cluster whose nodes all stop answering under a running service: 503 within a
//! bounded time, not ready, then recovery by itself. It pauses the shared cluster, which must
//! not disturb the other tests on it: it holds the cluster alone
//! ([`pause_shared_cluster`](crate::common::pause_shared_cluster)), so it waits for the tests
//! that use the cluster to end, and those that start meanwhile wait for it.

use crate::common::server::{outage_and_recovery, start};
use crate::common::*;

/// A cluster's nodes advertise their own addresses, so a proxy cannot stand in for them:
/// instead every node stops answering clients for a few seconds (`CLIENT PAUSE`).
async fn an_unresponsive_cluster_gives_503_then_recovers(backend: Backend) {
    let url = namespaced_url(backend).await;
    let server = start(&format!("{url}&response_timeout=500ms"));
    let nodes: Vec<String> = url
        .trim_start_matches("redis-cluster://")
        .split('?')
        .next()
        .unwrap()
        .split(',')
        .map(|n| format!("redis://{n}"))
        .collect();
    let pause = async || {
        for node in &nodes {
            let client = ::redis::Client::open(node.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let _: () = ::redis::cmd("CLIENT")
                .arg(&["PAUSE", "4000", "ALL"])
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };
    outage_and_recovery(&server, pause, async || {}).await;
}

mod redis_cluster_outage {
    use crate::common::{Backend, pause_shared_cluster};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unresponsive_cluster_gives_503_then_recovers() {
        let backend = Backend::RedisCluster;
        if !backend.available() {
            return;
        }
        let _alone = pause_shared_cluster().await;
        super::an_unresponsive_cluster_gives_503_then_recovers(backend).await
    }
}
