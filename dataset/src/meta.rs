//! Reads `meta.csv`: one record per object with its `level2` label; bad rows are skipped and named.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::DatasetError;
use crate::layout::{META_FILE, REFERENCE_CLASS_COUNTS};
use crate::storage::StoreLocation;
use crate::summary::{ReadSummary, next_well_formed_row, open_csv};

/// One row of `meta.csv`. Columns absent from the file read as empty strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaRecord {
    pub objid: i64,
    /// The training label; `None` when empty or NaN (the reference's unlabeled class).
    pub level2: Option<String>,
    pub projid: String,
    pub id: String,
    pub status: String,
    pub latitude: String,
    pub longitude: String,
    pub objdate: String,
    pub objtime: String,
    pub depth_min: String,
    pub depth_max: String,
    pub unique_name: String,
    pub lineage: String,
    pub level1: String,
}

/// All good rows of `meta.csv`, in file order, with what was skipped.
#[derive(Debug, Clone, Default)]
pub struct MetaTable {
    pub records: Vec<MetaRecord>,
    pub summary: ReadSummary,
    /// Records whose `level2` is empty or NaN (kept, as the unlabeled class).
    pub unlabeled: u64,
    /// `level2` names not among the reference classes, with their counts (kept as their own classes).
    pub unknown_classes: BTreeMap<String, u64>,
}

/// Reads and parses `meta.csv` at `location` (parsing runs on a blocking thread).
pub async fn read_meta(location: &StoreLocation) -> Result<MetaTable, DatasetError> {
    let object_url = location.object_url(META_FILE);
    let bytes = location.get_bytes(META_FILE).await?;
    let task_object = object_url.clone();
    let table = tokio::task::spawn_blocking(move || parse_meta_csv(META_FILE, &bytes))
        .await
        .map_err(|error| DatasetError::Task {
            object: task_object,
            reason: error.to_string(),
        })?
        .map_err(|error| match error {
            DatasetError::Csv { reason, .. } => DatasetError::Csv {
                object: object_url.clone(),
                reason,
            },
            DatasetError::MissingColumn { column, .. } => DatasetError::MissingColumn {
                object: object_url.clone(),
                column,
            },
            other => other,
        })?;
    table.summary.log(&object_url);
    Ok(table)
}

/// Whether a CSV cell means "no value" (empty, or NaN as pandas writes it).
pub(crate) fn is_missing_cell(cell: &str) -> bool {
    let trimmed = cell.trim();
    trimmed.is_empty() || trimmed.eq_ignore_ascii_case("nan")
}

/// Parses the bytes of a `meta.csv`; `file_name` names it in skipped-row locations (`meta.csv:LINE`).
pub fn parse_meta_csv(file_name: &str, bytes: &[u8]) -> Result<MetaTable, DatasetError> {
    let (mut reader, header_names) = open_csv(file_name, bytes)?;
    let column_index = |name: &str| {
        header_names
            .iter()
            .position(|header_name| header_name == name)
    };
    let required_column = |name: &str| {
        column_index(name).ok_or_else(|| DatasetError::MissingColumn {
            object: file_name.to_string(),
            column: name.to_string(),
        })
    };
    let objid_column = required_column("objid")?;
    let level2_column = required_column("level2")?;
    let optional_columns: [Option<usize>; 12] = [
        "projid",
        "id",
        "status",
        "latitude",
        "longitude",
        "objdate",
        "objtime",
        "depth_min",
        "depth_max",
        "unique_name",
        "lineage",
        "level1",
    ]
    .map(column_index);

    let reference_classes: HashSet<&str> = REFERENCE_CLASS_COUNTS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    let mut table = MetaTable::default();
    let mut seen_objids = HashSet::new();
    let mut record = csv::ByteRecord::new();
    while let Some(location) = next_well_formed_row(
        &mut reader,
        &mut record,
        file_name,
        header_names.len(),
        &mut table.summary,
    ) {
        let fields: Vec<&str> = match record
            .iter()
            .map(std::str::from_utf8)
            .collect::<Result<_, _>>()
        {
            Ok(fields) => fields,
            Err(error) => {
                table
                    .summary
                    .skip(location, format!("invalid UTF-8: {error}"));
                continue;
            }
        };
        let objid_text = fields[objid_column].trim();
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
        let level2_text = fields[level2_column].trim();
        let level2 = if is_missing_cell(level2_text) {
            table.unlabeled += 1;
            None
        } else {
            if !reference_classes.contains(level2_text) {
                let count = table
                    .unknown_classes
                    .entry(level2_text.to_string())
                    .or_insert(0);
                if *count == 0 {
                    tracing::warn!(location = %location, level2 = level2_text, "level2 is not a reference class; kept as its own class");
                }
                *count += 1;
            }
            Some(level2_text.to_string())
        };
        let text_of = |column: Option<usize>| {
            column
                .map(|index| fields[index].to_string())
                .unwrap_or_default()
        };
        let [
            projid,
            id,
            status,
            latitude,
            longitude,
            objdate,
            objtime,
            depth_min,
            depth_max,
            unique_name,
            lineage,
            level1,
        ] = optional_columns.map(text_of);
        table.records.push(MetaRecord {
            objid,
            level2,
            projid,
            id,
            status,
            latitude,
            longitude,
            objdate,
            objtime,
            depth_min,
            depth_max,
            unique_name,
            lineage,
            level1,
        });
        table.summary.rows_kept += 1;
    }
    Ok(table)
}
