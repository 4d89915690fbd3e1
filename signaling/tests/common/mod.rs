//! Helpers shared by the signaling integration tests: a server on port 0
//! and a plain WebSocket client.
#![allow(dead_code)]

use std::time::Duration;

use ferry_protocol::{ErrorCode, PeerId, ServerMessage};
use ferry_signaling::Config;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) async fn start(config: Config) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ferry_signaling::serve(
        listener,
        config,
        std::future::pending(),
    ));
    format!("ws://{addr}/ws")
}

pub(crate) async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

pub(crate) async fn send(ws: &mut Ws, v: serde_json::Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// Next protocol frame, skipping pings; `None` if the connection closed.
pub(crate) async fn recv(ws: &mut Ws) -> Option<ServerMessage> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no frame within 5 s")?;
        match msg.ok()? {
            Message::Text(t) => {
                return Some(ServerMessage::decode(&t).expect("valid server frame"));
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

pub(crate) async fn expect_error(ws: &mut Ws, code: ErrorCode) {
    match recv(ws).await {
        Some(ServerMessage::Error { code: got, message }) => {
            assert_eq!(got, code, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

pub(crate) async fn join(ws: &mut Ws, room: &str) -> (PeerId, Vec<PeerId>) {
    send(
        ws,
        json!({"type": "join", "version": 1, "room": room, "name": "t"}),
    )
    .await;
    match recv(ws).await {
        Some(ServerMessage::Joined { peer_id, peers, .. }) => {
            (peer_id, peers.into_iter().map(|p| p.id).collect())
        }
        other => panic!("expected joined, got {other:?}"),
    }
}
