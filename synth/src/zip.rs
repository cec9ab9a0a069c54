//! A streaming zip writer (store method) with ZIP64 records for many entries or large offsets.
//!
//! Each member is written as a local header followed by its bytes (CRC and sizes known up front,
//! so no data descriptors); the central directory goes at the end. ZIP64 is used where the classic
//! fields overflow: more than 65,534 entries, or central directory / local header offsets at or beyond
//! 4 GiB. Timestamps are fixed so archives are byte-identical for identical content.

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::SynthError;

const LOCAL_HEADER_SIGNATURE: u32 = 0x0403_4b50;
const CENTRAL_HEADER_SIGNATURE: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIRECTORY_SIGNATURE: u32 = 0x0605_4b50;
const ZIP64_END_OF_CENTRAL_DIRECTORY_SIGNATURE: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIGNATURE: u32 = 0x0706_4b50;
const ZIP64_EXTRA_FIELD_ID: u16 = 0x0001;
const VERSION_CLASSIC: u16 = 20;
const VERSION_ZIP64: u16 = 45;
/// Made by Unix (upper byte 3), spec version 4.5.
const VERSION_MADE_BY: u16 = (3 << 8) | VERSION_ZIP64;
/// Flag bit 11: names are UTF-8.
const FLAG_UTF8_NAMES: u16 = 1 << 11;
/// 2017-06-01 00:00:00 in MS-DOS format.
const DOS_DATE: u16 = ((2017 - 1980) << 9) | (6 << 5) | 1;
const DOS_TIME: u16 = 0;
/// Regular file, rw-r--r--.
const UNIX_FILE_ATTRIBUTES: u32 = 0o100_644 << 16;
const CLASSIC_LIMIT_32: u64 = 0xFFFF_FFFF;
const CLASSIC_ENTRY_LIMIT: u64 = 0xFFFF;

struct CentralEntry {
    name: String,
    crc32: u32,
    size: u64,
    local_header_offset: u64,
}

/// Writes a stored (uncompressed) zip archive to `sink` entry by entry.
pub struct ZipStreamWriter<W> {
    sink: W,
    archive_name: String,
    offset: u64,
    entries: Vec<CentralEntry>,
    zip64_offset_threshold: u64,
}

impl<W: AsyncWrite + Unpin> ZipStreamWriter<W> {
    /// Starts an archive written to `sink`; `archive_name` only names it in errors.
    pub fn new(sink: W, archive_name: impl Into<String>) -> Self {
        Self {
            sink,
            archive_name: archive_name.into(),
            offset: 0,
            entries: Vec::new(),
            zip64_offset_threshold: CLASSIC_LIMIT_32,
        }
    }

    /// Lowers the offset from which ZIP64 records are used (to exercise them on small archives).
    #[doc(hidden)]
    pub fn with_zip64_offset_threshold(mut self, threshold: u64) -> Self {
        self.zip64_offset_threshold = threshold.min(CLASSIC_LIMIT_32);
        self
    }

    /// Gives the sink back without finishing the archive (to abort an upload).
    pub fn into_sink(self) -> W {
        self.sink
    }

    /// Entries written so far.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Appends member `name` holding `data`, stored uncompressed.
    pub async fn add_stored(&mut self, name: &str, data: &[u8]) -> Result<(), SynthError> {
        let size = data.len() as u64;
        if size >= CLASSIC_LIMIT_32 {
            return Err(self.zip_error(format!(
                "member `{name}` of {size} bytes is too large for a stored entry"
            )));
        }
        let name_length = u16::try_from(name.len()).map_err(|_| {
            self.zip_error(format!("member name of {} bytes is too long", name.len()))
        })?;
        let crc32 = crc32fast::hash(data);
        let mut header = Vec::with_capacity(30 + name.len());
        put_u32(&mut header, LOCAL_HEADER_SIGNATURE);
        put_u16(&mut header, VERSION_CLASSIC);
        put_u16(&mut header, FLAG_UTF8_NAMES);
        put_u16(&mut header, 0); // stored
        put_u16(&mut header, DOS_TIME);
        put_u16(&mut header, DOS_DATE);
        put_u32(&mut header, crc32);
        put_u32(&mut header, size as u32);
        put_u32(&mut header, size as u32);
        put_u16(&mut header, name_length);
        put_u16(&mut header, 0); // no extra field
        header.extend_from_slice(name.as_bytes());
        self.write(&header).await?;
        self.write(data).await?;
        self.entries.push(CentralEntry {
            name: name.to_string(),
            crc32,
            size,
            local_header_offset: self.offset - header.len() as u64 - size,
        });
        Ok(())
    }

    /// Writes the central directory and end records; returns the sink (not shut down) and the
    /// archive size in bytes.
    pub async fn finish(mut self) -> Result<(W, u64), SynthError> {
        let central_directory_offset = self.offset;
        let mut directory = Vec::with_capacity(64 * 1024);
        let entries = std::mem::take(&mut self.entries);
        for entry in &entries {
            let offset_overflows = entry.local_header_offset >= self.zip64_offset_threshold;
            let mut extra = Vec::new();
            if offset_overflows {
                put_u16(&mut extra, ZIP64_EXTRA_FIELD_ID);
                put_u16(&mut extra, 8);
                put_u64(&mut extra, entry.local_header_offset);
            }
            put_u32(&mut directory, CENTRAL_HEADER_SIGNATURE);
            put_u16(&mut directory, VERSION_MADE_BY);
            put_u16(
                &mut directory,
                if offset_overflows {
                    VERSION_ZIP64
                } else {
                    VERSION_CLASSIC
                },
            );
            put_u16(&mut directory, FLAG_UTF8_NAMES);
            put_u16(&mut directory, 0);
            put_u16(&mut directory, DOS_TIME);
            put_u16(&mut directory, DOS_DATE);
            put_u32(&mut directory, entry.crc32);
            put_u32(&mut directory, entry.size as u32);
            put_u32(&mut directory, entry.size as u32);
            put_u16(&mut directory, entry.name.len() as u16);
            put_u16(&mut directory, extra.len() as u16);
            put_u16(&mut directory, 0); // comment length
            put_u16(&mut directory, 0); // disk number start
            put_u16(&mut directory, 0); // internal attributes
            put_u32(&mut directory, UNIX_FILE_ATTRIBUTES);
            put_u32(
                &mut directory,
                if offset_overflows {
                    CLASSIC_LIMIT_32 as u32
                } else {
                    entry.local_header_offset as u32
                },
            );
            directory.extend_from_slice(entry.name.as_bytes());
            directory.extend_from_slice(&extra);
            if directory.len() >= 60 * 1024 {
                self.write(&directory).await?;
                directory.clear();
            }
        }
        self.write(&directory).await?;
        directory.clear();
        let central_directory_size = self.offset - central_directory_offset;
        let entry_count = entries.len() as u64;
        let needs_zip64 = entry_count >= CLASSIC_ENTRY_LIMIT
            || central_directory_offset >= self.zip64_offset_threshold
            || central_directory_size >= CLASSIC_LIMIT_32;
        let mut end_records = Vec::with_capacity(120);
        if needs_zip64 {
            let zip64_end_offset = self.offset;
            put_u32(&mut end_records, ZIP64_END_OF_CENTRAL_DIRECTORY_SIGNATURE);
            put_u64(&mut end_records, 44); // size of the rest of this record
            put_u16(&mut end_records, VERSION_MADE_BY);
            put_u16(&mut end_records, VERSION_ZIP64);
            put_u32(&mut end_records, 0); // this disk
            put_u32(&mut end_records, 0); // disk with the central directory
            put_u64(&mut end_records, entry_count);
            put_u64(&mut end_records, entry_count);
            put_u64(&mut end_records, central_directory_size);
            put_u64(&mut end_records, central_directory_offset);
            put_u32(&mut end_records, ZIP64_LOCATOR_SIGNATURE);
            put_u32(&mut end_records, 0);
            put_u64(&mut end_records, zip64_end_offset);
            put_u32(&mut end_records, 1); // total disks
        }
        let classic_count = if needs_zip64 {
            CLASSIC_ENTRY_LIMIT as u16
        } else {
            entry_count as u16
        };
        put_u32(&mut end_records, END_OF_CENTRAL_DIRECTORY_SIGNATURE);
        put_u16(&mut end_records, 0);
        put_u16(&mut end_records, 0);
        put_u16(&mut end_records, classic_count);
        put_u16(&mut end_records, classic_count);
        put_u32(
            &mut end_records,
            if needs_zip64 {
                CLASSIC_LIMIT_32 as u32
            } else {
                central_directory_size as u32
            },
        );
        put_u32(
            &mut end_records,
            if needs_zip64 {
                CLASSIC_LIMIT_32 as u32
            } else {
                central_directory_offset as u32
            },
        );
        put_u16(&mut end_records, 0); // comment length
        self.write(&end_records).await?;
        Ok((self.sink, self.offset))
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), SynthError> {
        self.sink
            .write_all(bytes)
            .await
            .map_err(|source| SynthError::Io {
                path: self.archive_name.clone(),
                source,
            })?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn zip_error(&self, message: String) -> SynthError {
        SynthError::Zip {
            path: self.archive_name.clone(),
            message,
        }
    }
}

fn put_u16(buffer: &mut Vec<u8>, value: u16) {
    buffer.extend_from_slice(&value.to_le_bytes());
}

fn put_u32(buffer: &mut Vec<u8>, value: u32) {
    buffer.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(buffer: &mut Vec<u8>, value: u64) {
    buffer.extend_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};

    async fn archive(entries: &[(String, Vec<u8>)], zip64_offset_threshold: u64) -> Vec<u8> {
        let mut writer = ZipStreamWriter::new(Vec::new(), "test.zip")
            .with_zip64_offset_threshold(zip64_offset_threshold);
        for (name, data) in entries {
            writer.add_stored(name, data).await.unwrap();
        }
        let (bytes, size) = writer.finish().await.unwrap();
        assert_eq!(bytes.len() as u64, size);
        bytes
    }

    fn read_back(bytes: Vec<u8>) -> Vec<(String, Vec<u8>)> {
        let mut reader = ::zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        (0..reader.len())
            .map(|index| {
                let mut member = reader.by_index(index).unwrap();
                let mut data = Vec::new();
                member.read_to_end(&mut data).unwrap();
                (member.name().to_string(), data)
            })
            .collect()
    }

    #[tokio::test]
    async fn classic_archive_reads_back() {
        let entries: Vec<(String, Vec<u8>)> = (0..5u8)
            .map(|index| {
                (
                    format!("imgs/{index}.jpg"),
                    vec![index; 100 + index as usize],
                )
            })
            .collect();
        let bytes = archive(&entries, u64::MAX).await;
        assert_eq!(
            &bytes[bytes.len() - 22..bytes.len() - 18],
            &END_OF_CENTRAL_DIRECTORY_SIGNATURE.to_le_bytes()
        );
        assert_eq!(read_back(bytes), entries);
    }

    #[tokio::test]
    async fn zip64_offsets_read_back() {
        let entries: Vec<(String, Vec<u8>)> = (0..6u8)
            .map(|index| (format!("imgs/{index}.jpg"), vec![index; 300]))
            .collect();
        let bytes = archive(&entries, 700).await;
        let has_zip64_end = bytes
            .windows(4)
            .any(|window| window == ZIP64_END_OF_CENTRAL_DIRECTORY_SIGNATURE.to_le_bytes());
        assert!(has_zip64_end);
        assert_eq!(read_back(bytes), entries);
    }

    #[tokio::test]
    async fn more_than_65535_entries_use_zip64_counts() {
        let entry_count = 65_600usize;
        let entries: Vec<(String, Vec<u8>)> = (0..entry_count)
            .map(|index| (format!("{index}"), vec![(index % 251) as u8]))
            .collect();
        let bytes = archive(&entries, u64::MAX).await;
        let reader = ::zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        assert_eq!(reader.len(), entry_count);
        assert!(reader.file_names().any(|name| name == "65599"));
    }
}
