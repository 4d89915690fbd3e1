//! The room registry: who is in which room, and how to reach them.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::{PeerId, PeerInfo, RoomCode, ServerMessage};
use rand::Rng;
use rand::distr::Alphanumeric;

use crate::Error;
use crate::outbox;

/// What a connection task is asked to write to its socket.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A protocol frame, already encoded: one encoding serves every
    /// recipient of an announcement, and a queue slot stays small.
    Text(Utf8Bytes),
    /// A relayed signal, already encoded, with the time its frame was read
    /// off the sender's socket (for the relay-latency histogram).
    Relayed {
        text: Utf8Bytes,
        read_at: tokio::time::Instant,
    },
    /// A newer connection took this member's seat with its resume token:
    /// close without leaving.
    Replaced,
}

/// The sending half of a member's outbound queue.
pub(crate) type MemberTx = outbox::Sender<Outbound>;

struct Member {
    info: PeerInfo,
    /// `None` while the member's connection is lost and its seat is kept.
    tx: Option<MemberTx>,
    /// Proves a reconnecting client is this member.
    token: String,
    /// The connection holding the seat (unique per server), so that an old
    /// connection's cleanup never touches a seat a newer one took back.
    conn: u64,
}

/// What [`RoomRegistry::join`] gives a new or returning member.
#[derive(Debug)]
pub(crate) struct Seat {
    pub(crate) id: PeerId,
    pub(crate) peers: Vec<PeerInfo>,
    pub(crate) token: String,
    /// The connection number to pass to `detach`, `expire` and `leave`.
    pub(crate) conn: u64,
    /// True when a kept seat was taken back.
    pub(crate) resumed: bool,
}

pub(crate) fn encode(frame: &ServerMessage) -> Utf8Bytes {
    frame.encode().into()
}

pub(crate) fn random_token() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(TOKEN_LEN)
        .map(char::from)
        .collect()
}

/// A fresh random peer id.
pub(crate) fn random_peer_id() -> Result<PeerId, Error> {
    let id: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(PEER_ID_LEN)
        .map(char::from)
        .collect();
    PeerId::new(id).map_err(Error::Protocol)
}

/// Length of resume tokens: 32 alphanumerics, about 190 bits.
const TOKEN_LEN: usize = 32;

/// One room: its members, and its password if its creator set one.
#[derive(Default)]
struct Room {
    members: Vec<Member>,
    /// Keyed BLAKE3 of the password (the key is random per server run).
    password: Option<blake3::Hash>,
}

impl std::ops::Deref for Room {
    type Target = Vec<Member>;
    fn deref(&self) -> &Vec<Member> {
        &self.members
    }
}

impl std::ops::DerefMut for Room {
    fn deref_mut(&mut self) -> &mut Vec<Member> {
        &mut self.members
    }
}

/// All rooms of one server. Rooms are created on first join and dropped
/// when their last member leaves.
pub(crate) struct RoomRegistry {
    rooms: Mutex<HashMap<RoomCode, Room>>,
    /// Key for hashing room passwords.
    key: [u8; 32],
    max_room_size: usize,
    max_rooms: usize,
    next_conn: std::sync::atomic::AtomicU64,
}

/// Length of generated peer ids: 12 alphanumerics, about 71 bits.
const PEER_ID_LEN: usize = 12;

impl RoomRegistry {
    pub(crate) fn new(max_room_size: usize, max_rooms: usize) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            key: rand::rng().random(),
            max_room_size,
            max_rooms,
            next_conn: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomCode, Room>> {
        // A panic while holding the lock cannot leave the map half-updated in
        // a way that matters more than refusing service, so recover it.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a member, announces it to the others, and returns its seat. A
    /// kept seat (see [`RoomRegistry::detach`]) is taken back when
    /// `rejoin_as` and `token` match it; the others then get `peer_joined`
    /// for the same id, which tells them to expect its new offer, and never
    /// `peer_left`.
    ///
    /// The first member of a room may set a `password`; everyone after must
    /// give the same one (a kept seat's token is proof enough).
    pub(crate) fn join(
        &self,
        room: &RoomCode,
        name: String,
        rejoin_as: Option<PeerId>,
        token: Option<&str>,
        password: Option<&str>,
        tx: MemberTx,
    ) -> Result<Seat, Error> {
        let conn = self
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut rooms = self.lock();
        if let (Some(id), Some(token), Some(members)) = (&rejoin_as, token, rooms.get_mut(room))
            && let Some(i) = members
                .iter()
                .position(|m| &m.info.id == id && m.token.as_bytes() == token.as_bytes())
        {
            let mut seat = members.remove(i);
            // The old connection may not know yet that it is dead (a
            // half-open socket after a network change): retire it.
            if let Some(old) = seat.tx.take() {
                let _ = old.try_send(Outbound::Replaced);
            }
            seat.info.name = name;
            seat.tx = Some(tx);
            seat.token = random_token();
            seat.conn = conn;
            let peers: Vec<PeerInfo> = members.iter().map(|m| m.info.clone()).collect();
            let text = encode(&ServerMessage::PeerJoined {
                peer: seat.info.clone(),
            });
            for m in members.iter() {
                if let Some(tx) = &m.tx {
                    let _ = tx.try_send(Outbound::Text(text.clone()));
                }
            }
            let out = Seat {
                id: seat.info.id.clone(),
                peers,
                token: seat.token.clone(),
                conn,
                resumed: true,
            };
            members.push(seat);
            return Ok(out);
        }
        if !rooms.contains_key(room) && rooms.len() >= self.max_rooms {
            return Err(Error::TooManyRooms(self.max_rooms));
        }
        let password = password
            .filter(|p| !p.is_empty())
            .map(|p| blake3::keyed_hash(&self.key, p.as_bytes()));
        let members = rooms.entry(room.clone()).or_default();
        if members.is_empty() {
            members.password = password;
        } else if let Some(want) = members.password
            && password != Some(want)
        {
            return Err(Error::WrongPassword);
        }
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
        let text = encode(&ServerMessage::PeerJoined { peer: info.clone() });
        for m in members.iter() {
            // A member whose queue is full is too slow to keep up; it will be
            // dropped by its own task when its heartbeat lapses.
            if let Some(tx) = &m.tx {
                let _ = tx.try_send(Outbound::Text(text.clone()));
            }
        }
        let token = random_token();
        members.push(Member {
            info,
            tx: Some(tx),
            token: token.clone(),
            conn,
        });
        Ok(Seat {
            id,
            peers: existing,
            token,
            conn,
            resumed: false,
        })
    }

    /// Keeps a member's seat after connection `conn` was lost; true if it
    /// still held the seat. Call [`RoomRegistry::expire`] when the grace
    /// period ends.
    pub(crate) fn detach(&self, room: &RoomCode, id: &PeerId, conn: u64) -> bool {
        let mut rooms = self.lock();
        let Some(m) = rooms
            .get_mut(room)
            .and_then(|ms| ms.iter_mut().find(|m| &m.info.id == id && m.conn == conn))
        else {
            return false;
        };
        m.tx = None;
        true
    }

    /// Removes the member that connection `conn` holds and tells the
    /// others it left.
    pub(crate) fn leave(&self, room: &RoomCode, id: &PeerId, conn: u64) {
        let mut rooms = self.lock();
        let Some(members) = rooms.get_mut(room) else {
            return;
        };
        let before = members.len();
        members.retain(|m| !(&m.info.id == id && m.conn == conn));
        if members.len() == before {
            return;
        }
        let text = encode(&ServerMessage::PeerLeft {
            peer_id: id.clone(),
        });
        for m in members.iter() {
            if let Some(tx) = &m.tx {
                let _ = tx.try_send(Outbound::Text(text.clone()));
            }
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
        text: Utf8Bytes,
        read_at: tokio::time::Instant,
    ) -> Result<(), Error> {
        let rooms = self.lock();
        let member = rooms
            .get(room)
            .and_then(|members| members.iter().find(|m| &m.info.id == to))
            .ok_or_else(|| Error::UnknownPeer(to.clone()))?;
        // A member whose connection is lost (its seat kept) cannot take
        // signals now; the sender retries once it is back.
        member
            .tx
            .as_ref()
            .ok_or_else(|| Error::RecipientBusy(to.clone()))?
            .try_send(Outbound::Relayed { text, read_at })
            .map_err(|_| Error::RecipientBusy(to.clone()))
    }

    /// Adds a member whose seat the cluster already granted (room size,
    /// password and id were checked in Redis), with connection number
    /// `conn` from [`RoomRegistry::next_conn`]. A local member with the same id (a resume on this instance)
    /// is retired. Announcements are the caller's job.
    pub(crate) fn attach_as(
        &self,
        room: &RoomCode,
        info: PeerInfo,
        token: String,
        tx: MemberTx,
        conn: u64,
    ) {
        let mut rooms = self.lock();
        let members = rooms.entry(room.clone()).or_default();
        if let Some(i) = members.iter().position(|m| m.info.id == info.id) {
            let mut old = members.remove(i);
            if let Some(old_tx) = old.tx.take() {
                let _ = old_tx.try_send(Outbound::Replaced);
            }
        }
        members.push(Member {
            info,
            tx: Some(tx),
            token,
            conn,
        });
    }

    /// A fresh connection number, unique on this instance.
    pub(crate) fn next_conn(&self) -> u64 {
        self.next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues an encoded frame for this instance's members of a room: one
    /// member, or everyone but `except`.
    pub(crate) fn deliver(
        &self,
        room: &RoomCode,
        to: Option<&PeerId>,
        except: Option<&PeerId>,
        text: &Utf8Bytes,
    ) {
        let rooms = self.lock();
        let Some(members) = rooms.get(room) else {
            return;
        };
        for m in members.iter() {
            if to.is_some_and(|t| t != &m.info.id) || except.is_some_and(|e| e == &m.info.id) {
                continue;
            }
            if let Some(tx) = &m.tx {
                let _ = tx.try_send(Outbound::Text(text.clone()));
            }
        }
    }

    /// Removes a member without telling anyone (its seat moved to another
    /// instance); true if it was here.
    pub(crate) fn remove_quietly(&self, room: &RoomCode, id: &PeerId) -> bool {
        let mut rooms = self.lock();
        let Some(members) = rooms.get_mut(room) else {
            return false;
        };
        let Some(i) = members.iter().position(|m| &m.info.id == id) else {
            return false;
        };
        let mut m = members.remove(i);
        if let Some(tx) = m.tx.take() {
            let _ = tx.try_send(Outbound::Replaced);
        }
        if members.is_empty() {
            rooms.remove(room);
        }
        true
    }

    /// Whether connection `conn` holds a kept (disconnected) seat.
    pub(crate) fn is_away(&self, room: &RoomCode, id: &PeerId, conn: u64) -> bool {
        self.lock().get(room).is_some_and(|members| {
            members
                .iter()
                .any(|m| &m.info.id == id && m.tx.is_none() && m.conn == conn)
        })
    }

    /// Every member on this instance, with its token and connection, for
    /// writing the rooms back to Redis after it was away.
    pub(crate) fn snapshot(&self) -> Vec<(RoomCode, PeerInfo, String, u64)> {
        self.lock()
            .iter()
            .flat_map(|(code, room)| {
                room.members
                    .iter()
                    .map(|m| (code.clone(), m.info.clone(), m.token.clone(), m.conn))
            })
            .collect()
    }

    /// Whether a member is here and connected.
    pub(crate) fn is_connected(&self, room: &RoomCode, id: &PeerId) -> bool {
        self.lock()
            .get(room)
            .is_some_and(|members| members.iter().any(|m| &m.info.id == id && m.tx.is_some()))
    }

    /// Whether the room exists here.
    pub(crate) fn has_room(&self, room: &RoomCode) -> bool {
        self.lock().contains_key(room)
    }

    /// Number of rooms, for tests and logs.
    pub(crate) fn room_count(&self) -> usize {
        self.lock().len()
    }

    /// Number of connected members across all rooms.
    pub(crate) fn member_count(&self) -> usize {
        self.lock().values().map(|r| r.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> RoomCode {
        RoomCode::new(s).unwrap()
    }

    fn join(
        reg: &RoomRegistry,
        r: &str,
        rejoin: Option<&PeerId>,
        token: Option<&str>,
    ) -> (Seat, outbox::Receiver<Outbound>) {
        let (tx, rx) = outbox::channel(8);
        (
            reg.join(&room(r), String::new(), rejoin.cloned(), token, None, tx)
                .unwrap(),
            rx,
        )
    }

    fn next_frame(rx: &mut outbox::Receiver<Outbound>) -> Option<ServerMessage> {
        match rx.try_recv()? {
            Outbound::Text(t) | Outbound::Relayed { text: t, .. } => {
                Some(ServerMessage::decode(t.as_str()).unwrap())
            }
            Outbound::Replaced => None,
        }
    }

    #[test]
    fn rooms_are_created_and_dropped() {
        let reg = RoomRegistry::new(2, 100);
        let (a, mut rx1) = join(&reg, "r", None, None);
        assert!(a.peers.is_empty());
        let (b, _rx2) = join(&reg, "r", None, None);
        assert_eq!(b.peers.len(), 1);
        assert_eq!(b.peers[0].id, a.id);
        assert!(matches!(
            next_frame(&mut rx1),
            Some(ServerMessage::PeerJoined { peer }) if peer.id == b.id
        ));
        let (tx3, _rx3) = outbox::channel(8);
        assert!(matches!(
            reg.join(&room("r"), String::new(), None, None, None, tx3),
            Err(Error::RoomFull(2))
        ));
        reg.leave(&room("r"), &b.id, b.conn);
        assert!(matches!(
            next_frame(&mut rx1),
            Some(ServerMessage::PeerLeft { peer_id }) if peer_id == b.id
        ));
        reg.leave(&room("r"), &a.id, a.conn);
        assert_eq!(reg.room_count(), 0);
    }

    #[test]
    fn rejoin_keeps_a_free_id_only() {
        let reg = RoomRegistry::new(8, 100);
        let want = PeerId::new("keepme").unwrap();
        let (first, _rx) = join(&reg, "r", Some(&want), None);
        assert_eq!(first.id, want);
        let (second, _rx2) = join(&reg, "r", Some(&want), Some("wrong token"));
        assert_ne!(second.id, want, "a held id needs its token");
    }

    #[test]
    fn a_kept_seat_is_taken_back_with_its_token_only() {
        let reg = RoomRegistry::new(8, 100);
        let (a, mut rx_a) = join(&reg, "r", None, None);
        let (b, _rx_b) = join(&reg, "r", None, None);
        assert!(next_frame(&mut rx_a).is_some()); // b joined
        assert!(reg.detach(&room("r"), &b.id, b.conn));
        assert!(next_frame(&mut rx_a).is_none(), "nobody is told b left");
        assert!(matches!(
            reg.relay(
                &room("r"),
                &b.id,
                encode(&ServerMessage::PeerLeft {
                    peer_id: a.id.clone()
                }),
                tokio::time::Instant::now()
            ),
            Err(Error::RecipientBusy(_))
        ));
        // A stranger cannot take the seat.
        let (other, _rx_o) = join(&reg, "r", Some(&b.id), Some("guess"));
        assert_ne!(other.id, b.id);
        assert!(next_frame(&mut rx_a).is_some()); // the stranger joined
        let (back, _rx_back) = join(&reg, "r", Some(&b.id), Some(&b.token));
        assert!(back.resumed);
        assert_eq!(back.id, b.id);
        assert_ne!(back.token, b.token, "tokens are single-use");
        assert!(matches!(
            next_frame(&mut rx_a),
            Some(ServerMessage::PeerJoined { peer }) if peer.id == b.id
        ));
        // The old connection's expiry no longer applies.
        if reg.is_away(&room("r"), &b.id, b.conn) {
            reg.leave(&room("r"), &b.id, b.conn);
        }
        reg.leave(&room("r"), &b.id, b.conn);
        assert_eq!(reg.member_count(), 3);
        assert!(next_frame(&mut rx_a).is_none());
    }

    #[test]
    fn an_expired_seat_is_announced_as_left() {
        let reg = RoomRegistry::new(8, 100);
        let (_a, mut rx_a) = join(&reg, "r", None, None);
        let (b, _rx_b) = join(&reg, "r", None, None);
        let _ = next_frame(&mut rx_a);
        assert!(reg.detach(&room("r"), &b.id, b.conn));
        if reg.is_away(&room("r"), &b.id, b.conn) {
            reg.leave(&room("r"), &b.id, b.conn);
        }
        assert!(matches!(
            next_frame(&mut rx_a),
            Some(ServerMessage::PeerLeft { peer_id }) if peer_id == b.id
        ));
        let (late, _rx) = join(&reg, "r", Some(&b.id), Some(&b.token));
        assert!(!late.resumed, "too late: a fresh seat");
    }

    #[test]
    fn a_live_seat_taken_back_retires_the_old_connection() {
        let reg = RoomRegistry::new(8, 100);
        let (b, mut rx_old) = join(&reg, "r", None, None);
        let (back, _rx_new) = join(&reg, "r", Some(&b.id), Some(&b.token));
        assert!(back.resumed);
        assert!(matches!(rx_old.try_recv(), Some(Outbound::Replaced)));
        assert!(
            !reg.detach(&room("r"), &b.id, b.conn),
            "the old connection holds nothing"
        );
        assert_eq!(reg.member_count(), 1);
    }

    #[test]
    fn relay_only_within_room() {
        let reg = RoomRegistry::new(8, 100);
        let (_a, _rx1) = join(&reg, "r1", None, None);
        let (b, mut rx2) = join(&reg, "r2", None, None);
        let frame = encode(&ServerMessage::PeerLeft {
            peer_id: b.id.clone(),
        });
        let now = tokio::time::Instant::now();
        assert!(matches!(
            reg.relay(&room("r1"), &b.id, frame.clone(), now),
            Err(Error::UnknownPeer(_))
        ));
        reg.relay(&room("r2"), &b.id, frame, now).unwrap();
        assert!(matches!(
            rx2.try_recv(),
            Some(Outbound::Relayed { read_at, .. }) if read_at == now
        ));
    }

    #[test]
    fn the_room_count_is_capped() {
        let reg = RoomRegistry::new(8, 2);
        for r in ["room-a", "room-b"] {
            let _ = join(&reg, r, None, None);
        }
        let (tx, _rx) = outbox::channel(8);
        let third = reg.join(&room("room-c"), String::new(), None, None, None, tx.clone());
        assert!(matches!(third, Err(Error::TooManyRooms(2))));
        // Joining an existing room still works.
        reg.join(&room("room-a"), String::new(), None, None, None, tx)
            .unwrap();
    }

    #[test]
    fn a_room_password_is_set_by_its_creator_and_checked_after() {
        let reg = RoomRegistry::new(8, 100);
        let with = |pw: Option<&str>| {
            let (tx, _rx) = outbox::channel(8);
            reg.join(&room("locked"), String::new(), None, None, pw, tx)
        };
        let owner = with(Some("hunter2")).unwrap();
        assert!(matches!(with(None), Err(Error::WrongPassword)));
        assert!(matches!(with(Some("hunter3")), Err(Error::WrongPassword)));
        assert!(matches!(with(Some("")), Err(Error::WrongPassword)));
        let guest = with(Some("hunter2")).unwrap();
        // A kept seat comes back with its token alone.
        assert!(reg.detach(&room("locked"), &guest.id, guest.conn));
        let (tx, _rx) = outbox::channel(8);
        let back = reg
            .join(
                &room("locked"),
                String::new(),
                Some(guest.id.clone()),
                Some(&guest.token),
                None,
                tx,
            )
            .unwrap();
        assert!(back.resumed);
        // Once the room is empty, the next creator chooses again.
        reg.leave(&room("locked"), &owner.id, owner.conn);
        reg.leave(&room("locked"), &back.id, back.conn);
        assert!(with(None).is_ok(), "a new room without a password");
    }
}
