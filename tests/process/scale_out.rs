//! Shared stores as they are deployed: several real service processes on one store, and the
//! store taken away and brought back under a running service.

use std::net::SocketAddr;

use crate::common::proxy::Proxy;
use crate::common::server::{Server, context_url, outage_and_recovery, read, readiness, start};
use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn two_instances_share_one_store_without_losing_updates(backend: Backend) {
    let url = namespaced_url(backend).await;
    let servers = [start(&url), start(&url)];
    let client = reqwest::Client::new();
    let created = client
        .put(format!("{}?upsert=true", context_url(&servers[0], "shared")))
        .bearer_auth(manager())
        .json(&json!({"context": {"counter": 0}, "metadata": {"version": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let (status, seen) = read(&client, &servers[1], "shared").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a write on one instance is read back from the other at once"
    );
    assert_eq!(seen["context"]["counter"], json!(0));

    let bases: Vec<String> = servers.iter().map(|s| context_url(s, "shared")).collect();
    let (clients, increments) = (8, 6);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, bases) = (client.clone(), bases.clone());
            tokio::spawn(async move {
                let mut done = 0;
                let mut turn = c;
                while done < increments {
                    // Read on one instance, write on the other.
                    let (from, to) = (&bases[turn % 2], &bases[(turn + 1) % 2]);
                    turn += 1;
                    let current: Value = client
                        .get(from)
                        .bearer_auth(manager())
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let counter = current["context"]["counter"].as_u64().unwrap();
                    // PUT replaces the whole map: send back all of it, the counter changed.
                    let mut context = current["context"].clone();
                    context["counter"] = json!(counter + 1);
                    let body = json!({"context": context, "metadata": current["metadata"]});
                    let reply = client.put(to).bearer_auth(manager()).json(&body).send().await.unwrap();
                    match reply.status() {
                        StatusCode::NO_CONTENT => done += 1,
                        StatusCode::CONFLICT => {}
                        other => panic!("unexpected {other}: {}", reply.text().await.unwrap()),
                    }
                }
            })
        })
        .collect();
    let posters: Vec<_> = (0..16)
        .map(|i| {
            let (client, base) = (client.clone(), bases[i % 2].clone());
            tokio::spawn(async move {
                let reply = client
                    .post(format!("{base}/attributes"))
                    .bearer_auth(manager())
                    .json(&json!({"key": format!("a{i}"), "value": i}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(reply.status(), StatusCode::NO_CONTENT);
            })
        })
        .collect();
    for task in tasks.into_iter().chain(posters) {
        task.await.unwrap();
    }
    for server in &servers {
        let (_, end) = read(&client, server, "shared").await;
        assert_eq!(
            end["context"]["counter"],
            json!(clients * increments),
            "no increment was lost"
        );
        assert_eq!(
            end["context"].as_object().unwrap().len(),
            17,
            "every attribute survived"
        );
        assert_eq!(end["metadata"]["version"], json!(1 + clients * increments + 16));
    }
}

on_backend!(postgres, Postgres, two_instances_share_one_store_without_losing_updates);
on_backend!(redis, Redis, two_instances_share_one_store_without_losing_updates);
on_backend!(
    redis_cluster,
    RedisCluster,
    two_instances_share_one_store_without_losing_updates
);

fn server_address(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host_port = host_port.split(['/', '?']).next().unwrap();
    host_port
        .parse()
        .expect("the test server URL names an IP address and port")
}

async fn a_store_behind_a_closed_port_gives_503_then_recovers(backend: Backend) {
    let url = namespaced_url(backend).await;
    let target = server_address(&url);
    let mut proxy = Proxy::start(target).await;
    let via_proxy = url.replacen(&target.to_string(), &format!("127.0.0.1:{}", proxy.port), 1);
    let timeouts = match backend {
        Backend::Postgres => "&connect_timeout=1s&statement_timeout=2s",
        _ => "&connect_timeout=1s&response_timeout=1s",
    };
    let server = start(&format!("{via_proxy}{timeouts}"));
    let proxy_cell = std::sync::Arc::new(tokio::sync::Mutex::new(&mut proxy));
    let (away, back) = (proxy_cell.clone(), proxy_cell.clone());
    outage_and_recovery(
        &server,
        async || away.lock().await.stop().await,
        async || back.lock().await.resume().await,
    )
    .await;
}

on_backend!(
    postgres_outage,
    Postgres,
    a_store_behind_a_closed_port_gives_503_then_recovers
);
on_backend!(
    redis_outage,
    Redis,
    a_store_behind_a_closed_port_gives_503_then_recovers
);

async fn instances_starting_together_migrate_once(backend: Backend) {
    let url = namespaced_url(backend).await;
    // Three processes on a fresh, empty schema at the same moment: the migration lock makes
    // them take turns, and all of them come up.
    let servers: Vec<Server> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3).map(|_| scope.spawn(|| start(&url))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("the instance starts"))
            .collect()
    });
    let client = reqwest::Client::new();
    for server in &servers {
        assert_eq!(readiness(&client, server).await, StatusCode::OK);
    }
}

on_backend!(postgres_migrations, Postgres, instances_starting_together_migrate_once);
