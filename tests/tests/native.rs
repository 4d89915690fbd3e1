//! The native peer (`ferry`) end to end: real server, real `ferry`
//! processes and real headless Chromium pages, inside the loopback-only
//! namespace that `cargo xtask test` makes.
//!
//! `FERRY_E2E_BIG_MIB` sets the size of the large files (default 1024).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_e2e::{Browser, Native, Page, Server, hash_file, make_file, tempdir, wait_download};

const CONNECT: Duration = Duration::from_secs(20);
/// The engine's request window (128 chunks of 128 KiB).
const WINDOW: u64 = 16 << 20;

fn big_mib() -> u64 {
    std::env::var("FERRY_E2E_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// A folder of mixed files: nested, empty, odd sizes.
fn make_folder(root: &Path) -> Result<Vec<(&'static str, u64)>> {
    let files = [
        ("photo.jpg", 3_000_001u64),
        ("notes/todo.txt", 1234),
        ("notes/empty.txt", 0),
        ("deep/er/raw.dat", 262_144),
    ];
    for (rel, size) in files {
        make_file(&root.join(rel), size, rel)?;
    }
    Ok(files.to_vec())
}

/// Asserts that `got` holds the same bytes as `want`.
fn same(got: &Path, want: &Path) -> Result<()> {
    let (g, w) = (hash_file(got)?, hash_file(want)?);
    anyhow::ensure!(g == w, "{} differs from {}", got.display(), want.display());
    Ok(())
}

/// Bytes the sender reported putting on data channels.
fn bytes_sent(sender: &Native) -> Result<u64> {
    let line = sender
        .output()
        .into_iter()
        .find(|l| l.contains("bytes sent in all"))
        .context("the sender printed no total")?;
    let n = line
        .split_whitespace()
        .rev()
        .find_map(|w| w.parse::<u64>().ok())
        .context("no number in the total")?;
    Ok(n)
}

#[tokio::test]
async fn native_to_native_large_file_and_folder() -> Result<()> {
    let mib = big_mib();
    let work = tempdir("ferry-native")?;
    let big = work.join("src/big.bin");
    make_file(&big, mib << 20, "big")?;
    let folder = work.join("src/holiday");
    let files = make_folder(&folder)?;
    let dest = work.join("dest");
    let server = Server::start(5_000).await?;

    let started = Instant::now();
    let mut sender = Native::start(
        &server,
        &["send", big.to_str().unwrap(), folder.to_str().unwrap()],
    )?;
    let link = sender.room_link().await?;
    let mut receiver = Native::start(
        &server,
        &["receive", &link, "--yes", "--dir", dest.to_str().unwrap()],
    )?;
    assert_eq!(
        receiver.wait_exit(Duration::from_secs(900)).await?,
        0,
        "{:?}",
        receiver.output()
    );
    assert_eq!(
        sender.wait_exit(Duration::from_secs(30)).await?,
        0,
        "{:?}",
        sender.output()
    );
    println!(
        "native -> native: {mib} MiB and a folder in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    same(&dest.join("big.bin"), &big)?;
    for (rel, _) in files {
        same(&dest.join("holiday").join(rel), &folder.join(rel))?;
    }
    let leftovers: Vec<PathBuf> = walk(&dest)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".ferry-part"))
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Parses the size at the start of "28.12 MiB already here…" (to the
/// precision printed).
fn parse_size(line: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    let n: f64 = words.next()?.parse().ok()?;
    let unit = match words.next()? {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * unit) as u64)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn a_killed_native_receiver_resumes_and_fetches_at_most_one_window_again() -> Result<()> {
    let size = (big_mib() / 4).max(64) << 20;
    let work = tempdir("ferry-native-resume")?;
    let big = work.join("src/resume.bin");
    make_file(&big, size, "resume")?;
    let dest = work.join("dest");
    let server = Server::start(5_000).await?;
    let mut sender = Native::start(&server, &["send", big.to_str().unwrap()])?;
    let link = sender.room_link().await?;
    let args = [
        "receive",
        link.as_str(),
        "--yes",
        "--dir",
        dest.to_str().unwrap(),
    ];
    let mut first = Native::start(&server, &args)?;
    let part = dest.join("resume.bin.ferry-part");
    let deadline = Instant::now() + Duration::from_secs(600);
    while std::fs::metadata(&part).map_or(0, |m| m.len()) < size / 2 {
        if Instant::now() > deadline {
            bail!(
                "the first receiver never reached half: {:?}",
                first.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().await?;
    let at_kill = std::fs::metadata(&part)?.len();
    println!("killed the receiver with {at_kill} of {size} bytes written");
    assert!(
        !dest.join("resume.bin").exists(),
        "an unfinished file has its real name"
    );

    let mut second = Native::start(&server, &args)?;
    let resumed = second
        .wait_line("already here", Duration::from_secs(60))
        .await?;
    println!("second receiver: {resumed}");
    assert_eq!(
        second.wait_exit(Duration::from_secs(600)).await?,
        0,
        "{:?}",
        second.output()
    );
    assert_eq!(
        sender.wait_exit(Duration::from_secs(30)).await?,
        0,
        "{:?}",
        sender.output()
    );
    same(&dest.join("resume.bin"), &big)?;
    // What the first receiver had stored but the second fetched again.
    let resumed_bytes = parse_size(&resumed).context("no resumed size printed")?;
    let refetched = at_kill.saturating_sub(resumed_bytes);
    let sent = bytes_sent(&sender)?;
    println!(
        "re-received {refetched} bytes (one window = {WINDOW}); the sender put {sent} bytes on data channels for a {size}-byte file"
    );
    assert!(refetched <= WINDOW, "re-received {refetched} bytes");
    // The sender also answered the requests that were in flight to the
    // killed receiver (up to one window) and frames carry headers.
    assert!(
        sent <= size + 2 * WINDOW + size / 100,
        "sent {sent} bytes for a {size}-byte file"
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

async fn open_page(browser: &Browser, server: &Server, downloads: Option<&Path>) -> Result<Page> {
    let page = browser.page_with_downloads(downloads).await?;
    page.open(&server.url()).await?;
    Ok(page)
}

const INCOMING: &str = "li.transfer[data-direction='in']";
const OUTGOING: &str = "li.transfer[data-direction='out']";

#[tokio::test]
async fn native_sends_a_large_file_and_a_folder_to_a_browser() -> Result<()> {
    let mib = big_mib();
    let work = tempdir("ferry-native-to-page")?;
    let downloads = work.join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let big = work.join("src/big.bin");
    make_file(&big, mib << 20, "big-n2b")?;
    let folder = work.join("src/holiday");
    let files = make_folder(&folder)?;
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;

    let mut sender = Native::start(
        &server,
        &["send", big.to_str().unwrap(), folder.to_str().unwrap()],
    )?;
    let link = sender.room_link().await?;
    let page = open_page(&browser, &server, Some(&downloads)).await?;
    page.open(&link).await?;
    page.wait_connected_peers(1, CONNECT).await?;
    page.wait_for(
        &format!("document.querySelector(\"{INCOMING}[data-state='offered']\") !== null"),
        Duration::from_secs(60),
    )
    .await
    .context("the page shows no offer from the native peer")?;
    page.click("accept-transfer").await?;
    page.wait_for(
        &format!("document.querySelector(\"{INCOMING}\").dataset.state === 'completed'"),
        Duration::from_secs(900),
    )
    .await?;
    assert_eq!(
        sender.wait_exit(Duration::from_secs(30)).await?,
        0,
        "{:?}",
        sender.output()
    );
    page.click("save-all").await?;
    let got = wait_download(&downloads, "big.bin", mib << 20, Duration::from_secs(300)).await?;
    same(&got, &big)?;
    for (rel, size) in files {
        let name = format!("holiday_{}", rel.replace('/', "_"));
        let got = wait_download(&downloads, &name, size, Duration::from_secs(60)).await?;
        same(&got, &folder.join(rel))?;
    }
    page.close().await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[tokio::test]
async fn a_browser_sends_a_large_file_and_a_folder_to_native() -> Result<()> {
    let mib = big_mib();
    let work = tempdir("ferry-page-to-native")?;
    let big = work.join("src/big.bin");
    make_file(&big, mib << 20, "big-b2n")?;
    let folder = work.join("src/holiday");
    let files = make_folder(&folder)?;
    let dest = work.join("dest");
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let page = open_page(&browser, &server, None).await?;
    page.click("create-room").await?;
    let link = page.room_link().await?;

    let args = [
        "receive",
        link.as_str(),
        "--yes",
        "--dir",
        dest.to_str().unwrap(),
    ];
    let mut receiver = Native::start(&server, &args)?;
    page.wait_connected_peers(1, CONNECT).await?;
    page.upload("pick-files", &big).await?;
    assert_eq!(
        receiver.wait_exit(Duration::from_secs(900)).await?,
        0,
        "{:?}",
        receiver.output()
    );
    same(&dest.join("big.bin"), &big)?;
    page.wait_for(
        &format!("document.querySelector(\"{OUTGOING}\").dataset.state === 'completed'"),
        Duration::from_secs(30),
    )
    .await
    .context("the page does not show the delivery as done")?;

    // A second `ferry receive` takes the folder.
    let mut receiver = Native::start(&server, &args)?;
    receiver.wait_line("Joined", CONNECT).await?;
    page.wait_connected_peers(1, CONNECT).await?;
    page.upload("pick-folder", &folder).await?;
    assert_eq!(
        receiver.wait_exit(Duration::from_secs(120)).await?,
        0,
        "{:?}",
        receiver.output()
    );
    for (rel, _) in files {
        same(&dest.join("holiday").join(rel), &folder.join(rel))?;
    }
    page.close().await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[tokio::test]
async fn chat_between_a_terminal_and_a_page() -> Result<()> {
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let page = open_page(&browser, &server, None).await?;
    page.click("create-room").await?;
    let link = page.room_link().await?;
    let mut chat = Native::start(&server, &["--name", "terminal", "chat", &link])?;
    page.wait_connected_peers(1, CONNECT).await?;
    chat.wait_line("is connected", CONNECT).await?;
    page.send_chat("hello from the page").await?;
    chat.wait_line("hello from the page", Duration::from_secs(10))
        .await?;
    chat.type_line("hello from the terminal").await?;
    page.wait_message("hello from the terminal", Duration::from_secs(10))
        .await?;
    let shown = page
        .eval("return [...document.querySelectorAll('[data-testid=peers] li[data-peer-id]')].map(li => li.textContent).join(' ')")
        .await?;
    assert!(
        shown.as_str().unwrap_or_default().contains("terminal"),
        "the page names the native peer: {shown}"
    );
    page.close().await?;
    Ok(())
}

/// A malicious peer (the engine with its sender-side checks off) offers
/// files whose names point outside the receiver's folder.
#[tokio::test]
async fn hostile_file_names_never_reach_the_disk_of_a_native_receiver() -> Result<()> {
    use ferry_core::{Config, Event, LinkState};
    use ferry_native::{NetConfig, Node, NodeConfig, NodeEvent, source};
    let work = tempdir("ferry-hostile")?;
    let payload = work.join("payload.txt");
    make_file(&payload, 5000, "payload")?;
    let server = Server::start(5_000).await?;
    for (i, hostile) in [
        "../escape.txt",
        "/tmp/ferry-absolute.txt",
        "a/../../escape.txt",
        "nul\u{0}byte.txt",
        "CON",
    ]
    .into_iter()
    .enumerate()
    {
        let dest = work.join(format!("dest-{i}"));
        let room = format!("hostile-{i}");
        let mut receiver = Native::start(
            &server,
            &["receive", &room, "--yes", "--dir", dest.to_str().unwrap()],
        )?;
        let (node, mut events) = Node::start(NodeConfig {
            server_url: format!("ws://127.0.0.1:{}/ws", server.port),
            session: Config::new(ferry_protocol::RoomCode::new(&room)?, "mallory"),
            net: NetConfig {
                udp_addrs: vec!["127.0.0.1:0".into()],
                ..NetConfig::default()
            },
            media: None,
        });
        let peer = loop {
            match tokio::time::timeout(CONNECT, events.recv()).await? {
                Some(NodeEvent::Engine(Event::PeerState {
                    peer_id,
                    state: LinkState::Connected,
                })) => break peer_id,
                Some(_) => {}
                None => bail!("the hostile node stopped"),
            }
        };
        let found = source::find(std::slice::from_ref(&payload))?;
        let mut file = source::hash(&found[0], 128 * 1024, |_| {})?;
        file.source.path = hostile.to_owned();
        node.offer_unchecked(&peer, vec![file]).await?;
        let code = receiver.wait_exit(Duration::from_secs(30)).await?;
        let out = receiver.output().join("\n");
        assert_eq!(code, 4, "{hostile:?}: exit code; it printed:\n{out}");
        assert!(out.contains("unsafe"), "{hostile:?}: says why:\n{out}");
        assert!(
            walk(&dest).is_empty(),
            "{hostile:?}: wrote {:?}",
            walk(&dest)
        );
        assert!(!work.join("escape.txt").exists(), "{hostile:?} escaped");
        assert!(!Path::new("/tmp/ferry-absolute.txt").exists());
        node.close().await;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
