//! Wire formats: the UDP envelope around foca packets, our own small UDP
//! messages (leave notices), and the TCP push-pull frame. Pure: no I/O.
//!
//! Every decoder is fed untrusted bytes. It bounds sizes before allocating and
//! validates identities, so that nothing malformed reaches foca or the table.

use foca::{Codec, Header, Member, Message, PostcardCodec};
use serde::{Deserialize, Serialize};

use crate::counters::{Direction, Seen};
use crate::identity::NodeId;
use crate::keyring::Keyring;

/// First byte of every shoal packet and frame.
pub const MAGIC: u8 = 0xD5;
/// Protocol version; a peer speaking another one is dropped (and counted).
pub const VERSION: u8 = 1;
/// Largest UDP packet we send or accept (fits a 1500-byte MTU with headers).
pub const MAX_PACKET: usize = 1400;
/// Room left for the envelope when sizing foca's packets.
pub const ENVELOPE_LEN: usize = 3;
/// Most entries accepted in one push-pull frame, and so the most members a
/// table holds (`membership::MAX_MEMBERS`): ten times the largest cluster
/// simulated (N = 1,000), small enough that merging a full table never stalls
/// the gossip loop (it is merged in chunks of `core::MERGE_CHUNK`).
pub const MAX_SYNC_ENTRIES: usize = 10_000;
/// Largest encoding of one push-pull entry: a 128-byte name, an IPv6
/// address, 32 tags of 512 bytes in all, every length prefix at its widest
/// (`a_worst_case_entry_fits_max_entry_len` pins it).
pub const MAX_ENTRY_LEN: usize = 800;
/// Largest push-pull frame: a full table of worst-case entries plus the
/// sender's own identity and the sealing overhead, so a table within the
/// limits always encodes (`a_full_table_of_worst_case_entries_fits_one_frame`).
pub const MAX_FRAME: usize = (MAX_SYNC_ENTRIES + 1) * MAX_ENTRY_LEN + 64;

const KIND_FOCA: u8 = 1;
const KIND_LEAVE: u8 = 2;
const KIND_LEAVE_ACK: u8 = 3;
const KIND_SUSPECT: u8 = 4;
/// An acknowledgement or response to a query, sent to its originator.
const KIND_QUERY_REPLY: u8 = 5;
/// An encrypted packet: the envelope header in clear (authenticated), then
/// nonce and ciphertext of a whole inner packet.
const KIND_SEALED: u8 = 0x10;
/// What encryption adds to a packet: the outer envelope, nonce and tag.
pub const SEAL_OVERHEAD: usize = ENVELOPE_LEN + crate::keyring::OVERHEAD;

/// A decoded UDP packet.
#[derive(Debug, PartialEq)]
pub enum Packet<'a> {
    /// A SWIM message for foca (still encoded).
    Foca(&'a [u8]),
    /// A node announcing its graceful leave, sent directly to every member.
    Leave(NodeId),
    /// Receipt of a leave notice: who heard it, and the leaver's generation.
    LeaveAck { name: String, generation: u64 },
    /// "I suspect you": sent straight to a suspected member by the member
    /// whose probe failed (Lifeguard's buddy system), so it can refute at
    /// once instead of waiting for the suspicion to reach it by gossip.
    Suspect {
        name: String,
        generation: u64,
        incarnation: u16,
    },
    /// An acknowledgement or response to a query we sent.
    QueryReply(crate::userev::Reply),
}

/// Why a packet was dropped. Counted in the agent's stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Encrypted, but no installed key authenticates it (wrong key, forged, corrupted).
    Auth,
    /// Encrypted, but this node has no key configured.
    Encrypted,
    /// In clear, but this node requires encryption.
    Unencrypted,
    /// The peer could not authenticate our frame and said why (in clear).
    Refused(String),
    Empty,
    Oversize(usize),
    /// A push-pull frame listing more members than [`MAX_SYNC_ENTRIES`].
    TooManyEntries(u64),
    /// A TCP frame header announcing more than [`MAX_FRAME`] bytes.
    FrameTooLarge(usize),
    Foreign,
    Version(u8),
    UnknownKind(u8),
    Malformed(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Auth => write!(
                f,
                "failed authentication: encrypted with a key this node does not have"
            ),
            DecodeError::Encrypted => {
                write!(f, "encrypted, but this node has no key (--encrypt)")
            }
            DecodeError::Unencrypted => {
                write!(f, "not encrypted, but this node requires encryption")
            }
            DecodeError::Refused(why) => write!(f, "refused by the peer: {why}"),
            DecodeError::Empty => write!(f, "empty packet"),
            DecodeError::Oversize(n) => write!(f, "packet of {n} bytes exceeds {MAX_PACKET}"),
            DecodeError::FrameTooLarge(n) => {
                write!(f, "frame of {n} bytes exceeds {MAX_FRAME}")
            }
            DecodeError::TooManyEntries(n) => write!(
                f,
                "push-pull frame lists {n} members; the limit is {MAX_SYNC_ENTRIES}"
            ),
            DecodeError::Foreign => write!(f, "not a shoal packet (bad magic byte)"),
            DecodeError::Version(v) => write!(f, "protocol version {v}, expected {VERSION}"),
            DecodeError::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            DecodeError::Malformed(e) => write!(f, "malformed packet: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Encrypts a whole packet with the keyring's primary key.
pub fn seal_packet(ring: &Keyring, packet: &[u8]) -> Vec<u8> {
    ring.seal(&[MAGIC, VERSION, KIND_SEALED], packet)
}

/// Unwraps an encrypted packet (or passes a clear one through when no
/// keyring is set). Mixed clusters are refused both ways, so a node without
/// the key never joins silently.
pub fn open_packet<'a>(
    ring: Option<&Keyring>,
    data: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, DecodeError> {
    if data.len() > MAX_PACKET {
        return Err(DecodeError::Oversize(data.len()));
    }
    let sealed = data.len() >= ENVELOPE_LEN && data[0] == MAGIC && data[2] == KIND_SEALED;
    match (ring, sealed) {
        (Some(ring), true) => {
            if data[1] != VERSION {
                return Err(DecodeError::Version(data[1]));
            }
            ring.open(&data[..ENVELOPE_LEN], &data[ENVELOPE_LEN..])
                .map(std::borrow::Cow::Owned)
                .ok_or(DecodeError::Auth)
        }
        (None, true) => Err(DecodeError::Encrypted),
        (Some(_), false) if data.first() == Some(&MAGIC) => Err(DecodeError::Unencrypted),
        _ => Ok(std::borrow::Cow::Borrowed(data)),
    }
}

pub fn decode_packet(data: &[u8]) -> Result<Packet<'_>, DecodeError> {
    if data.is_empty() {
        return Err(DecodeError::Empty);
    }
    if data.len() > MAX_PACKET {
        return Err(DecodeError::Oversize(data.len()));
    }
    if data[0] != MAGIC {
        return Err(DecodeError::Foreign);
    }
    if data.len() < ENVELOPE_LEN {
        return Err(DecodeError::Malformed("truncated envelope".into()));
    }
    if data[1] != VERSION {
        return Err(DecodeError::Version(data[1]));
    }
    let body = &data[ENVELOPE_LEN..];
    match data[2] {
        KIND_FOCA => Ok(Packet::Foca(body)),
        KIND_LEAVE => {
            let id: NodeId = decode_all(body)?;
            id.validate().map_err(DecodeError::Malformed)?;
            Ok(Packet::Leave(id))
        }
        KIND_LEAVE_ACK => {
            let (name, generation): (String, u64) = decode_all(body)?;
            crate::identity::validate_name(&name).map_err(DecodeError::Malformed)?;
            Ok(Packet::LeaveAck { name, generation })
        }
        KIND_SUSPECT => {
            let (name, generation, incarnation): (String, u64, u16) = decode_all(body)?;
            crate::identity::validate_name(&name).map_err(DecodeError::Malformed)?;
            Ok(Packet::Suspect {
                name,
                generation,
                incarnation,
            })
        }
        KIND_QUERY_REPLY => {
            let reply: crate::userev::Reply = decode_all(body)?;
            crate::identity::validate_name(&reply.from).map_err(DecodeError::Malformed)?;
            Ok(Packet::QueryReply(reply))
        }
        k => Err(DecodeError::UnknownKind(k)),
    }
}

fn decode_all<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

fn envelope(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE_LEN + body.len());
    out.extend_from_slice(&[MAGIC, VERSION, kind]);
    out.extend_from_slice(body);
    out
}

pub fn encode_foca(body: &[u8]) -> Vec<u8> {
    envelope(KIND_FOCA, body)
}

pub fn encode_leave(id: &NodeId) -> Vec<u8> {
    envelope(KIND_LEAVE, &postcard::to_stdvec(id).unwrap_or_default())
}

pub fn encode_leave_ack(name: &str, generation: u64) -> Vec<u8> {
    envelope(
        KIND_LEAVE_ACK,
        &postcard::to_stdvec(&(name, generation)).unwrap_or_default(),
    )
}

pub fn encode_query_reply(reply: &crate::userev::Reply) -> Vec<u8> {
    envelope(
        KIND_QUERY_REPLY,
        &postcard::to_stdvec(reply).unwrap_or_default(),
    )
}

pub fn encode_suspect(name: &str, generation: u64, incarnation: u16) -> Vec<u8> {
    envelope(
        KIND_SUSPECT,
        &postcard::to_stdvec(&(name, generation, incarnation)).unwrap_or_default(),
    )
}

/// foca's codec: postcard, plus validation of every identity it decodes, so a
/// peer cannot inject an oversize name or hostile tags into the member table.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShoalCodec;

#[derive(Debug)]
pub struct CodecError(String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

impl From<postcard::Error> for CodecError {
    fn from(e: postcard::Error) -> Self {
        CodecError(e.to_string())
    }
}

fn check(id: &NodeId) -> Result<(), CodecError> {
    id.validate().map_err(CodecError)
}

impl Codec<NodeId> for ShoalCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), CodecError> {
        Ok(PostcardCodec.encode_header(header, buf)?)
    }

    fn decode_header(&mut self, buf: impl bytes::Buf) -> Result<Header<NodeId>, CodecError> {
        let header: Header<NodeId> = PostcardCodec.decode_header(buf)?;
        check(&header.src)?;
        // An announce may be addressed to a seed placeholder with no name.
        if !(header.message == Message::Announce && header.dst.name.is_empty()) {
            check(&header.dst)?;
        }
        match &header.message {
            Message::PingReq { target: id, .. }
            | Message::IndirectPing { origin: id, .. }
            | Message::IndirectAck { target: id, .. }
            | Message::ForwardedAck { origin: id, .. } => check(id)?,
            _ => {}
        }
        Ok(header)
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), CodecError> {
        Ok(PostcardCodec.encode_member(member, buf)?)
    }

    fn decode_member(&mut self, buf: impl bytes::Buf) -> Result<Member<NodeId>, CodecError> {
        let member: Member<NodeId> = PostcardCodec.decode_member(buf)?;
        check(member.id())?;
        Ok(member)
    }
}

/// [`ShoalCodec`] with a clock: it also refuses identities whose generation
/// is far ahead of the core's wall clock (see
/// [`crate::identity::plausible_generation`]), so a forged `u64::MAX`
/// generation never reaches foca through SWIM either. The core moves the
/// clock forward ([`ClockedCodec::set_now`]); clones share it.
/// It also notes every header it encodes or decodes for the node's
/// [`crate::counters`] (a bounded list the node drains after each call).
#[derive(Debug, Clone)]
pub struct ClockedCodec {
    now_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
}

/// Headers noted between two drains, at most (the node drains every turn).
const MAX_SEEN: usize = 4096;

impl ClockedCodec {
    pub fn new(now_ms: u64) -> ClockedCodec {
        ClockedCodec {
            now_ms: std::sync::Arc::new(now_ms.into()),
            seen: Default::default(),
        }
    }

    /// The headers encoded and decoded since the last call.
    pub fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn note(&self, direction: Direction, header: &Header<NodeId>) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() < MAX_SEEN {
            seen.push(Seen::of(direction, header));
        }
    }

    pub fn set_now(&self, now_ms: u64) {
        self.now_ms
            .store(now_ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn check_clock(&self, id: &NodeId) -> Result<(), CodecError> {
        let now = self.now_ms.load(std::sync::atomic::Ordering::Relaxed);
        if crate::identity::plausible_generation(id.generation, now) {
            Ok(())
        } else {
            Err(CodecError(format!(
                "identity {:?} has generation {}, more than {} ms ahead of this node's clock",
                id.name,
                id.generation,
                crate::identity::MAX_GENERATION_AHEAD_MS
            )))
        }
    }
}

impl Codec<NodeId> for ClockedCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), CodecError> {
        ShoalCodec.encode_header(header, buf)?;
        self.note(Direction::Out, header);
        Ok(())
    }

    fn decode_header(&mut self, buf: impl bytes::Buf) -> Result<Header<NodeId>, CodecError> {
        let header = ShoalCodec.decode_header(buf)?;
        self.check_clock(&header.src)?;
        match &header.message {
            Message::PingReq { target: id, .. }
            | Message::IndirectPing { origin: id, .. }
            | Message::IndirectAck { target: id, .. }
            | Message::ForwardedAck { origin: id, .. } => self.check_clock(id)?,
            _ => {}
        }
        self.note(Direction::In, &header);
        Ok(header)
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), CodecError> {
        ShoalCodec.encode_member(member, buf)
    }

    fn decode_member(&mut self, buf: impl bytes::Buf) -> Result<Member<NodeId>, CodecError> {
        let member = ShoalCodec.decode_member(buf)?;
        self.check_clock(member.id())?;
        Ok(member)
    }
}

/// A member's state as exchanged in push-pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncState {
    Alive,
    Suspect,
    Failed,
    Left,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncEntry {
    pub id: NodeId,
    pub incarnation: u16,
    pub state: SyncState,
}

/// One side of a TCP push-pull exchange: everything the sender knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncMsg {
    pub from: NodeId,
    pub entries: Vec<SyncEntry>,
}

/// What travels over TCP: state exchanges and cluster-wide key operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TcpMsg {
    Sync(SyncMsg),
    KeyOp(KeyRequest),
    KeyReply(KeyReply),
    /// A query response too large for a UDP packet, sent to the originator
    /// (answered with [`TcpMsg::Done`]).
    QueryReply(crate::userev::Reply),
    /// Asks the originator of a user event for its payload (announced as
    /// [`crate::userev::Payload::Fetch`]): (origin, Lamport time, name).
    FetchPayload {
        origin: String,
        ltime: u64,
        name: String,
    },
    /// The payload asked for; None when the originator no longer has it.
    Payload(Option<Vec<u8>>),
    /// Receipt of a message that needs no other answer.
    Done,
    /// The sender's Lamport clocks and recent user events, exchanged after
    /// a push-pull and answered with the receiver's: a restarted node
    /// catches up at once (its events are not taken for old ones), and an
    /// event the gossip missed somewhere arrives by this anti-entropy, as
    /// Serf's push-pull carries its recent events. (A separate frame, so a
    /// node without it only fails this exchange.)
    Clocks(crate::userev::UserSync),
}

/// A key operation with its freshness proof (see [`crate::freshness`]): the
/// sender's wall clock and a random nonce, both inside the sealed frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRequest {
    pub op: KeyOp,
    /// Milliseconds since the epoch when the operation was sent.
    pub sent_ms: u64,
    pub nonce: [u8; 16],
}

impl KeyRequest {
    /// `op`, stamped now with a fresh random nonce.
    pub fn new(op: KeyOp, now_ms: u64) -> KeyRequest {
        let mut nonce = [0u8; 16];
        rand::fill(&mut nonce[..]);
        KeyRequest {
            op,
            sent_ms: now_ms,
            nonce,
        }
    }
}

/// A keyring operation, applied by every member (`shoal keys ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyOp {
    List,
    Install(String),
    Use(String),
    Remove(String),
}

/// One member's answer to a [`KeyOp`]; `keys` is its keyring, primary first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyReply {
    pub node: String,
    pub error: Option<String>,
    pub keys: Vec<String>,
}

/// Frame header: magic, version, then a big-endian u32 body length. The
/// body's first byte says whether it is sealed (1) or clear (0).
pub const FRAME_HEADER: usize = 6;
const FRAME_CLEAR: u8 = 0;
const FRAME_SEALED: u8 = 1;
/// A clear-text refusal (at most 200 bytes of text): sent back when a frame
/// cannot be authenticated, so a node with the wrong key learns why.
const FRAME_REFUSED: u8 = 2;

pub fn encode_refusal(reason: &str) -> Vec<u8> {
    let text: String = reason.chars().take(200).collect();
    let mut out = vec![MAGIC, VERSION];
    out.extend_from_slice(&((text.len() + 1) as u32).to_be_bytes());
    out.push(FRAME_REFUSED);
    out.extend_from_slice(text.as_bytes());
    out
}

pub fn encode_frame(msg: &TcpMsg, ring: Option<&Keyring>) -> Result<Vec<u8>, String> {
    let plain = postcard::to_stdvec(msg).map_err(|e| e.to_string())?;
    let body = match ring {
        Some(ring) => {
            ring.seal(&[MAGIC, VERSION, FRAME_SEALED], &plain)[ENVELOPE_LEN - 1..].to_vec()
        }
        None => [&[FRAME_CLEAR][..], &plain].concat(),
    };
    if body.len() > MAX_FRAME {
        return Err(format!("state of {} bytes exceeds {MAX_FRAME}", body.len()));
    }
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
    out.extend_from_slice(&[MAGIC, VERSION]);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads a frame header and returns the body length to read next.
pub fn frame_len(header: &[u8; FRAME_HEADER]) -> Result<usize, DecodeError> {
    if header[0] != MAGIC {
        return Err(DecodeError::Foreign);
    }
    if header[1] != VERSION {
        return Err(DecodeError::Version(header[1]));
    }
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if len > MAX_FRAME {
        return Err(DecodeError::FrameTooLarge(len));
    }
    Ok(len)
}

/// The header and the body's flag byte: what a frame can be judged by
/// before its body is read. Returns the body length (flag included).
pub const FRAME_PREFIX: usize = FRAME_HEADER + 1;

/// Checks a frame's first bytes against this node's setting, so a frame
/// that can never be accepted (clear text to a node with a key, sealed to
/// one without, too short to hold a seal) is refused before its body is
/// read. Whether the key is right can only be known once the whole body is
/// in: AES-GCM authenticates the message as a whole.
pub fn check_prefix(prefix: &[u8; FRAME_PREFIX], keyed: bool) -> Result<usize, DecodeError> {
    let header: &[u8; FRAME_HEADER] = prefix[..FRAME_HEADER]
        .try_into()
        .map_err(|_| DecodeError::Empty)?;
    let len = frame_len(header)?;
    if len == 0 {
        return Err(DecodeError::Empty);
    }
    match (prefix[FRAME_HEADER], keyed) {
        (FRAME_SEALED, false) => Err(DecodeError::Encrypted),
        (FRAME_CLEAR, true) => Err(DecodeError::Unencrypted),
        (FRAME_SEALED, true) if len < 1 + crate::keyring::OVERHEAD => Err(DecodeError::Malformed(
            format!("sealed frame of {len} bytes"),
        )),
        (FRAME_SEALED | FRAME_CLEAR | FRAME_REFUSED, _) => Ok(len),
        (k, _) => Err(DecodeError::UnknownKind(k)),
    }
}

/// How many members a push-pull message says it carries, read from the
/// length prefix of its entries before any entry is decoded (so a frame of
/// 100,000 tiny invented members costs a few bytes of parsing, not 100,000
/// allocations). None for the other messages.
fn declared_entries(plain: &[u8]) -> Result<Option<u64>, DecodeError> {
    let malformed = |e: postcard::Error| DecodeError::Malformed(e.to_string());
    // postcard: the enum's variant index (varint), the struct's fields in
    // order, a sequence's length (varint) before its items.
    let (variant, rest): (u32, _) = postcard::take_from_bytes(plain).map_err(malformed)?;
    if variant != SYNC_VARIANT {
        return Ok(None);
    }
    let (_from, rest): (NodeId, _) = postcard::take_from_bytes(rest).map_err(malformed)?;
    let (n, _): (u64, _) = postcard::take_from_bytes(rest).map_err(malformed)?;
    Ok(Some(n))
}

/// [`TcpMsg::Sync`]'s index in postcard (pinned by a test).
const SYNC_VARIANT: u32 = 0;

/// Opens (if sealed) and decodes a frame body, validating every identity.
pub fn decode_frame_body(body: &[u8], ring: Option<&Keyring>) -> Result<TcpMsg, DecodeError> {
    let (&flag, rest) = body.split_first().ok_or(DecodeError::Empty)?;
    let plain = match (flag, ring) {
        (FRAME_SEALED, Some(ring)) => std::borrow::Cow::Owned(
            ring.open(&[MAGIC, VERSION, FRAME_SEALED], rest)
                .ok_or(DecodeError::Auth)?,
        ),
        (FRAME_SEALED, None) => return Err(DecodeError::Encrypted),
        (FRAME_CLEAR, Some(_)) => return Err(DecodeError::Unencrypted),
        (FRAME_CLEAR, None) => std::borrow::Cow::Borrowed(rest),
        (FRAME_REFUSED, _) => {
            let text: String = String::from_utf8_lossy(&rest[..rest.len().min(200)])
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            return Err(DecodeError::Refused(text));
        }
        (k, _) => return Err(DecodeError::UnknownKind(k)),
    };
    if let Some(n) = declared_entries(&plain)? {
        if n > MAX_SYNC_ENTRIES as u64 {
            return Err(DecodeError::TooManyEntries(n));
        }
    }
    let msg: TcpMsg = decode_all(&plain)?;
    if let TcpMsg::Sync(sync) = &msg {
        sync.from.validate().map_err(DecodeError::Malformed)?;
        for e in &sync.entries {
            e.id.validate().map_err(DecodeError::Malformed)?;
        }
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::Tags;

    /// A wall clock of today's size (its varint takes as many bytes).
    const NOW_MS: u64 = 1_800_000_000_000;

    fn id(name: &str) -> NodeId {
        NodeId::new(
            name.into(),
            "127.0.0.1:7946".parse().unwrap(),
            Tags::new(),
            NOW_MS,
        )
    }

    #[test]
    fn leave_round_trips() {
        let a = id("a");
        assert_eq!(decode_packet(&encode_leave(&a)).unwrap(), Packet::Leave(a));
        assert_eq!(
            decode_packet(&encode_leave_ack("a", 7)).unwrap(),
            Packet::LeaveAck {
                name: "a".into(),
                generation: 7
            }
        );
        assert_eq!(
            decode_packet(&encode_suspect("a", 7, 3)).unwrap(),
            Packet::Suspect {
                name: "a".into(),
                generation: 7,
                incarnation: 3
            }
        );
    }

    /// The bad-packet corpus: every entry must be refused, none may panic.
    #[test]
    fn bad_packets_are_refused() {
        let good = encode_leave(&id("a"));
        let mut bad_name = id("a");
        bad_name.name = "a\nb".into();
        let corpus: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "empty"),
            (vec![0u8; MAX_PACKET + 1], "oversize"),
            (b"GET / HTTP/1.1\r\n".to_vec(), "foreign"),
            (vec![MAGIC], "truncated"),
            (vec![MAGIC, 9, 1], "version"),
            (vec![MAGIC, VERSION, 77], "kind"),
            (good[..good.len() - 2].to_vec(), "truncated leave"),
            ([good.clone(), vec![0]].concat(), "trailing"),
            (encode_leave(&bad_name), "hostile name"),
            (encode_suspect("a\nb", 1, 1), "hostile suspect name"),
            (
                [encode_suspect("a", 1, 1), vec![0]].concat(),
                "trailing suspect",
            ),
            (
                vec![MAGIC, VERSION, KIND_LEAVE, 0xff, 0xff, 0xff, 0xff, 0x0f],
                "huge length",
            ),
        ];
        for (bytes, what) in corpus {
            assert!(decode_packet(&bytes).is_err(), "{what} was accepted");
        }
    }

    #[test]
    fn frames_round_trip_and_bound_their_length() {
        let msg = SyncMsg {
            from: id("a"),
            entries: vec![SyncEntry {
                id: id("b"),
                incarnation: 3,
                state: SyncState::Left,
            }],
        };
        let msg = TcpMsg::Sync(msg);
        let ring = Keyring::new(crate::keyring::Key::parse(&crate::keyring::generate()).unwrap());
        for ring in [None, Some(&ring)] {
            let bytes = encode_frame(&msg, ring).unwrap();
            let header: [u8; FRAME_HEADER] = bytes[..FRAME_HEADER].try_into().unwrap();
            let len = frame_len(&header).unwrap();
            let body = &bytes[FRAME_HEADER..FRAME_HEADER + len];
            assert_eq!(decode_frame_body(body, ring).unwrap(), msg);
            // A node with the other setting refuses it.
            let other = if ring.is_some() { None } else { Some(ring_b()) };
            assert!(decode_frame_body(body, other.as_ref()).is_err());
        }
        let huge = [MAGIC, VERSION, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            frame_len(&huge),
            Err(DecodeError::FrameTooLarge(_))
        ));
    }

    fn ring_b() -> Keyring {
        Keyring::new(crate::keyring::Key::parse(&crate::keyring::generate()).unwrap())
    }

    #[test]
    fn sealed_packets_open_only_with_the_key() {
        let ring = ring_b();
        let plain = encode_leave(&id("a"));
        let sealed = seal_packet(&ring, &plain);
        assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
        assert_eq!(&*open_packet(Some(&ring), &sealed).unwrap(), &plain[..]);
        assert_eq!(
            open_packet(Some(&ring_b()), &sealed),
            Err(DecodeError::Auth)
        );
        assert_eq!(open_packet(None, &sealed), Err(DecodeError::Encrypted));
        assert_eq!(
            open_packet(Some(&ring), &plain),
            Err(DecodeError::Unencrypted)
        );
        assert_eq!(&*open_packet(None, &plain).unwrap(), &plain[..]);
        let mut flipped = sealed.clone();
        flipped[10] ^= 0x40;
        assert_eq!(open_packet(Some(&ring), &flipped), Err(DecodeError::Auth));
    }

    #[test]
    fn refusals_are_read_as_clear_text_reasons() {
        let frame = encode_refusal("wrong key\nbackend evil");
        let header: [u8; FRAME_HEADER] = frame[..FRAME_HEADER].try_into().unwrap();
        let len = frame_len(&header).unwrap();
        match decode_frame_body(&frame[FRAME_HEADER..FRAME_HEADER + len], Some(&ring_b())) {
            Err(DecodeError::Refused(why)) => assert_eq!(why, "wrong keybackend evil"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_utf8_tags_are_refused() {
        use bytes::BytesMut;
        let mut member = id("a");
        member.tags.insert("k".into(), "AAAA".into());
        let mut buf = BytesMut::new();
        ShoalCodec
            .encode_member(&Member::alive(member), &mut buf)
            .unwrap();
        let at = buf.windows(4).position(|w| w == b"AAAA").unwrap();
        buf[at] = 0xff;
        assert!(ShoalCodec.decode_member(&buf[..]).is_err());
    }

    #[test]
    fn codec_refuses_hostile_identities() {
        use bytes::BytesMut;
        let mut evil = id("a");
        evil.tags.insert("k".into(), "x".repeat(600));
        let mut buf = BytesMut::new();
        ShoalCodec
            .encode_member(&Member::alive(evil), &mut buf)
            .unwrap();
        assert!(ShoalCodec.decode_member(&buf[..]).is_err());
    }

    /// The largest identity the validating codec lets through.
    fn worst_case_id(n: usize) -> NodeId {
        let mut tags = Tags::new();
        // A 256-byte value (two-byte length prefix), then 31 more tags:
        // 32 keys and values, 512 bytes in all.
        tags.insert("k00".into(), "v".repeat(256));
        for i in 1..32 {
            let value = if i == 31 {
                "v".repeat(10)
            } else {
                "v".repeat(5)
            };
            tags.insert(format!("k{i:02}"), value);
        }
        let name = format!("{n:0>128}");
        let addr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
            .parse()
            .unwrap();
        NodeId {
            name,
            addr,
            generation: u64::MAX,
            tags,
        }
    }

    #[test]
    fn a_worst_case_entry_fits_max_entry_len() {
        let id = worst_case_id(1);
        id.validate().expect("the limits allow it");
        let total: usize = id.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(total, crate::tags::MAX_TOTAL_LEN);
        let entry = SyncEntry {
            id,
            incarnation: u16::MAX,
            state: SyncState::Suspect,
        };
        let len = postcard::to_stdvec(&entry).unwrap().len();
        assert!(len <= MAX_ENTRY_LEN, "{len} > {MAX_ENTRY_LEN}");
    }

    #[test]
    fn a_full_table_of_worst_case_entries_fits_one_frame() {
        let msg = TcpMsg::Sync(SyncMsg {
            from: worst_case_id(0),
            entries: (1..=MAX_SYNC_ENTRIES)
                .map(|n| SyncEntry {
                    id: worst_case_id(n),
                    incarnation: u16::MAX,
                    state: SyncState::Alive,
                })
                .collect(),
        });
        let ring = ring_b();
        for ring in [None, Some(&ring)] {
            let bytes = encode_frame(&msg, ring).expect("a full table encodes");
            let header: [u8; FRAME_HEADER] = bytes[..FRAME_HEADER].try_into().unwrap();
            assert_eq!(frame_len(&header).unwrap(), bytes.len() - FRAME_HEADER);
            assert!(decode_frame_body(&bytes[FRAME_HEADER..], ring).is_ok());
        }
    }

    #[test]
    fn a_frame_listing_more_members_than_the_limit_is_refused_before_its_entries_are_decoded() {
        let tiny = |i: usize| SyncEntry {
            id: NodeId {
                name: format!("x{i}"),
                addr: "127.0.0.1:1".parse().unwrap(),
                generation: 1,
                tags: Tags::new(),
            },
            incarnation: 0,
            state: SyncState::Alive,
        };
        let msg = |n: usize| {
            TcpMsg::Sync(SyncMsg {
                from: id("a"),
                entries: (0..n).map(tiny).collect(),
            })
        };
        let at_limit = encode_frame(&msg(MAX_SYNC_ENTRIES), None).unwrap();
        assert!(decode_frame_body(&at_limit[FRAME_HEADER..], None).is_ok());
        let over = encode_frame(&msg(100_000), None).unwrap();
        let started = std::time::Instant::now();
        let refused = decode_frame_body(&over[FRAME_HEADER..], None);
        let took = started.elapsed();
        assert_eq!(refused, Err(DecodeError::TooManyEntries(100_000)));
        assert!(took < std::time::Duration::from_millis(50), "{took:?}");
        // Only the length prefix is read: a body cut right after it is refused the same.
        let plain = postcard::to_stdvec(&msg(100_000)).unwrap();
        let head_len = postcard::to_stdvec(&(SYNC_VARIANT, id("a"))).unwrap().len() + 3;
        let cut = [&[FRAME_CLEAR][..], &plain[..head_len]].concat();
        assert_eq!(
            decode_frame_body(&cut, None),
            Err(DecodeError::TooManyEntries(100_000))
        );
        // The other messages have no entries to count.
        assert_eq!(
            declared_entries(
                &postcard::to_stdvec(&TcpMsg::KeyOp(KeyRequest::new(KeyOp::List, 0))).unwrap()
            ),
            Ok(None)
        );
    }

    #[test]
    fn a_frame_that_can_never_be_accepted_is_refused_by_its_first_bytes() {
        let ring = ring_b();
        let msg = TcpMsg::KeyOp(KeyRequest::new(KeyOp::List, 0));
        let prefix =
            |bytes: &[u8]| -> [u8; FRAME_PREFIX] { bytes[..FRAME_PREFIX].try_into().unwrap() };
        let clear = encode_frame(&msg, None).unwrap();
        let sealed = encode_frame(&msg, Some(&ring)).unwrap();
        assert_eq!(
            check_prefix(&prefix(&clear), false),
            Ok(clear.len() - FRAME_HEADER)
        );
        assert_eq!(
            check_prefix(&prefix(&sealed), true),
            Ok(sealed.len() - FRAME_HEADER)
        );
        assert_eq!(
            check_prefix(&prefix(&clear), true),
            Err(DecodeError::Unencrypted)
        );
        assert_eq!(
            check_prefix(&prefix(&sealed), false),
            Err(DecodeError::Encrypted)
        );
        let refusal = encode_refusal("no");
        assert!(check_prefix(&prefix(&refusal), true).is_ok());
        let short_seal = [MAGIC, VERSION, 0, 0, 0, 4, FRAME_SEALED];
        assert!(matches!(
            check_prefix(&short_seal, true),
            Err(DecodeError::Malformed(_))
        ));
        let huge = [MAGIC, VERSION, 0xff, 0xff, 0xff, 0xff, FRAME_CLEAR];
        assert!(matches!(
            check_prefix(&huge, false),
            Err(DecodeError::FrameTooLarge(_))
        ));
        let empty = [MAGIC, VERSION, 0, 0, 0, 0, FRAME_CLEAR];
        assert_eq!(check_prefix(&empty, false), Err(DecodeError::Empty));
        assert_eq!(check_prefix(b"GET / H", false), Err(DecodeError::Foreign));
    }
}
