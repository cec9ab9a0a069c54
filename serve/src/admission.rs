//! Admission control, after Triton's queue policy: a request is admitted (or refused at once) before any of
//! its images is decoded.
//!
//! - more than `max_images_per_request` images: INVALID_ARGUMENT (retrying cannot help);
//! - more than `max_queued_images` images admitted and not answered yet, server-wide: RESOURCE_EXHAUSTED at
//!   once, with a retry hint (`grpc-retry-pushback-ms` and the message);
//! - at most `max_concurrent_requests` admitted requests are decoded and computed at a time; the others wait
//!   in admission order (their images count as queued), until their client's deadline ([`crate::deadline`]).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ServeError, ServeResult};

/// The retry hint of a RESOURCE_EXHAUSTED answer when nothing better is known.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_millis(100);

/// Bounds on what the server takes on.
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    /// Most images in one request.
    pub max_images_per_request: usize,
    /// Most images admitted and not answered yet (waiting, decoding, queued or computing), server-wide.
    pub max_queued_images: usize,
    /// Most requests decoded and computed at a time; further admitted requests wait for a slot.
    pub max_concurrent_requests: usize,
    /// The retry hint sent with RESOURCE_EXHAUSTED.
    pub retry_after: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_images_per_request: 256,
            max_queued_images: 1024,
            max_concurrent_requests: 64,
            retry_after: DEFAULT_RETRY_AFTER,
        }
    }
}

/// The admission state shared by every request of a server.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    queued_images: Arc<Semaphore>,
    running_requests: Arc<Semaphore>,
    queued_images_gauge: Gauge,
}

/// An admitted request's hold on the queue and a run slot; dropping it (answered, failed, or abandoned by its
/// client) releases both.
#[derive(Debug)]
pub struct Admitted {
    _queued: OwnedSemaphorePermit,
    _running: OwnedSemaphorePermit,
    _queued_count: QueuedCount,
}

/// Keeps the queued-images gauge in step with the permits, whenever the request ends.
#[derive(Debug)]
struct QueuedCount {
    images: i64,
    gauge: Gauge,
}

impl Drop for QueuedCount {
    fn drop(&mut self) {
        self.gauge.dec_by(self.images);
    }
}

impl Admission {
    pub fn new(config: AdmissionConfig, queued_images_gauge: Gauge) -> Self {
        let max_queued_images = config.max_queued_images.clamp(1, Semaphore::MAX_PERMITS);
        let max_concurrent_requests = config
            .max_concurrent_requests
            .clamp(1, Semaphore::MAX_PERMITS);
        Admission {
            queued_images: Arc::new(Semaphore::new(max_queued_images)),
            running_requests: Arc::new(Semaphore::new(max_concurrent_requests)),
            config,
            queued_images_gauge,
        }
    }

    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    /// Admits a request of `image_count` images, or refuses it at once; then waits for a run slot.
    pub async fn admit(&self, image_count: usize) -> ServeResult<Admitted> {
        if image_count == 0 {
            return Err(ServeError::InvalidRequest(
                "the request has no images".to_string(),
            ));
        }
        let max_images_per_request = self.config.max_images_per_request;
        if image_count > max_images_per_request {
            return Err(ServeError::InvalidRequest(format!(
                "{image_count} images in one request, at most {max_images_per_request} (--max-images-per-request)"
            )));
        }
        let overloaded = || {
            let max_queued_images = self.config.max_queued_images;
            let queued_now =
                max_queued_images.saturating_sub(self.queued_images.available_permits());
            ServeError::Overloaded {
                reason: format!(
                    "{queued_now} images queued, at most {max_queued_images} (--max-queued-images); this request has {image_count}"
                ),
                retry_after: self.config.retry_after,
            }
        };
        let permits = u32::try_from(image_count).map_err(|_| overloaded())?;
        let queued = self
            .queued_images
            .clone()
            .try_acquire_many_owned(permits)
            .map_err(|_| overloaded())?;
        self.queued_images_gauge.inc_by(image_count as i64);
        let queued_count = QueuedCount {
            images: image_count as i64,
            gauge: self.queued_images_gauge.clone(),
        };
        let running = self
            .running_requests
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ServeError::Internal("admission is closed".to_string()))?;
        Ok(Admitted {
            _queued: queued,
            _running: running,
            _queued_count: queued_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(
        max_images_per_request: usize,
        max_queued_images: usize,
        max_concurrent_requests: usize,
    ) -> Admission {
        Admission::new(
            AdmissionConfig {
                max_images_per_request,
                max_queued_images,
                max_concurrent_requests,
                retry_after: Duration::from_millis(250),
            },
            Gauge::default(),
        )
    }

    #[tokio::test]
    async fn refuses_oversized_requests_and_a_full_queue_and_frees_slots_on_drop() {
        let admission = admission(4, 6, 1);
        let too_many = admission.admit(5).await.unwrap_err();
        assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
        assert!(too_many.to_string().contains("at most 4"), "{too_many}");
        assert_eq!(
            admission.admit(0).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );

        let first = admission.admit(4).await.unwrap();
        assert_eq!(admission.queued_images_gauge.get(), 4);
        let full = admission.admit(3).await.unwrap_err();
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        let status = tonic::Status::from(&full);
        assert_eq!(
            status
                .metadata()
                .get(crate::error::RETRY_PUSHBACK_METADATA)
                .unwrap(),
            "250"
        );
        assert!(full.to_string().contains("retry in 250ms"), "{full}");

        // Two images fit the queue but wait for the only run slot.
        let waiting = admission.admit(2);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "admitted past the concurrency limit"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the freed slot admits the waiting request")
            .unwrap();
        assert_eq!(admission.queued_images_gauge.get(), 2);
        drop(second);
        assert_eq!(admission.queued_images_gauge.get(), 0);
        assert_eq!(admission.queued_images.available_permits(), 6);
    }

    #[tokio::test]
    async fn a_request_abandoned_while_waiting_releases_its_queue_share() {
        let admission = admission(4, 4, 1);
        let running = admission.admit(1).await.unwrap();
        {
            let waiting = admission.admit(3);
            tokio::pin!(waiting);
            assert!(
                tokio::time::timeout(Duration::from_millis(20), &mut waiting)
                    .await
                    .is_err()
            );
            assert_eq!(admission.queued_images_gauge.get(), 4);
        }
        assert_eq!(admission.queued_images_gauge.get(), 1);
        drop(running);
        assert_eq!(admission.queued_images.available_permits(), 4);
    }
}
