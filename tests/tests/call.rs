//! Calls end to end: real pages with Chromium's fake camera and microphone
//! (a test pattern and a beep), a real server, inside the loopback-only
//! namespace. Every check reads the receiving page's `getStats`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_e2e::{Browser, Page, Server, hash_file, make_file, tempdir};
use serde_json::Value;

const CONNECT: Duration = Duration::from_secs(20);

async fn room_of(browser: &Browser, server: &Server, n: usize) -> Result<Vec<Page>> {
    let first = browser.page().await?;
    first.open(&server.url()).await?;
    first.click("create-room").await?;
    let link = first.room_link().await?;
    let mut pages = vec![first];
    for _ in 1..n {
        let p = browser.page().await?;
        p.open(&link).await?;
        pages.push(p);
    }
    for p in &pages {
        p.wait_connected_peers(n - 1, CONNECT).await?;
    }
    Ok(pages)
}

/// Starts a call on `pages[0]` and answers it on the others.
async fn call_all(pages: &[Page]) -> Result<()> {
    pages[0].click("start-call").await?;
    for p in &pages[1..] {
        p.wait_for(
            "!document.querySelector(\"[data-testid='incoming-call']\").hidden",
            CONNECT,
        )
        .await
        .context("no incoming call shown")?;
        p.click("answer-call").await?;
    }
    Ok(())
}

/// What `page` receives from `peer`, from its stats overlay's source.
async fn stats(page: &Page, peer: &str) -> Result<Value> {
    page.eval_async(&format!(
        "const done = arguments[arguments.length - 1]; window.__ferry.calls.peerStats('{peer}').then(done, (e) => done(String(e)));"
    ))
    .await
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

/// Growth of `field` over `window`.
async fn growth(page: &Page, peer: &str, field: &str, window: Duration) -> Result<f64> {
    let a = num(&stats(page, peer).await?, field);
    tokio::time::sleep(window).await;
    let b = num(&stats(page, peer).await?, field);
    Ok(b - a)
}

/// Waits until `field` keeps rising (two samples in a row).
async fn wait_rising(page: &Page, peer: &str, field: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut ok = 0;
    loop {
        if growth(page, peer, field, Duration::from_millis(700)).await? > 0.0 {
            ok += 1;
            if ok >= 2 {
                return Ok(());
            }
        } else {
            ok = 0;
        }
        if Instant::now() > deadline {
            bail!(
                "{field} from {peer} is not rising: {}",
                stats(page, peer).await?
            );
        }
    }
}

/// Waits until `field` stays flat over a second.
async fn wait_flat(page: &Page, peer: &str, field: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if growth(page, peer, field, Duration::from_secs(1))
            .await?
            .abs()
            < 1e-9
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{field} from {peer} does not stop: {}",
                stats(page, peer).await?
            );
        }
    }
}

#[tokio::test]
async fn two_pages_call_mute_turn_the_camera_off_and_share_the_screen() -> Result<()> {
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let pages = room_of(&browser, &server, 2).await?;
    let (a, b) = (&pages[0], &pages[1]);
    let (ida, idb) = (a.peer_id().await?, b.peer_id().await?);
    call_all(&pages).await?;
    // Both see and hear each other.
    for (p, other) in [(a, &idb), (b, &ida)] {
        wait_rising(p, other, "framesDecoded", CONNECT).await?;
        wait_rising(p, other, "audioPackets", CONNECT).await?;
        wait_rising(p, other, "audioEnergy", CONNECT).await?;
    }
    let _ = std::fs::create_dir_all("../target/e2e");
    b.click("toggle-stats").await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.screenshot("../target/e2e/call.png").await?;
    let overlay = b
        .eval("return document.querySelector(\"[data-testid='tile'] .tile-stats\").textContent")
        .await?;
    let overlay = overlay.as_str().unwrap_or_default();
    assert!(
        overlay.contains("kbit/s") && overlay.contains("RTT") && overlay.contains("host"),
        "stats overlay: {overlay:?}"
    );
    let names = b
        .eval("return [...document.querySelectorAll(\"[data-testid='tile'] figcaption\")].map(f => f.textContent)")
        .await?;
    assert_eq!(
        names.as_array().map(Vec::len),
        Some(1),
        "one remote tile: {names}"
    );

    // Mute: silence (no energy) reaches B; unmute brings the beep back.
    a.click("toggle-mic").await?;
    wait_flat(b, &ida, "audioEnergy", Duration::from_secs(10)).await?;
    a.click("toggle-mic").await?;
    wait_rising(b, &ida, "audioEnergy", Duration::from_secs(10)).await?;

    // Camera off: no more frames; on again: frames again.
    a.click("toggle-camera").await?;
    wait_flat(b, &ida, "framesDecoded", Duration::from_secs(10)).await?;
    a.click("toggle-camera").await?;
    wait_rising(b, &ida, "framesDecoded", Duration::from_secs(10)).await?;

    // Screen share, with a canvas standing in for the screen picker that a
    // headless browser lacks; everything after the pick is the page's code.
    a.eval("window.__ferry.getDisplayMedia = async () => { const c = document.createElement('canvas'); c.width = 320; c.height = 180; const g = c.getContext('2d'); let i = 0; setInterval(() => { g.fillStyle = `hsl(${i++ % 360} 70% 50%)`; g.fillRect(0, 0, 320, 180); }, 33); return c.captureStream(30); }; return true").await?;
    a.click("toggle-screen").await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while num(&stats(b, &ida).await?, "width") != 320.0 {
        if Instant::now() > deadline {
            bail!(
                "the shared screen does not arrive: {}",
                stats(b, &ida).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_rising(b, &ida, "framesDecoded", Duration::from_secs(10)).await?;
    a.click("toggle-screen").await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while num(&stats(b, &ida).await?, "width") == 320.0 {
        if Instant::now() > deadline {
            bail!("the camera does not come back: {}", stats(b, &ida).await?);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_rising(b, &ida, "framesDecoded", Duration::from_secs(10)).await?;
    wait_rising(b, &ida, "audioPackets", Duration::from_secs(10)).await?;

    // Hang up: B's tile for A goes away and A's call panel is idle.
    a.click("hang-up").await?;
    b.wait_for(
        "document.querySelectorAll(\"[data-testid='tile']\").length === 0",
        CONNECT,
    )
    .await
    .context("B still shows A after A hung up")?;
    a.wait_for(
        "document.querySelector(\"[data-testid='call']\").dataset.state === 'idle'",
        CONNECT,
    )
    .await?;
    for p in pages {
        p.close().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_mesh_of_four_decodes_video_from_the_other_three() -> Result<()> {
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let pages = room_of(&browser, &server, 4).await?;
    let mut ids = Vec::new();
    for p in &pages {
        ids.push(p.peer_id().await?);
    }
    call_all(&pages).await?;
    for (i, p) in pages.iter().enumerate() {
        for (j, other) in ids.iter().enumerate() {
            if i != j {
                wait_rising(p, other, "framesDecoded", Duration::from_secs(45))
                    .await
                    .with_context(|| format!("page {i} from page {j}"))?;
            }
        }
        let tiles = p
            .eval("return document.querySelectorAll(\"[data-testid='tile']\").length")
            .await?;
        assert_eq!(tiles.as_u64(), Some(3), "page {i} shows three remote tiles");
    }
    // A page that drops out is removed from the others' grids.
    let mut pages = pages;
    let gone = pages.pop().context("four pages")?;
    gone.close().await?;
    for (i, p) in pages.iter().enumerate() {
        p.wait_for(
            "document.querySelectorAll(\"[data-testid='tile']\").length === 2",
            Duration::from_secs(30),
        )
        .await
        .with_context(|| format!("page {i} still shows the page that left"))?;
    }
    for p in pages {
        p.close().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_file_swap_completes_during_a_call_and_a_page_without_camera_joins_with_sound()
-> Result<()> {
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let pages = room_of(&browser, &server, 2).await?;
    let (a, b) = (&pages[0], &pages[1]);
    let (ida, idb) = (a.peer_id().await?, b.peer_id().await?);
    // B has a microphone but no camera.
    b.eval("const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices); navigator.mediaDevices.getUserMedia = (c) => c.video ? Promise.reject(new DOMException('no camera', 'NotFoundError')) : real(c); return true").await?;
    call_all(&pages).await?;
    b.wait_for(
        "!document.querySelector(\"[data-testid='call-notice']\").hidden",
        CONNECT,
    )
    .await?;
    let notice = b
        .eval("return document.querySelector(\"[data-testid='call-notice']\").textContent")
        .await?;
    assert!(
        notice.as_str().unwrap_or_default().contains("sound only"),
        "{notice}"
    );
    wait_rising(b, &ida, "framesDecoded", CONNECT).await?;
    wait_rising(a, &idb, "audioPackets", CONNECT).await?;

    let work = tempdir("ferry-call-swap")?;
    let file = work.join("during-call.bin");
    make_file(&file, 24 << 20, "during a call")?;
    a.upload("pick-files", &file).await?;
    b.wait_for("document.querySelector(\"li.transfer[data-direction='in'][data-state='offered']\") !== null", CONNECT).await?;
    b.click("accept-transfer").await?;
    b.wait_for("document.querySelector(\"li.transfer[data-direction='in']\").dataset.state === 'completed'", Duration::from_secs(120)).await?;
    let shown = b
        .eval("return document.querySelector(\"[data-verified='true']\").dataset.hash")
        .await?;
    assert_eq!(shown.as_str(), Some(hash_file(&file)?.to_hex().as_str()));
    // The call is still alive.
    wait_rising(b, &ida, "framesDecoded", CONNECT).await?;
    for p in pages {
        p.close().await?;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[tokio::test]
async fn the_same_pages_can_call_again_after_hanging_up() -> Result<()> {
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let pages = room_of(&browser, &server, 2).await?;
    let (a, b) = (&pages[0], &pages[1]);
    let (ida, idb) = (a.peer_id().await?, b.peer_id().await?);
    for round in 0..3 {
        call_all(&pages).await?;
        wait_rising(b, &ida, "framesDecoded", CONNECT)
            .await
            .with_context(|| format!("call {round}: B from A"))?;
        wait_rising(a, &idb, "framesDecoded", CONNECT)
            .await
            .with_context(|| format!("call {round}: A from B"))?;
        a.click("hang-up").await?;
        b.wait_for("document.querySelector(\"[data-testid='call']\").dataset.state === 'active' && document.querySelectorAll(\"[data-testid='tile']\").length === 0", CONNECT).await?;
        b.click("hang-up").await?;
        for p in [a, b] {
            p.wait_for(
                "document.querySelector(\"[data-testid='call']\").dataset.state === 'idle'",
                CONNECT,
            )
            .await?;
        }
    }
    for p in pages {
        p.close().await?;
    }
    Ok(())
}
