//! Integer encoding of `level2` labels: classes sorted by name, empty `level2` as [`UNLABELED_CLASS`].

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::DatasetError;
use crate::layout::UNLABELED_CLASS;
use crate::meta::MetaRecord;

/// The class list; a label is its index. Sorted by name (byte order), without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelEncoding {
    pub classes: Vec<String>,
}

impl LabelEncoding {
    /// Classes present in `records`, with [`UNLABELED_CLASS`] when some `level2` is empty.
    pub fn from_records(records: &[MetaRecord]) -> Self {
        let names: BTreeSet<&str> = records
            .iter()
            .map(|record| record.level2.as_deref().unwrap_or(UNLABELED_CLASS))
            .collect();
        LabelEncoding {
            classes: names.into_iter().map(str::to_string).collect(),
        }
    }

    /// An encoding of the given class names (sorted and deduplicated here).
    pub fn from_class_names<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        let names: BTreeSet<String> = names.into_iter().map(Into::into).collect();
        LabelEncoding {
            classes: names.into_iter().collect(),
        }
    }

    /// The label of `level2` (`None` is the unlabeled class); `None` when the class is not encoded.
    pub fn encode(&self, level2: Option<&str>) -> Option<u32> {
        let name = level2.unwrap_or(UNLABELED_CLASS);
        self.classes
            .binary_search_by(|class| class.as_str().cmp(name))
            .ok()
            .and_then(|index| u32::try_from(index).ok())
    }

    /// The class name of `label`.
    pub fn decode(&self, label: u32) -> Option<&str> {
        self.classes.get(label as usize).map(String::as_str)
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    pub fn to_json(&self) -> String {
        // A struct of strings always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and validates (sorted, unique, non-empty names) an encoding written by [`Self::to_json`].
    pub fn from_json(json: &str) -> Result<Self, DatasetError> {
        let encoding: LabelEncoding =
            serde_json::from_str(json).map_err(|error| DatasetError::LabelEncoding {
                reason: error.to_string(),
            })?;
        if let Some(pair) = encoding.classes.windows(2).find(|pair| pair[0] >= pair[1]) {
            return Err(DatasetError::LabelEncoding {
                reason: format!(
                    "classes not sorted and unique: '{}' then '{}'",
                    pair[0], pair[1]
                ),
            });
        }
        if encoding.classes.iter().any(|class| class.is_empty()) {
            return Err(DatasetError::LabelEncoding {
                reason: "empty class name".to_string(),
            });
        }
        Ok(encoding)
    }
}
