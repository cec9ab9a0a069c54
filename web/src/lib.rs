//! HTML and inline-SVG views of the cluster: the dashboard's pages and the self-contained job report.
//! Pure functions from the coordinator's protobuf messages to markup; no I/O.
//!
//! - [`pages`]: the dashboard (jobs, a job's live page, workers, models, sign-in, errors).
//! - [`job_report`]: one printable HTML file per job, images inlined as `data:` URIs.
//! - [`svg`]: the charts both use (loss and epoch curves, class distribution, confusion heatmap).
//!
//! Every string that comes from a message goes through [`escape`] before it reaches markup.
#![forbid(unsafe_code)]

pub mod pages;
mod report;
mod sections;
mod style;
pub mod svg;
mod text;

#[cfg(test)]
mod tests;

/// A misclassified test image for the report, its JPEG bytes read from the dataset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Thumbnail {
    pub objid: i64,
    pub true_class: u32,
    pub predicted_class: u32,
    /// Softmax probability of the predicted class.
    pub confidence: f32,
    pub jpeg: Vec<u8>,
}

pub use report::{WORST_CLASSES, job_report, worst_classes};

/// `text` made safe for HTML text and quoted attribute values: `&`, `<`, `>`, `"` and `'` become entities.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}
