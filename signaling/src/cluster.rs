//! Scale-out: several signaling instances share rooms through Redis.
//!
//! # Design
//!
//! Each instance keeps its own connections in the local [`RoomRegistry`],
//! which delivers frames to them. Redis holds what the instances share:
//!
//! - `ferry:room:{code}:m`, a hash of the room's members (peer id → name,
//!   instance, resume token, connection number), and `ferry:room:{code}:pw`,
//!   the room password's hash. Joins, resumes and leaves are Lua scripts, so
//!   room size, password and id checks are atomic across instances; the
//!   last leave deletes both.
//! - `ferry:instances`, the set of instances, and per instance a liveness
//!   key `ferry:inst:{id}` refreshed every [`HEARTBEAT`] with a short TTL,
//!   and the set of rooms it has had members in. When an instance's key
//!   expires, one survivor (a `SET NX` lock) reaps it: the members it still
//!   holds are removed and `peer_left` is announced. Each tick is
//!   O(instances) Redis work, whatever the number of rooms.
//! - Pub/sub channel `ferry:to:{id}` per instance. A frame for a member on
//!   another instance (a relayed signal, an announcement, "your seat moved")
//!   is published to that member's instance, which delivers it locally.
//!
//! A page whose instance died reconnects (through whatever balances the
//! load) to another instance with its resume token; that instance finds the
//! seat in Redis and takes it over, so the peer keeps its id and the others
//! only see it come back.
//!
//! **When Redis is away.** Every operation falls back to the local registry
//! and a warning is logged: the instance keeps serving its own rooms as a
//! single instance. When Redis is back, the instance writes its members back
//! and resubscribes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::{PeerId, PeerInfo, RoomCode, ServerMessage};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::rooms::{self, MemberTx, RoomRegistry, Seat};

/// How often an instance refreshes its liveness key and its rooms.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);
/// Lifetime of an instance's liveness key.
const INSTANCE_TTL_SECS: u64 = 6;
/// How long a looked-up route to a member on another instance is reused.
const ROUTE_TTL: Duration = Duration::from_secs(5);
/// How long one Redis operation may take before the instance falls back.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

const JOIN: &str = r#"
local function entry() return cjson.encode({name=ARGV[2], inst=ARGV[3], token=ARGV[4], conn=ARGV[10]}) end
if ARGV[7] ~= '' and ARGV[8] ~= '' then
  local cur = redis.call('HGET', KEYS[1], ARGV[7])
  if cur then
    local m = cjson.decode(cur)
    if m.token == ARGV[8] then
      redis.call('HSET', KEYS[1], ARGV[7], entry())
      redis.call('SADD', KEYS[3], ARGV[9])
      return {'resumed', ARGV[7], m.inst, redis.call('HGETALL', KEYS[1])}
    end
  end
end
local n = redis.call('HLEN', KEYS[1])
if n == 0 then
  if ARGV[6] ~= '' then redis.call('SET', KEYS[2], ARGV[6]) else redis.call('DEL', KEYS[2]) end
else
  local want = redis.call('GET', KEYS[2])
  if want and want ~= ARGV[6] then return {'wrong_password'} end
end
if n >= tonumber(ARGV[5]) then return {'full'} end
local id = ARGV[1]
if ARGV[7] ~= '' and redis.call('HEXISTS', KEYS[1], ARGV[7]) == 0 then id = ARGV[7] end
if redis.call('HEXISTS', KEYS[1], id) == 1 then return {'retry'} end
redis.call('HSET', KEYS[1], id, entry())
redis.call('SADD', KEYS[3], ARGV[9])
return {'joined', id, '', redis.call('HGETALL', KEYS[1])}
"#;

/// Removes a member if `inst` (and, when given, `conn`) still holds it;
/// returns the remaining members, or nil if nothing was removed.
const REMOVE: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return false end
local m = cjson.decode(cur)
if m.inst ~= ARGV[2] then return false end
if ARGV[3] ~= '' and m.conn ~= ARGV[3] then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return redis.call('HGETALL', KEYS[1])
"#;

/// One member as stored in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    name: String,
    inst: String,
    token: String,
    conn: String,
}

/// What one instance publishes to another.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    room: String,
    /// Deliver to this member only; otherwise to all but `except`.
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    except: Option<String>,
    /// An encoded server frame.
    #[serde(default)]
    text: Option<String>,
    /// This member's seat moved to another instance: drop it quietly.
    #[serde(default)]
    replaced: Option<String>,
    /// Times this frame was forwarded after a stale route.
    #[serde(default)]
    hops: u8,
}

impl Envelope {
    /// A frame for one member.
    fn to_member(room: &RoomCode, to: &PeerId, text: String, hops: u8) -> Self {
        Self {
            room: room.to_string(),
            to: Some(to.to_string()),
            except: None,
            text: Some(text),
            replaced: None,
            hops,
        }
    }
}

fn members_key(room: &RoomCode) -> String {
    format!("ferry:room:{room}:m")
}

fn password_key(room: &RoomCode) -> String {
    format!("ferry:room:{room}:pw")
}

fn instance_key(id: &str) -> String {
    format!("ferry:inst:{id}")
}

/// The rooms an instance has (had) members in, for reaping it.
fn rooms_of(id: &str) -> String {
    format!("ferry:inst:{id}:rooms")
}

/// Every instance that ever joined and was not reaped yet.
const INSTANCES: &str = "ferry:instances";

fn inbox(id: &str) -> String {
    format!("ferry:to:{id}")
}

/// Hash of a room password as stored in Redis, the same on every instance.
fn password_hash(room: &RoomCode, password: Option<&str>) -> String {
    match password.filter(|p| !p.is_empty()) {
        Some(p) => {
            let mut h = blake3::Hasher::new_derive_key("ferry room password v1");
            h.update(room.as_str().as_bytes());
            h.update(&[0]);
            h.update(p.as_bytes());
            h.finalize().to_hex().to_string()
        }
        None => String::new(),
    }
}

/// Parses a flat `HGETALL` reply into members.
fn parse_members(flat: &[String]) -> Vec<(String, Stored)> {
    flat.chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => serde_json::from_str(v).ok().map(|s| (k.clone(), s)),
            _ => None,
        })
        .collect()
}

fn as_string(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn as_strings(v: &redis::Value) -> Vec<String> {
    match v {
        redis::Value::Array(items) => items.iter().filter_map(as_string).collect(),
        _ => Vec::new(),
    }
}

/// This instance's link to the others.
pub(crate) struct Cluster {
    client: redis::Client,
    id: String,
    /// Cloned per operation (it multiplexes); a plain mutex, held for the
    /// clone only: every relay passes here.
    conn: std::sync::Mutex<Option<redis::aio::ConnectionManager>>,
    up: AtomicBool,
    join: redis::Script,
    remove: redis::Script,
    max_room_size: usize,
    /// Recently looked-up instances of remote members.
    routes: std::sync::Mutex<HashMap<(RoomCode, PeerId), (String, std::time::Instant)>>,
}

impl Cluster {
    /// Checks the URL; the connection itself is made (and remade) by
    /// [`Cluster::run`], so a Redis that is down at start only delays it.
    pub(crate) fn new(url: &str, max_room_size: usize) -> Result<Self, Error> {
        let client =
            redis::Client::open(url).map_err(|e| Error::Config(format!("--redis {url:?}: {e}")))?;
        let id: String = rooms::random_token().chars().take(12).collect();
        Ok(Self {
            client,
            id,
            conn: std::sync::Mutex::new(None),
            up: AtomicBool::new(false),
            join: redis::Script::new(JOIN),
            remove: redis::Script::new(REMOVE),
            max_room_size,
            routes: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Whether Redis is reachable; false means single-instance mode.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn went_down(&self, what: &str, e: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %e, "Redis failed ({what}); serving this instance's rooms alone until it is back");
        }
    }

    async fn connection(&self) -> Option<redis::aio::ConnectionManager> {
        if !self.is_up() {
            return None;
        }
        self.conn.lock().ok().and_then(|c| c.clone())
    }

    /// Runs one Redis operation with a time limit; `None` (and single-
    /// instance mode) if it fails.
    async fn op<T, F>(
        &self,
        what: &str,
        f: impl FnOnce(redis::aio::ConnectionManager) -> F,
    ) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let con = self.connection().await?;
        match tokio::time::timeout(OP_TIMEOUT, f(con)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.went_down(what, &e);
                None
            }
            Err(e) => {
                self.went_down(what, &e);
                None
            }
        }
    }

    async fn publish(&self, inst: &str, envelope: &Envelope) {
        let Ok(payload) = serde_json::to_string(envelope) else {
            return;
        };
        let channel = inbox(inst);
        self.op("publish", |mut c| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<i64>(&mut c)
                .await
        })
        .await;
    }

    /// Sends an encoded frame to the members of `room` on other instances.
    async fn announce(
        &self,
        room: &RoomCode,
        members: &[(String, Stored)],
        except: &PeerId,
        text: &Utf8Bytes,
    ) {
        let insts: HashSet<&str> = members
            .iter()
            .map(|(_, m)| m.inst.as_str())
            .filter(|i| *i != self.id)
            .collect();
        for inst in insts {
            self.publish(
                inst,
                &Envelope {
                    room: room.to_string(),
                    to: None,
                    except: Some(except.to_string()),
                    text: Some(text.to_string()),
                    replaced: None,
                    hops: 0,
                },
            )
            .await;
        }
    }

    /// Joins across the cluster; `None` when Redis is away (the caller
    /// then joins locally).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn join(
        &self,
        local: &RoomRegistry,
        room: &RoomCode,
        name: String,
        rejoin_as: Option<PeerId>,
        token: Option<&str>,
        password: Option<&str>,
        tx: MemberTx,
        max_rooms: usize,
    ) -> Option<Result<Seat, Error>> {
        if !self.is_up() {
            return None;
        }
        if !local.has_room(room) && local.room_count() >= max_rooms {
            return Some(Err(Error::TooManyRooms(max_rooms)));
        }
        let new_token = rooms::random_token();
        let conn = local.next_conn();
        let pw = password_hash(room, password);
        for _ in 0..4 {
            let candidate = match rooms::random_peer_id() {
                Ok(id) => id,
                Err(e) => return Some(Err(e)),
            };
            let keys = [members_key(room), password_key(room), rooms_of(&self.id)];
            let mut invocation = self.join.prepare_invoke();
            invocation
                .key(&keys[0])
                .key(&keys[1])
                .key(&keys[2])
                .arg(candidate.as_str())
                .arg(&name)
                .arg(&self.id)
                .arg(&new_token)
                .arg(self.max_room_size)
                .arg(&pw)
                .arg(rejoin_as.as_ref().map_or("", |p| p.as_str()))
                .arg(token.unwrap_or(""))
                .arg(room.as_str())
                .arg(conn.to_string());
            let reply: Vec<redis::Value> = self
                .op("join", move |mut c| async move {
                    invocation.invoke_async(&mut c).await
                })
                .await?;
            let status = reply.first().and_then(as_string).unwrap_or_default();
            match status.as_str() {
                "full" => return Some(Err(Error::RoomFull(self.max_room_size))),
                "wrong_password" => return Some(Err(Error::WrongPassword)),
                "retry" => continue,
                "joined" | "resumed" => {
                    let id = reply.get(1).and_then(as_string).unwrap_or_default();
                    let prev = reply.get(2).and_then(as_string).unwrap_or_default();
                    let members = parse_members(&reply.get(3).map(as_strings).unwrap_or_default());
                    let Ok(id) = PeerId::new(id) else {
                        return Some(Err(Error::Config("Redis returned a bad peer id".into())));
                    };
                    let info = PeerInfo {
                        id: id.clone(),
                        name: name.clone(),
                    };
                    local.attach_as(room, info.clone(), new_token.clone(), tx, conn);
                    let peers: Vec<PeerInfo> = members
                        .iter()
                        .filter(|(k, _)| k != id.as_str())
                        .filter_map(|(k, m)| {
                            Some(PeerInfo {
                                id: PeerId::new(k.clone()).ok()?,
                                name: m.name.clone(),
                            })
                        })
                        .collect();
                    let text = rooms::encode(&ServerMessage::PeerJoined { peer: info });
                    local.deliver(room, None, Some(&id), &text);
                    self.announce(room, &members, &id, &text).await;
                    let resumed = status == "resumed";
                    if resumed && !prev.is_empty() && prev != self.id {
                        self.publish(
                            &prev,
                            &Envelope {
                                room: room.to_string(),
                                to: None,
                                except: None,
                                text: None,
                                replaced: Some(id.to_string()),
                                hops: 0,
                            },
                        )
                        .await;
                    }
                    return Some(Ok(Seat {
                        id,
                        peers,
                        token: new_token,
                        conn,
                        resumed,
                    }));
                }
                other => {
                    return Some(Err(Error::Config(format!(
                        "unexpected Redis reply to join: {other:?}"
                    ))));
                }
            }
        }
        Some(Err(Error::Config("could not pick a free peer id".into())))
    }

    /// Relays a frame to a member on another instance; `None` when Redis
    /// is away.
    pub(crate) async fn relay(
        &self,
        room: &RoomCode,
        to: &PeerId,
        text: Utf8Bytes,
    ) -> Option<Result<(), Error>> {
        if !self.is_up() {
            return None;
        }
        let key = (room.clone(), to.clone());
        let cached = self.routes.lock().ok().and_then(|r| {
            r.get(&key)
                .filter(|(_, at)| at.elapsed() < ROUTE_TTL)
                .map(|(i, _)| i.clone())
        });
        let inst = match cached {
            Some(inst) => inst,
            None => match self.lookup(room, to).await? {
                Some(inst) => inst,
                None => return Some(Err(Error::UnknownPeer(to.clone()))),
            },
        };
        if inst == self.id {
            // Ours, but not connected right now (its seat is kept).
            return Some(Err(Error::RecipientBusy(to.clone())));
        }
        if let Ok(mut r) = self.routes.lock() {
            r.insert(key, (inst.clone(), std::time::Instant::now()));
        }
        self.publish(&inst, &Envelope::to_member(room, to, text.to_string(), 0))
            .await;
        Some(Ok(()))
    }

    /// The instance that holds a member, from Redis; `Some(None)` if the
    /// member is not in the room.
    async fn lookup(&self, room: &RoomCode, to: &PeerId) -> Option<Option<String>> {
        let key = members_key(room);
        let field = to.to_string();
        let stored: Option<String> = self
            .op("relay lookup", |mut c| async move {
                redis::cmd("HGET")
                    .arg(key)
                    .arg(field)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Some(
            stored
                .and_then(|s| serde_json::from_str::<Stored>(&s).ok())
                .map(|m| m.inst),
        )
    }

    /// Removes a member that `inst` holds (with connection `conn`, if given)
    /// and tells the other instances; true if it was removed.
    async fn remove(&self, room: &RoomCode, id: &PeerId, inst: &str, conn: Option<u64>) -> bool {
        let keys = [members_key(room), password_key(room)];
        let mut invocation = self.remove.prepare_invoke();
        invocation
            .key(&keys[0])
            .key(&keys[1])
            .arg(id.as_str())
            .arg(inst)
            .arg(conn.map(|c| c.to_string()).unwrap_or_default());
        let remaining: Option<Option<Vec<String>>> = self
            .op("leave", move |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await;
        let Some(Some(remaining)) = remaining else {
            return false;
        };
        let members = parse_members(&remaining);
        let text = rooms::encode(&ServerMessage::PeerLeft {
            peer_id: id.clone(),
        });
        self.announce(room, &members, id, &text).await;
        true
    }

    /// A member of this instance left for good.
    pub(crate) async fn leave(&self, room: &RoomCode, id: &PeerId, conn: u64) {
        if self.is_up() {
            let id_owned = self.id.clone();
            self.remove(room, id, &id_owned, Some(conn)).await;
        }
    }

    /// Keeps the cluster link alive: subscribes to this instance's inbox
    /// and delivers what arrives, refreshes liveness and room keys, removes
    /// members of dead instances, and reconnects after failures.
    pub(crate) async fn run(self: Arc<Self>, local: Arc<RoomRegistry>) {
        let mut warned = false;
        loop {
            match self.connect_and_serve(&local).await {
                Ok(()) => {}
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, "Redis is unreachable; serving this instance's rooms alone and retrying");
                        warned = true;
                    }
                }
            }
            self.up.store(false, Ordering::Release);
            if let Ok(mut c) = self.conn.lock() {
                *c = None;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn connect_and_serve(
        self: &Arc<Self>,
        local: &Arc<RoomRegistry>,
    ) -> redis::RedisResult<()> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1);
        let manager = self
            .client
            .get_connection_manager_with_config(config)
            .await?;
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(inbox(&self.id)).await?;
        if let Ok(mut c) = self.conn.lock() {
            *c = Some(manager.clone());
        }
        self.up.store(true, Ordering::Release);
        tracing::info!(instance = %self.id, "joined the Redis cluster");
        self.write_back(manager.clone(), local).await?;
        let mut messages = pubsub.into_on_message();
        let mut ticker = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "subscription closed")));
                    };
                    let Ok(payload) = msg.get_payload::<String>() else { continue };
                    match serde_json::from_str::<Envelope>(&payload) {
                        Ok(env) => self.deliver(local, env).await,
                        Err(e) => tracing::warn!(error = %e, "dropped a malformed cluster message"),
                    }
                }
                _ = ticker.tick() => {
                    if !self.is_up() {
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "a Redis operation failed")));
                    }
                    for dead in self.tick(manager.clone()).await? {
                        // Reaping reads every room the dead instance had:
                        // off this loop, which must keep reading messages.
                        let (me, local, c) = (self.clone(), local.clone(), manager.clone());
                        tokio::spawn(async move {
                            if let Err(e) = me.reap(c, &local, &dead).await {
                                tracing::warn!(instance = %dead, error = %e, "reaping a dead instance failed; another try follows");
                            }
                        });
                    }
                }
            }
        }
    }

    async fn deliver(&self, local: &RoomRegistry, env: Envelope) {
        let Ok(room) = RoomCode::new(&env.room) else {
            return;
        };
        if let Some(id) = env.replaced.as_deref().and_then(|i| PeerId::new(i).ok()) {
            local.remove_quietly(&room, &id);
            return;
        }
        let Some(text) = env.text else { return };
        let to = env.to.and_then(|t| PeerId::new(t).ok());
        let except = env.except.and_then(|t| PeerId::new(t).ok());
        if let Some(to) = &to
            && !local.is_connected(&room, to)
        {
            // A stale route (the member moved): forward once.
            if env.hops == 0
                && let Some(Some(inst)) = self.lookup(&room, to).await
                && inst != self.id
            {
                self.publish(&inst, &Envelope::to_member(&room, to, text, 1))
                    .await;
            }
            return;
        }
        local.deliver(&room, to.as_ref(), except.as_ref(), &Utf8Bytes::from(text));
    }

    /// Writes this instance's members back after Redis was away, in one
    /// pipeline.
    async fn write_back(
        &self,
        mut c: redis::aio::ConnectionManager,
        local: &RoomRegistry,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("SADD").arg(INSTANCES).arg(&self.id).ignore();
        for (room, info, token, conn) in local.snapshot() {
            let stored = Stored {
                name: info.name,
                inst: self.id.clone(),
                token,
                conn: conn.to_string(),
            };
            let json = serde_json::to_string(&stored).unwrap_or_default();
            pipe.cmd("HSET")
                .arg(members_key(&room))
                .arg(info.id.as_str())
                .arg(json)
                .ignore()
                .cmd("SADD")
                .arg(rooms_of(&self.id))
                .arg(room.as_str())
                .ignore();
        }
        pipe.query_async::<()>(&mut c).await
    }

    /// Refreshes this instance's liveness; returns the dead instances this
    /// one has to reap. O(instances) work, whatever the number of rooms.
    async fn tick(&self, mut c: redis::aio::ConnectionManager) -> redis::RedisResult<Vec<String>> {
        let (_, _, instances): ((), (), Vec<String>) = redis::pipe()
            .cmd("SET")
            .arg(instance_key(&self.id))
            .arg(1)
            .arg("EX")
            .arg(INSTANCE_TTL_SECS)
            .cmd("SADD")
            .arg(INSTANCES)
            .arg(&self.id)
            .cmd("SMEMBERS")
            .arg(INSTANCES)
            .query_async(&mut c)
            .await?;
        if let Ok(mut routes) = self.routes.lock() {
            routes.retain(|_, (_, at)| at.elapsed() < ROUTE_TTL);
        }
        let mut dead = Vec::new();
        for inst in instances.into_iter().filter(|i| *i != self.id) {
            let alive: bool = redis::cmd("EXISTS")
                .arg(instance_key(&inst))
                .query_async(&mut c)
                .await?;
            if alive {
                continue;
            }
            // One survivor reaps each dead instance.
            let won: Option<String> = redis::cmd("SET")
                .arg(format!("ferry:reap:{inst}"))
                .arg(&self.id)
                .arg("NX")
                .arg("EX")
                .arg(30)
                .query_async(&mut c)
                .await?;
            if won.is_some() {
                dead.push(inst);
            }
        }
        Ok(dead)
    }

    /// Removes the members a dead instance still holds (those whose pages
    /// did not take their seats elsewhere in time) and tells the rooms.
    async fn reap(
        &self,
        mut c: redis::aio::ConnectionManager,
        local: &RoomRegistry,
        dead: &str,
    ) -> redis::RedisResult<()> {
        let rooms: Vec<String> = redis::cmd("SMEMBERS")
            .arg(rooms_of(dead))
            .query_async(&mut c)
            .await?;
        let mut removed = 0usize;
        for code in rooms {
            let Ok(room) = RoomCode::new(&code) else {
                continue;
            };
            let members: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(members_key(&room))
                .query_async(&mut c)
                .await?;
            for (id, json) in members {
                let Ok(m) = serde_json::from_str::<Stored>(&json) else {
                    continue;
                };
                let Ok(pid) = PeerId::new(id) else { continue };
                if m.inst == dead && self.remove(&room, &pid, dead, None).await {
                    removed += 1;
                    let text = rooms::encode(&ServerMessage::PeerLeft {
                        peer_id: pid.clone(),
                    });
                    local.deliver(&room, None, Some(&pid), &text);
                }
            }
        }
        redis::pipe()
            .cmd("DEL")
            .arg(rooms_of(dead))
            .ignore()
            .cmd("SREM")
            .arg(INSTANCES)
            .arg(dead)
            .ignore()
            .query_async::<()>(&mut c)
            .await?;
        tracing::info!(instance = %dead, removed, "reaped a dead instance");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes_are_per_room_and_stable() {
        let a = RoomCode::new("abcd-efgh").unwrap();
        let b = RoomCode::new("abcd-efgj").unwrap();
        assert_eq!(password_hash(&a, None), "");
        assert_eq!(password_hash(&a, Some("")), "");
        assert_eq!(password_hash(&a, Some("pw")), password_hash(&a, Some("pw")));
        assert_ne!(password_hash(&a, Some("pw")), password_hash(&b, Some("pw")));
        assert_ne!(
            password_hash(&a, Some("pw")),
            password_hash(&a, Some("pw2"))
        );
    }

    #[test]
    fn members_parse_and_skip_garbage() {
        let ok = serde_json::to_string(&Stored {
            name: "n".into(),
            inst: "i".into(),
            token: "t".into(),
            conn: "1".into(),
        })
        .unwrap();
        let flat = vec![
            "p1".into(),
            ok,
            "p2".into(),
            "not json".into(),
            "odd".into(),
        ];
        let m = parse_members(&flat);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, "p1");
        assert_eq!(m[0].1.inst, "i");
    }

    #[test]
    fn envelopes_round_trip() {
        let e: Envelope = serde_json::from_str(r#"{"room":"r","text":"x"}"#).unwrap();
        assert_eq!(e.text.as_deref(), Some("x"));
        assert!(e.to.is_none() && e.replaced.is_none());
    }
}
