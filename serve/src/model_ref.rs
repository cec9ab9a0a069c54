//! Model references as clients write them: `name`, `name:3`, `name@production`.

use std::fmt;
use std::str::FromStr;

use crate::error::ServeError;

/// Which version of a model name a reference selects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum VersionSelector {
    /// The newest registered version.
    Latest,
    /// One exact version (1, 2, ...).
    Version(u32),
    /// The version an alias (e.g. `production`) points at; it moves when a model is promoted.
    Alias(String),
}

/// A model name and a version selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelReference {
    pub name: String,
    pub selector: VersionSelector,
}

impl ModelReference {
    /// True when the version it names can change over time (latest or alias), so it must be re-resolved.
    pub fn is_moving(&self) -> bool {
        !matches!(self.selector, VersionSelector::Version(_))
    }
}

impl FromStr for ModelReference {
    type Err = ServeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let invalid = |reason: &str| {
            ServeError::InvalidRequest(format!(
                "model reference {text:?}: {reason} (expected \"name\", \"name:3\" or \"name@alias\")"
            ))
        };
        let (name, selector) = if let Some((name, version_text)) = trimmed.split_once(':') {
            let version: u32 = version_text
                .parse()
                .map_err(|_| invalid("the version is not a positive integer"))?;
            if version == 0 {
                return Err(invalid("versions start at 1"));
            }
            (name, VersionSelector::Version(version))
        } else if let Some((name, alias)) = trimmed.split_once('@') {
            if alias.is_empty() || alias.contains(['@', ':']) {
                return Err(invalid("the alias is empty or malformed"));
            }
            (name, VersionSelector::Alias(alias.to_string()))
        } else {
            (trimmed, VersionSelector::Latest)
        };
        if name.is_empty() {
            return Err(invalid("the model name is empty"));
        }
        if name.contains(['@', ':']) || name.chars().any(char::is_whitespace) {
            return Err(invalid("the model name contains '@', ':' or whitespace"));
        }
        Ok(ModelReference {
            name: name.to_string(),
            selector,
        })
    }
}

impl fmt::Display for ModelReference {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.selector {
            VersionSelector::Latest => write!(formatter, "{}", self.name),
            VersionSelector::Version(version) => write!(formatter, "{}:{version}", self.name),
            VersionSelector::Alias(alias) => write!(formatter, "{}@{alias}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_prints_them_back() {
        for (text, selector) in [
            ("plankton", VersionSelector::Latest),
            ("plankton:3", VersionSelector::Version(3)),
            (
                "plankton@production",
                VersionSelector::Alias("production".to_string()),
            ),
        ] {
            let reference: ModelReference = text.parse().unwrap();
            assert_eq!(reference.name, "plankton");
            assert_eq!(reference.selector, selector);
            assert_eq!(reference.to_string(), text);
        }
    }

    #[test]
    fn refuses_malformed_references_naming_the_problem() {
        for (text, expected) in [
            ("", "name is empty"),
            (":3", "name is empty"),
            ("plankton:x", "not a positive integer"),
            ("plankton:0", "start at 1"),
            ("plankton@", "alias is empty"),
            ("a b", "whitespace"),
        ] {
            let error = text.parse::<ModelReference>().unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
