//! TURN end to end: a real coturn (Debian's `turnserver`) on loopback with a
//! shared secret, our server handing out short-lived credentials for it,
//! and two pages that may only use relay candidates. They connect through
//! coturn and show the route as "relay".

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_e2e::{Browser, Page, Server, free_port, tempdir};
use tokio::process::{Child, Command};

const SECRET: &str = "e2e-shared-secret";

struct Coturn {
    _child: Child,
    port: u16,
}

async fn start_coturn(dir: &std::path::Path) -> Result<Coturn> {
    let port = free_port()?;
    let child = Command::new("turnserver")
        .arg("-n") // No configuration file: everything is here.
        .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
        .args(["--listening-port", &port.to_string()])
        .args(["--min-port", "40000", "--max-port", "40999"])
        .arg("--use-auth-secret")
        .arg(format!("--static-auth-secret={SECRET}"))
        .args(["--realm", "ferry.test"])
        .args([
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
        ])
        .arg(format!("--userdb={}", dir.join("turndb").display()))
        .arg(format!("--pidfile={}", dir.join("turn.pid").display()))
        .arg(format!("--log-file={}", dir.join("turn.log").display()))
        .arg("--simple-log")
        .arg("--verbose")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start turnserver; install Debian's coturn (`cargo xtask setup`)")?;
    // It listens on TCP as well as UDP: wait until it accepts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("coturn did not come up on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Coturn {
        _child: child,
        port,
    })
}

/// Opens the app and makes its connections relay-only.
async fn relay_only_page(browser: &Browser, server: &Server) -> Result<Page> {
    let p = browser.page().await?;
    p.open(&server.url()).await?;
    p.eval("localStorage.setItem('ferry.tuning', JSON.stringify({ iceTransportPolicy: 'relay' })); return true")
        .await?;
    Ok(p)
}

#[tokio::test]
async fn relay_only_pages_connect_through_coturn_with_issued_credentials() -> Result<()> {
    let dir = tempdir("ferry-turn")?;
    let turn = start_coturn(&dir).await?;
    let server = Server::start_with(
        free_port()?,
        5_000,
        &[
            "--turn".into(),
            format!("turn:127.0.0.1:{}?transport=udp", turn.port),
            "--turn-secret".into(),
            SECRET.into(),
        ],
    )
    .await?;
    let browser = Browser::start().await?;
    let a = relay_only_page(&browser, &server).await?;
    a.click("create-room").await?;
    let link = a.room_link().await?;
    let b = relay_only_page(&browser, &server).await?;
    b.open(&link).await?;
    for p in [&a, &b] {
        p.wait_connected_peers(1, Duration::from_secs(30))
            .await
            .context("connected through TURN")?;
        p.wait_for(
            "document.querySelector('li[data-route]') && document.querySelector('li[data-route]').dataset.route === 'relay'",
            Duration::from_secs(15),
        )
        .await
        .context("the page shows the relay route")?;
    }
    // coturn saw allocations authenticated with the user names our server
    // issued: `<expiry>:<peer id>`.
    let log = std::fs::read_to_string(dir.join("turn.log")).unwrap_or_default();
    for p in [&a, &b] {
        let id = p.peer_id().await?;
        assert!(
            log.lines().any(
                |l| l.contains(&format!(":{id}>")) && l.contains("ALLOCATE processed, success")
            ),
            "coturn allocated a relay for {id} with our credentials:\n{log}"
        );
    }
    let _ = std::fs::create_dir_all("../target/e2e");
    b.screenshot("../target/e2e/turn-relay.png").await?;
    a.close().await?;
    b.close().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
