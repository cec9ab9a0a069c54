//! Test harness: in-process TCP rings (one thread per rank) and synthetic batches.
#![allow(dead_code)]

use std::time::Duration;

use plankton_collective::{RingAbort, RingAllReduce, RingConfig, RingListener};
use plankton_trainer::{IMAGE_LEN, ShardData};

/// One rank's seat in a ring being formed: listener bound, every address known.
pub struct RingMember {
    pub rank: usize,
    generation: u32,
    listener: RingListener,
    addresses: Vec<String>,
}

/// The members of generation `generation` of a ring of `world_size` ranks over 127.0.0.1; each
/// establishes inside its own thread.
pub fn ring_members(world_size: usize, generation: u32) -> Vec<RingMember> {
    let listeners: Vec<RingListener> = (0..world_size)
        .map(|_| RingListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addresses: Vec<String> = listeners
        .iter()
        .map(|listener| listener.local_addr().to_string())
        .collect();
    listeners
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| RingMember {
            rank,
            generation,
            listener,
            addresses: addresses.clone(),
        })
        .collect()
}

impl RingMember {
    pub fn establish(&self) -> RingAllReduce {
        let config = RingConfig {
            connect_timeout: Duration::from_secs(20),
            io_timeout: Duration::from_secs(60),
            chunk_bytes: 64 * 1024,
            ..Default::default()
        };
        RingAllReduce::establish(
            &self.listener,
            "trainer-test",
            self.generation,
            self.rank,
            &self.addresses,
            &config,
            &RingAbort::new(),
        )
        .unwrap()
    }
}

/// `count` random images with labels below `num_classes` (a linear congruential generator).
pub fn random_batch(count: usize, num_classes: usize, seed: u64) -> (Vec<u8>, Vec<u32>) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let images = (0..count * IMAGE_LEN).map(|_| next() as u8).collect();
    let labels = (0..count).map(|_| next() % num_classes as u32).collect();
    (images, labels)
}

/// A shard of `count` random images.
pub fn random_shard(count: usize, num_classes: usize, seed: u64) -> ShardData {
    let (images, labels) = random_batch(count, num_classes, seed);
    ShardData {
        images,
        labels,
        ..ShardData::default()
    }
}

pub fn max_abs_difference(left: &[f32], right: &[f32]) -> f32 {
    assert_eq!(left.len(), right.len());
    left.iter()
        .zip(right)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}
