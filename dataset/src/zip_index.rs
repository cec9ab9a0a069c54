//! Reads members of a (ZIP64-capable) zip archive in an object store with ranged GETs, without extracting it.

use std::collections::HashMap;
use std::io::Read;

use bytes::Bytes;

use crate::error::DatasetError;
use crate::storage::StoreLocation;
use crate::summary::SkippedItem;

const END_OF_CENTRAL_DIRECTORY_SIGNATURE: u32 = 0x0605_4b50;
const ZIP64_END_OF_CENTRAL_DIRECTORY_SIGNATURE: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIGNATURE: u32 = 0x0706_4b50;
const CENTRAL_HEADER_SIGNATURE: u32 = 0x0201_4b50;
const LOCAL_HEADER_SIGNATURE: u32 = 0x0403_4b50;
const END_OF_CENTRAL_DIRECTORY_LEN: usize = 22;
const ZIP64_LOCATOR_LEN: usize = 20;
const ZIP64_END_OF_CENTRAL_DIRECTORY_LEN: usize = 56;
const CENTRAL_HEADER_LEN: usize = 46;
const LOCAL_HEADER_LEN: u64 = 30;
const MAX_COMMENT_LEN: usize = 0xFFFF;
const ZIP64_EXTRA_FIELD_ID: u16 = 0x0001;
/// Members larger than this once inflated are refused (an image is a few KiB; this stops zip bombs).
pub const MAX_MEMBER_UNCOMPRESSED_BYTES: u64 = 256 * 1024 * 1024;

/// Compression of a member.
pub const METHOD_STORED: u16 = 0;
pub const METHOD_DEFLATED: u16 = 8;

/// Where one image member lies in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipMember {
    pub name: String,
    pub local_header_offset: u64,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub method: u16,
    pub crc32: u32,
    pub flags: u16,
    /// End (exclusive) of the byte range that surely holds the local header and data of this member.
    pub range_end: u64,
}

/// The central directory of an image archive, parsed once: objid -> member.
#[derive(Debug, Clone)]
pub struct ZipIndex {
    /// The archive's path relative to the dataset root (`imgs.zip`).
    pub relative_path: String,
    pub archive_url: String,
    pub archive_size: u64,
    /// True when the archive carries a ZIP64 end-of-central-directory record.
    pub is_zip64: bool,
    /// Entries in the central directory, images or not.
    pub total_entries: u64,
    members: HashMap<i64, ZipMember>,
    /// Entries that are not `<objid>.jpg` files, or duplicate objids.
    pub ignored_entries: Vec<SkippedItem>,
}

/// Little-endian reads that fail instead of panicking on short input.
struct LittleEndianReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> LittleEndianReader<'a> {
    fn new(bytes: &'a [u8], position: usize) -> Self {
        LittleEndianReader { bytes, position }
    }

    fn take(&mut self, length: usize) -> Option<&'a [u8]> {
        let end = self.position.checked_add(length)?;
        let slice = self.bytes.get(self.position..end)?;
        self.position = end;
        Some(slice)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|slice| u16::from_le_bytes([slice[0], slice[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|slice| u32::from_le_bytes([slice[0], slice[1], slice[2], slice[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|slice| {
            let mut array = [0u8; 8];
            array.copy_from_slice(slice);
            u64::from_le_bytes(array)
        })
    }
}

/// Where the central directory is, read from the end of the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CentralDirectoryLocation {
    pub entries: u64,
    pub size: u64,
    pub offset: u64,
    pub is_zip64: bool,
}

/// What the tail of the archive says: either the central directory, or that the ZIP64 record at
/// `zip64_record_offset` must be read next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailParse {
    Classic(CentralDirectoryLocation),
    NeedsZip64Record { zip64_record_offset: u64 },
}

/// Finds the end-of-central-directory record in `tail` (the last bytes of the archive).
pub fn parse_archive_tail(tail: &[u8]) -> Result<TailParse, String> {
    if tail.len() < END_OF_CENTRAL_DIRECTORY_LEN {
        return Err(format!(
            "archive of {} bytes is too short to be a zip",
            tail.len()
        ));
    }
    let signature = END_OF_CENTRAL_DIRECTORY_SIGNATURE.to_le_bytes();
    let end_record_position = (0..=tail.len() - END_OF_CENTRAL_DIRECTORY_LEN)
        .rev()
        .find(|&position| {
            tail[position..position + 4] == signature && {
                let comment_length =
                    u16::from_le_bytes([tail[position + 20], tail[position + 21]]) as usize;
                position + END_OF_CENTRAL_DIRECTORY_LEN + comment_length <= tail.len()
            }
        })
        .ok_or("no end-of-central-directory record (not a zip archive, or truncated)")?;
    let mut reader = LittleEndianReader::new(tail, end_record_position + 4);
    let truncated = || "truncated end-of-central-directory record".to_string();
    let _disk_number = reader.u16().ok_or_else(truncated)?;
    let _central_directory_disk = reader.u16().ok_or_else(truncated)?;
    let _entries_on_disk = reader.u16().ok_or_else(truncated)?;
    let entries = reader.u16().ok_or_else(truncated)?;
    let size = reader.u32().ok_or_else(truncated)?;
    let offset = reader.u32().ok_or_else(truncated)?;

    if end_record_position >= ZIP64_LOCATOR_LEN {
        let locator_position = end_record_position - ZIP64_LOCATOR_LEN;
        let mut locator = LittleEndianReader::new(tail, locator_position);
        if locator.u32() == Some(ZIP64_LOCATOR_SIGNATURE) {
            let _disk = locator.u32().ok_or_else(truncated)?;
            let zip64_record_offset = locator.u64().ok_or_else(truncated)?;
            return Ok(TailParse::NeedsZip64Record {
                zip64_record_offset,
            });
        }
    }
    if entries == 0xFFFF || size == 0xFFFF_FFFF || offset == 0xFFFF_FFFF {
        return Err(
            "archive needs ZIP64 but has no ZIP64 end-of-central-directory locator".to_string(),
        );
    }
    Ok(TailParse::Classic(CentralDirectoryLocation {
        entries: u64::from(entries),
        size: u64::from(size),
        offset: u64::from(offset),
        is_zip64: false,
    }))
}

/// Parses the 56-byte ZIP64 end-of-central-directory record.
pub fn parse_zip64_record(record: &[u8]) -> Result<CentralDirectoryLocation, String> {
    let mut reader = LittleEndianReader::new(record, 0);
    let truncated = || "truncated ZIP64 end-of-central-directory record".to_string();
    if reader.u32().ok_or_else(truncated)? != ZIP64_END_OF_CENTRAL_DIRECTORY_SIGNATURE {
        return Err("bad ZIP64 end-of-central-directory signature".to_string());
    }
    let _record_size = reader.u64().ok_or_else(truncated)?;
    let _version_made_by = reader.u16().ok_or_else(truncated)?;
    let _version_needed = reader.u16().ok_or_else(truncated)?;
    let _disk_number = reader.u32().ok_or_else(truncated)?;
    let _central_directory_disk = reader.u32().ok_or_else(truncated)?;
    let _entries_on_disk = reader.u64().ok_or_else(truncated)?;
    let entries = reader.u64().ok_or_else(truncated)?;
    let size = reader.u64().ok_or_else(truncated)?;
    let offset = reader.u64().ok_or_else(truncated)?;
    Ok(CentralDirectoryLocation {
        entries,
        size,
        offset,
        is_zip64: true,
    })
}

/// One raw central-directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralDirectoryEntry {
    pub name: String,
    pub flags: u16,
    pub method: u16,
    pub crc32: u32,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub local_header_offset: u64,
}

/// Parses `expected_entries` central-directory headers from `directory`, resolving ZIP64 extra fields.
pub fn parse_central_directory(
    directory: &[u8],
    expected_entries: u64,
) -> Result<Vec<CentralDirectoryEntry>, String> {
    let capacity =
        usize::try_from(expected_entries.min(directory.len() as u64 / CENTRAL_HEADER_LEN as u64))
            .unwrap_or(0);
    let mut entries = Vec::with_capacity(capacity);
    let mut reader = LittleEndianReader::new(directory, 0);
    for entry_number in 0..expected_entries {
        let truncated = || format!("central directory truncated at entry {entry_number}");
        let signature = reader.u32().ok_or_else(truncated)?;
        if signature != CENTRAL_HEADER_SIGNATURE {
            return Err(format!(
                "bad central directory header signature at entry {entry_number}"
            ));
        }
        let _version_made_by = reader.u16().ok_or_else(truncated)?;
        let _version_needed = reader.u16().ok_or_else(truncated)?;
        let flags = reader.u16().ok_or_else(truncated)?;
        let method = reader.u16().ok_or_else(truncated)?;
        let _modified_time = reader.u16().ok_or_else(truncated)?;
        let _modified_date = reader.u16().ok_or_else(truncated)?;
        let crc32 = reader.u32().ok_or_else(truncated)?;
        let compressed_size_32 = reader.u32().ok_or_else(truncated)?;
        let uncompressed_size_32 = reader.u32().ok_or_else(truncated)?;
        let name_length = reader.u16().ok_or_else(truncated)? as usize;
        let extra_length = reader.u16().ok_or_else(truncated)? as usize;
        let comment_length = reader.u16().ok_or_else(truncated)? as usize;
        let disk_start_16 = reader.u16().ok_or_else(truncated)?;
        let _internal_attributes = reader.u16().ok_or_else(truncated)?;
        let _external_attributes = reader.u32().ok_or_else(truncated)?;
        let local_header_offset_32 = reader.u32().ok_or_else(truncated)?;
        let name_bytes = reader.take(name_length).ok_or_else(truncated)?;
        let extra = reader.take(extra_length).ok_or_else(truncated)?;
        reader.take(comment_length).ok_or_else(truncated)?;

        let mut uncompressed_size = u64::from(uncompressed_size_32);
        let mut compressed_size = u64::from(compressed_size_32);
        let mut local_header_offset = u64::from(local_header_offset_32);
        let needs_zip64 = uncompressed_size_32 == 0xFFFF_FFFF
            || compressed_size_32 == 0xFFFF_FFFF
            || local_header_offset_32 == 0xFFFF_FFFF
            || disk_start_16 == 0xFFFF;
        if needs_zip64 {
            let mut extra_reader = LittleEndianReader::new(extra, 0);
            let mut found = false;
            while let (Some(field_id), Some(field_length)) =
                (extra_reader.u16(), extra_reader.u16())
            {
                let field = extra_reader
                    .take(field_length as usize)
                    .ok_or_else(truncated)?;
                if field_id != ZIP64_EXTRA_FIELD_ID {
                    continue;
                }
                found = true;
                let mut field_reader = LittleEndianReader::new(field, 0);
                let bad_field = || format!("short ZIP64 extra field at entry {entry_number}");
                if uncompressed_size_32 == 0xFFFF_FFFF {
                    uncompressed_size = field_reader.u64().ok_or_else(bad_field)?;
                }
                if compressed_size_32 == 0xFFFF_FFFF {
                    compressed_size = field_reader.u64().ok_or_else(bad_field)?;
                }
                if local_header_offset_32 == 0xFFFF_FFFF {
                    local_header_offset = field_reader.u64().ok_or_else(bad_field)?;
                }
                break;
            }
            if !found {
                return Err(format!(
                    "entry {entry_number} needs a ZIP64 extra field but has none"
                ));
            }
        }
        entries.push(CentralDirectoryEntry {
            name: String::from_utf8_lossy(name_bytes).into_owned(),
            flags,
            method,
            crc32,
            compressed_size,
            uncompressed_size,
            local_header_offset,
        });
    }
    Ok(entries)
}

/// The objid of an image member named `.../<objid>.jpg` (or `.jpeg`), if it is one.
pub fn objid_of_image_name(name: &str) -> Option<i64> {
    let file_name = name.rsplit('/').next()?;
    if name.starts_with("__MACOSX/") || file_name.starts_with("._") {
        return None;
    }
    let (stem, extension) = file_name.rsplit_once('.')?;
    if !(extension.eq_ignore_ascii_case("jpg") || extension.eq_ignore_ascii_case("jpeg")) {
        return None;
    }
    if stem.is_empty()
        || !stem
            .bytes()
            .all(|byte| byte.is_ascii_digit() || byte == b'-')
    {
        return None;
    }
    stem.parse().ok()
}

impl ZipIndex {
    /// Reads the end records and the central directory of the archive `relative_path` with ranged GETs.
    pub async fn open(
        location: &StoreLocation,
        relative_path: &str,
    ) -> Result<ZipIndex, DatasetError> {
        let archive_url = location.object_url(relative_path);
        let zip_error = |reason: String| DatasetError::Zip {
            object: archive_url.clone(),
            reason,
        };
        let archive_size = location.size_of(relative_path).await?;
        let tail_length = archive_size
            .min((END_OF_CENTRAL_DIRECTORY_LEN + MAX_COMMENT_LEN + ZIP64_LOCATOR_LEN) as u64);
        let tail = location
            .get_range(relative_path, archive_size - tail_length..archive_size)
            .await?;
        let directory_location = match parse_archive_tail(&tail).map_err(zip_error)? {
            TailParse::Classic(directory_location) => directory_location,
            TailParse::NeedsZip64Record {
                zip64_record_offset,
            } => {
                let record_end = zip64_record_offset + ZIP64_END_OF_CENTRAL_DIRECTORY_LEN as u64;
                if record_end > archive_size {
                    return Err(zip_error(format!(
                        "ZIP64 record offset {zip64_record_offset} is past the end"
                    )));
                }
                let record = location
                    .get_range(relative_path, zip64_record_offset..record_end)
                    .await?;
                parse_zip64_record(&record).map_err(zip_error)?
            }
        };
        let directory_end = directory_location
            .offset
            .checked_add(directory_location.size)
            .filter(|end| *end <= archive_size)
            .ok_or_else(|| {
                zip_error("central directory lies past the end of the archive".to_string())
            })?;
        let directory = if directory_location.size == 0 {
            Bytes::new()
        } else {
            location
                .get_range(relative_path, directory_location.offset..directory_end)
                .await?
        };
        let entries_expected = directory_location.entries;
        let entries = tokio::task::spawn_blocking(move || {
            parse_central_directory(&directory, entries_expected)
        })
        .await
        .map_err(|error| zip_error(format!("parse task failed: {error}")))?
        .map_err(zip_error)?;
        let index = ZipIndex::from_entries(
            relative_path,
            &archive_url,
            archive_size,
            directory_location,
            entries,
        );
        tracing::info!(
            archive = %archive_url,
            entries = index.total_entries,
            images = index.members.len(),
            ignored = index.ignored_entries.len(),
            zip64 = index.is_zip64,
            "image archive indexed"
        );
        Ok(index)
    }

    /// Builds the index from parsed entries; computes each member's safe byte range.
    pub fn from_entries(
        relative_path: &str,
        archive_url: &str,
        archive_size: u64,
        directory_location: CentralDirectoryLocation,
        entries: Vec<CentralDirectoryEntry>,
    ) -> ZipIndex {
        let mut header_offsets: Vec<u64> = entries
            .iter()
            .map(|entry| entry.local_header_offset)
            .collect();
        header_offsets.sort_unstable();
        header_offsets.dedup();
        let total_entries = entries.len() as u64;
        let mut members = HashMap::with_capacity(entries.len());
        let mut ignored_entries = Vec::new();
        for entry in entries {
            if entry.name.ends_with('/') {
                continue;
            }
            let Some(objid) = objid_of_image_name(&entry.name) else {
                ignored_entries.push(SkippedItem {
                    location: format!("{relative_path}:{}", entry.name),
                    reason: "not an <objid>.jpg image".to_string(),
                });
                continue;
            };
            if members.contains_key(&objid) {
                ignored_entries.push(SkippedItem {
                    location: format!("{relative_path}:{}", entry.name),
                    reason: format!("duplicate image for objid {objid}"),
                });
                continue;
            }
            let header_after = header_offsets
                .get(header_offsets.partition_point(|offset| *offset <= entry.local_header_offset))
                .copied();
            let directory_after = Some(directory_location.offset)
                .filter(|offset| *offset > entry.local_header_offset);
            let next_boundary = [header_after, directory_after]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(archive_size);
            let widest_member_end = entry
                .local_header_offset
                .saturating_add(LOCAL_HEADER_LEN + 2 * 0xFFFF)
                .saturating_add(entry.compressed_size);
            let range_end = next_boundary.min(widest_member_end).min(archive_size);
            members.insert(
                objid,
                ZipMember {
                    name: entry.name,
                    local_header_offset: entry.local_header_offset,
                    compressed_size: entry.compressed_size,
                    uncompressed_size: entry.uncompressed_size,
                    method: entry.method,
                    crc32: entry.crc32,
                    flags: entry.flags,
                    range_end,
                },
            );
        }
        ZipIndex {
            relative_path: relative_path.to_string(),
            archive_url: archive_url.to_string(),
            archive_size,
            is_zip64: directory_location.is_zip64,
            total_entries,
            members,
            ignored_entries,
        }
    }

    /// The member holding the image of `objid`.
    pub fn member(&self, objid: i64) -> Option<&ZipMember> {
        self.members.get(&objid)
    }

    /// Number of image members.
    pub fn image_count(&self) -> usize {
        self.members.len()
    }

    /// Objids of all image members, sorted.
    pub fn objids(&self) -> Vec<i64> {
        let mut objids: Vec<i64> = self.members.keys().copied().collect();
        objids.sort_unstable();
        objids
    }

    /// Fetches and inflates the image of `objid` with one ranged GET.
    pub async fn fetch(&self, location: &StoreLocation, objid: i64) -> Result<Bytes, DatasetError> {
        let member = self
            .member(objid)
            .ok_or_else(|| DatasetError::ImageNotFound {
                objid,
                object: format!("{}:{}", self.archive_url, image_member_hint(objid)),
            })?;
        let member_url = format!("{}:{}", self.archive_url, member.name);
        let zip_error = |reason: String| DatasetError::Zip {
            object: member_url.clone(),
            reason,
        };
        if member.flags & 1 != 0 {
            return Err(zip_error("member is encrypted".to_string()));
        }
        if member.uncompressed_size > MAX_MEMBER_UNCOMPRESSED_BYTES {
            return Err(zip_error(format!(
                "member inflates to {} bytes, over the limit",
                member.uncompressed_size
            )));
        }
        if member.range_end <= member.local_header_offset {
            return Err(zip_error("member has an empty byte range".to_string()));
        }
        let raw = location
            .get_range(
                &self.relative_path,
                member.local_header_offset..member.range_end,
            )
            .await?;
        extract_member(&raw, member).map_err(zip_error)
    }
}

fn image_member_hint(objid: i64) -> String {
    format!("{}/{objid}.jpg", crate::layout::IMAGES_DIR)
}

/// Extracts a member's data from `raw`, which starts at its local header.
pub fn extract_member(raw: &[u8], member: &ZipMember) -> Result<Bytes, String> {
    let mut reader = LittleEndianReader::new(raw, 0);
    let truncated = || "member range ends inside its local header".to_string();
    if reader.u32().ok_or_else(truncated)? != LOCAL_HEADER_SIGNATURE {
        return Err("bad local header signature".to_string());
    }
    reader.take(22).ok_or_else(truncated)?;
    let name_length = reader.u16().ok_or_else(truncated)? as usize;
    let extra_length = reader.u16().ok_or_else(truncated)? as usize;
    reader
        .take(name_length + extra_length)
        .ok_or_else(truncated)?;
    let compressed_length = usize::try_from(member.compressed_size)
        .map_err(|_| "member too large for this platform".to_string())?;
    let data = reader
        .take(compressed_length)
        .ok_or("member data is truncated")?;
    let inflated = match member.method {
        METHOD_STORED => data.to_vec(),
        METHOD_DEFLATED => {
            let mut inflated =
                Vec::with_capacity(usize::try_from(member.uncompressed_size).unwrap_or(0));
            flate2::read::DeflateDecoder::new(data)
                .take(member.uncompressed_size.saturating_add(1))
                .read_to_end(&mut inflated)
                .map_err(|error| format!("cannot inflate: {error}"))?;
            inflated
        }
        other => return Err(format!("unsupported compression method {other}")),
    };
    if inflated.len() as u64 != member.uncompressed_size {
        return Err(format!(
            "inflated to {} bytes, central directory says {}",
            inflated.len(),
            member.uncompressed_size
        ));
    }
    let actual_crc32 = crc32fast::hash(&inflated);
    if actual_crc32 != member.crc32 {
        return Err(format!(
            "CRC-32 mismatch: {actual_crc32:08x} != {:08x}",
            member.crc32
        ));
    }
    Ok(Bytes::from(inflated))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One central-directory header whose sizes and offset live in a ZIP64 extra field.
    fn zip64_central_entry(name: &str, uncompressed: u64, compressed: u64, offset: u64) -> Vec<u8> {
        let mut extra = Vec::new();
        extra.extend_from_slice(&ZIP64_EXTRA_FIELD_ID.to_le_bytes());
        extra.extend_from_slice(&24u16.to_le_bytes());
        for value in [uncompressed, compressed, offset] {
            extra.extend_from_slice(&value.to_le_bytes());
        }
        let mut entry = Vec::new();
        entry.extend_from_slice(&CENTRAL_HEADER_SIGNATURE.to_le_bytes());
        entry.extend_from_slice(&[45, 0, 45, 0, 0, 0]); // made by, needed, flags
        entry.extend_from_slice(&METHOD_DEFLATED.to_le_bytes());
        entry.extend_from_slice(&[0, 0, 0, 0]); // time, date
        entry.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        entry.extend_from_slice(&u32::MAX.to_le_bytes());
        entry.extend_from_slice(&u32::MAX.to_le_bytes());
        entry.extend_from_slice(&(name.len() as u16).to_le_bytes());
        entry.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        entry.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // comment len, disk, internal, external
        entry.extend_from_slice(&u32::MAX.to_le_bytes());
        entry.extend_from_slice(name.as_bytes());
        entry.extend_from_slice(&extra);
        entry
    }

    #[test]
    fn zip64_extra_fields_give_sizes_and_offsets() {
        let mut directory =
            zip64_central_entry("imgs/7.jpg", 5_000_000_000, 4_900_000_000, 6_000_000_000);
        directory.extend(zip64_central_entry("imgs/8.jpg", 10, 9, 7_000_000_000));
        let entries = parse_central_directory(&directory, 2).expect("parse");
        assert_eq!(entries[0].uncompressed_size, 5_000_000_000);
        assert_eq!(entries[0].compressed_size, 4_900_000_000);
        assert_eq!(entries[0].local_header_offset, 6_000_000_000);
        assert_eq!(entries[1].local_header_offset, 7_000_000_000);
        assert_eq!(entries[1].crc32, 0xDEAD_BEEF);
        assert!(
            parse_central_directory(&directory, 3)
                .unwrap_err()
                .contains("entry 2")
        );
        assert!(parse_central_directory(&directory[..directory.len() - 5], 2).is_err());
    }

    #[test]
    fn image_names_map_to_objids() {
        assert_eq!(objid_of_image_name("imgs/123.jpg"), Some(123));
        assert_eq!(objid_of_image_name("flowcam/imgs/45.JPG"), Some(45));
        assert_eq!(objid_of_image_name("9.jpeg"), Some(9));
        assert_eq!(objid_of_image_name("__MACOSX/imgs/._12.jpg"), None);
        assert_eq!(objid_of_image_name("imgs/12a.jpg"), None);
        assert_eq!(objid_of_image_name("imgs/12.png"), None);
        assert_eq!(objid_of_image_name("imgs/"), None);
    }

    #[test]
    fn tail_without_end_record_is_an_error() {
        assert!(parse_archive_tail(b"short").is_err());
        assert!(parse_archive_tail(&[0u8; 100]).is_err());
    }
}
