//! What the ring tests share: listeners on 127.0.0.1, exact test values, and the handshake's framing.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use plankton_collective::RingListener;
use plankton_proto::v1::PeerHelloAck;
use prost::Message;

/// `world_size` listeners on 127.0.0.1 and their addresses (index = rank).
pub fn bind_listeners(world_size: usize) -> (Vec<RingListener>, Vec<String>) {
    let listeners: Vec<_> = (0..world_size)
        .map(|_| RingListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addresses = listeners
        .iter()
        .map(|listener| listener.local_addr().to_string())
        .collect();
    (listeners, addresses)
}

/// Integer-valued, so sums are exact in f32 whatever the order.
pub fn rank_values(rank: usize, length: usize) -> Vec<f32> {
    (0..length)
        .map(|index| ((index * 7 + rank * 13) % 1000) as f32 - 500.0)
        .collect()
}

/// The sum of every rank's [`rank_values`].
pub fn expected_sum(world_size: usize, length: usize) -> Vec<f32> {
    let mut sum = vec![0.0f32; length];
    for rank in 0..world_size {
        for (total, value) in sum.iter_mut().zip(rank_values(rank, length)) {
            *total += value;
        }
    }
    sum
}

/// Writes one handshake message: 4-byte little-endian length, then the protobuf.
pub fn write_frame(stream: &mut TcpStream, message: &impl Message) {
    try_write_frame(stream, message).expect("write frame");
}

/// [`write_frame`] for a peer that may already have closed the connection.
pub fn try_write_frame(stream: &mut TcpStream, message: &impl Message) -> std::io::Result<()> {
    let encoded = message.encode_to_vec();
    stream.write_all(&(encoded.len() as u32).to_le_bytes())?;
    stream.write_all(&encoded)
}

/// Reads the accepting side's answer to a hello (5 s bound).
pub fn read_ack(stream: &mut TcpStream) -> PeerHelloAck {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut length_bytes = [0u8; 4];
    stream.read_exact(&mut length_bytes).expect("ack length");
    let mut ack_bytes = vec![0u8; u32::from_le_bytes(length_bytes) as usize];
    stream.read_exact(&mut ack_bytes).expect("ack");
    PeerHelloAck::decode(ack_bytes.as_slice()).expect("decode ack")
}
