//! File swap end to end: real server, real headless Chromium pages, files
//! picked through the page's file inputs and saved through its Save links,
//! run by `cargo xtask test` inside a loopback-only network namespace.
//!
//! `FERRY_E2E_BIG_MIB` sets the size of the large file (default 1024).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ferry_e2e::{Browser, Page, Server, hash_file, make_file, tempdir, wait_download};

const CONNECT: Duration = Duration::from_secs(20);

async fn pair(browser: &Browser, server: &Server, downloads: &Path) -> Result<(Page, Page)> {
    let (a, link) = browser.page_in_new_room(server).await?;
    let b = browser.page_with_downloads(Some(downloads)).await?;
    b.open(&link).await?;
    a.wait_connected_peers(1, CONNECT).await?;
    b.wait_connected_peers(1, CONNECT).await?;
    Ok((a, b))
}

const INCOMING: &str = "li.transfer[data-direction='in']";

async fn accept(b: &Page, nth: usize) -> Result<()> {
    b.wait_for(&format!("document.querySelectorAll(\"{INCOMING}[data-state='offered']\").length >= 1 && document.querySelectorAll(\"{INCOMING}\").length >= {nth}"), Duration::from_secs(120))
        .await
        .context("no incoming offer")?;
    // The offer shows names and sizes before anything is accepted.
    b.click("accept-transfer").await
}

/// Largest wire-byte count the sender reported for any transfer.
async fn sender_wire_bytes(a: &Page) -> Result<u64> {
    let v = a
        .eval("return Math.max(0, ...window.__ferry.events.filter(e => e.type === 'transfer' && e.event.type === 'progress').map(e => e.event.wire_bytes))")
        .await?;
    Ok(v.as_f64().unwrap_or(0.0) as u64)
}

async fn received_fraction(b: &Page) -> Result<f64> {
    let v = b
        .eval("const p = window.__ferry.events.filter(e => e.type === 'transfer' && e.event.type === 'progress').pop(); return p ? p.event.done_bytes / p.event.total_bytes : 0")
        .await?;
    Ok(v.as_f64().unwrap_or(0.0))
}

#[tokio::test]
async fn a_large_file_and_a_folder_arrive_intact_with_bounded_memory() -> Result<()> {
    let big_mib: u64 = std::env::var("FERRY_E2E_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let work = tempdir("ferry-files")?;
    let downloads = work.join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let big = work.join("src/big.bin");
    make_file(&big, big_mib << 20, "big")?;
    let folder = work.join("src/holiday");
    make_file(&folder.join("photo.jpg"), 3_000_001, "photo")?;
    make_file(&folder.join("notes/todo.txt"), 1234, "todo")?;
    make_file(&folder.join("notes/empty.txt"), 0, "empty")?;
    make_file(&folder.join("deep/er/raw.dat"), 262_144, "raw")?;

    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let (a, b) = pair(&browser, &server, &downloads).await?;

    // The big file, through the "Choose files" input.
    let baseline = b
        .renderer_rss()
        .context("cannot find the receiver's renderer")?;
    a.upload("pick-files", &big).await?;
    accept(&b, 1).await?;
    let started = Instant::now();
    let mut peak = baseline;
    let mut shot = false;
    loop {
        if let Some(rss) = b.renderer_rss() {
            peak = peak.max(rss);
        }
        if !shot && started.elapsed() > Duration::from_secs(3) {
            shot = true;
            let _ = std::fs::create_dir_all("../target/e2e");
            b.screenshot("../target/e2e/files-receiving.png").await?;
        }
        let done = b
            .eval(&format!(
                "return document.querySelector(\"{INCOMING}\").dataset.state"
            ))
            .await?;
        match done.as_str() {
            Some("completed") => break,
            Some("failed" | "cancelled") => bail!("transfer ended as {done}"),
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!("the big transfer did not finish");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let growth_mb = peak.saturating_sub(baseline) as f64 / 1e6;
    println!(
        "{big_mib} MiB in {secs:.1} s ({:.1} MB/s); receiver renderer RSS {:.0} MB -> peak {:.0} MB (growth {growth_mb:.0} MB)",
        (big_mib << 20) as f64 / 1e6 / secs,
        baseline as f64 / 1e6,
        peak as f64 / 1e6
    );
    assert!(
        growth_mb < 300.0,
        "receiver renderer grew by {growth_mb:.0} MB"
    );
    b.wait_for("document.querySelector(\"li.transfer[data-direction='in'] [data-verified='true']\") !== null", Duration::from_secs(10)).await?;
    b.wait_for(
        "document.querySelector(\"[data-testid='save-file']\") !== null",
        Duration::from_secs(30),
    )
    .await?;
    b.click("save-file").await?;
    let got = wait_download(
        &downloads,
        "big.bin",
        big_mib << 20,
        Duration::from_secs(300),
    )
    .await?;
    assert_eq!(
        hash_file(&got)?,
        hash_file(&big)?,
        "received bytes equal the source"
    );
    let shown = b
        .eval("return document.querySelector(\"[data-verified='true']\").dataset.hash")
        .await?;
    assert_eq!(
        shown.as_str(),
        Some(hash_file(&big)?.to_hex().as_str()),
        "the verified badge carries the real BLAKE3"
    );
    // Nothing was sent twice.
    let wire = sender_wire_bytes(&a).await?;
    assert!(
        wire <= (big_mib << 20) + 4 * 1024 * 1024,
        "sender put {wire} bytes on the wire"
    );

    // A folder of mixed files, through the "Choose a folder" input.
    a.upload("pick-folder", &folder).await?;
    accept(&b, 2).await?;
    b.wait_for(
        &format!("document.querySelector(\"{INCOMING}\").dataset.state === 'completed'"),
        Duration::from_secs(120),
    )
    .await?;
    b.wait_for(&format!("document.querySelectorAll(\"{INCOMING}\")[0].querySelectorAll(\"[data-testid='save-file']\").length === 4"), Duration::from_secs(30))
        .await?;
    let names = b.eval(&format!("return [...document.querySelectorAll(\"{INCOMING}\")[0].querySelectorAll(\"[data-testid='save-file']\")].map(l => l.download)")).await?;
    // One click saves them all.
    b.click("save-all").await?;
    let names: Vec<String> = serde_json::from_value(names)?;
    for (rel, size) in [
        ("photo.jpg", 3_000_001u64),
        ("notes/todo.txt", 1234),
        ("notes/empty.txt", 0),
        ("deep/er/raw.dat", 262_144),
    ] {
        let saved = format!("holiday_{}", rel.replace('/', "_"));
        assert!(
            names.contains(&saved),
            "{saved} offered for saving: {names:?}"
        );
        let got = wait_download(&downloads, &saved, size, Duration::from_secs(60)).await?;
        assert_eq!(hash_file(&got)?, hash_file(&folder.join(rel))?, "{rel}");
    }
    a.close().await?;
    b.close().await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Points the page's folder picker at a folder in its private storage: a
/// headless browser has no picker dialog to click through. Everything after
/// the pick (creating folders, writing, never overwriting) is the page's
/// real code on a real `FileSystemDirectoryHandle`.
const FAKE_PICKER: &str = "window.showDirectoryPicker = async () => (await navigator.storage.getDirectory()).getDirectoryHandle('picked', { create: true }); return true";

/// Every file under the picked folder: `[[path, base64], …]`.
const READ_PICKED: &str = "const done = arguments[arguments.length - 1];
(async () => {
  const out = [];
  const walk = async (dir, prefix) => {
    for await (const [name, h] of dir.entries()) {
      if (h.kind === 'directory') { await walk(h, prefix + name + '/'); continue; }
      const file = await h.getFile();
      const url = await new Promise((ok) => { const r = new FileReader(); r.onload = () => ok(r.result); r.readAsDataURL(file); });
      out.push([prefix + name, url.slice(url.indexOf(',') + 1)]);
    }
  };
  await walk(await (await navigator.storage.getDirectory()).getDirectoryHandle('picked'), '');
  let staged = 0;
  const count = async (dir) => { for await (const [, h] of dir.entries()) { if (h.kind === 'directory') await count(h); else staged++; } };
  try { await count(await (await navigator.storage.getDirectory()).getDirectoryHandle('ferry')); } catch {}
  return [out, staged];
})().then(done, (e) => done(String(e)));";

#[tokio::test]
async fn files_go_into_a_picked_folder_with_their_structure() -> Result<()> {
    let work = tempdir("ferry-folder")?;
    let downloads = work.join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let folder = work.join("src/trip");
    make_file(&folder.join("photo.jpg"), 3_000_001, "photo2")?;
    make_file(&folder.join("notes/todo.txt"), 1234, "todo2")?;
    make_file(&folder.join("notes/empty.txt"), 0, "empty2")?;
    make_file(&folder.join("deep/er/raw.dat"), 262_144, "raw2")?;
    let single = work.join("src/readme.md");
    make_file(&single, 777, "readme")?;
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let (a, b) = pair(&browser, &server, &downloads).await?;
    b.eval(FAKE_PICKER).await?;
    // A file of the same name is already in the folder: it must survive.
    b.eval_async("const done = arguments[arguments.length - 1]; (async () => { const d = await window.showDirectoryPicker(); const t = await d.getDirectoryHandle('trip', { create: true }); const w = await (await t.getFileHandle('photo.jpg', { create: true })).createWritable(); await w.write('old'); await w.close(); })().then(() => done(true), (e) => done(String(e)));").await?;

    a.upload("pick-folder", &folder).await?;
    b.wait_for(
        &format!("document.querySelector(\"{INCOMING}[data-state='offered'] [data-testid='accept-into-folder']\") !== null"),
        Duration::from_secs(60),
    )
    .await?;
    let _ = std::fs::create_dir_all("../target/e2e");
    b.screenshot("../target/e2e/files-folder-offer.png").await?;
    b.click("accept-into-folder").await?;
    b.wait_for(&format!("document.querySelector(\"{INCOMING}\").dataset.state === 'completed' && document.querySelectorAll(\"{INCOMING} [data-testid='saved-in-folder']\").length === 4"), Duration::from_secs(120))
        .await
        .context("all four files saved in the folder")?;
    assert_eq!(
        b.eval(&format!(
            "return document.querySelectorAll(\"{INCOMING} [data-testid='save-file']\").length"
        ))
        .await?
        .as_u64(),
        Some(0),
        "no download links once the files are in the folder"
    );

    // A completed transfer received the ordinary way can be saved later.
    a.upload("pick-files", &single).await?;
    accept(&b, 2).await?;
    b.wait_for(
        &format!("document.querySelector(\"{INCOMING}\").dataset.state === 'completed'"),
        Duration::from_secs(60),
    )
    .await?;
    b.click("save-to-folder").await?;
    b.wait_for(
        &format!("document.querySelector(\"{INCOMING} [data-testid='saved-in-folder']\") !== null"),
        Duration::from_secs(30),
    )
    .await?;

    b.screenshot("../target/e2e/files-folder-saved.png").await?;
    let v = b.eval_async(READ_PICKED).await?;
    let (files, staged): (Vec<(String, String)>, u64) =
        serde_json::from_value(v.clone()).with_context(|| format!("reading the folder: {v}"))?;
    let got: std::collections::BTreeMap<String, blake3::Hash> = files
        .into_iter()
        .map(|(path, b64)| Ok((path, blake3::hash(&BASE64.decode(b64)?))))
        .collect::<Result<_>>()?;
    let mut want = std::collections::BTreeMap::new();
    want.insert("trip/photo.jpg".to_owned(), blake3::hash(b"old"));
    want.insert(
        "trip/photo (1).jpg".to_owned(),
        hash_file(&folder.join("photo.jpg"))?,
    );
    for rel in ["notes/todo.txt", "notes/empty.txt", "deep/er/raw.dat"] {
        want.insert(format!("trip/{rel}"), hash_file(&folder.join(rel))?);
    }
    want.insert("readme.md".to_owned(), hash_file(&single)?);
    assert_eq!(
        got, want,
        "the folder holds exactly the sent tree, byte for byte"
    );
    assert_eq!(staged, 0, "private storage copies are removed once saved");
    assert!(
        std::fs::read_dir(&downloads)?.next().is_none(),
        "nothing went to Downloads"
    );
    a.close().await?;
    b.close().await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Share received of the newest incoming transfer.
async fn newest_fraction(b: &Page) -> Result<f64> {
    let v = b
        .eval(&format!("const li = document.querySelector(\"{INCOMING}\"); if (!li) return 0; const p = window.__ferry.events.filter(e => e.type === 'transfer' && e.event.type === 'progress' && e.event.id === li.dataset.transferId).pop(); return p ? p.event.done_bytes / p.event.total_bytes : 0"))
        .await?;
    Ok(v.as_f64().unwrap_or(0.0))
}

#[tokio::test]
async fn without_opfs_files_stream_into_downloads() -> Result<()> {
    let work = tempdir("ferry-stream")?;
    let downloads = work.join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let film = work.join("src/film.mp4");
    make_file(&film, 48 << 20, "film")?;
    let folder = work.join("src/docs");
    make_file(&folder.join("a/b.txt"), 5000, "b")?;
    make_file(&folder.join("empty.txt"), 0, "e")?;
    let iso = work.join("src/big.iso");
    make_file(&iso, 200 << 20, "iso2")?;
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let (a, b) = pair(&browser, &server, &downloads).await?;
    // As in a browser with no OPFS (a private window, say).
    b.eval("localStorage.setItem('ferry.sink', 'stream'); return true")
        .await?;

    a.upload("pick-files", &film).await?;
    accept(&b, 1).await?;
    b.wait_for(&format!("document.querySelector(\"{INCOMING}\").dataset.state === 'completed' && document.querySelector(\"{INCOMING} [data-testid='saved-in-downloads']\") !== null"), Duration::from_secs(120))
        .await
        .context("the film streamed into Downloads")?;
    let got = wait_download(&downloads, "film.mp4", 48 << 20, Duration::from_secs(60)).await?;
    assert_eq!(hash_file(&got)?, hash_file(&film)?, "film.mp4");
    let links = b
        .eval("return document.querySelectorAll(\"[data-testid='save-file']\").length")
        .await?;
    assert_eq!(links.as_u64(), Some(0), "nothing left to save by hand");
    let registered = b
        .eval("return navigator.serviceWorker.getRegistrations().then(r => r.length)")
        .await?;
    assert_eq!(
        registered.as_u64(),
        Some(1),
        "the stream went through the service worker"
    );

    a.upload("pick-folder", &folder).await?;
    accept(&b, 2).await?;
    b.wait_for(&format!("document.querySelector(\"{INCOMING}\").dataset.state === 'completed' && document.querySelectorAll(\"{INCOMING}\")[0].querySelectorAll(\"[data-testid='saved-in-downloads']\").length === 2"), Duration::from_secs(60))
        .await?;
    for (rel, size) in [("a/b.txt", 5000u64), ("empty.txt", 0)] {
        let name = format!("docs_{}", rel.replace('/', "_"));
        let got = wait_download(&downloads, &name, size, Duration::from_secs(30)).await?;
        assert_eq!(hash_file(&got)?, hash_file(&folder.join(rel))?, "{rel}");
    }

    // Cancelled half-way: the browser marks the download failed; no
    // complete-looking big.iso ever appears.
    a.upload("pick-files", &iso).await?;
    accept(&b, 3).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while newest_fraction(&b).await? < 0.2 {
        if Instant::now() > deadline {
            bail!("the iso did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.click("cancel-transfer").await?;
    a.wait_for(
        "document.querySelector('li.transfer').dataset.state === 'cancelled'",
        Duration::from_secs(10),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !downloads.join("big.iso").exists(),
        "a cancelled stream never becomes a finished download"
    );
    a.close().await?;
    b.close().await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[tokio::test]
async fn a_reloaded_receiver_resumes_where_it_stopped() -> Result<()> {
    let size: u64 = 160 << 20;
    let work = tempdir("ferry-resume")?;
    let downloads = work.join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let src = work.join("movie.mkv");
    make_file(&src, size, "movie")?;
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let (a, b) = pair(&browser, &server, &downloads).await?;
    let id_b = b.peer_id().await?;
    a.upload("pick-files", &src).await?;
    accept(&b, 1).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while received_fraction(&b).await? < 0.5 {
        if Instant::now() > deadline {
            bail!("did not reach 50%");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.eval("location.reload(); return true").await?;
    // Same tab, same peer id, and the transfer picks up without asking again.
    b.wait_for(
        "window.__ferry && window.__ferry.client && window.__ferry.client.peerId",
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(b.peer_id().await?, id_b);
    b.wait_for(
        &format!("document.querySelector(\"{INCOMING}\") !== null"),
        Duration::from_secs(60),
    )
    .await?;
    b.wait_for(
        &format!("document.querySelector(\"{INCOMING}\").dataset.state === 'completed'"),
        Duration::from_secs(300),
    )
    .await?;
    let wire = sender_wire_bytes(&a).await?;
    let window = 128 * 128 * 1024;
    println!(
        "resume: sender put {wire} bytes on the wire for a {size}-byte file (bound {})",
        size + window
    );
    assert!(wire <= size + window, "sender put {wire} bytes on the wire");
    b.wait_for(
        "document.querySelector(\"[data-testid='save-file']\") !== null",
        Duration::from_secs(30),
    )
    .await?;
    b.click("save-file").await?;
    let got = wait_download(&downloads, "movie.mkv", size, Duration::from_secs(120)).await?;
    assert_eq!(hash_file(&got)?, hash_file(&src)?);
    a.close().await?;
    b.close().await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[tokio::test]
async fn cancel_from_either_side_shows_in_both_pages() -> Result<()> {
    let size: u64 = 200 << 20;
    let work = tempdir("ferry-cancel")?;
    let downloads = work.join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let src = work.join("big.iso");
    make_file(&src, size, "iso")?;
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let (a, b) = pair(&browser, &server, &downloads).await?;
    // Declined first: offering the same file again must ask again, not
    // resume on its own.
    a.upload("pick-files", &src).await?;
    b.wait_for(
        &format!("document.querySelector(\"{INCOMING}[data-state='offered']\") !== null"),
        Duration::from_secs(60),
    )
    .await?;
    b.click("decline-transfer").await?;
    a.wait_for(
        "document.querySelector('li.transfer').dataset.state === 'declined'",
        Duration::from_secs(10),
    )
    .await?;
    for (round, receiver_cancels) in [(2usize, true), (3, false)] {
        a.upload("pick-files", &src).await?;
        accept(&b, round).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while newest_fraction(&b).await? < 0.1 {
            if Instant::now() > deadline {
                bail!("did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let who = if receiver_cancels { &b } else { &a };
        who.click("cancel-transfer").await?;
        for p in [&a, &b] {
            p.wait_for(
                "document.querySelector('li.transfer').dataset.state === 'cancelled'",
                Duration::from_secs(10),
            )
            .await
            .with_context(|| format!("round {round}: both pages show the cancel"))?;
        }
        let verified = b.eval("return document.querySelectorAll(\"li.transfer [data-testid='verified'], li.transfer [data-testid='save-file']\").length").await?;
        assert_eq!(
            verified.as_u64(),
            Some(0),
            "nothing partial is presented as complete"
        );
        let by_peer = if receiver_cancels { &a } else { &b };
        by_peer
            .wait_for("document.querySelector('li.transfer [data-testid=transfer-message]').textContent.startsWith('Cancelled by')", Duration::from_secs(5))
            .await?;
    }
    assert!(
        std::fs::read_dir(&downloads)?.next().is_none(),
        "nothing was saved"
    );
    a.close().await?;
    b.close().await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
