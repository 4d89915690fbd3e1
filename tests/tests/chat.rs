//! Browser end-to-end tests: real signaling server, real headless Chromium,
//! run by `cargo xtask test` inside a loopback-only network namespace.

use std::time::{Duration, Instant};

use anyhow::Result;
use ferry_e2e::{Browser, Page, Server};

const CONNECT: Duration = Duration::from_secs(20);
const DELIVER: Duration = Duration::from_secs(10);

/// Opens a page that creates a room through the UI and returns it with the link.
async fn create_room(browser: &Browser, server: &Server) -> Result<(Page, String)> {
    let (page, link) = browser.page_in_new_room(server).await?;
    page.peer_id().await?;
    Ok((page, link))
}

async fn join_link(browser: &Browser, link: &str) -> Result<Page> {
    let page = browser.page().await?;
    page.open(link).await?;
    Ok(page)
}

#[tokio::test]
async fn two_pages_chat_both_ways_through_a_shared_link() -> Result<()> {
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let (a, link) = create_room(&browser, &server).await?;
    assert!(link.contains('#'), "the room link carries the code: {link}");
    a.wait_for("document.querySelector('#qr svg') !== null", DELIVER)
        .await
        .map_err(|e| e.context("a QR code is shown"))?;
    let b = join_link(&browser, &link).await?;
    a.wait_connected_peers(1, CONNECT).await?;
    b.wait_connected_peers(1, CONNECT).await?;
    // The route badge shows the candidate type of the selected pair.
    a.wait_for(
        "document.querySelector('[data-peer-id]').dataset.route === 'host'",
        DELIVER,
    )
    .await?;

    a.send_chat("hello from A").await?;
    b.wait_message("hello from A", DELIVER).await?;
    b.send_chat("and hello from B ✓").await?;
    a.wait_message("and hello from B ✓", DELIVER).await?;
    // The sender sees its own message too.
    a.wait_for("[...document.querySelectorAll('li.msg.mine .bubble')].some(b => b.textContent === 'hello from A')", DELIVER)
        .await?;
    let _ = std::fs::create_dir_all("../target/e2e");
    a.screenshot("../target/e2e/two-pages-a.png").await?;
    a.close().await?;
    b.close().await?;
    Ok(())
}

#[tokio::test]
async fn three_pages_form_a_mesh_and_every_message_reaches_the_other_two() -> Result<()> {
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let (a, link) = create_room(&browser, &server).await?;
    let b = join_link(&browser, &link).await?;
    let c = join_link(&browser, &link).await?;
    let pages = [&a, &b, &c];
    for p in pages {
        p.wait_connected_peers(2, CONNECT).await?;
    }
    for (i, p) in pages.iter().enumerate() {
        p.send_chat(&format!("message from page {i}")).await?;
    }
    for (i, p) in pages.iter().enumerate() {
        for j in 0..3 {
            if i != j {
                p.wait_message(&format!("message from page {j}"), DELIVER)
                    .await?;
            }
        }
    }
    for p in [a, b, c] {
        p.close().await?;
    }
    Ok(())
}

#[tokio::test]
async fn chat_survives_the_server_and_pages_rejoin_when_it_returns() -> Result<()> {
    let mut server = Server::start(1_000).await?;
    let port = server.port;
    let browser = Browser::start().await?;
    let (a, link) = create_room(&browser, &server).await?;
    let b = join_link(&browser, &link).await?;
    a.wait_connected_peers(1, CONNECT).await?;
    b.wait_connected_peers(1, CONNECT).await?;
    let (id_a, id_b) = (a.peer_id().await?, b.peer_id().await?);

    server.stop().await?;
    for p in [&a, &b] {
        p.wait_for(
            "document.querySelector(\"[data-testid='server-status']\").dataset.state === 'lost'",
            DELIVER,
        )
        .await?;
        p.wait_for("!document.getElementById('banner').hidden && document.getElementById('banner').textContent.includes('unreachable')", DELIVER)
            .await?;
    }
    a.send_chat("server is gone, still talking").await?;
    b.wait_message("server is gone, still talking", DELIVER)
        .await?;
    b.send_chat("loud and clear").await?;
    a.wait_message("loud and clear", DELIVER).await?;

    let server = Server::start_on(port, 1_000).await?;
    for p in [&a, &b] {
        p.wait_for(
            "document.querySelector(\"[data-testid='server-status']\").dataset.state === 'joined'",
            Duration::from_secs(15),
        )
        .await?;
    }
    assert_eq!(a.peer_id().await?, id_a, "rejoining keeps the peer id");
    assert_eq!(b.peer_id().await?, id_b, "rejoining keeps the peer id");
    a.wait_connected_peers(1, CONNECT).await?;
    // A newcomer after the restart meets both of them.
    let c = join_link(&browser, &link).await?;
    c.wait_connected_peers(2, CONNECT).await?;
    a.wait_connected_peers(2, CONNECT).await?;
    c.send_chat("hi both").await?;
    a.wait_message("hi both", DELIVER).await?;
    b.wait_message("hi both", DELIVER).await?;
    drop(server);
    for p in [a, b, c] {
        p.close().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_closed_page_is_seen_leaving_within_the_heartbeat_bound() -> Result<()> {
    let grace = Duration::from_millis(2_000);
    let server = Server::start_with(
        ferry_e2e::free_port()?,
        1_000,
        &["--reconnect-grace-ms".into(), grace.as_millis().to_string()],
    )
    .await?;
    let browser = Browser::start().await?;
    let (a, link) = create_room(&browser, &server).await?;
    let b = join_link(&browser, &link).await?;
    a.wait_connected_peers(1, CONNECT).await?;
    let closed = Instant::now();
    b.close().await?;
    // Three missed heartbeats plus one interval of ticker slack, then the
    // grace period during which its seat is kept for a reload.
    let bound = server.heartbeat() * 4 + grace;
    a.wait_for(
        "document.querySelectorAll('[data-testid=peers] li[data-peer-id]').length === 0",
        bound,
    )
    .await?;
    let took = closed.elapsed();
    println!("peer left seen after {took:?} (bound {bound:?})");
    a.wait_for(
        "[...document.querySelectorAll('li.msg.system')].some(m => m.textContent.endsWith('left'))",
        DELIVER,
    )
    .await?;
    a.close().await?;
    Ok(())
}

#[tokio::test]
async fn a_reloaded_page_keeps_its_seat_and_nobody_sees_it_leave() -> Result<()> {
    let server = Server::start(1_000).await?;
    let browser = Browser::start().await?;
    let (a, link) = create_room(&browser, &server).await?;
    let b = join_link(&browser, &link).await?;
    a.wait_connected_peers(1, CONNECT).await?;
    b.wait_connected_peers(1, CONNECT).await?;
    let id_b = b.peer_id().await?;
    b.eval("location.reload(); return true").await?;
    b.wait_for(
        "window.__ferry && window.__ferry.client && window.__ferry.client.peerId",
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(b.peer_id().await?, id_b, "same peer id after the reload");
    b.wait_connected_peers(1, CONNECT).await?;
    a.wait_connected_peers(1, CONNECT).await?;
    let left = a
        .eval("return window.__ferry.events.filter(e => e.type === 'peer_left').length")
        .await?;
    assert_eq!(left.as_u64(), Some(0), "the others were never told it left");
    b.send_chat("back again").await?;
    a.wait_message("back again", DELIVER).await?;
    a.close().await?;
    b.close().await?;
    Ok(())
}

#[tokio::test]
async fn a_room_password_keeps_out_whoever_lacks_it() -> Result<()> {
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let a = browser.page().await?;
    a.open(&server.url()).await?;
    a.type_into("room-password", "hunter2").await?;
    a.click("create-room").await?;
    let link = a.room_link().await?;
    a.wait_for(
        "!document.querySelector(\"[data-testid='room-locked']\").hidden",
        DELIVER,
    )
    .await?;
    // The link alone is not enough.
    let b = browser.page().await?;
    b.open(&link).await?;
    let error_shows = |text: &str| {
        format!(
            "!document.getElementById('landing').hidden && !document.getElementById('join-error').hidden && document.getElementById('join-error').textContent.includes('{text}')"
        )
    };
    b.wait_for(&error_shows("has a password"), CONNECT).await?;
    let _ = std::fs::create_dir_all("../target/e2e");
    b.screenshot("../target/e2e/chat-password.png").await?;
    b.type_into("room-password", "hunter3").await?;
    b.click("join-room").await?;
    b.wait_for(&error_shows("not right"), CONNECT).await?;
    b.type_into("room-password", "hunter2").await?;
    b.click("join-room").await?;
    b.wait_connected_peers(1, CONNECT).await?;
    a.wait_connected_peers(1, CONNECT).await?;
    b.send_chat("let me in").await?;
    a.wait_message("let me in", DELIVER).await?;
    a.close().await?;
    b.close().await?;
    Ok(())
}
