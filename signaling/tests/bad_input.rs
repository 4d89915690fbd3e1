//! Signaling integration tests with a plain WebSocket client: every kind of
//! bad input gets an error frame with a stable code, and the server keeps
//! serving everyone else.

mod common;

use std::time::Duration;

use common::{connect, expect_error, join, recv, send, start};
use ferry_protocol::{ErrorCode, ServerMessage};
use ferry_signaling::Config;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A bystander in the same room must still get relayed signals.
async fn assert_still_serving(url: &str, room: &str) {
    let mut x = connect(url).await;
    let mut y = connect(url).await;
    let (xid, _) = join(&mut x, room).await;
    let (yid, _) = join(&mut y, room).await;
    assert!(matches!(
        recv(&mut x).await,
        Some(ServerMessage::PeerJoined { .. })
    ));
    send(
        &mut y,
        json!({"type": "signal", "to": xid.as_str(), "signal": {"kind": "offer", "sdp": "v=0"}}),
    )
    .await;
    match recv(&mut x).await {
        Some(ServerMessage::Signal { from, .. }) => assert_eq!(from, yid),
        other => panic!("relay broken: {other:?}"),
    }
}

#[tokio::test]
async fn relays_signals_within_a_room_and_announces_arrivals_and_departures() {
    let url = start(Config::default()).await;
    let mut a = connect(&url).await;
    let mut b = connect(&url).await;
    let mut other = connect(&url).await;
    let (aid, peers) = join(&mut a, "Room-1").await;
    assert!(peers.is_empty());
    let (bid, peers) = join(&mut b, "room-1").await;
    assert_eq!(peers, vec![aid.clone()], "room codes are case-insensitive");
    let (oid, _) = join(&mut other, "room-2").await;
    match recv(&mut a).await {
        Some(ServerMessage::PeerJoined { peer }) => assert_eq!(peer.id, bid),
        other => panic!("{other:?}"),
    }
    let cand = json!({"kind": "candidate", "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdp_mid": "0", "sdp_m_line_index": 0});
    send(
        &mut b,
        json!({"type": "signal", "to": aid.as_str(), "signal": cand}),
    )
    .await;
    match recv(&mut a).await {
        Some(ServerMessage::Signal { from, .. }) => assert_eq!(from, bid),
        other => panic!("{other:?}"),
    }
    // Not across rooms.
    send(
        &mut b,
        json!({"type": "signal", "to": oid.as_str(), "signal": {"kind": "end_of_candidates"}}),
    )
    .await;
    expect_error(&mut b, ErrorCode::UnknownPeer).await;
    // Leaving is announced at once.
    send(&mut b, json!({"type": "leave"})).await;
    match recv(&mut a).await {
        Some(ServerMessage::PeerLeft { peer_id }) => assert_eq!(peer_id, bid),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn every_bad_input_gets_a_clear_error_and_the_server_keeps_serving() {
    let url = start(Config::default()).await;

    // Messages before join.
    let mut ws = connect(&url).await;
    send(
        &mut ws,
        json!({"type": "signal", "to": "abc", "signal": {"kind": "end_of_candidates"}}),
    )
    .await;
    expect_error(&mut ws, ErrorCode::NotJoined).await;

    // Malformed JSON, unknown types, missing fields, binary frames: not fatal.
    ws.send(Message::text("{this is not json")).await.unwrap();
    expect_error(&mut ws, ErrorCode::Malformed).await;
    send(&mut ws, json!({"type": "teleport"})).await;
    expect_error(&mut ws, ErrorCode::Malformed).await;
    send(&mut ws, json!({"type": "signal"})).await;
    expect_error(&mut ws, ErrorCode::Malformed).await;
    ws.send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    expect_error(&mut ws, ErrorCode::Malformed).await;

    // A frame that is too large.
    let huge = json!({"type": "join", "version": 1, "room": "r", "name": "x".repeat(100 * 1024)});
    send(&mut ws, huge).await;
    expect_error(&mut ws, ErrorCode::FrameTooLarge).await;

    // The same connection can still join after all that.
    let (me, _) = join(&mut ws, "bad-input").await;

    // Unknown target peer, including ourselves.
    send(
        &mut ws,
        json!({"type": "signal", "to": "nobody", "signal": {"kind": "offer", "sdp": "v=0"}}),
    )
    .await;
    expect_error(&mut ws, ErrorCode::UnknownPeer).await;
    send(
        &mut ws,
        json!({"type": "signal", "to": me.as_str(), "signal": {"kind": "offer", "sdp": "v=0"}}),
    )
    .await;
    expect_error(&mut ws, ErrorCode::UnknownPeer).await;
    send(
        &mut ws,
        json!({"type": "signal", "to": "../../etc", "signal": {"kind": "offer", "sdp": "v=0"}}),
    )
    .await;
    expect_error(&mut ws, ErrorCode::Malformed).await;

    // Joining twice.
    send(
        &mut ws,
        json!({"type": "join", "version": 1, "room": "elsewhere"}),
    )
    .await;
    expect_error(&mut ws, ErrorCode::AlreadyJoined).await;

    // Wrong protocol version: fatal, the connection closes.
    let mut old = connect(&url).await;
    send(
        &mut old,
        json!({"type": "join", "version": 99, "room": "bad-input"}),
    )
    .await;
    expect_error(&mut old, ErrorCode::UnsupportedVersion).await;
    assert!(recv(&mut old).await.is_none(), "closed after a fatal error");

    // Invalid room code and name: fatal.
    let mut bad = connect(&url).await;
    send(
        &mut bad,
        json!({"type": "join", "version": 1, "room": "no/slashes"}),
    )
    .await;
    expect_error(&mut bad, ErrorCode::InvalidRoom).await;
    let mut bad = connect(&url).await;
    send(
        &mut bad,
        json!({"type": "join", "version": 1, "room": "ok", "name": "nul\u{0}name"}),
    )
    .await;
    expect_error(&mut bad, ErrorCode::InvalidName).await;

    // A frame over the hard cap closes only that connection.
    let mut giant = connect(&url).await;
    let _ = giant.send(Message::text("x".repeat(2 * 1024 * 1024))).await;
    assert!(recv(&mut giant).await.is_none());

    assert_still_serving(&url, "bad-input").await;
}

#[tokio::test]
async fn a_full_room_refuses_the_ninth_peer() {
    let url = start(Config::default()).await;
    let mut members = Vec::new();
    for _ in 0..8 {
        let mut ws = connect(&url).await;
        join(&mut ws, "full").await;
        members.push(ws);
    }
    let mut ninth = connect(&url).await;
    send(
        &mut ninth,
        json!({"type": "join", "version": 1, "room": "full"}),
    )
    .await;
    expect_error(&mut ninth, ErrorCode::RoomFull).await;
    assert!(recv(&mut ninth).await.is_none());
    assert_still_serving(&url, "another-room").await;
}

/// Counts the server's pings on `ws` for `for_how_long`, sending a client
/// Ping every `every` if it is given.
async fn pings_seen(ws: &mut common::Ws, for_how_long: Duration, every: Option<Duration>) -> u32 {
    use futures_util::StreamExt;
    let until = tokio::time::Instant::now() + for_how_long;
    let mut tick = tokio::time::interval(every.unwrap_or(for_how_long * 2));
    let mut pings = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => return pings,
            _ = tick.tick(), if every.is_some() => {
                ws.send(Message::Ping(Default::default())).await.expect("client ping");
            }
            m = ws.next() => match m {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            },
        }
    }
}

#[tokio::test]
async fn busy_connections_are_not_pinged_and_silent_ones_are() {
    let config = Config {
        heartbeat: Duration::from_millis(200),
        ..Config::default()
    };
    let url = start(config).await;
    let mut ws = connect(&url).await;
    join(&mut ws, "hb-busy").await;
    // Sending something every 50 ms: every tick finds it heard from.
    let busy = pings_seen(
        &mut ws,
        Duration::from_millis(1200),
        Some(Duration::from_millis(50)),
    )
    .await;
    assert_eq!(busy, 0, "a busy connection was pinged");
    // Silent (but answering, as tungstenite does while it reads): pinged at
    // the ticks that find it silent for an interval, and never dropped.
    let silent = pings_seen(&mut ws, Duration::from_millis(1200), None).await;
    assert!(
        silent >= 2,
        "a silent connection got {silent} pings in 6 intervals"
    );
}

#[tokio::test]
async fn dead_connections_are_dropped_within_the_heartbeat_bound() {
    let config = Config {
        heartbeat: Duration::from_millis(200),
        reconnect_grace: Duration::from_millis(500),
        ..Config::default()
    };
    let url = start(config).await;
    let mut alive = connect(&url).await;
    let (_, _) = join(&mut alive, "hb").await;
    // A raw TCP client that completes the handshake, joins, then never
    // answers a ping again.
    let mut silent = connect(&url).await;
    let (silent_id, _) = join(&mut silent, "hb").await;
    let started = std::time::Instant::now();
    let mut saw_joined = false;
    loop {
        match recv(&mut alive).await {
            Some(ServerMessage::PeerJoined { .. }) => saw_joined = true,
            Some(ServerMessage::PeerLeft { peer_id }) => {
                assert_eq!(peer_id, silent_id);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(saw_joined);
    let took = started.elapsed();
    // 3 missed intervals, plus one interval of ticker slack, plus the
    // grace period its seat is kept for.
    assert!(
        took <= Duration::from_millis(200 * 4 + 500 + 300),
        "took {took:?}"
    );
    // The silent one is gone; the alive one (which answers pings while it
    // reads) is still served.
    drop(silent);
    assert_still_serving(&url, "hb").await;
}
