//! Calls on the native peer, without decoding anything: remote video and
//! audio are recorded to IVF (VP8) and Ogg (Opus) files straight from their
//! RTP packets, and IVF and Ogg files are played into a call, paced by their
//! own timestamps.
//!
//! Connections of a node that takes calls offer exactly VP8 and Opus, the
//! codecs both files hold. A call's media is added to a connection when the
//! engine says so (`CallEvent::SendMedia`): our tracks if we play files, or
//! receive-only transceivers otherwise, so that either side may offer.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferry_protocol::PeerId;
use rtc::interceptor::Registry;
use rtc::media::Sample;
use rtc::media::io::Writer;
use rtc::media::io::ivf_reader::{IVFFileHeader, IVFReader};
use rtc::media::io::ivf_writer::IVFWriter;
use rtc::media::io::ogg_writer::OggWriter;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webrtc::media_stream::Track;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::PeerConnection;
use webrtc::rtp_transceiver::RtpSender;

use crate::Error;

/// How a node takes part in calls.
#[derive(Debug, Clone, Default)]
pub struct MediaConfig {
    /// Record each remote peer's video and audio into this folder.
    pub record: Option<PathBuf>,
    /// An IVF file (VP8) to send as our video.
    pub play_video: Option<PathBuf>,
    /// An Ogg file (Opus) to send as our audio.
    pub play_audio: Option<PathBuf>,
    /// Start the files again when they end, until the call ends.
    pub repeat: bool,
}

impl MediaConfig {
    /// Checks, before joining, that the files to play are what they must be
    /// and that the recording folder is usable.
    pub fn check(&self) -> Result<(), Error> {
        if let Some(path) = &self.play_video {
            let (_, header) = open_ivf(path)?;
            if &header.four_cc != b"VP80" {
                return Err(Error::Media(format!(
                    "{} holds {} video; calls carry VP8 (see the README for an ffmpeg command that makes such a file)",
                    path.display(),
                    String::from_utf8_lossy(&header.four_cc)
                )));
            }
        }
        if let Some(path) = &self.play_audio {
            OpusFile::open(path)?;
        }
        if let Some(dir) = &self.record {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                what: format!("cannot create the recording folder {}", dir.display()),
                source,
            })?;
        }
        Ok(())
    }
}

fn vp8() -> RTCRtpCodec {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.into(),
        parameter: parameter.into(),
    };
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![
            fb("goog-remb", ""),
            fb("ccm", "fir"),
            fb("nack", ""),
            fb("nack", "pli"),
        ],
    }
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// The codecs of a call connection (VP8 and Opus only, the codecs our files
/// hold) and the default interceptors (NACK, RTCP reports).
pub(crate) fn media_engine() -> Result<(MediaEngine, Registry), Error> {
    let mut engine = MediaEngine::default();
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: vp8(),
            payload_type: 96,
        },
        RtpCodecKind::Video,
    )?;
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus(),
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut engine)?;
    Ok((engine, registry))
}

fn open_ivf(path: &Path) -> Result<(IVFReader<BufReader<File>>, IVFFileHeader), Error> {
    let file = File::open(path).map_err(|source| Error::Io {
        what: format!("cannot open {}", path.display()),
        source,
    })?;
    IVFReader::new(BufReader::new(file))
        .map_err(|e| Error::Media(format!("{} is not an IVF file: {e}", path.display())))
}

/// The packets of an Ogg Opus file, one Opus packet at a time.
struct OpusFile {
    packets: ogg::PacketReader<BufReader<File>>,
    last: Vec<u8>,
}

impl OpusFile {
    fn open(path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(|source| Error::Io {
            what: format!("cannot open {}", path.display()),
            source,
        })?;
        let mut packets = ogg::PacketReader::new(BufReader::new(file));
        let bad = |why: String| {
            Error::Media(format!("{} is not an Ogg Opus file: {why}", path.display()))
        };
        // The identification header, then the comment header.
        let head = packets
            .read_packet()
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("it is empty".into()))?;
        if !head.data.starts_with(b"OpusHead") {
            return Err(bad("its first packet is not OpusHead".into()));
        }
        match packets.read_packet().map_err(|e| bad(e.to_string()))? {
            Some(tags) if tags.data.starts_with(b"OpusTags") => {}
            _ => return Err(bad("OpusTags is missing".into())),
        }
        Ok(Self {
            packets,
            last: Vec::new(),
        })
    }

    fn next(&mut self) -> Option<Vec<u8>> {
        match self.packets.read_packet() {
            // Our own recordings (the webrtc crate's Ogg writer) end with a
            // page that repeats the last packet: skip that one.
            Ok(Some(p)) if p.last_in_stream() && p.data == self.last => None,
            Ok(Some(p)) => {
                self.last.clone_from(&p.data);
                Some(p.data)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("stopped reading audio: {e}");
                None
            }
        }
    }
}

/// How long one Opus packet plays, from its TOC byte (RFC 6716, 3.1).
pub(crate) fn opus_duration(packet: &[u8]) -> Option<Duration> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame_us: u64 = match config {
        0..=11 => [10_000, 20_000, 40_000, 60_000][usize::from(config % 4)],
        12..=15 => [10_000, 20_000][usize::from(config % 2)],
        _ => [2_500, 5_000, 10_000, 20_000][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u64::from(*packet.get(1)? & 0x3f),
    };
    let total = frame_us * frames;
    // A packet holds at most 120 ms.
    (frames > 0 && total <= 120_000).then(|| Duration::from_micros(total))
}

/// Our media on one connection.
pub(crate) struct Outbound {
    config: Arc<MediaConfig>,
    video: Option<(Arc<TrackLocalStaticSample>, Arc<dyn RtpSender>)>,
    audio: Option<(Arc<TrackLocalStaticSample>, Arc<dyn RtpSender>)>,
    receive_only: bool,
    players: Vec<JoinHandle<()>>,
}

fn local_track(
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
) -> Result<Arc<TrackLocalStaticSample>, Error> {
    let ssrc = rand::random::<u32>();
    let track = MediaStreamTrack::new(
        "ferry".to_owned(),
        format!("ferry-{kind}"),
        format!("ferry {kind}"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    );
    Ok(Arc::new(TrackLocalStaticSample::new(
        Instant::now(),
        track,
    )?))
}

impl Outbound {
    pub(crate) fn new(config: Arc<MediaConfig>) -> Self {
        Self {
            config,
            video: None,
            audio: None,
            receive_only: false,
            players: Vec::new(),
        }
    }

    /// Adds our call media to `pc` (once per connection) and starts playing.
    /// The caller renegotiates afterwards.
    pub(crate) async fn start(&mut self, pc: &Arc<dyn PeerConnection>) -> Result<(), Error> {
        let weak = Arc::downgrade(pc);
        self.stop();
        if self.config.play_video.is_some() && self.video.is_none() {
            let track = local_track(RtpCodecKind::Video, vp8())?;
            let sender = pc.add_track(track.clone() as Arc<dyn TrackLocal>).await?;
            self.video = Some((track, sender));
        }
        if self.config.play_audio.is_some() && self.audio.is_none() {
            let track = local_track(RtpCodecKind::Audio, opus())?;
            let sender = pc.add_track(track.clone() as Arc<dyn TrackLocal>).await?;
            self.audio = Some((track, sender));
        }
        if !self.receive_only {
            // What we do not send, we still receive.
            let init = || {
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                })
            };
            if self.video.is_none() {
                pc.add_transceiver_from_kind(RtpCodecKind::Video, init())
                    .await?;
            }
            if self.audio.is_none() {
                pc.add_transceiver_from_kind(RtpCodecKind::Audio, init())
                    .await?;
            }
            self.receive_only = true;
        }
        if let (Some((track, sender)), Some(path)) = (&self.video, &self.config.play_video) {
            let (track, sender, path) = (track.clone(), sender.clone(), path.clone());
            let repeat = self.config.repeat;
            let pc = weak.clone();
            self.players.push(tokio::spawn(async move {
                if let Err(e) = play_video(&pc, &path, &track, &sender, repeat).await {
                    tracing::warn!("video stopped: {e}");
                }
            }));
        }
        if let (Some((track, sender)), Some(path)) = (&self.audio, &self.config.play_audio) {
            let (track, sender, path) = (track.clone(), sender.clone(), path.clone());
            let repeat = self.config.repeat;
            let pc = weak.clone();
            self.players.push(tokio::spawn(async move {
                if let Err(e) = play_audio(&pc, &path, &track, &sender, repeat).await {
                    tracing::warn!("audio stopped: {e}");
                }
            }));
        }
        Ok(())
    }

    /// Stops sending (the call ended); the tracks stay for the next call.
    pub(crate) fn stop(&mut self) {
        for p in self.players.drain(..) {
            p.abort();
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until an offer/answer round has put `sender` on the wire (its
/// transceiver's current direction sends), and returns its SSRC and
/// payload type. Frames written before that would be dropped, and the
/// first one is the key frame that the receiver's decoder needs.
async fn negotiated(
    pc: &std::sync::Weak<dyn PeerConnection>,
    track: &TrackLocalStaticSample,
    sender: &Arc<dyn RtpSender>,
) -> Result<(u32, u8), Error> {
    let ssrc = *track
        .ssrcs()
        .await
        .first()
        .ok_or_else(|| Error::Internal("a track without an SSRC".into()))?;
    loop {
        let pc = pc.upgrade().ok_or(Error::Stopped)?;
        let mut sending = false;
        for t in pc.get_transceivers().await {
            if let Ok(Some(s)) = t.sender().await
                && s.id() == sender.id()
            {
                sending = matches!(
                    t.current_direction().await,
                    Ok(RTCRtpTransceiverDirection::Sendrecv | RTCRtpTransceiverDirection::Sendonly)
                );
            }
        }
        drop(pc);
        if sending && let Some(codec) = sender.get_parameters().await?.rtp_parameters.codecs.first()
        {
            return Ok((ssrc, codec.payload_type));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn play_video(
    pc: &std::sync::Weak<dyn PeerConnection>,
    path: &Path,
    track: &TrackLocalStaticSample,
    sender: &Arc<dyn RtpSender>,
    repeat: bool,
) -> Result<(), Error> {
    let (ssrc, pt) = negotiated(pc, track, sender).await?;
    tracing::info!("playing {} into the call", path.display());
    let started = tokio::time::Instant::now();
    // Where the current pass through the file starts on the call's clock.
    let mut offset = Duration::ZERO;
    loop {
        let (mut ivf, header) = open_ivf(path)?;
        let (num, den) = (
            u64::from(header.timebase_numerator.max(1)),
            u64::from(header.timebase_denominator.max(1)),
        );
        let at = |pts: u64| {
            Duration::from_micros(pts.saturating_mul(num).saturating_mul(1_000_000) / den)
        };
        let frame_time = at(1);
        let mut last = Duration::ZERO;
        let mut frames = 0u64;
        while let Ok((frame, frame_header)) = ivf.parse_next_frame() {
            frames += 1;
            last = at(frame_header.timestamp);
            tokio::time::sleep_until(started + offset + last).await;
            track
                .sample_writer(ssrc, pt)
                .write_sample(&Sample {
                    data: frame.freeze(),
                    duration: frame_time,
                    ..Sample::new(Instant::now())
                })
                .await?;
        }
        if frames == 0 {
            return Err(Error::Media(format!(
                "{} holds no video frames",
                path.display()
            )));
        }
        if !repeat {
            return Ok(());
        }
        offset += last + frame_time;
    }
}

async fn play_audio(
    pc: &std::sync::Weak<dyn PeerConnection>,
    path: &Path,
    track: &TrackLocalStaticSample,
    sender: &Arc<dyn RtpSender>,
    repeat: bool,
) -> Result<(), Error> {
    let (ssrc, pt) = negotiated(pc, track, sender).await?;
    let started = tokio::time::Instant::now();
    let mut at = Duration::ZERO;
    loop {
        let mut file = OpusFile::open(path)?;
        let mut played = 0u64;
        while let Some(packet) = file.next() {
            let Some(duration) = opus_duration(&packet) else {
                tracing::debug!("skipped a malformed Opus packet");
                continue;
            };
            played += 1;
            tokio::time::sleep_until(started + at).await;
            track
                .sample_writer(ssrc, pt)
                .write_sample(&Sample {
                    data: packet.into(),
                    duration,
                    ..Sample::new(Instant::now())
                })
                .await?;
            at += duration;
        }
        if played == 0 {
            return Err(Error::Media(format!(
                "{} holds no playable Opus packets",
                path.display()
            )));
        }
        if !repeat {
            return Ok(());
        }
    }
}

/// A node's call media: what it plays and records, and the recordings it
/// is writing.
#[derive(Debug, Clone)]
pub(crate) struct CallMedia {
    pub(crate) config: Arc<MediaConfig>,
    pub(crate) recordings: Recordings,
}

impl CallMedia {
    pub(crate) fn new(config: MediaConfig) -> Self {
        Self {
            config: Arc::new(config),
            recordings: Recordings::default(),
        }
    }
}

/// The recordings a node is writing, so that closing the node (Ctrl-C
/// included) finishes every file: the IVF header gets its frame count and
/// the Ogg stream its last page.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recordings {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Recordings {
    /// Stops every recording and waits (up to `grace`) until its file is
    /// finished.
    pub(crate) async fn finish(&self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("a recording did not finish in {grace:?}");
        }
    }
}

/// Records the remote tracks of one connection into a folder.
pub(crate) struct Recorder {
    dir: PathBuf,
    peer: PeerId,
    tracks: AtomicU32,
    recordings: Recordings,
}

impl Recorder {
    pub(crate) fn new(dir: PathBuf, peer: PeerId, recordings: Recordings) -> Self {
        Self {
            dir,
            peer,
            tracks: AtomicU32::new(0),
            recordings,
        }
    }

    /// Records `track` in the background, as one of the node's recordings.
    pub(crate) fn start(self: &Arc<Self>, track: Arc<dyn TrackRemote>) {
        let me = self.clone();
        self.recordings
            .tasks
            .spawn(async move { me.record(track).await });
    }

    /// A new file `<peer>-<n>.<ext>`, never replacing one (of an earlier
    /// track, connection or run). The peer id is the server's, made of safe
    /// characters only.
    fn create(&self, ext: &str) -> Result<(File, PathBuf), String> {
        loop {
            let n = self.tracks.fetch_add(1, Ordering::Relaxed) + 1;
            let path = self.dir.join(format!("{}-{n}.{ext}", self.peer.as_str()));
            match File::options().write(true).create_new(true).open(&path) {
                Ok(f) => return Ok((f, path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100_000 => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
    }

    /// Writes `track` to a new `<peer>-<n>.ivf` or `<peer>-<n>.ogg` until it
    /// ends or the node closes.
    async fn record(&self, track: Arc<dyn TrackRemote>) {
        let Some(ssrc) = track.ssrcs().await.first().copied() else {
            return;
        };
        let mime = track
            .codec(ssrc)
            .await
            .map(|c| c.mime_type.to_ascii_lowercase())
            .unwrap_or_default();
        let ext = if mime == MIME_TYPE_VP8.to_ascii_lowercase() {
            "ivf"
        } else if mime == MIME_TYPE_OPUS.to_ascii_lowercase() {
            "ogg"
        } else {
            tracing::info!("not recording a {mime} track");
            return;
        };
        let made = self.create(ext).and_then(|(file, path)| {
            let writer: Box<dyn Writer + Send> = if ext == "ivf" {
                Box::new(
                    IVFWriter::new(
                        file,
                        &IVFFileHeader {
                            signature: *b"DKIF",
                            version: 0,
                            header_size: 32,
                            four_cc: *b"VP80",
                            width: 640,
                            height: 480,
                            timebase_denominator: 30,
                            timebase_numerator: 1,
                            num_frames: 0,
                            unused: 0,
                        },
                    )
                    .map_err(|e| e.to_string())?,
                )
            } else {
                Box::new(OggWriter::new(file, 48_000, 2).map_err(|e| e.to_string())?)
            };
            Ok((writer, path))
        });
        let (mut writer, path) = match made {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cannot record {}: {e}", self.peer);
                return;
            }
        };
        tracing::info!("recording {} into {}", self.peer, path.display());
        let is_audio = ext == "ogg";
        let mut pli_task = None;
        if track.kind().await == RtpCodecKind::Video {
            // A key frame now, and every few seconds for whoever joins late.
            let pli = track.clone();
            pli_task = Some(tokio::spawn(async move {
                loop {
                    let asked = pli
                        .write_rtcp(vec![Box::new(PictureLossIndication {
                            sender_ssrc: 0,
                            media_ssrc: ssrc,
                        })])
                        .await;
                    if asked.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
            }));
        }
        // The Ogg writer takes timestamps in order only (it subtracts them):
        // a packet that arrives late is dropped, as a jitter buffer would.
        let mut newest: Option<u32> = None;
        loop {
            let event = tokio::select! {
                event = track.poll() => event,
                () = self.recordings.stop.cancelled() => None,
            };
            let Some(event) = event else { break };
            let TrackRemoteEvent::OnRtpPacket(packet) = event else {
                continue;
            };
            if is_audio {
                let ts = packet.header.timestamp;
                if newest.is_some_and(|n| (ts.wrapping_sub(n) as i32) < 0) {
                    continue;
                }
                newest = Some(ts);
            }
            if let Err(e) = writer.write_rtp(&packet) {
                tracing::debug!("a packet was not recorded: {e}");
            }
        }
        if let Some(t) = pli_task {
            t.abort();
        }
        if let Err(e) = writer.close() {
            tracing::warn!("cannot finish {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_packet_durations_follow_the_toc() {
        // CELT 20 ms, one frame (what browsers send).
        assert_eq!(
            opus_duration(&[0xfc, 1, 2]),
            Some(Duration::from_millis(20))
        );
        // SILK 60 ms, two frames.
        assert_eq!(
            opus_duration(&[(3 << 3) | 1]),
            Some(Duration::from_millis(120))
        );
        // Code 3 with 3 frames of 10 ms hybrid.
        assert_eq!(
            opus_duration(&[(12 << 3) | 3, 3]),
            Some(Duration::from_millis(30))
        );
        // Too long, empty, or a code 3 packet without its count.
        assert_eq!(opus_duration(&[(3 << 3) | 3, 3]), None);
        assert_eq!(opus_duration(&[]), None);
        assert_eq!(opus_duration(&[(12 << 3) | 3]), None);
    }

    #[test]
    fn files_that_are_not_what_they_claim_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not a media file at all, certainly").unwrap();
        let config = MediaConfig {
            play_video: Some(junk.clone()),
            ..Default::default()
        };
        assert!(matches!(config.check(), Err(Error::Media(_))));
        let config = MediaConfig {
            play_audio: Some(junk),
            ..Default::default()
        };
        assert!(matches!(config.check(), Err(Error::Media(_))));
        let config = MediaConfig {
            play_audio: Some(dir.path().join("missing.ogg")),
            ..Default::default()
        };
        assert!(matches!(config.check(), Err(Error::Io { .. })));
    }

    #[test]
    fn a_recorded_opus_stream_plays_back_packet_by_packet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.ogg");
        let mut w = OggWriter::new(File::create(&path).unwrap(), 48_000, 2).unwrap();
        for i in 0..5u16 {
            let mut p = rtc::rtp::Packet::default();
            p.header.sequence_number = i;
            p.header.timestamp = u32::from(i) * 960;
            p.payload = vec![0xfc, i as u8, 7].into();
            w.write_rtp(&p).unwrap();
        }
        w.close().unwrap();
        let mut file = OpusFile::open(&path).unwrap();
        let mut got = Vec::new();
        while let Some(p) = file.next() {
            got.push(p);
        }
        assert_eq!(got.len(), 5);
        assert_eq!(got[3], vec![0xfc, 3, 7]);
    }
}
