//! Wire formats: the UDP envelope around foca packets, our own small UDP
//! messages (leave notices), and the TCP push-pull frame. Pure: no I/O.
//!
//! Every decoder is fed untrusted bytes. It bounds sizes before allocating and
//! validates identities, so that nothing malformed reaches foca or the table.

use foca::{Codec, Header, Member, Message, PostcardCodec};
use serde::{Deserialize, Serialize};

use crate::identity::NodeId;

/// First byte of every shoal packet and frame.
pub const MAGIC: u8 = 0xD5;
/// Protocol version; a peer speaking another one is dropped (and counted).
pub const VERSION: u8 = 1;
/// Largest UDP packet we send or accept (fits a 1500-byte MTU with headers).
pub const MAX_PACKET: usize = 1400;
/// Room left for the envelope when sizing foca's packets.
pub const ENVELOPE_LEN: usize = 3;
/// Largest push-pull frame: the whole member table of a big cluster.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Most entries accepted in one push-pull frame.
pub const MAX_SYNC_ENTRIES: usize = 100_000;

const KIND_FOCA: u8 = 1;
const KIND_LEAVE: u8 = 2;
const KIND_LEAVE_ACK: u8 = 3;

/// A decoded UDP packet.
#[derive(Debug, PartialEq)]
pub enum Packet<'a> {
    /// A SWIM message for foca (still encoded).
    Foca(&'a [u8]),
    /// A node announcing its graceful leave, sent directly to every member.
    Leave(NodeId),
    /// Receipt of a leave notice: who heard it, and the leaver's generation.
    LeaveAck { name: String, generation: u64 },
}

/// Why a packet was dropped. Counted in the agent's stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Empty,
    Oversize(usize),
    Foreign,
    Version(u8),
    UnknownKind(u8),
    Malformed(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty packet"),
            DecodeError::Oversize(n) => write!(f, "packet of {n} bytes exceeds {MAX_PACKET}"),
            DecodeError::Foreign => write!(f, "not a shoal packet (bad magic byte)"),
            DecodeError::Version(v) => write!(f, "protocol version {v}, expected {VERSION}"),
            DecodeError::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            DecodeError::Malformed(e) => write!(f, "malformed packet: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

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

/// Frame header: magic, version, then a big-endian u32 body length.
pub const FRAME_HEADER: usize = 6;

pub fn encode_frame(msg: &SyncMsg) -> Result<Vec<u8>, String> {
    let body = postcard::to_stdvec(msg).map_err(|e| e.to_string())?;
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
        return Err(DecodeError::Oversize(len));
    }
    Ok(len)
}

pub fn decode_frame_body(body: &[u8]) -> Result<SyncMsg, DecodeError> {
    let msg: SyncMsg = decode_all(body)?;
    msg.from.validate().map_err(DecodeError::Malformed)?;
    if msg.entries.len() > MAX_SYNC_ENTRIES {
        return Err(DecodeError::Malformed(format!(
            "{} entries exceed {MAX_SYNC_ENTRIES}",
            msg.entries.len()
        )));
    }
    for e in &msg.entries {
        e.id.validate().map_err(DecodeError::Malformed)?;
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::Tags;

    fn id(name: &str) -> NodeId {
        NodeId::new(name.into(), "127.0.0.1:7946".parse().unwrap(), Tags::new())
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
        let bytes = encode_frame(&msg).unwrap();
        let header: [u8; FRAME_HEADER] = bytes[..FRAME_HEADER].try_into().unwrap();
        let len = frame_len(&header).unwrap();
        assert_eq!(
            decode_frame_body(&bytes[FRAME_HEADER..FRAME_HEADER + len]).unwrap(),
            msg
        );
        let huge = [MAGIC, VERSION, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(frame_len(&huge), Err(DecodeError::Oversize(_))));
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
}
