//! A Redis Cluster whose nodes all stop answering under a running service: 503 within a
//! bounded time, not ready, then recovery by itself. In its own test binary because it pauses
//! the shared cluster, which must not disturb the other cluster tests.

mod common;

use common::server::{outage_and_recovery, start};
use common::*;

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

on_backend!(
    redis_cluster_outage,
    RedisCluster,
    an_unresponsive_cluster_gives_503_then_recovers
);
