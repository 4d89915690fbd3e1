//! The room registry: who is in which room, and how to reach them.

use std::collections::HashMap;
use std::sync::Mutex;

use ferry_protocol::{PeerId, PeerInfo, RoomCode, ServerMessage};
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::sync::mpsc;

use crate::Error;

/// What a connection task is asked to write to its socket.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A protocol frame.
    Frame(ServerMessage),
}

/// The sending half of a member's outbound queue.
pub(crate) type MemberTx = mpsc::Sender<Outbound>;

struct Member {
    info: PeerInfo,
    tx: MemberTx,
}

/// All rooms of one server. Rooms are created on first join and dropped
/// when their last member leaves.
pub(crate) struct RoomRegistry {
    rooms: Mutex<HashMap<RoomCode, Vec<Member>>>,
    max_room_size: usize,
    max_rooms: usize,
}

/// Length of generated peer ids: 12 alphanumerics, about 71 bits.
const PEER_ID_LEN: usize = 12;

impl RoomRegistry {
    pub(crate) fn new(max_room_size: usize, max_rooms: usize) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            max_room_size,
            max_rooms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomCode, Vec<Member>>> {
        // A panic while holding the lock cannot leave the map half-updated in
        // a way that matters more than refusing service, so recover it.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a member, announces it to the others, and returns its id and the
    /// members that were already there.
    pub(crate) fn join(
        &self,
        room: &RoomCode,
        name: String,
        rejoin_as: Option<PeerId>,
        tx: MemberTx,
    ) -> Result<(PeerId, Vec<PeerInfo>), Error> {
        let mut rooms = self.lock();
        if !rooms.contains_key(room) && rooms.len() >= self.max_rooms {
            return Err(Error::TooManyRooms(self.max_rooms));
        }
        let members = rooms.entry(room.clone()).or_default();
        if members.len() >= self.max_room_size {
            let limit = self.max_room_size;
            if members.is_empty() {
                rooms.remove(room);
            }
            return Err(Error::RoomFull(limit));
        }
        let taken = |id: &PeerId| members.iter().any(|m| &m.info.id == id);
        let id = match rejoin_as {
            Some(id) if !taken(&id) => id,
            _ => loop {
                let candidate: String = rand::rng()
                    .sample_iter(&Alphanumeric)
                    .take(PEER_ID_LEN)
                    .map(char::from)
                    .collect();
                let candidate = PeerId::new(candidate).map_err(Error::Protocol)?;
                if !taken(&candidate) {
                    break candidate;
                }
            },
        };
        let info = PeerInfo {
            id: id.clone(),
            name,
        };
        let existing: Vec<PeerInfo> = members.iter().map(|m| m.info.clone()).collect();
        for m in members.iter() {
            // A member whose queue is full is too slow to keep up; it will be
            // dropped by its own task when its heartbeat lapses.
            let _ = m.tx.try_send(Outbound::Frame(ServerMessage::PeerJoined {
                peer: info.clone(),
            }));
        }
        members.push(Member { info, tx });
        Ok((id, existing))
    }

    /// Removes a member and tells the others it left.
    pub(crate) fn leave(&self, room: &RoomCode, id: &PeerId) {
        let mut rooms = self.lock();
        let Some(members) = rooms.get_mut(room) else {
            return;
        };
        let before = members.len();
        members.retain(|m| &m.info.id != id);
        if members.len() == before {
            return;
        }
        for m in members.iter() {
            let _ = m.tx.try_send(Outbound::Frame(ServerMessage::PeerLeft {
                peer_id: id.clone(),
            }));
        }
        if members.is_empty() {
            rooms.remove(room);
        }
    }

    /// Queues a frame for one member of a room.
    pub(crate) fn relay(
        &self,
        room: &RoomCode,
        to: &PeerId,
        frame: ServerMessage,
    ) -> Result<(), Error> {
        let rooms = self.lock();
        let member = rooms
            .get(room)
            .and_then(|members| members.iter().find(|m| &m.info.id == to))
            .ok_or_else(|| Error::UnknownPeer(to.clone()))?;
        member
            .tx
            .try_send(Outbound::Frame(frame))
            .map_err(|_| Error::RecipientBusy(to.clone()))
    }

    /// Number of rooms, for tests and logs.
    pub(crate) fn room_count(&self) -> usize {
        self.lock().len()
    }

    /// Number of connected members across all rooms.
    pub(crate) fn member_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> RoomCode {
        RoomCode::new(s).unwrap()
    }

    #[test]
    fn rooms_are_created_and_dropped() {
        let reg = RoomRegistry::new(2, 100);
        let (tx1, mut rx1) = mpsc::channel(8);
        let (tx2, _rx2) = mpsc::channel(8);
        let (a, peers) = reg.join(&room("r"), "a".into(), None, tx1).unwrap();
        assert!(peers.is_empty());
        let (b, peers) = reg.join(&room("r"), "b".into(), None, tx2).unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].id, a);
        assert!(matches!(
            rx1.try_recv().unwrap(),
            Outbound::Frame(ServerMessage::PeerJoined { peer }) if peer.id == b
        ));
        let (tx3, _rx3) = mpsc::channel(8);
        assert!(matches!(
            reg.join(&room("r"), String::new(), None, tx3),
            Err(Error::RoomFull(2))
        ));
        reg.leave(&room("r"), &b);
        assert!(matches!(
            rx1.try_recv().unwrap(),
            Outbound::Frame(ServerMessage::PeerLeft { peer_id }) if peer_id == b
        ));
        reg.leave(&room("r"), &a);
        assert_eq!(reg.room_count(), 0);
    }

    #[test]
    fn rejoin_keeps_a_free_id_only() {
        let reg = RoomRegistry::new(8, 100);
        let want = PeerId::new("keepme").unwrap();
        let (tx, _rx) = mpsc::channel(8);
        let (id, _) = reg
            .join(&room("r"), String::new(), Some(want.clone()), tx)
            .unwrap();
        assert_eq!(id, want);
        let (tx, _rx2) = mpsc::channel(8);
        let (id2, _) = reg
            .join(&room("r"), String::new(), Some(want.clone()), tx)
            .unwrap();
        assert_ne!(id2, want);
    }

    #[test]
    fn relay_only_within_room() {
        let reg = RoomRegistry::new(8, 100);
        let (tx1, _rx1) = mpsc::channel(8);
        let (tx2, mut rx2) = mpsc::channel(8);
        let (_a, _) = reg.join(&room("r1"), String::new(), None, tx1).unwrap();
        let (b, _) = reg.join(&room("r2"), String::new(), None, tx2).unwrap();
        let frame = ServerMessage::PeerLeft { peer_id: b.clone() };
        assert!(matches!(
            reg.relay(&room("r1"), &b, frame.clone()),
            Err(Error::UnknownPeer(_))
        ));
        reg.relay(&room("r2"), &b, frame).unwrap();
        assert!(rx2.try_recv().is_ok());
    }

    #[test]
    fn the_room_count_is_capped() {
        let reg = RoomRegistry::new(8, 2);
        let (tx, _rx) = mpsc::channel(8);
        for r in ["room-a", "room-b"] {
            reg.join(&RoomCode::new(r).unwrap(), String::new(), None, tx.clone())
                .unwrap();
        }
        let third = reg.join(
            &RoomCode::new("room-c").unwrap(),
            String::new(),
            None,
            tx.clone(),
        );
        assert!(matches!(third, Err(Error::TooManyRooms(2))));
        // Joining an existing room still works.
        reg.join(&RoomCode::new("room-a").unwrap(), String::new(), None, tx)
            .unwrap();
    }
}
