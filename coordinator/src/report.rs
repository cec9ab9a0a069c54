//! The per-job report: one self-contained HTML file rendered from the job's record, with thumbnails of the
//! worst classes' misclassified test images read from the dataset. Written next to the model when a job
//! succeeds; rendered on demand for `GetJobReport` and the dashboard.

use std::time::Duration;

use futures::StreamExt;
use tracing::{info, warn};

use plankton_dataset::{fetch_images, open_image_source, open_location};
use plankton_proto::v1::Job;
use plankton_web::Thumbnail;

/// The report's file name in the job's output folder.
pub const REPORT_FILE: &str = "report.html";

/// Largest image embedded as a thumbnail; larger ones are left out (logged).
const MAX_THUMBNAIL_BYTES: usize = 256 * 1024;

/// Images fetched at once for the thumbnails.
const THUMBNAIL_FETCH_CONCURRENCY: usize = 8;

/// Bound on reading every thumbnail: past it, the report is rendered without thumbnails. Short, because the
/// report is written while rank 0's `ReportDone` call waits (workers give each call 10 s).
const THUMBNAIL_FETCH_TIMEOUT: Duration = Duration::from_secs(4);

/// Bound on writing the report at a job's end (thumbnails, rendering, the store's put): the rest of the worker's
/// 10 s `ReportDone` deadline is for the model card and finishing the job.
pub const REPORT_WRITE_TIMEOUT: Duration = Duration::from_secs(6);

/// The job's report as one self-contained HTML document.
pub async fn render_job_report(job: &Job) -> String {
    let thumbnails = fetch_thumbnails(job).await;
    plankton_web::job_report(job, &thumbnails)
}

/// Renders the report and writes it to `<output>/report.html`; returns its URL.
pub async fn write_job_report(job: &Job) -> anyhow::Result<String> {
    let output_url = job
        .spec
        .as_ref()
        .map(|spec| spec.output_url.trim_end_matches('/').to_string())
        .unwrap_or_default();
    anyhow::ensure!(!output_url.is_empty(), "the job has no output location");
    let html = render_job_report(job).await;
    let location = open_location(&output_url)?;
    location
        .put_bytes(REPORT_FILE, html.into_bytes().into())
        .await?;
    let url = format!("{output_url}/{REPORT_FILE}");
    info!(job_id = job.id, url, "job report written");
    Ok(url)
}

/// The JPEG bytes of the worst classes' misclassified test images. Images that cannot be read are left out
/// and logged: a report never fails for a thumbnail.
async fn fetch_thumbnails(job: &Job) -> Vec<Thumbnail> {
    let worst: Vec<u32> = job
        .epochs
        .last()
        .map(|latest| {
            plankton_web::worst_classes(latest)
                .into_iter()
                .map(|(index, _)| index as u32)
                .collect()
        })
        .unwrap_or_default();
    let wanted: Vec<_> = job
        .misclassified
        .iter()
        .filter(|mistake| worst.contains(&mistake.true_class))
        .cloned()
        .collect();
    let Some(dataset_url) = job.spec.as_ref().map(|spec| spec.dataset_url.clone()) else {
        return Vec::new();
    };
    if wanted.is_empty() {
        return Vec::new();
    }
    let fetched = async {
        let location = open_location(&dataset_url)?;
        let source = open_image_source(&location).await?;
        let objids = wanted.iter().map(|mistake| mistake.objid).collect();
        let images: Vec<_> = fetch_images(&location, &source, objids, THUMBNAIL_FETCH_CONCURRENCY)
            .collect()
            .await;
        anyhow::Ok(images)
    };
    let images = match tokio::time::timeout(THUMBNAIL_FETCH_TIMEOUT, fetched).await {
        Ok(Ok(images)) => images,
        Ok(Err(error)) => {
            warn!(job_id = job.id, dataset_url, %error, "report thumbnails: the dataset's images cannot be read");
            return Vec::new();
        }
        Err(_) => {
            warn!(job_id = job.id, dataset_url, timeout = ?THUMBNAIL_FETCH_TIMEOUT, "report thumbnails: reading the images timed out");
            return Vec::new();
        }
    };
    let mut thumbnails = Vec::with_capacity(wanted.len());
    for mistake in wanted {
        let Some((_, result)) = images.iter().find(|(objid, _)| *objid == mistake.objid) else {
            continue;
        };
        match result {
            Ok(jpeg) if jpeg.len() <= MAX_THUMBNAIL_BYTES => thumbnails.push(Thumbnail {
                objid: mistake.objid,
                true_class: mistake.true_class,
                predicted_class: mistake.predicted_class,
                confidence: mistake.confidence,
                jpeg: jpeg.to_vec(),
            }),
            Ok(jpeg) => {
                warn!(
                    job_id = job.id,
                    objid = mistake.objid,
                    bytes = jpeg.len(),
                    "report thumbnail left out: image too large"
                )
            }
            Err(error) => {
                warn!(job_id = job.id, objid = mistake.objid, %error, "report thumbnail left out")
            }
        }
    }
    thumbnails
}
