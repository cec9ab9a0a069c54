//! What a reader skipped or repaired: bad input is counted and named, never a panic or an abort.

use serde::{Deserialize, Serialize};

/// Only the first few skipped items of one read are logged at `warn`; the rest at `debug`.
const WARN_LOG_LIMIT: usize = 25;

/// One piece of input that was skipped (or a value read as missing), with where it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedItem {
    /// `meta.csv:17`, `features_native.csv:9`, `imgs/123.jpg`, ...
    pub location: String,
    pub reason: String,
}

impl std::fmt::Display for SkippedItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

/// Counts of one read of a table or of the images.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadSummary {
    /// Data rows (or objects) seen, good or bad.
    pub rows_read: u64,
    /// Rows (or objects) kept.
    pub rows_kept: u64,
    /// Rows (or objects) dropped, each with its location.
    pub skipped: Vec<SkippedItem>,
    /// Values that were present but invalid (non-numeric, infinite) and were read as missing.
    pub invalid_values: Vec<SkippedItem>,
    /// Values that were empty or NaN (expected in the real features, so not logged one by one).
    pub missing_values: u64,
}

impl ReadSummary {
    /// Records a dropped row or object and logs it (the first few at `warn`).
    pub fn skip(&mut self, location: impl Into<String>, reason: impl Into<String>) {
        let item = SkippedItem {
            location: location.into(),
            reason: reason.into(),
        };
        if self.skipped.len() < WARN_LOG_LIMIT {
            tracing::warn!(location = %item.location, reason = %item.reason, "skipping bad input");
        } else {
            tracing::debug!(location = %item.location, reason = %item.reason, "skipping bad input");
        }
        self.skipped.push(item);
    }

    /// Records a value that was read as missing because it was invalid.
    pub fn invalid_value(&mut self, location: impl Into<String>, reason: impl Into<String>) {
        let item = SkippedItem {
            location: location.into(),
            reason: reason.into(),
        };
        if self.invalid_values.len() < WARN_LOG_LIMIT {
            tracing::warn!(location = %item.location, reason = %item.reason, "invalid value read as missing");
        } else {
            tracing::debug!(location = %item.location, reason = %item.reason, "invalid value read as missing");
        }
        self.invalid_values.push(item);
    }

    /// Logs a one-line summary of the read at `info` (and at `warn` when something was skipped).
    pub fn log(&self, object: &str) {
        let skipped = self.skipped.len();
        let invalid_values = self.invalid_values.len();
        if skipped > 0 || invalid_values > 0 {
            tracing::warn!(
                object,
                rows_read = self.rows_read,
                rows_kept = self.rows_kept,
                skipped,
                invalid_values,
                missing_values = self.missing_values,
                "read finished with skipped input"
            );
        } else {
            tracing::info!(
                object,
                rows_read = self.rows_read,
                rows_kept = self.rows_kept,
                missing_values = self.missing_values,
                "read finished"
            );
        }
    }
}

/// Reads the next row with exactly `expected_fields` fields into `record`, skipping (and recording in `summary`)
/// unreadable rows and rows of the wrong width. Returns the row's `file:line`, or `None` at the end of the file.
pub(crate) fn next_well_formed_row<R: std::io::Read>(
    reader: &mut csv::Reader<R>,
    record: &mut csv::ByteRecord,
    file_name: &str,
    expected_fields: usize,
    summary: &mut ReadSummary,
) -> Option<String> {
    loop {
        let line = reader.position().line() + 1;
        match reader.read_byte_record(record) {
            Ok(false) => return None,
            Ok(true) => {}
            Err(error) => {
                summary.rows_read += 1;
                let error_line = error.position().map_or(line, |position| position.line());
                summary.skip(
                    format!("{file_name}:{error_line}"),
                    format!("unreadable row: {error}"),
                );
                continue;
            }
        }
        summary.rows_read += 1;
        let line = record.position().map_or(line, |position| position.line());
        let location = format!("{file_name}:{line}");
        if record.len() != expected_fields {
            summary.skip(
                location,
                format!("expected {expected_fields} fields, found {}", record.len()),
            );
            continue;
        }
        return Some(location);
    }
}

/// A flexible CSV reader over `bytes` and its trimmed header names; a bad header is an error naming `file_name`.
pub(crate) fn open_csv<'a>(
    file_name: &str,
    bytes: &'a [u8],
) -> Result<(csv::Reader<&'a [u8]>, Vec<String>), crate::error::DatasetError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .from_reader(bytes);
    let header = reader
        .byte_headers()
        .map_err(|error| crate::error::DatasetError::Csv {
            object: file_name.to_string(),
            reason: format!("bad header: {error}"),
        })?
        .clone();
    let header_names = header
        .iter()
        .map(|name| String::from_utf8_lossy(name).trim().to_string())
        .collect();
    Ok((reader, header_names))
}
