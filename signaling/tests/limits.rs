//! Every abuse limit trips, with its error code or HTTP status; TURN
//! credentials, metrics and graceful shutdown work as documented. Real
//! server on a loopback port, plain WebSocket clients.

mod common;

use std::time::Duration;

use common::{connect, expect_error, join, recv, send, start};
use ferry_protocol::{ErrorCode, ServerMessage};
use ferry_signaling::Config;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn http_base(ws_url: &str) -> String {
    ws_url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned()
}

async fn http_get(ws_url: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(http_base(ws_url))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Frames that arrive within `window`, until the connection closes.
async fn frames_within(ws: &mut common::Ws, window: Duration) -> Vec<ServerMessage> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(window, async {
        while let Some(f) = recv(ws).await {
            out.push(f);
        }
    })
    .await;
    out
}

fn code_count(frames: &[ServerMessage], code: ErrorCode) -> usize {
    frames
        .iter()
        .filter(|f| matches!(f, ServerMessage::Error { code: c, .. } if *c == code))
        .count()
}

#[tokio::test]
async fn a_flood_of_messages_is_rate_limited() {
    let mut config = Config::default();
    config.limits.messages_per_sec = 5;
    config.limits.message_burst = 5;
    let url = start(config).await;
    let mut a = connect(&url).await;
    join(&mut a, "flood").await; // One token.
    for _ in 0..30 {
        send(
            &mut a,
            json!({"type": "signal", "to": "nobody", "signal": {"kind": "end_of_candidates"}}),
        )
        .await;
    }
    let frames = frames_within(&mut a, Duration::from_millis(400)).await;
    assert_eq!(
        code_count(&frames, ErrorCode::RateLimited),
        1,
        "said once: {frames:?}"
    );
    let served = code_count(&frames, ErrorCode::UnknownPeer);
    assert!((4..=6).contains(&served), "{served} of 30 were served");
    // The connection stays usable once it slows down.
    tokio::time::sleep(Duration::from_millis(600)).await;
    send(
        &mut a,
        json!({"type": "signal", "to": "nobody", "signal": {"kind": "end_of_candidates"}}),
    )
    .await;
    expect_error(&mut a, ErrorCode::UnknownPeer).await;
    let metrics = http_get(&url, "/metrics").await;
    assert!(
        metrics.contains("ferry_rejects_total{reason=\"rate_limited\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_connection_that_never_joins_is_dropped() {
    let mut config = Config::default();
    config.limits.join_timeout = Duration::from_millis(300);
    let url = start(config).await;
    let mut a = connect(&url).await;
    expect_error(&mut a, ErrorCode::Idle).await;
    assert!(recv(&mut a).await.is_none(), "then closed");
}

#[tokio::test]
async fn the_number_of_rooms_is_capped() {
    let mut config = Config::default();
    config.limits.max_rooms = 1;
    let url = start(config).await;
    let mut a = connect(&url).await;
    join(&mut a, "first").await;
    let mut b = connect(&url).await;
    send(
        &mut b,
        json!({"type": "join", "version": 1, "room": "second", "name": ""}),
    )
    .await;
    expect_error(&mut b, ErrorCode::TooManyRooms).await;
    assert!(recv(&mut b).await.is_none(), "then closed");
    let mut c = connect(&url).await;
    let (_, peers) = join(&mut c, "first").await;
    assert_eq!(peers.len(), 1, "an existing room still takes members");
}

#[tokio::test]
async fn only_allowed_origins_may_connect() {
    let mut config = Config::default();
    config.limits.allowed_origins = vec!["http://good.example".into()];
    let url = start(config).await;
    let with_origin = |origin: &str| {
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        req
    };
    let bad = tokio_tungstenite::connect_async(with_origin("http://evil.example")).await;
    let err = bad.expect_err("refused").to_string();
    assert!(err.contains("403"), "{err}");
    let (mut ok, _) = tokio_tungstenite::connect_async(with_origin("http://good.example"))
        .await
        .unwrap();
    join(&mut ok, "origin").await;
}

#[tokio::test]
async fn new_connections_per_address_are_limited() {
    let mut config = Config::default();
    config.limits.connections_per_ip_per_min = 3;
    let url = start(config).await;
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(connect(&url).await);
    }
    let err = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect_err("the fourth is refused")
        .to_string();
    assert!(err.contains("429"), "{err}");
    let metrics = http_get(&url, "/metrics").await;
    assert!(
        metrics.contains("ferry_rejects_total{reason=\"ip_rate\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("ferry_connections 3"), "{metrics}");
}

#[tokio::test]
async fn turn_credentials_are_short_lived_and_verifiable() {
    let mut config = Config::default();
    config.ice.stun_urls = vec!["stun:127.0.0.1:3478".into()];
    config.ice.turn_urls = vec!["turn:127.0.0.1:3478?transport=udp".into()];
    config.ice.turn_secret = Some("shared-secret".into());
    config.ice.turn_ttl = Duration::from_secs(600);
    let url = start(config).await;
    let mut a = connect(&url).await;
    send(
        &mut a,
        json!({"type": "join", "version": 1, "room": "turn", "name": ""}),
    )
    .await;
    let Some(ServerMessage::Joined {
        peer_id,
        ice_servers,
        ..
    }) = recv(&mut a).await
    else {
        panic!("expected joined");
    };
    assert_eq!(ice_servers.len(), 2);
    assert_eq!(ice_servers[0].urls, ["stun:127.0.0.1:3478"]);
    let turn = &ice_servers[1];
    let user = turn.username.clone().unwrap();
    let (expiry, who) = user.split_once(':').unwrap();
    assert_eq!(who, peer_id.as_str());
    let expiry: u64 = expiry.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "valid for ten minutes"
    );
    let (_, password) = ferry_signaling::ice::turn_credential("shared-secret", &peer_id, expiry);
    assert_eq!(turn.credential.as_deref(), Some(password.as_str()));
}

#[tokio::test]
async fn shutting_down_tells_clients_to_reconnect() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ferry_signaling::serve(listener, Config::default(), async {
        let _ = stopped.await;
    }));
    let mut a = connect(&url).await;
    join(&mut a, "bye").await;
    let _ = stop.send(());
    expect_error(&mut a, ErrorCode::GoingAway).await;
    assert!(recv(&mut a).await.is_none(), "then closed");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops once its clients are gone")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_its_room_told() {
    let mut config = Config::default();
    // Long enough that the queue fills while a write is stuck.
    config.limits.write_timeout = Duration::from_secs(2);
    config.limits.messages_per_sec = 100_000;
    config.limits.message_burst = 100_000;
    config.reconnect_grace = Duration::ZERO;
    let url = start(config).await;
    let mut a = connect(&url).await;
    join(&mut a, "slow").await;
    // B joins and then never reads its socket again.
    let mut b = connect(&url).await;
    let (idb, _) = join(&mut b, "slow").await;
    assert!(matches!(
        recv(&mut a).await,
        Some(ServerMessage::PeerJoined { .. })
    ));
    // About 40 KB a frame, under the 64 KiB frame limit.
    let sdp = format!("v=0 {}", "x".repeat(40_000));
    let offer =
        json!({"type": "signal", "to": idb.to_string(), "signal": {"kind": "offer", "sdp": sdp}});
    let (mut busy, mut left) = (0, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !left && tokio::time::Instant::now() < deadline {
        send(&mut a, offer.clone()).await;
        // What the server says back, without waiting for more.
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(
            Duration::from_millis(1),
            futures_util::StreamExt::next(&mut a),
        )
        .await
        {
            let tokio_tungstenite::tungstenite::Message::Text(t) = msg else {
                continue;
            };
            match ServerMessage::decode(&t).expect("valid frame") {
                ServerMessage::Error {
                    code: ErrorCode::PeerBusy,
                    ..
                } => busy += 1,
                ServerMessage::PeerLeft { peer_id } if peer_id == idb => left = true,
                _ => {}
            }
        }
    }
    let metrics = http_get(&url, "/metrics").await;
    assert!(
        left,
        "the slow member was never dropped ({busy} busy replies)"
    );
    assert!(busy > 0, "its full queue was reported as peer_busy");
    assert!(
        metrics.contains("ferry_rejects_total{reason=\"slow_client\"}"),
        "{metrics}"
    );
    drop(b);
}

#[tokio::test]
async fn relayed_signals_are_counted_and_timed_in_metrics() {
    let url = start(Config::default()).await;
    let mut a = connect(&url).await;
    let mut b = connect(&url).await;
    let (aid, _) = join(&mut a, "timed").await;
    let (bid, _) = join(&mut b, "timed").await;
    assert!(matches!(
        recv(&mut a).await,
        Some(ServerMessage::PeerJoined { .. })
    ));
    for _ in 0..3 {
        send(
            &mut b,
            json!({"type": "signal", "to": aid.as_str(), "signal": {"kind": "end_of_candidates"}}),
        )
        .await;
        match recv(&mut a).await {
            Some(ServerMessage::Signal { from, .. }) => assert_eq!(from, bid),
            other => panic!("{other:?}"),
        }
    }
    // The histogram is updated just after the write that a saw; poll.
    let lines = [
        "ferry_messages_relayed_total 3",
        "ferry_relay_latency_seconds_count 3",
        "ferry_relay_latency_seconds_bucket{le=\"+Inf\"} 3",
    ];
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = http_get(&url, "/metrics").await;
        if lines.iter().all(|l| metrics.contains(l)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{lines:?} in\n{metrics}");
}
