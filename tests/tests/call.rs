//! Calls end to end: real pages with Chromium's fake camera and microphone
//! (a test pattern and a beep), a real server, inside the loopback-only
//! namespace. Every check reads the receiving page's `getStats`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_e2e::{Browser, Page, Server, hash_file, make_file, tempdir};
use serde_json::Value;

const CONNECT: Duration = Duration::from_secs(20);

async fn room_of(browser: &Browser, server: &Server, n: usize) -> Result<Vec<Page>> {
    let (first, link) = browser.page_in_new_room(server).await?;
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

/// The state of a page's call tiles, for failure messages.
async fn tiles(page: &Page) -> Result<Value> {
    page.eval("return [...document.querySelectorAll('#call-grid figure')].map(f => { const v = f.querySelector('video'); const s = v.srcObject; return { testid: f.dataset.testid, peer: f.dataset.peerId, w: v.videoWidth, ready: v.readyState, paused: v.paused, tracks: s ? s.getTracks().map(t => `${t.kind}:${t.readyState}:${t.muted ? 'muted' : 'live'}:${t.id}`) : null, transceivers: f.dataset.peerId === 'self' ? null : window.__ferry.calls.client()?.peerConnection(f.dataset.peerId)?.getTransceivers().map(t => `${t.mid}:${t.direction}:${t.currentDirection}:${t.receiver.track.id}:${t.receiver.track.muted ? 'muted' : 'live'}`) }; })")
        .await
}

/// Waits until every remote tile of `page` plays video.
async fn wait_tiles_show_video(page: &Page) -> Result<()> {
    if let Err(e) = page
        .wait_for(
            "[...document.querySelectorAll(\"[data-testid='tile'] video\")].every(v => v.videoWidth > 0)",
            CONNECT,
        )
        .await
    {
        bail!("a remote tile shows no video: {e:#}; tiles: {}", tiles(page).await?);
    }
    Ok(())
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
    for p in [a, b] {
        wait_tiles_show_video(p).await?;
    }
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
        wait_tiles_show_video(p)
            .await
            .with_context(|| format!("page {i}"))?;
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
        for p in [a, b] {
            wait_tiles_show_video(p)
                .await
                .with_context(|| format!("call {round}"))?;
        }
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

/// Complete frames of an IVF file that may still be growing: its codec,
/// how many frames, and whether the first is a VP8 key frame.
fn ivf_frames(path: &std::path::Path) -> Result<(String, usize, bool)> {
    let data = std::fs::read(path)?;
    anyhow::ensure!(
        data.len() >= 32 && &data[..4] == b"DKIF",
        "{} is not IVF",
        path.display()
    );
    let fourcc = String::from_utf8_lossy(&data[8..12]).into_owned();
    let header = usize::from(u16::from_le_bytes([data[6], data[7]]));
    let (mut at, mut frames, mut first_key) = (header, 0, false);
    while at + 12 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into()?) as usize;
        let body = at + 12;
        if body + len > data.len() {
            break;
        }
        if frames == 0 {
            // A VP8 key frame: bit 0 clear, then the start code 9d 01 2a.
            first_key =
                len > 6 && data[body] & 1 == 0 && data[body + 3..body + 6] == [0x9d, 0x01, 0x2a];
        }
        frames += 1;
        at = body + len;
    }
    Ok((fourcc, frames, first_key))
}

/// The frame count an IVF file's header gives (written when it is
/// finished).
fn ivf_header_frames(path: &std::path::Path) -> Result<usize> {
    let data = std::fs::read(path)?;
    anyhow::ensure!(data.len() >= 32, "{} is not IVF", path.display());
    Ok(u32::from_le_bytes(data[24..28].try_into()?) as usize)
}

/// Pages of an Ogg file that may still be growing, whether the first
/// carries the Opus identification header, and whether the last one ends
/// the stream.
fn ogg_pages(path: &std::path::Path) -> Result<(usize, bool, bool)> {
    let data = std::fs::read(path)?;
    let (mut at, mut pages, mut opus, mut ended) = (0, 0, false, false);
    while at + 27 <= data.len() && &data[at..at + 4] == b"OggS" {
        let segments = usize::from(data[at + 26]);
        if at + 27 + segments > data.len() {
            break;
        }
        let body: usize = data[at + 27..at + 27 + segments]
            .iter()
            .map(|&b| usize::from(b))
            .sum();
        let start = at + 27 + segments;
        if start + body > data.len() {
            break;
        }
        if pages == 0 {
            opus = data[start..start + body].starts_with(b"OpusHead");
        }
        ended = data[at + 5] & 0x04 != 0;
        pages += 1;
        at = start + body;
    }
    anyhow::ensure!(pages > 0, "{} is not Ogg", path.display());
    Ok((pages, opus, ended))
}

fn recording(dir: &std::path::Path, ext: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == ext))
}

/// The id of the one other member a page lists.
async fn only_peer(page: &Page) -> Result<String> {
    let v = page
        .eval(
            "return document.querySelector('[data-testid=peers] li[data-peer-id]').dataset.peerId",
        )
        .await?;
    v.as_str().map(str::to_owned).context("no peer listed")
}

#[tokio::test]
async fn a_native_peer_records_a_page_and_plays_the_recording_into_another() -> Result<()> {
    use ferry_e2e::Native;
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let work = tempdir("ferry-native-call")?;
    let rec = work.join("rec");

    // browser → native: the page calls; `ferry call --record` answers.
    let (page, link) = browser.page_in_new_room(&server).await?;
    let mut recorder = Native::start(
        &server,
        &[
            "call",
            &link,
            "--wait",
            "--record",
            rec.to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
        ],
    )?;
    page.wait_connected_peers(1, CONNECT).await?;
    page.click("start-call").await?;
    recorder.wait_line("in the call with", CONNECT).await?;
    // The page hears and sees nothing from the native side (it sends
    // nothing), but its own media is recorded, frame after frame.
    let deadline = Instant::now() + CONNECT;
    let (ivf, ogg) = loop {
        if let (Some(v), Some(a)) = (recording(&rec, "ivf"), recording(&rec, "ogg"))
            && ivf_frames(&v)?.1 >= 10
        {
            break (v, a);
        }
        if Instant::now() > deadline {
            bail!(
                "nothing recorded in {}: {:?}",
                rec.display(),
                recorder.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let (fourcc, first, key) = ivf_frames(&ivf)?;
    assert_eq!(fourcc, "VP80");
    assert!(key, "the recording starts with a key frame");
    let (pages_before, opus, _) = ogg_pages(&ogg)?;
    assert!(opus, "the Ogg file starts with OpusHead");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, later, _) = ivf_frames(&ivf)?;
    let (pages_after, _, _) = ogg_pages(&ogg)?;
    assert!(
        later >= first + 20,
        "video frames keep coming: {first} then {later}"
    );
    assert!(
        pages_after >= pages_before + 50,
        "audio keeps coming: {pages_before} then {pages_after} pages"
    );
    // Ctrl-C: the recorder hangs up and finishes both files (the IVF
    // header's frame count, the Ogg stream's last page).
    recorder.interrupt()?;
    let code = recorder.wait_exit(CONNECT).await?;
    assert_eq!(code, 130, "exit code after Ctrl-C: {:?}", recorder.output());
    let (_, frames, _) = ivf_frames(&ivf)?;
    assert!(frames >= later, "{frames} frames in the finished IVF");
    assert_eq!(
        ivf_header_frames(&ivf)?,
        frames,
        "the IVF header counts the frames"
    );
    let (_, _, ended) = ogg_pages(&ogg)?;
    assert!(ended, "the Ogg stream has its end-of-stream page");
    page.wait_for(
        "document.querySelectorAll(\"[data-testid='tile']\").length === 0",
        CONNECT,
    )
    .await
    .context("the page still shows the recorder after it hung up")?;
    page.click("hang-up").await?;
    page.close().await?;

    // native → browser: another native peer plays that recording into a
    // fresh page, in a loop, and calls it; the page answers and decodes.
    let clip = work.join("clip.ivf");
    let sound = work.join("clip.ogg");
    std::fs::copy(&ivf, &clip)?;
    std::fs::copy(&ogg, &sound)?;
    let (page, link) = browser.page_in_new_room(&server).await?;
    let player = Native::start(
        &server,
        &[
            "call",
            &link,
            "--play",
            clip.to_str().unwrap(),
            "--play-audio",
            sound.to_str().unwrap(),
            "--loop",
            "--bind",
            "127.0.0.1:0",
        ],
    )?;
    page.wait_connected_peers(1, CONNECT).await?;
    let native_id = only_peer(&page).await?;
    page.wait_for(
        "!document.querySelector(\"[data-testid='incoming-call']\").hidden",
        CONNECT,
    )
    .await
    .with_context(|| format!("the native peer did not call: {:?}", player.output()))?;
    page.click("answer-call").await?;
    wait_rising(&page, &native_id, "framesDecoded", CONNECT).await?;
    wait_rising(&page, &native_id, "audioPackets", CONNECT).await?;
    // And the tile shows it (a track that arrived before the call was
    // joined used to be dropped, leaving the tile black).
    wait_tiles_show_video(&page)
        .await
        .context("the native peer's tile")?;
    page.screenshot("../target/e2e/native-call.png").await?;
    page.close().await?;
    drop(player);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
