//! Harness for Ferry's end-to-end tests and benchmarks.
//!
//! # Design
//!
//! Everything here is a real part started by the test itself: the
//! `ferry-signaling` binary on a loopback port ([`Server`]), and headless
//! Debian Chromium driven through `chromedriver` ([`Browser`], [`Page`]).
//! Each [`Page`] is its own WebDriver session, hence its own Chromium
//! process with a fresh profile, like a separate person's browser.
//!
//! Tests are expected to run inside a network namespace with only loopback
//! (`cargo xtask test` arranges it), so the Chromium flags below enable
//! loopback ICE candidates and disable mDNS host-name obfuscation.
//! Assertions read the page the way a user would: through the DOM that the
//! app renders, with `data-*` attributes as stable hooks.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Chromium flags for WebRTC on a loopback-only machine.
pub const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--allow-loopback-in-peer-connection",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--window-size=1280,900",
];

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn signaling_bin() -> PathBuf {
    std::env::var_os("FERRY_SIGNALING_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/debug/ferry-signaling"
            ))
        })
}

/// A `ferry-signaling` process on a loopback port.
pub struct Server {
    child: Option<Child>,
    /// The port it listens on.
    pub port: u16,
    heartbeat_ms: u64,
}

impl Server {
    /// Starts the server on a free port.
    pub async fn start(heartbeat_ms: u64) -> Result<Self> {
        Self::start_on(free_port()?, heartbeat_ms).await
    }

    /// Starts the server on `port` and waits until `/healthz` answers.
    pub async fn start_on(port: u16, heartbeat_ms: u64) -> Result<Self> {
        Self::start_with(port, heartbeat_ms, &[]).await
    }

    /// Starts the server on `port` with extra flags. Tests and benchmarks
    /// open many connections from one address, so the per-address limit is
    /// off unless `extra` sets it.
    pub async fn start_with(port: u16, heartbeat_ms: u64, extra: &[String]) -> Result<Self> {
        let bin = signaling_bin();
        let child = Command::new(&bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--heartbeat-ms", &heartbeat_ms.to_string()])
            .args(["--connections-per-ip-per-min", "0"])
            .args(extra)
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {}; build it with `cargo build -p ferry-signaling`",
                    bin.display()
                )
            })?;
        let server = Self {
            child: Some(child),
            port,
            heartbeat_ms,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if server.healthz().await.is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("signaling server did not come up on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The heartbeat interval the server runs with.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// Fetches `/healthz`.
    pub async fn healthz(&self) -> Result<String> {
        http_get(self.port, "/healthz").await
    }

    /// Kills the server process.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }
}

/// A `chromedriver` process; each [`Page`] is one Chromium it starts.
pub struct Browser {
    _driver: Child,
    port: u16,
    binary: String,
}

impl Browser {
    /// Starts chromedriver on a free port.
    pub async fn start() -> Result<Self> {
        let port = free_port()?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context(
                "cannot start chromedriver; install Debian's chromium-driver (cargo xtask setup)",
            )?;
        let binary = std::process::Command::new("sh")
            .args(["-c", "command -v chromium"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/usr/bin/chromium".into());
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            _driver: driver,
            port,
            binary,
        })
    }

    /// Opens a new Chromium with its own profile.
    pub async fn page(&self) -> Result<Page> {
        self.page_with_downloads(None).await
    }

    /// Opens a new page that creates a room through the UI; returns it with
    /// the room link it shows.
    pub async fn page_in_new_room(&self, server: &Server) -> Result<(Page, String)> {
        let page = self.page().await?;
        page.open(&server.url()).await?;
        page.click("create-room").await?;
        let link = page.room_link().await?;
        Ok((page, link))
    }

    /// Opens a new Chromium whose downloads land in `dir`, with a profile
    /// folder the test can find its processes by.
    pub async fn page_with_downloads(&self, dir: Option<&std::path::Path>) -> Result<Page> {
        let profile = tempdir("ferry-profile")?;
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut options = json!({ "binary": self.binary, "args": args });
        if let Some(dir) = dir {
            options["prefs"] = json!({
                "download.default_directory": dir.display().to_string(),
                "download.prompt_for_download": false,
                "download.directory_upgrade": true,
                "profile.default_content_setting_values.automatic_downloads": 1,
                "safebrowsing.enabled": false,
            });
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .context("cannot start a Chromium session")?;
        Ok(Page { client, profile })
    }
}

/// A fresh empty folder under the system temp dir.
pub fn tempdir(prefix: &str) -> Result<PathBuf> {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The Chromium processes started for this profile: `(pid, type)`, where
/// the type is `browser`, `renderer`, `gpu-process` or the utility
/// sub-type (`network.mojom.NetworkService`, …).
pub fn chromium_processes(profile: &std::path::Path) -> Vec<(u32, String)> {
    let mut parent = std::collections::HashMap::new();
    let mut cmdlines = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(") ")
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if let Some(ppid) = ppid {
            parent.insert(pid, ppid);
        }
        cmdlines.insert(pid, String::from_utf8_lossy(&cmd).replace('\0', " "));
    }
    let needle = format!("--user-data-dir={}", profile.display());
    let Some(browser) = cmdlines
        .iter()
        .find(|(_, c)| c.contains(&needle) && !c.contains("--type="))
        .map(|(p, _)| *p)
    else {
        return Vec::new();
    };
    let descends = |mut pid: u32| {
        for _ in 0..16 {
            match parent.get(&pid) {
                Some(&p) if p == browser => return true,
                Some(&p) => pid = p,
                None => return false,
            }
        }
        false
    };
    let flag = |c: &str, name: &str| {
        c.split(' ')
            .find_map(|a| a.strip_prefix(name))
            .map(str::to_owned)
    };
    let mut out = vec![(browser, "browser".to_owned())];
    for (pid, c) in &cmdlines {
        if *pid != browser && descends(*pid) {
            let kind = match flag(c, "--type=").as_deref() {
                Some("utility") => {
                    flag(c, "--utility-sub-type=").unwrap_or_else(|| "utility".into())
                }
                Some(t) => t.to_owned(),
                None => continue,
            };
            out.push((*pid, kind));
        }
    }
    out
}

fn clock_ticks(stat: &str) -> Option<u64> {
    let mut f = stat.rsplit(") ").next()?.split_whitespace().skip(11);
    Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
}

/// CPU time used so far by this profile's Chromium processes, in seconds,
/// keyed by process type; renderer threads are split out by thread name
/// (`renderer/CrRendererMain`, `renderer/DedicatedWorker thread`, …).
pub fn cpu_seconds(profile: &std::path::Path) -> std::collections::BTreeMap<String, f64> {
    // USER_HZ is 100 on Linux.
    const HZ: f64 = 100.0;
    let mut out = std::collections::BTreeMap::new();
    for (pid, kind) in chromium_processes(profile) {
        if kind == "renderer" {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let path = t.path();
                let (Ok(stat), Ok(comm)) = (
                    std::fs::read_to_string(path.join("stat")),
                    std::fs::read_to_string(path.join("comm")),
                ) else {
                    continue;
                };
                if let Some(ticks) = clock_ticks(&stat) {
                    *out.entry(format!("renderer/{}", comm.trim()))
                        .or_insert(0.0) += ticks as f64 / HZ;
                }
            }
        } else if let Some(ticks) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .as_deref()
            .and_then(clock_ticks)
        {
            *out.entry(kind).or_insert(0.0) += ticks as f64 / HZ;
        }
    }
    out
}

/// Resident memory of a process, in bytes.
pub fn process_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// CPU time a process has used so far (user and system), in seconds.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // USER_HZ is 100 on Linux.
    Some(clock_ticks(&stat)? as f64 / 100.0)
}

/// Resident memory of this page's renderer processes, in bytes (the largest
/// one: the page's own renderer).
pub fn renderer_rss(profile: &std::path::Path) -> Option<u64> {
    chromium_processes(profile)
        .into_iter()
        .filter(|(_, kind)| kind == "renderer")
        .filter_map(|(pid, _)| process_rss(pid))
        .max()
}

/// A Chrome DevTools Protocol command sent through chromedriver.
#[derive(Debug)]
struct Cdp {
    body: String,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.clone()))
    }
}

/// Self time per function in a CDP `Profiler.stop` result, largest first:
/// `(function (script), share of all samples)`.
pub fn profile_top(profile: &Value, n: usize) -> Vec<(String, f64)> {
    let mut by_fn = std::collections::HashMap::<String, u64>::new();
    let mut total = 0;
    for node in profile["nodes"].as_array().into_iter().flatten() {
        let hits = node["hitCount"].as_u64().unwrap_or(0);
        let frame = &node["callFrame"];
        let name = frame["functionName"].as_str().unwrap_or("");
        let script = frame["url"].as_str().unwrap_or("");
        let script = script.rsplit('/').next().unwrap_or(script);
        let key = match (name, script) {
            ("", "") => "(native)".to_owned(),
            ("", s) => format!("(anonymous) {s}"),
            (f, "") => f.to_owned(),
            (f, s) => format!("{f} {s}"),
        };
        *by_fn.entry(key).or_insert(0) += hits;
        total += hits;
    }
    let mut v: Vec<_> = by_fn
        .into_iter()
        .map(|(k, h)| (k, h as f64 / total.max(1) as f64))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(n);
    v
}

/// One browser tab showing the Ferry page.
pub struct Page {
    /// The WebDriver session.
    pub client: Client,
    /// The Chromium profile folder of this page.
    pub profile: PathBuf,
}

fn testid(id: &str) -> String {
    format!("[data-testid='{id}']")
}

impl Page {
    /// Navigates and waits until the app has started.
    pub async fn open(&self, url: &str) -> Result<()> {
        self.client.goto(url).await?;
        self.wait_for(
            "document.getElementById('name') && document.getElementById('name').value !== ''",
            Duration::from_secs(20),
        )
        .await
        .context("the app did not start (wasm failed to load?)")?;
        Ok(())
    }

    /// Clicks the element with this `data-testid`. If the page re-renders
    /// it between finding and clicking, it is found again.
    pub async fn click(&self, id: &str) -> Result<()> {
        let mut attempts = 0;
        loop {
            let result = async {
                self.client
                    .find(Locator::Css(&testid(id)))
                    .await?
                    .click()
                    .await
            }
            .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e) if attempts < 5 && e.to_string().contains("stale") => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot click {id}"))),
            }
        }
    }

    /// Gives local file paths to a file input, as a person picking them would.
    pub async fn upload(&self, id: &str, path: &std::path::Path) -> Result<()> {
        let el = self.client.find(Locator::Css(&testid(id))).await?;
        el.send_keys(&path.display().to_string())
            .await
            .with_context(|| format!("cannot pick {}", path.display()))?;
        Ok(())
    }

    /// Resident memory of this page's renderer, in bytes.
    pub fn renderer_rss(&self) -> Option<u64> {
        renderer_rss(&self.profile)
    }

    /// Runs a Chrome DevTools Protocol command on this page.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Result<Value> {
        let body = json!({ "cmd": cmd, "params": params }).to_string();
        Ok(self.client.issue_cmd(Cdp { body }).await?)
    }

    /// Starts sampling the page's JavaScript and WebAssembly (main thread).
    pub async fn start_profile(&self) -> Result<()> {
        self.cdp("Profiler.enable", json!({})).await?;
        self.cdp("Profiler.setSamplingInterval", json!({ "interval": 500 }))
            .await?;
        self.cdp("Profiler.start", json!({})).await?;
        Ok(())
    }

    /// Stops sampling; returns the `n` functions with the most self time.
    pub async fn stop_profile(&self, n: usize) -> Result<Vec<(String, f64)>> {
        let out = self.cdp("Profiler.stop", json!({})).await?;
        Ok(profile_top(&out["profile"], n))
    }

    /// CPU seconds used so far by this page's browser, by process type.
    pub fn cpu_seconds(&self) -> std::collections::BTreeMap<String, f64> {
        cpu_seconds(&self.profile)
    }

    /// Types into the element with this `data-testid`.
    pub async fn type_into(&self, id: &str, text: &str) -> Result<()> {
        let el = self.client.find(Locator::Css(&testid(id))).await?;
        el.clear().await?;
        el.send_keys(text).await?;
        Ok(())
    }

    /// Types a chat message and clicks Send, as a person would.
    pub async fn send_chat(&self, text: &str) -> Result<()> {
        self.type_into("chat-input", text).await?;
        self.click("chat-send").await
    }

    /// Runs a script and returns its value.
    pub async fn eval(&self, script: &str) -> Result<Value> {
        Ok(self.client.execute(script, vec![]).await?)
    }

    /// Runs an async script (last argument is the callback).
    pub async fn eval_async(&self, script: &str) -> Result<Value> {
        Ok(self.client.execute_async(script, vec![]).await?)
    }

    /// Polls a JavaScript expression until it is truthy.
    pub async fn wait_for(&self, expr: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let script = format!("return ({expr});");
        loop {
            let v = self.client.execute(&script, vec![]).await?;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for `{expr}`");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The room link shown on the page.
    pub async fn room_link(&self) -> Result<String> {
        let v = self
            .wait_for(
                "document.querySelector(\"[data-testid='room-link']\").value",
                Duration::from_secs(10),
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Our peer id once joined.
    pub async fn peer_id(&self) -> Result<String> {
        let v = self
            .wait_for(
                "window.__ferry.client && window.__ferry.client.peerId",
                Duration::from_secs(15),
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Waits until the page lists `n` peers, all shown as connected.
    pub async fn wait_connected_peers(&self, n: usize, timeout: Duration) -> Result<()> {
        self.wait_for(
            &format!(
                "(() => {{ const p = [...document.querySelectorAll('[data-testid=peers] li[data-peer-id]')]; return p.length === {n} && p.every(li => li.dataset.state === 'connected'); }})()"
            ),
            timeout,
        )
        .await
        .map(|_| ())
    }

    /// Waits until a chat bubble with exactly `text` appears from someone else.
    pub async fn wait_message(&self, text: &str, timeout: Duration) -> Result<()> {
        let needle = serde_json::to_string(text)?;
        self.wait_for(
            &format!(
                "[...document.querySelectorAll('[data-testid=messages] li.msg:not(.mine):not(.system) .bubble')].some(b => b.textContent === {needle})"
            ),
            timeout,
        )
        .await
        .map(|_| ())
    }

    /// The server status shown in the header (`joined`, `lost`, ...).
    pub async fn server_state(&self) -> Result<String> {
        let v = self
            .eval("return document.querySelector(\"[data-testid='server-status']\").dataset.state")
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Saves a screenshot as PNG, creating the folder it goes in.
    pub async fn screenshot(&self, path: &str) -> Result<()> {
        let png = self.client.screenshot().await?;
        let path = Path::new(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Closes the browser and removes its profile (which holds any files
    /// the page stored).
    pub async fn close(self) -> Result<()> {
        self.client.clone().close().await?;
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

impl Drop for Page {
    /// A test that fails before [`Page::close`] leaves no Chromium behind:
    /// left running (some encoding fake video), they slowed every later
    /// test on the machine.
    fn drop(&mut self) {
        let pids: Vec<String> = chromium_processes(&self.profile)
            .into_iter()
            .map(|(pid, _)| pid.to_string())
            .collect();
        if !pids.is_empty() {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .args(&pids)
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn native_bin() -> PathBuf {
    std::env::var_os("FERRY_NATIVE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/debug/ferry"
            ))
        })
}

/// A `ferry` command-line process (the native peer), with its output
/// collected line by line.
pub struct Native {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stdin: Option<tokio::process::ChildStdin>,
}

impl Native {
    /// Starts `ferry --server <server> <args…>`.
    pub fn start(server: &Server, args: &[&str]) -> Result<Self> {
        let bin = native_bin();
        let mut child = Command::new(&bin)
            .arg("--server")
            .arg(format!("http://127.0.0.1:{}", server.port))
            .args(args)
            .env("FERRY_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {}; build it with `cargo build -p ferry-native`",
                    bin.display()
                )
            })?;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut reader = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if std::env::var_os("FERRY_E2E_ECHO").is_some() {
                        eprintln!("[ferry] {line}");
                    }
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            lines,
            stdin,
        })
    }

    /// Everything printed so far.
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits for a printed line containing `needle` and returns it.
    pub async fn wait_line(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.output().into_iter().find(|l| l.contains(needle)) {
                return Ok(l);
            }
            if Instant::now() > deadline {
                bail!(
                    "ferry did not print {needle:?} in {timeout:?}; it printed:\n{}",
                    self.output().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The room link `ferry send` prints.
    pub async fn room_link(&self) -> Result<String> {
        let line = self
            .wait_line("Open http", Duration::from_secs(600))
            .await?;
        line.split_whitespace()
            .find(|w| w.starts_with("http"))
            .map(str::to_owned)
            .context("no link in ferry's output")
    }

    /// Types a line on its standard input.
    pub async fn type_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Waits for it to exit and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<i32> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "ferry still running after {timeout:?}; it printed:\n{}",
                    self.output().join("\n")
                )
            })??;
        // Let the readers catch the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(status.code().unwrap_or(-1))
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Interrupts it (SIGINT), as Ctrl-C in its terminal would.
    pub fn interrupt(&self) -> Result<()> {
        let pid = self.pid().context("ferry has exited")?;
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -INT {pid} failed");
        Ok(())
    }

    /// Kills it at once (SIGKILL), as a crash or a power cut would.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// Writes `size` pseudo-random bytes (BLAKE3 output stream of `seed`).
pub fn make_file(path: &Path, size: u64, seed: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut xof = blake3::Hasher::new().update(seed.as_bytes()).finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        std::io::Write::write_all(&mut out, &buf[..n])?;
        left -= n as u64;
    }
    std::io::Write::flush(&mut out)?;
    Ok(())
}

/// BLAKE3 of a file on disk.
pub fn hash_file(path: &Path) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    h.update_reader(
        std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?,
    )?;
    Ok(h.finalize())
}

/// Waits until Chromium has finished writing `name` into `dir`.
pub async fn wait_download(
    dir: &Path,
    name: &str,
    size: u64,
    timeout: Duration,
) -> Result<PathBuf> {
    let path = dir.join(name);
    let deadline = Instant::now() + timeout;
    loop {
        let partial = std::fs::read_dir(dir)?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".crdownload"));
        if !partial && std::fs::metadata(&path).is_ok_and(|m| m.len() == size) {
            return Ok(path);
        }
        if Instant::now() > deadline {
            bail!("download of {name} did not finish in {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `redis-server` on a loopback port, with no persistence.
pub struct Redis {
    child: Option<Child>,
    /// The port it listens on.
    pub port: u16,
}

impl Redis {
    /// Starts Redis on `port` and waits until it answers.
    pub async fn start_on(port: u16) -> Result<Self> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context(
                "cannot start redis-server; install Debian's redis-server (cargo xtask setup)",
            )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
                s.write_all(b"PING\r\n").await?;
                let mut buf = [0u8; 16];
                if s.read(&mut buf)
                    .await
                    .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
                {
                    return Ok(Self {
                        child: Some(child),
                        port,
                    });
                }
            }
            if Instant::now() > deadline {
                bail!("redis-server did not come up on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }
}

/// A failover TCP balancer on a loopback port, as a deployment puts in
/// front of several signaling instances: each new connection goes to the
/// first backend that accepts it.
pub struct Balancer {
    /// The port it listens on.
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Starts balancing over `backends` (ports on 127.0.0.1), in order.
    pub async fn start(backends: Vec<u16>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let backends = backends.clone();
                tokio::spawn(async move {
                    for b in backends {
                        if let Ok(mut server) = TcpStream::connect(("127.0.0.1", b)).await {
                            let _ = server.set_nodelay(true);
                            let _ = client.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self { port, task })
    }

    /// The page URL through the balancer.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain HTTP/1.1 GET on a loopback port; the whole answer, headers
/// included, if it is a 200.
pub async fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    if !body.starts_with("HTTP/1.1 200") {
        bail!("unexpected answer: {body}");
    }
    Ok(body)
}
