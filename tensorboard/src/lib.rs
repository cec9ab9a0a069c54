//! TensorBoard event files: scalar summaries as `Event` protobufs in TFRecord framing, kept in memory and
//! serialized whole, so that a writer on an object store (which cannot append) rewrites its file each time.
//!
//! A file is named `events.out.tfevents.<unix seconds>.<writer>` (TensorBoard only reads files whose name
//! starts with `events.out.tfevents`) and begins with the event `file_version: "brain.Event:2"`. Each record is
//! `u64 LE length`, `masked CRC32C of the length`, `data`, `masked CRC32C of the data`.
//!
//! ```
//! let mut file = plankton_tensorboard::EventFile::with_created(1_700_000_000, "rank0");
//! file.add_scalar("train/loss", 1, 2.3, 1_700_000_001.0);
//! let events = plankton_tensorboard::read_events(&file.to_bytes()).unwrap();
//! assert_eq!(events.len(), 2);
//! assert_eq!(file.name(), "events.out.tfevents.1700000000.rank0");
//! ```

#![forbid(unsafe_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

/// Every event file's name starts with this (TensorBoard ignores other files).
pub const FILE_PREFIX: &str = "events.out.tfevents";
/// The first event of every file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// The subset of `tensorflow.Event` this crate writes.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "event::What", tags = "3, 5")]
    pub what: Option<event::What>,
}

pub mod event {
    /// What an [`super::Event`] carries.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum What {
        #[prost(string, tag = "3")]
        FileVersion(String),
        #[prost(message, tag = "5")]
        Summary(super::Summary),
    }
}

/// `tensorflow.Summary`: the values of one event.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with only its `simple_value` member. In TensorFlow's proto `simple_value` is a
/// member of a oneof, so it is `optional` here: a value of 0.0 must still be written, or TensorBoard would see
/// a value with no data.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// One writer's event file, held in memory.
#[derive(Debug, Clone)]
pub struct EventFile {
    name: String,
    /// The framed `file_version` event.
    header: Vec<u8>,
    /// Framed scalar events, in the order they were added.
    scalars: Vec<FramedScalar>,
}

#[derive(Debug, Clone)]
struct FramedScalar {
    step: i64,
    record: Vec<u8>,
}

impl EventFile {
    /// A file of `writer` (`rank0`, `coordinator`, ...) created now.
    pub fn new(writer: &str) -> Self {
        let now = unix_seconds_now();
        Self::with_created(now as u64, writer)
    }

    /// A file of `writer` created at `unix_seconds`: its name stays the same as long as that time does (a
    /// writer that restarts can rewrite the same file).
    pub fn with_created(unix_seconds: u64, writer: &str) -> Self {
        let version_event = Event {
            wall_time: unix_seconds as f64,
            step: 0,
            what: Some(event::What::FileVersion(FILE_VERSION.to_string())),
        };
        EventFile {
            name: file_name(unix_seconds, writer),
            header: frame_record(&version_event.encode_to_vec()),
            scalars: Vec::new(),
        }
    }

    /// The file's name (no folder).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds one scalar (stored as a 32-bit float, as TensorBoard does) at `step`; `wall_time` in seconds since
    /// the Unix epoch.
    pub fn add_scalar(&mut self, tag: &str, step: i64, value: f64, wall_time: f64) {
        let scalar_event = Event {
            wall_time,
            step,
            what: Some(event::What::Summary(Summary {
                value: vec![SummaryValue {
                    tag: tag.to_string(),
                    simple_value: Some(value as f32),
                }],
            })),
        };
        self.scalars.push(FramedScalar {
            step,
            record: frame_record(&scalar_event.encode_to_vec()),
        });
    }

    /// Drops every scalar at `step` or later (training resumed from an earlier state redoes those steps).
    pub fn truncate_from_step(&mut self, step: i64) {
        self.scalars.retain(|scalar| scalar.step < step);
    }

    /// The step of the last scalar added.
    pub fn last_step(&self) -> Option<i64> {
        self.scalars.last().map(|scalar| scalar.step)
    }

    /// Scalar events in the file.
    pub fn scalar_count(&self) -> usize {
        self.scalars.len()
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let size = self.header.len()
            + self
                .scalars
                .iter()
                .map(|scalar| scalar.record.len())
                .sum::<usize>();
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&self.header);
        for scalar in &self.scalars {
            bytes.extend_from_slice(&scalar.record);
        }
        bytes
    }
}

/// `events.out.tfevents.<unix seconds>.<writer>`.
pub fn file_name(unix_seconds: u64, writer: &str) -> String {
    format!("{FILE_PREFIX}.{unix_seconds}.{writer}")
}

/// Seconds since the Unix epoch, as an event's `wall_time`.
pub fn unix_seconds_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}

/// One TFRecord: length, its masked CRC, the data, its masked CRC.
fn frame_record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(data.len() + 16);
    record.extend_from_slice(&length);
    record.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
    record.extend_from_slice(data);
    record.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    record
}

/// Why a file does not read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The file ends inside the record that starts at this offset.
    Truncated { offset: usize },
    /// A length or data CRC does not match at this offset.
    BadCrc { offset: usize },
    /// A record's data is not an `Event`.
    BadEvent { offset: usize, reason: String },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Truncated { offset } => write!(f, "truncated record at byte {offset}"),
            ReadError::BadCrc { offset } => {
                write!(f, "CRC mismatch in the record at byte {offset}")
            }
            ReadError::BadEvent { offset, reason } => {
                write!(f, "the record at byte {offset} is not an Event: {reason}")
            }
        }
    }
}

impl std::error::Error for ReadError {}

/// The data of every record of a TFRecord file, each CRC checked.
pub fn read_records(bytes: &[u8]) -> Result<Vec<&[u8]>, ReadError> {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let header = bytes
            .get(offset..offset + 12)
            .ok_or(ReadError::Truncated { offset })?;
        let (length_bytes, length_crc) = header.split_at(8);
        if masked_crc32c(length_bytes).to_le_bytes() != length_crc {
            return Err(ReadError::BadCrc { offset });
        }
        let length = u64::from_le_bytes(length_bytes.try_into().expect("8 bytes"));
        let data_start = offset + 12;
        let data_end = usize::try_from(length)
            .ok()
            .and_then(|length| data_start.checked_add(length))
            .ok_or(ReadError::Truncated { offset })?;
        let data = bytes
            .get(data_start..data_end)
            .ok_or(ReadError::Truncated { offset })?;
        let data_crc = bytes
            .get(data_end..data_end + 4)
            .ok_or(ReadError::Truncated { offset })?;
        if masked_crc32c(data).to_le_bytes() != data_crc {
            return Err(ReadError::BadCrc { offset });
        }
        records.push(data);
        offset = data_end + 4;
    }
    Ok(records)
}

/// Every event of an event file.
pub fn read_events(bytes: &[u8]) -> Result<Vec<Event>, ReadError> {
    let mut events = Vec::new();
    let mut offset = 0;
    for data in read_records(bytes)? {
        let decoded = Event::decode(data).map_err(|error| ReadError::BadEvent {
            offset,
            reason: error.to_string(),
        })?;
        events.push(decoded);
        offset += data.len() + 16;
    }
    Ok(events)
}

/// CRC32C rotated and offset as TFRecord stores it.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), table driven.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut index = 0;
    while index < 256 {
        let mut crc = index as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[index] = crc;
        index += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answers() {
        // The check value of CRC-32C, and RFC 3720 (iSCSI) B.4 test vectors.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&ascending), 0x46dd_794e);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn masked_crc_matches_tensorboard() {
        // Values of tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c.
        assert_eq!(masked_crc32c(&0u64.to_le_bytes()), 0x0798_0329);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn a_written_file_reads_back() {
        let mut file = EventFile::with_created(1_700_000_000, "rank0");
        file.add_scalar("train/loss", 1, 2.5, 1_700_000_001.25);
        file.add_scalar("eval/accuracy", 2, 0.0, 1_700_000_002.5);
        file.add_scalar("train/loss", 2, -1.0e-3, 1_700_000_003.0);
        assert_eq!(file.name(), "events.out.tfevents.1700000000.rank0");
        assert_eq!(file.scalar_count(), 3);
        assert_eq!(file.last_step(), Some(2));
        let bytes = file.to_bytes();

        // Framing: lengths and CRCs.
        let records = read_records(&bytes).unwrap();
        assert_eq!(records.len(), 4);
        let first_length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(first_length, records[0].len());
        let total: usize = records.iter().map(|record| record.len() + 16).sum();
        assert_eq!(total, bytes.len());

        // Events.
        let events = read_events(&bytes).unwrap();
        assert_eq!(
            events[0],
            Event {
                wall_time: 1_700_000_000.0,
                step: 0,
                what: Some(event::What::FileVersion("brain.Event:2".into())),
            }
        );
        let scalars: Vec<(String, i64, f32, f64)> = events[1..]
            .iter()
            .map(|scalar_event| match &scalar_event.what {
                Some(event::What::Summary(summary)) => {
                    assert_eq!(summary.value.len(), 1);
                    let value = &summary.value[0];
                    (
                        value.tag.clone(),
                        scalar_event.step,
                        value.simple_value.expect("a simple value, even 0.0"),
                        scalar_event.wall_time,
                    )
                }
                other => panic!("not a summary: {other:?}"),
            })
            .collect();
        assert_eq!(
            scalars,
            vec![
                ("train/loss".to_string(), 1, 2.5, 1_700_000_001.25),
                ("eval/accuracy".to_string(), 2, 0.0, 1_700_000_002.5),
                ("train/loss".to_string(), 2, -1.0e-3, 1_700_000_003.0),
            ]
        );
    }

    #[test]
    fn a_zero_value_is_encoded() {
        let mut file = EventFile::with_created(1, "w");
        file.add_scalar("x", 1, 0.0, 1.0);
        let bytes = file.to_bytes();
        let records = read_records(&bytes).unwrap();
        // Field 2 (simple_value, fixed32) present: key byte 0x15 followed by four zero bytes.
        let value_message = records[1];
        assert!(
            value_message
                .windows(5)
                .any(|window| window == [0x15, 0, 0, 0, 0]),
            "{value_message:02x?}"
        );
    }

    #[test]
    fn truncation_drops_later_steps() {
        let mut file = EventFile::with_created(1, "w");
        for step in 1..=5 {
            file.add_scalar("train/loss", step, step as f64, 1.0);
        }
        file.truncate_from_step(3);
        assert_eq!(file.scalar_count(), 2);
        assert_eq!(file.last_step(), Some(2));
        assert_eq!(read_events(&file.to_bytes()).unwrap().len(), 3);
    }

    #[test]
    fn corruption_is_detected() {
        let mut file = EventFile::with_created(1, "w");
        file.add_scalar("train/loss", 1, 1.0, 1.0);
        let bytes = file.to_bytes();
        let mut flipped = bytes.clone();
        let last = flipped.len() - 6;
        flipped[last] ^= 1;
        assert!(matches!(
            read_records(&flipped),
            Err(ReadError::BadCrc { .. })
        ));
        let mut length_flipped = bytes.clone();
        length_flipped[0] ^= 1;
        assert_eq!(
            read_records(&length_flipped),
            Err(ReadError::BadCrc { offset: 0 })
        );
        assert!(matches!(
            read_records(&bytes[..bytes.len() - 1]),
            Err(ReadError::Truncated { .. })
        ));
    }
}
