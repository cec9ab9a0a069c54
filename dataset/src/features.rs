//! Reads the native features (`features_native.csv` or `.csv.gz`); missing or invalid values read as `None`.

use std::collections::HashSet;
use std::io::Read;

use crate::error::DatasetError;
use crate::layout::{FEATURES_FILE, FEATURES_GZ_FILE, NATIVE_FEATURE_COLUMNS};
use crate::meta::is_missing_cell;
use crate::storage::StoreLocation;
use crate::summary::{ReadSummary, next_well_formed_row, open_csv};

/// Feature rows keyed by objid, values in `columns` order.
#[derive(Debug, Clone, Default)]
pub struct FeatureTable {
    /// Feature names in file order (`objid` excluded).
    pub columns: Vec<String>,
    pub rows: Vec<(i64, Vec<Option<f32>>)>,
    pub summary: ReadSummary,
}

impl FeatureTable {
    /// True when the columns are exactly the 64 native features in the reference order.
    pub fn has_native_columns(&self) -> bool {
        self.columns
            .iter()
            .map(String::as_str)
            .eq(NATIVE_FEATURE_COLUMNS.iter().copied())
    }
}

/// Largest decompressed `features_native.csv.gz` read (the reference's 243,610 rows of 64 values are ~150 MB):
/// a larger stream is refused before it costs more memory (a decompression bomb, or not a feature file).
pub const MAX_DECOMPRESSED_FEATURES_BYTES: u64 = 2 << 30;

/// The gzip stream `compressed` (members concatenated), refused once it would exceed `limit` bytes.
fn gunzip_bounded(compressed: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
    let mut decompressed = Vec::with_capacity(compressed.len().saturating_mul(4));
    flate2::read::MultiGzDecoder::new(compressed)
        .take(limit + 1)
        .read_to_end(&mut decompressed)?;
    if decompressed.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("decompresses to more than {limit} bytes"),
        ));
    }
    Ok(decompressed)
}

/// Reads `features_native.csv`, or `features_native.csv.gz` when the plain file is absent.
pub async fn read_features(location: &StoreLocation) -> Result<FeatureTable, DatasetError> {
    let (file_name, raw_bytes) = match location.get_bytes(FEATURES_FILE).await {
        Ok(bytes) => (FEATURES_FILE, bytes),
        Err(DatasetError::NotFound { .. }) => match location.get_bytes(FEATURES_GZ_FILE).await {
            Ok(bytes) => (FEATURES_GZ_FILE, bytes),
            Err(DatasetError::NotFound { .. }) => {
                return Err(DatasetError::NotFound {
                    object: format!(
                        "{} (nor {FEATURES_GZ_FILE})",
                        location.object_url(FEATURES_FILE)
                    ),
                });
            }
            Err(other) => return Err(other),
        },
        Err(other) => return Err(other),
    };
    let object_url = location.object_url(file_name);
    let task_object = object_url.clone();
    let table = tokio::task::spawn_blocking(move || {
        let csv_bytes = if file_name == FEATURES_GZ_FILE {
            gunzip_bounded(&raw_bytes, MAX_DECOMPRESSED_FEATURES_BYTES).map_err(|source| {
                DatasetError::Decompress {
                    object: task_object.clone(),
                    source,
                }
            })?
        } else {
            raw_bytes.to_vec()
        };
        parse_features_csv(file_name, &csv_bytes)
    })
    .await
    .map_err(|error| DatasetError::Task {
        object: object_url.clone(),
        reason: error.to_string(),
    })??;
    if !table.has_native_columns() {
        tracing::warn!(object = %object_url, columns = table.columns.len(), "feature columns differ from the native 64 in reference order");
    }
    table.summary.log(&object_url);
    Ok(table)
}

/// Parses feature CSV bytes; `file_name` names it in locations (`features_native.csv:LINE`).
pub fn parse_features_csv(file_name: &str, bytes: &[u8]) -> Result<FeatureTable, DatasetError> {
    let (mut reader, header_names) = open_csv(file_name, bytes)?;
    let objid_column = header_names
        .iter()
        .position(|name| name == "objid")
        .ok_or_else(|| DatasetError::MissingColumn {
            object: file_name.to_string(),
            column: "objid".to_string(),
        })?;
    let feature_columns: Vec<usize> = (0..header_names.len())
        .filter(|index| *index != objid_column)
        .collect();
    let mut table = FeatureTable {
        columns: feature_columns
            .iter()
            .map(|index| header_names[*index].clone())
            .collect(),
        ..FeatureTable::default()
    };
    let mut seen_objids = HashSet::new();
    let mut record = csv::ByteRecord::new();
    while let Some(location) = next_well_formed_row(
        &mut reader,
        &mut record,
        file_name,
        header_names.len(),
        &mut table.summary,
    ) {
        let objid_text = String::from_utf8_lossy(&record[objid_column])
            .trim()
            .to_string();
        let Ok(objid) = objid_text.parse::<i64>() else {
            table
                .summary
                .skip(location, format!("objid '{objid_text}' is not an integer"));
            continue;
        };
        if !seen_objids.insert(objid) {
            table
                .summary
                .skip(location, format!("duplicate objid {objid}"));
            continue;
        }
        let mut values = Vec::with_capacity(feature_columns.len());
        for (feature_position, column) in feature_columns.iter().enumerate() {
            let cell = String::from_utf8_lossy(&record[*column]);
            if is_missing_cell(&cell) {
                table.summary.missing_values += 1;
                values.push(None);
                continue;
            }
            match cell.trim().parse::<f32>() {
                Ok(value) if value.is_finite() => values.push(Some(value)),
                _ => {
                    let column_name = &table.columns[feature_position];
                    table.summary.invalid_value(
                        location.clone(),
                        format!("column '{column_name}': invalid value '{}'", cell.trim()),
                    );
                    values.push(None);
                }
            }
        }
        table.rows.push((objid, values));
        table.summary.rows_kept += 1;
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn a_gzip_stream_past_the_limit_is_refused_before_it_is_read_whole() {
        let zeros = vec![0u8; 1 << 20];
        let compressed = gzip(&zeros);
        assert!(compressed.len() < 4096, "{} bytes", compressed.len());
        assert_eq!(gunzip_bounded(&compressed, 1 << 20).unwrap().len(), 1 << 20);
        let error = gunzip_bounded(&compressed, 1000).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            error.to_string().contains("more than 1000 bytes"),
            "{error}"
        );
    }
}
