//! Bytes on a ring connection: length-prefixed protobuf handshake frames, operation headers, raw LE f32 chunks
//! or LE bf16 chunks (the compressed all-reduce).

use std::io::{self, Read};

use crate::transport::LinkStream;

/// Largest handshake frame accepted; a bigger length prefix means a foreign or corrupt connection.
const MAX_HANDSHAKE_FRAME_BYTES: usize = 64 * 1024;

/// `message` as a frame: a 4-byte little-endian length followed by its protobuf encoding.
pub(crate) fn encode_frame<M: prost::Message>(message: &M) -> io::Result<Vec<u8>> {
    let encoded_length = message.encoded_len();
    let length = u32::try_from(encoded_length)
        .ok()
        .filter(|&length| length as usize <= MAX_HANDSHAKE_FRAME_BYTES)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "handshake frame too large"))?;
    let mut frame = Vec::with_capacity(4 + encoded_length);
    frame.extend_from_slice(&length.to_le_bytes());
    message
        .encode(&mut frame)
        .map_err(|encode_error| io::Error::new(io::ErrorKind::InvalidInput, encode_error))?;
    Ok(frame)
}

/// Reads one frame made by [`encode_frame`] in pieces, so the caller can poll several connections or check
/// for an abort between reads: each [`FrameReader::poll`] takes what the source has (a non-blocking socket, a
/// blocking one up to its read timeout, a TLS session's plaintext) and never reads past the end of the frame.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    received: Vec<u8>,
}

impl FrameReader {
    /// The decoded frame once it is complete, `None` while bytes are still missing.
    pub(crate) fn poll<M: prost::Message + Default>(
        &mut self,
        source: &mut impl Read,
    ) -> io::Result<Option<M>> {
        let mut piece = [0u8; 1024];
        loop {
            let frame_bytes = self.frame_bytes()?;
            if self.received.len() == frame_bytes {
                let decoded = M::decode(&self.received[4..]).map_err(|decode_error| {
                    io::Error::new(io::ErrorKind::InvalidData, decode_error)
                });
                self.received.clear();
                return decoded.map(Some);
            }
            let missing = (frame_bytes - self.received.len()).min(piece.len());
            match source.read(&mut piece[..missing]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "connection closed after {} bytes of a handshake frame",
                            self.received.len()
                        ),
                    ));
                }
                Ok(read) => self.received.extend_from_slice(&piece[..read]),
                Err(read_error)
                    if matches!(
                        read_error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(read_error) if read_error.kind() == io::ErrorKind::Interrupted => {}
                Err(read_error) => return Err(read_error),
            }
        }
    }

    /// Size of the whole frame (length prefix included) as far as it is known.
    fn frame_bytes(&self) -> io::Result<usize> {
        let Some(length_bytes) = self.received.first_chunk::<4>() else {
            return Ok(4);
        };
        let length = u32::from_le_bytes(*length_bytes) as usize;
        if length > MAX_HANDSHAKE_FRAME_BYTES {
            // A TLS record (handshake 0x16 or alert 0x15, version 3.x) read as a length is always too large.
            let speaks_tls = matches!(length_bytes, [0x15 | 0x16, 0x03, ..]);
            let hint = if speaks_tls {
                ": the other side speaks TLS (is ring TLS on at one end only?)"
            } else {
                ""
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "handshake frame of {length} bytes exceeds {MAX_HANDSHAKE_FRAME_BYTES}{hint}"
                ),
            ));
        }
        Ok(4 + length)
    }
}

/// Which collective an operation header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OperationKind {
    AllReduceSum = 1,
    Broadcast = 2,
    Barrier = 3,
    /// The all-reduce with bf16 on the wire: ranks that disagree on compression fail in the header exchange.
    AllReduceSumBf16 = 4,
}

impl OperationKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            OperationKind::AllReduceSum => "all_reduce_sum",
            OperationKind::Broadcast => "broadcast",
            OperationKind::Barrier => "barrier",
            OperationKind::AllReduceSumBf16 => "all_reduce_sum (bf16 wire)",
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(OperationKind::AllReduceSum),
            2 => Some(OperationKind::Broadcast),
            3 => Some(OperationKind::Barrier),
            4 => Some(OperationKind::AllReduceSumBf16),
            _ => None,
        }
    }
}

/// "PKRG": the first bytes of every operation header.
const OPERATION_HEADER_MAGIC: u32 = 0x504b_5247;

/// Sent to the next rank at the start of every operation so ranks that disagree on the call sequence, the
/// buffer length or the broadcast root fail with a clear error instead of exchanging garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OperationHeader {
    pub kind: OperationKind,
    pub sequence: u64,
    pub element_count: u64,
    pub root: u64,
}

impl OperationHeader {
    pub(crate) const ENCODED_BYTES: usize = 32;

    pub(crate) fn encode(&self) -> [u8; Self::ENCODED_BYTES] {
        let mut bytes = [0u8; Self::ENCODED_BYTES];
        bytes[0..4].copy_from_slice(&OPERATION_HEADER_MAGIC.to_le_bytes());
        bytes[4..8].copy_from_slice(&(self.kind as u32).to_le_bytes());
        bytes[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.element_count.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.root.to_le_bytes());
        bytes
    }

    /// Decodes a header, or says what is wrong with the bytes.
    pub(crate) fn decode(bytes: &[u8; Self::ENCODED_BYTES]) -> Result<Self, String> {
        let read_u32 = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let read_u64 = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let magic = read_u32(0);
        if magic != OPERATION_HEADER_MAGIC {
            return Err(format!("bad operation header magic {magic:#010x}"));
        }
        let kind_code = read_u32(4);
        let kind = OperationKind::from_code(kind_code)
            .ok_or_else(|| format!("unknown operation code {kind_code}"))?;
        Ok(OperationHeader {
            kind,
            sequence: read_u64(8),
            element_count: read_u64(16),
            root: read_u64(24),
        })
    }

    pub(crate) fn describe(&self) -> String {
        match self.kind {
            OperationKind::Broadcast => format!(
                "{} #{} of {} elements from root {}",
                self.kind.name(),
                self.sequence,
                self.element_count,
                self.root
            ),
            _ => format!(
                "{} #{} of {} elements",
                self.kind.name(),
                self.sequence,
                self.element_count
            ),
        }
    }
}

/// Writes `values` as little-endian f32 (no copy on little-endian targets, besides TLS encryption).
pub(crate) fn write_f32s(stream: &LinkStream, values: &[f32]) -> io::Result<()> {
    #[cfg(target_endian = "little")]
    {
        stream.write_all(bytemuck::cast_slice(values))
    }
    #[cfg(not(target_endian = "little"))]
    {
        let encoded: Vec<u8> = values
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect();
        stream.write_all(&encoded)
    }
}

/// Reads exactly `destination.len()` little-endian f32 into `destination`.
pub(crate) fn read_f32s(stream: &LinkStream, destination: &mut [f32]) -> io::Result<()> {
    stream.read_exact(bytemuck::cast_slice_mut(destination))?;
    #[cfg(not(target_endian = "little"))]
    for value in destination.iter_mut() {
        *value = f32::from_bits(u32::from_le(value.to_bits()));
    }
    Ok(())
}

/// `value` rounded to the nearest bf16 (ties to even), as the bf16's bit pattern: the top 16 bits of an f32.
/// NaN stays NaN (quiet); overflow rounds to infinity as IEEE rounding does. Branch-free, so the loops over
/// chunks vectorise.
#[inline]
pub(crate) fn f32_to_bf16_bits(value: f32) -> u16 {
    let bits = value.to_bits();
    // No overflow for non-NaN values: the largest such pattern (0xff80_0000, -inf) plus 0x8000 fits a u32.
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let quiet_nan = (bits >> 16) | 0x0040;
    let is_nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
    (if is_nan { quiet_nan } else { rounded }) as u16
}

/// The f32 holding exactly the bf16 with bit pattern `bits`.
#[inline]
pub(crate) fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Rounds every value to the nearest bf16-representable f32 in place.
pub(crate) fn round_to_bf16(values: &mut [f32]) {
    for value in values.iter_mut() {
        *value = bf16_bits_to_f32(f32_to_bf16_bits(*value));
    }
}

/// Writes `values` rounded to bf16, 2 little-endian bytes each, encoding through `encoded` (reused).
pub(crate) fn write_bf16s(
    stream: &LinkStream,
    values: &[f32],
    encoded: &mut Vec<u16>,
) -> io::Result<()> {
    encoded.clear();
    encoded.extend(values.iter().map(|value| f32_to_bf16_bits(*value).to_le()));
    stream.write_all(bytemuck::cast_slice(encoded))
}

/// Reads `element_count` little-endian bf16 values into `received` (reused; resized to `element_count`), as
/// bit patterns in native byte order.
pub(crate) fn read_bf16s(
    stream: &LinkStream,
    element_count: usize,
    received: &mut Vec<u16>,
) -> io::Result<()> {
    received.resize(element_count, 0);
    stream.read_exact(bytemuck::cast_slice_mut(received))?;
    #[cfg(not(target_endian = "little"))]
    for bits in received.iter_mut() {
        *bits = u16::from_le(*bits);
    }
    Ok(())
}

/// Adds the bf16 values `addend_bits` into `accumulator` in f32 (same lengths).
pub(crate) fn add_bf16_into(accumulator: &mut [f32], addend_bits: &[u16]) {
    debug_assert_eq!(accumulator.len(), addend_bits.len());
    for (sum, bits) in accumulator.iter_mut().zip(addend_bits) {
        *sum += bf16_bits_to_f32(*bits);
    }
}

/// Widens the bf16 values `bits` into `destination` (same lengths).
pub(crate) fn widen_bf16_into(destination: &mut [f32], bits: &[u16]) {
    debug_assert_eq!(destination.len(), bits.len());
    for (slot, value_bits) in destination.iter_mut().zip(bits) {
        *slot = bf16_bits_to_f32(*value_bits);
    }
}

/// Adds `addend` into `accumulator` element-wise (same lengths).
pub(crate) fn add_into(accumulator: &mut [f32], addend: &[f32]) {
    debug_assert_eq!(accumulator.len(), addend.len());
    for (sum, value) in accumulator.iter_mut().zip(addend) {
        *sum += *value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn frame_reader_assembles_a_frame_sent_in_pieces_and_rejects_oversized_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut sender = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (receiver, _) = listener.accept().expect("accept");
        receiver.set_nonblocking(true).expect("nonblocking");
        let hello = plankton_proto::v1::PeerHello {
            protocol_version: 3,
            job_id: "pieces".to_string(),
            rank: 1,
            world_size: 3,
            generation: 4,
            nonce: vec![7; 32],
            authenticated: true,
        };
        let frame = encode_frame(&hello).expect("encode");
        let mut reader = FrameReader::default();
        let (head, tail) = frame.split_at(3);
        sender.write_all(head).expect("write");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            reader
                .poll::<plankton_proto::v1::PeerHello>(&mut &receiver)
                .expect("poll"),
            None
        );
        sender.write_all(tail).expect("write");
        sender.write_all(b"next").expect("write");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(reader.poll(&mut &receiver).expect("poll"), Some(hello));
        // The bytes after the frame are left in the socket.
        let mut after = [0u8; 4];
        receiver.peek(&mut after).expect("peek");
        assert_eq!(&after, b"next");

        let mut oversized = FrameReader::default();
        let mut foreign =
            TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (foreign_receiver, _) = listener.accept().expect("accept");
        foreign.write_all(b"GET / HTTP/1.1\r\n").expect("write");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let error = oversized
            .poll::<plankton_proto::v1::PeerHello>(&mut &foreign_receiver)
            .expect_err("oversized");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(!error.to_string().contains("TLS"), "{error}");

        // A TLS ClientHello sent to a side without ring TLS says so.
        let mut tls_reader = FrameReader::default();
        let mut tls_client =
            TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (tls_receiver, _) = listener.accept().expect("accept");
        tls_client
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0xc0])
            .expect("write");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let error = tls_reader
            .poll::<plankton_proto::v1::PeerHello>(&mut &tls_receiver)
            .expect_err("tls");
        assert!(error.to_string().contains("speaks TLS"), "{error}");
    }

    #[test]
    fn bf16_rounding_is_nearest_even_and_keeps_specials() {
        // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to the even 1.0.
        assert_eq!(bf16_bits_to_f32(f32_to_bf16_bits(1.0 + 2f32.powi(-8))), 1.0);
        // Just above halfway rounds up.
        let above_half = f32::from_bits((1.0f32 + 2f32.powi(-8)).to_bits() + 1);
        assert_eq!(
            bf16_bits_to_f32(f32_to_bf16_bits(above_half)),
            1.0 + 2f32.powi(-7)
        );
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: ties go up to the even one.
        assert_eq!(
            bf16_bits_to_f32(f32_to_bf16_bits(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        for exact in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            65536.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            let round_trip = bf16_bits_to_f32(f32_to_bf16_bits(exact));
            assert_eq!(round_trip.to_bits(), exact.to_bits(), "{exact}");
        }
        assert!(bf16_bits_to_f32(f32_to_bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_bits_to_f32(f32_to_bf16_bits(f32::MAX)), f32::INFINITY);
        // The relative error of one rounding is at most 2^-8 (half an ulp of bf16's 8-bit significand).
        for step in 0..10_000u32 {
            let value = 1.0e-3f32
                * (1.0 + step as f32 * 0.000_731)
                * if step % 2 == 0 { 1.0 } else { -1.0 };
            let rounded = bf16_bits_to_f32(f32_to_bf16_bits(value));
            assert!(
                ((rounded - value) / value).abs() <= 2f32.powi(-8),
                "{value} -> {rounded}"
            );
        }
    }

    #[test]
    fn operation_header_round_trips_and_rejects_garbage() {
        let header = OperationHeader {
            kind: OperationKind::Broadcast,
            sequence: 7,
            element_count: 1009,
            root: 3,
        };
        assert_eq!(OperationHeader::decode(&header.encode()), Ok(header));
        let mut corrupted = header.encode();
        corrupted[0] ^= 0xff;
        assert!(
            OperationHeader::decode(&corrupted)
                .unwrap_err()
                .contains("magic")
        );
        let mut unknown_kind = header.encode();
        unknown_kind[4] = 9;
        assert!(
            OperationHeader::decode(&unknown_kind)
                .unwrap_err()
                .contains("operation code 9")
        );
    }
}
