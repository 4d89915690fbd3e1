//! `cargo xtask`: build, serve, test and benchmark Ferry.
//!
//! # Design
//!
//! Every workflow a contributor or CI needs is one subcommand, so the README
//! can promise two commands on a fresh machine: `cargo xtask serve` and
//! `cargo xtask test`. Both first make sure the tools they need exist and
//! install what is missing (the wasm32 target, the wasm-bindgen CLI at the
//! exact version the crate pins, Debian's `chromium` and `chromium-driver`).
//! End-to-end tests and benchmarks run inside a private network namespace
//! that has only loopback (`unshare -n`), so no packet can leave the machine.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Ferry developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the wasm and the page, then run the server on the embedded default.
    Serve {
        /// Arguments passed to `ferry-signaling` (try `-- --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the wasm package into www/pkg.
    BuildWasm,
    /// Install what is missing, then run every check and test.
    Test {
        /// Run only these stages (fmt, clippy, unit, wasm, e2e); default all.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Install the tools the tests need, if missing.
    Setup,
    /// Run a benchmark; prints one JSON object as the last line.
    Bench {
        /// Which benchmark: `connect`, `swap`, `call`, `signaling`, `signaling-cluster` or `native`.
        name: String,
        /// Extra arguments for the benchmark.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    // Commands run from the repository root unless they chose a folder.
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    let status: ExitStatus = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn on_path(bin: &str) -> bool {
    output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_some()
}

/// The exact wasm-bindgen version pinned in the workspace manifest.
fn pinned_wasm_bindgen() -> Result<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("wasm-bindgen = \"=")
                .and_then(|rest| rest.strip_suffix('"'))
                .map(str::to_owned)
        })
        .context("Cargo.toml must pin wasm-bindgen as `wasm-bindgen = \"=X.Y.Z\"`")
}

fn ensure_wasm_toolchain() -> Result<()> {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed
        .lines()
        .any(|l| l.trim() == "wasm32-unknown-unknown")
    {
        run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    let want = pinned_wasm_bindgen()?;
    let have = output(Command::new("wasm-bindgen").arg("--version")).unwrap_or_default();
    if !have.split_whitespace().any(|w| w == want) {
        eprintln!("installing wasm-bindgen-cli {want} (takes a few minutes once)");
        // Not --locked: the CLI's lockfile pins crates some registries lack.
        run(cargo().args(["install", "wasm-bindgen-cli", "--version", &want]))?;
    }
    Ok(())
}

/// Installs Debian packages for the programs that are missing.
fn ensure_debian(needs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = needs
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    let sudo = output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() != "0");
    let apt = |args: &[&str]| {
        let mut c = if sudo {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        } else {
            Command::new("apt-get")
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["update"]))?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(missing);
    run(&mut apt(&install))?;
    Ok(())
}

fn ensure_browser() -> Result<()> {
    ensure_debian(&[
        ("chromium", "chromium"),
        ("chromedriver", "chromium-driver"),
    ])
}

/// What the end-to-end tests start besides the browser: coturn for TURN.
fn ensure_test_services() -> Result<()> {
    ensure_browser()?;
    ensure_debian(&[("turnserver", "coturn"), ("redis-server", "redis-server")])
}

fn build_wasm() -> Result<()> {
    ensure_wasm_toolchain()?;
    run(cargo().args([
        "build",
        "--profile",
        "wasm",
        "--package",
        "ferry-wasm",
        "--target",
        "wasm32-unknown-unknown",
    ]))?;
    let wasm = target_dir().join("wasm32-unknown-unknown/wasm/ferry_wasm.wasm");
    let out = root().join("www/pkg");
    let mut bindgen = Command::new("wasm-bindgen");
    // FERRY_WASM_NAMES=1 keeps function names, for profiles (larger file).
    if std::env::var_os("FERRY_WASM_NAMES").is_none() {
        bindgen.arg("--remove-name-section");
    }
    run(bindgen
        .arg("--target")
        .arg("web")
        .arg("--no-typescript")
        .arg("--remove-producers-section")
        .arg("--out-dir")
        .arg(&out)
        .arg(&wasm))?;
    let size = std::fs::metadata(out.join("ferry_wasm_bg.wasm"))?.len();
    eprintln!("built www/pkg ({size} bytes of wasm)");
    Ok(())
}

/// Runs `cmd` inside a fresh network namespace with only loopback up.
fn in_loopback_namespace(cmd: &mut Command) -> Command {
    let root = output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0");
    let mut wrapped = Command::new("unshare");
    // Without root, map ourselves to root in a new user namespace.
    wrapped
        .arg(if root { "-n" } else { "-rn" })
        .args(["sh", "-c", "ip link set lo up && exec \"$@\"", "sh"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    wrapped
}

fn test(only: &[String]) -> Result<()> {
    let want = |stage: &str| only.is_empty() || only.iter().any(|s| s == stage);
    let started = Instant::now();
    ensure_wasm_toolchain()?;
    if want("e2e") {
        ensure_test_services()?;
    } else if want("wasm") {
        ensure_browser()?;
    }
    if want("fmt") {
        run(cargo().args(["fmt", "--all", "--check"]))?;
    }
    if want("clippy") {
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        run(cargo().args([
            "clippy",
            "--target",
            "wasm32-unknown-unknown",
            "-p",
            "ferry-protocol",
            "-p",
            "ferry-core",
            "-p",
            "ferry-wasm",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    if want("unit") {
        run(cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "ferry-e2e",
            "--exclude",
            "ferry-wasm",
        ]))?;
    }
    if want("wasm") {
        let chromedriver = output(Command::new("sh").args(["-c", "command -v chromedriver"]))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "chromedriver".into());
        run(cargo()
            .args([
                "test",
                "-p",
                "ferry-wasm",
                "--target",
                "wasm32-unknown-unknown",
            ])
            .env("CHROMEDRIVER", chromedriver)
            .env(
                "WASM_BINDGEN_TEST_WEBDRIVER_JSON",
                root().join("peer-wasm/webdriver.json"),
            ))?;
    }
    if want("e2e") {
        build_wasm()?;
        run(cargo().args(["build", "-p", "ferry-signaling", "-p", "ferry-native"]))?;
        run(cargo().args(["test", "-p", "ferry-e2e", "--no-run"]))?;
        let server = target_dir().join("debug/ferry-signaling");
        let native = target_dir().join("debug/ferry");
        run(&mut in_loopback_namespace(
            cargo()
                .args([
                    "test",
                    "--offline",
                    "-p",
                    "ferry-e2e",
                    "--",
                    "--test-threads=1",
                ])
                .env("FERRY_SIGNALING_BIN", &server)
                .env("FERRY_NATIVE_BIN", &native),
        ))?;
    }
    eprintln!("all checks passed in {:.0?}", started.elapsed());
    Ok(())
}

/// Builds a release server and the benchmark binary `bin` of `ferry-e2e`.
fn build_release_tools(bin: &str) -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "ferry-signaling"]))?;
    run(cargo().args(["build", "--release", "-p", "ferry-e2e", "--bin", bin]))
}

/// Builds what the browser benchmarks run: the wasm, a release server and `ferry-bench`.
fn build_bench() -> Result<()> {
    ensure_browser()?;
    build_wasm()?;
    build_release_tools("ferry-bench")
}

fn bench(name: &str, args: &[String]) -> Result<()> {
    match name {
        "connect" => {
            build_bench()?;
            let bench = target_dir().join("release/ferry-bench");
            let wasm = std::fs::read(root().join("www/pkg/ferry_wasm_bg.wasm"))?;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            std::io::Write::write_all(&mut gz, &wasm)?;
            let gzipped = gz.finish()?.len();
            let mut cmd = Command::new(bench);
            cmd.arg("connect")
                .args(args)
                .env(
                    "FERRY_SIGNALING_BIN",
                    target_dir().join("release/ferry-signaling"),
                )
                .env("FERRY_WASM_BYTES", wasm.len().to_string())
                .env("FERRY_WASM_GZIP_BYTES", gzipped.to_string());
            run(&mut in_loopback_namespace(&mut cmd))
        }
        "swap" => {
            build_bench()?;
            let mut cmd = Command::new(target_dir().join("release/ferry-bench"));
            cmd.arg("swap").args(args).env(
                "FERRY_SIGNALING_BIN",
                target_dir().join("release/ferry-signaling"),
            );
            run(&mut in_loopback_namespace(&mut cmd))
        }
        "signaling" => {
            build_release_tools("ferry-loadgen")?;
            // The baseline: PeerServer from npm, as pinned in its lockfile.
            let peerserver = root().join("bench/peerserver");
            if !on_path("node") || !on_path("npm") {
                bail!("the signaling benchmark needs Node.js and npm for its PeerServer baseline");
            }
            if !peerserver.join("node_modules/peer").exists() {
                run(Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&peerserver))?;
            }
            let mut cmd = Command::new(target_dir().join("release/ferry-loadgen"));
            cmd.arg("bench")
                .args(args)
                .env(
                    "FERRY_SIGNALING_BIN",
                    target_dir().join("release/ferry-signaling"),
                )
                .env("FERRY_PEERSERVER_DIR", &peerserver);
            run(&mut in_loopback_namespace(&mut cmd))
        }
        "call" | "native" => {
            build_bench()?;
            run(cargo().args(["build", "--release", "-p", "ferry-native"]))?;
            let mut cmd = Command::new(target_dir().join("release/ferry-bench"));
            cmd.arg(name)
                .args(args)
                .env(
                    "FERRY_SIGNALING_BIN",
                    target_dir().join("release/ferry-signaling"),
                )
                .env("FERRY_NATIVE_BIN", target_dir().join("release/ferry"));
            run(&mut in_loopback_namespace(&mut cmd))
        }
        "signaling-cluster" => {
            ensure_debian(&[("redis-server", "redis-server")])?;
            build_release_tools("ferry-loadgen")?;
            let mut cmd = Command::new(target_dir().join("release/ferry-loadgen"));
            cmd.arg("cluster").args(args).env(
                "FERRY_SIGNALING_BIN",
                target_dir().join("release/ferry-signaling"),
            );
            run(&mut in_loopback_namespace(&mut cmd))
        }
        other => bail!(
            "unknown benchmark `{other}`; available: connect, swap, call, signaling, signaling-cluster, native"
        ),
    }
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Serve { args } => {
            build_wasm()?;
            run(cargo()
                .args(["run", "--release", "-p", "ferry-signaling", "--"])
                .args(args))
        }
        Task::BuildWasm => build_wasm(),
        Task::Test { only } => test(&only),
        Task::Setup => {
            ensure_wasm_toolchain()?;
            ensure_test_services()
        }
        Task::Bench { name, args } => bench(&name, &args),
    }
}
