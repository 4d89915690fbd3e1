//! Reconnecting within the grace period with the resume token keeps the
//! peer id and the room, and the others are not told that the peer left.

mod common;

use std::time::Duration;

use common::{connect, recv, send};
use ferry_protocol::{PeerId, ServerMessage};
use ferry_signaling::Config;
use serde_json::json;

async fn join_with(
    ws: &mut common::Ws,
    room: &str,
    rejoin: Option<(&PeerId, &str)>,
) -> (PeerId, String, Vec<PeerId>) {
    let mut msg = json!({"type": "join", "version": 1, "room": room, "name": ""});
    if let Some((id, token)) = rejoin {
        msg["rejoin_as"] = json!(id);
        msg["resume_token"] = json!(token);
    }
    send(ws, msg).await;
    match recv(ws).await {
        Some(ServerMessage::Joined {
            peer_id,
            resume_token,
            peers,
            grace_ms,
            ..
        }) => {
            assert_eq!(grace_ms, Some(800));
            (
                peer_id,
                resume_token.expect("a token"),
                peers.into_iter().map(|p| p.id).collect(),
            )
        }
        other => panic!("expected joined, got {other:?}"),
    }
}

/// The next frame within `wait`, if any.
async fn next_within(ws: &mut common::Ws, wait: Duration) -> Option<ServerMessage> {
    tokio::time::timeout(wait, recv(ws)).await.ok().flatten()
}

#[tokio::test]
async fn a_lost_connection_keeps_its_seat_for_the_grace_period() {
    let config = Config {
        reconnect_grace: Duration::from_millis(800),
        ..Config::default()
    };
    let url = common::start(config).await;
    let mut a = connect(&url).await;
    let (a_id, _, _) = join_with(&mut a, "seat", None).await;
    let mut b = connect(&url).await;
    let (b_id, token, peers) = join_with(&mut b, "seat", None).await;
    assert_eq!(peers, std::slice::from_ref(&a_id));
    assert!(matches!(
        recv(&mut a).await,
        Some(ServerMessage::PeerJoined { .. })
    ));

    // B's connection dies without `leave` (a reload, a network change).
    drop(b);
    assert!(
        next_within(&mut a, Duration::from_millis(400))
            .await
            .is_none(),
        "nobody is told B left"
    );
    // A wrong token gets a fresh id, not B's seat.
    let mut thief = connect(&url).await;
    let (thief_id, _, _) = join_with(&mut thief, "seat", Some((&b_id, "not-the-token"))).await;
    assert_ne!(thief_id, b_id);
    assert!(
        matches!(recv(&mut a).await, Some(ServerMessage::PeerJoined { peer }) if peer.id == thief_id)
    );
    // B comes back in time with its token: same id, and A gets a fresh
    // `peer_joined` for it (expect its new offer), never `peer_left`.
    let mut b2 = connect(&url).await;
    let (again, token2, peers) = join_with(&mut b2, "seat", Some((&b_id, &token))).await;
    assert_eq!(again, b_id);
    assert_ne!(token2, token, "a new token each time");
    assert!(peers.contains(&a_id));
    assert!(
        matches!(recv(&mut a).await, Some(ServerMessage::PeerJoined { peer }) if peer.id == b_id)
    );
    // Signals reach it again.
    send(
        &mut a,
        json!({"type": "signal", "to": b_id, "signal": {"kind": "end_of_candidates"}}),
    )
    .await;
    assert!(
        matches!(recv(&mut b2).await, Some(ServerMessage::Signal { from, .. }) if from == a_id)
    );

    // Gone for good this time: A learns it after the grace period.
    drop(b2);
    let started = std::time::Instant::now();
    match next_within(&mut a, Duration::from_secs(3)).await {
        Some(ServerMessage::PeerLeft { peer_id }) => assert_eq!(peer_id, b_id),
        other => panic!("expected peer_left, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "not before the grace period"
    );
    // An explicit leave is announced at once.
    send(&mut thief, json!({"type": "leave"})).await;
    match next_within(&mut a, Duration::from_millis(300)).await {
        Some(ServerMessage::PeerLeft { peer_id }) => assert_eq!(peer_id, thief_id),
        other => panic!("expected peer_left, got {other:?}"),
    }
}
