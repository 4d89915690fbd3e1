//! Several signaling instances sharing rooms through a real `redis-server`,
//! with real pages, inside the loopback-only namespace.

use std::time::Duration;

use anyhow::{Context, Result};
use ferry_e2e::{Balancer, Browser, Redis, Server, free_port};

const CONNECT: Duration = Duration::from_secs(20);

async fn instance(redis: &str) -> Result<Server> {
    Server::start_with(free_port()?, 1_000, &["--redis".into(), redis.into()]).await
}

/// `ferry_connections` from an instance's `/metrics`.
async fn connections(server: &Server) -> Result<u64> {
    let body = ferry_e2e::http_get(server.port, "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix("ferry_connections "))
        .and_then(|v| v.trim().parse().ok())
        .context("no ferry_connections in /metrics")
}

#[tokio::test]
async fn pages_on_two_instances_chat_and_move_when_one_dies() -> Result<()> {
    let redis = Redis::start_on(free_port()?).await?;
    let mut a = instance(&redis.url()).await?;
    let b = instance(&redis.url()).await?;
    // Page 1 reaches the instances through a failover balancer (A first);
    // page 2 talks to B directly.
    let lb = Balancer::start(vec![a.port, b.port]).await?;
    let browser = Browser::start().await?;
    let p1 = browser.page().await?;
    p1.open(&lb.url()).await?;
    p1.click("create-room").await?;
    let link = p1.room_link().await?;
    let code = link
        .rsplit('#')
        .next()
        .context("no code in the link")?
        .to_owned();
    let p2 = browser.page().await?;
    p2.open(&format!("{}#{code}", b.url())).await?;
    p1.wait_connected_peers(1, CONNECT).await?;
    p2.wait_connected_peers(1, CONNECT).await?;
    assert_eq!(connections(&a).await?, 1, "page 1 is on instance A");
    assert_eq!(connections(&b).await?, 1, "page 2 is on instance B");
    p1.send_chat("from A's page").await?;
    p2.wait_message("from A's page", CONNECT).await?;
    p2.send_chat("from B's page").await?;
    p1.wait_message("from B's page", CONNECT).await?;

    let id1 = p1.peer_id().await?;
    a.stop().await?;
    // Page 1 reconnects through the balancer, now to B, and keeps its seat.
    p1.wait_for(
        "document.querySelector(\"[data-testid='server-status']\").dataset.state === 'lost'",
        Duration::from_secs(15),
    )
    .await
    .context("page 1 did not notice its instance died")?;
    p1.wait_for(
        "document.querySelector(\"[data-testid='server-status']\").dataset.state === 'joined'",
        Duration::from_secs(30),
    )
    .await
    .context("page 1 did not rejoin through the other instance")?;
    assert_eq!(p1.peer_id().await?, id1, "page 1 kept its peer id");
    assert_eq!(connections(&b).await?, 2, "both pages are on B now");
    // Signaling through B still works (a renegotiation would use it), and
    // so does chat.
    p1.send_chat("after the failover").await?;
    p2.wait_message("after the failover", CONNECT).await?;
    // A third page joins through B and meets both.
    let p3 = browser.page().await?;
    p3.open(&format!("{}#{code}", b.url())).await?;
    p3.wait_connected_peers(2, CONNECT).await?;
    p1.wait_connected_peers(2, CONNECT).await?;
    for p in [p1, p2, p3] {
        p.close().await?;
    }
    Ok(())
}

#[tokio::test]
async fn an_instance_outlives_redis_and_rejoins_it() -> Result<()> {
    // Redis is not there when the instance starts: it serves alone.
    let redis_port = free_port()?;
    let url = format!("redis://127.0.0.1:{redis_port}");
    let a = instance(&url).await?;
    let browser = Browser::start().await?;
    let p1 = browser.page().await?;
    p1.open(&a.url()).await?;
    p1.click("create-room").await?;
    let link = p1.room_link().await?;
    let p2 = browser.page().await?;
    p2.open(&link).await?;
    p1.wait_connected_peers(1, CONNECT).await?;
    p2.wait_connected_peers(1, CONNECT).await?;

    // Redis comes up: A joins the cluster and writes its room there, so a
    // page on a second instance meets the two.
    let mut redis = Redis::start_on(redis_port).await?;
    let b = instance(&url).await?;
    let code = link.rsplit('#').next().context("no code")?.to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p3 = browser.page().await?;
    p3.open(&format!("{}#{code}", b.url())).await?;
    p3.wait_connected_peers(2, CONNECT)
        .await
        .context("a page on B did not meet the room A kept while Redis was away")?;

    // Redis dies mid-run: both instances keep serving and lose no room.
    redis.stop().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    p1.send_chat("redis is gone").await?;
    p2.wait_message("redis is gone", CONNECT).await?;
    p3.wait_message("redis is gone", CONNECT).await?;
    let health = a.healthz().await?;
    assert!(health.contains("rooms=1"), "A still has the room: {health}");
    // A newcomer on A is still served (single-instance mode).
    let p4 = browser.page().await?;
    p4.open(&link).await?;
    p4.wait_for(
        "document.querySelector(\"[data-testid='server-status']\").dataset.state === 'joined'",
        CONNECT,
    )
    .await?;
    p1.wait_for(
        "[...document.querySelectorAll('[data-testid=peers] li[data-peer-id]')].length >= 3",
        CONNECT,
    )
    .await?;
    for p in [p1, p2, p3, p4] {
        p.close().await?;
    }
    Ok(())
}
