//! Transient store errors are retried, told apart from bad objects, and given up on with the object named.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::tiny_jpeg;
use futures::StreamExt;
use plankton_dataset::faults::{FaultInjectingStore, InjectedFault};
use plankton_dataset::{
    DatasetError, FetchRetry, ImageVersions, fetch_image, fetch_images, image_path,
    image_source_version, is_bad_image, is_transient, open_image_source, open_location,
};

const FAST_RETRY: FetchRetry = FetchRetry {
    max_attempts: 4,
    initial_backoff: Duration::from_millis(1),
    max_backoff: Duration::from_millis(4),
    max_elapsed: Duration::from_secs(10),
};

fn generic(message: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: message.to_string().into(),
    }
}

#[test]
fn throttling_dropped_connections_and_credentials_are_transient_missing_objects_are_not() {
    let transient = [
        generic(
            "Server returned non-2xx status code: 503 Service Unavailable: <Code>SlowDown</Code>",
        ),
        generic("Server returned non-2xx status code: 429 Too Many Requests"),
        generic("Error performing token request: error sending request"),
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        },
    ];
    for error in &transient {
        assert!(is_transient(error), "{error}");
    }
    let permanent = [
        object_store::Error::NotFound {
            path: "imgs/1.jpg".into(),
            source: "404".into(),
        },
        object_store::Error::PermissionDenied {
            path: "imgs/1.jpg".into(),
            source: "403".into(),
        },
        generic("Server returned non-2xx status code: 400 Bad Request"),
    ];
    for error in &permanent {
        assert!(!is_transient(error), "{error}");
    }
}

#[tokio::test]
async fn faulted_reads_are_retried_until_the_budget_of_attempts_runs_out() -> anyhow::Result<()> {
    let location = open_location("memory://dataset-faults")?;
    for objid in 1..=6 {
        location
            .put_bytes(&image_path(objid), Bytes::from(tiny_jpeg(4, 4)))
            .await?;
    }
    let source = open_image_source(&location).await?;

    // Three failures per object, four attempts: every image arrives.
    let faulty = Arc::new(
        FaultInjectingStore::new(location.store.clone(), 3)
            .with_fault(InjectedFault::ConnectionReset),
    );
    let faulty_location = location.with_store(faulty.clone()).with_retry(FAST_RETRY);
    let fetched: Vec<_> = fetch_images(&faulty_location, &source, (1..=6).collect(), 3)
        .collect()
        .await;
    for (objid, result) in &fetched {
        assert!(result.is_ok(), "objid {objid}: {result:?}");
    }
    assert_eq!(faulty.injected_faults(), 6 * 3);

    // Five failures, four attempts: the error names the object and the last error, and is not a bad image.
    let outage = Arc::new(FaultInjectingStore::new(location.store.clone(), 5));
    let outage_location = location.with_store(outage.clone()).with_retry(FAST_RETRY);
    let error = fetch_image(&outage_location, &source, 2).await.unwrap_err();
    assert!(!is_bad_image(&error), "{error}");
    let message = error.to_string();
    assert!(message.contains("imgs/2.jpg"), "{message}");
    assert!(message.contains("gave up after 4 attempts"), "{message}");
    assert!(message.contains("503 Service Unavailable"), "{message}");
    assert_eq!(outage.injected_faults(), 4);

    // Not found once the faults pass: a bad image (and "not found" itself is not retried).
    let missing = fetch_image(&faulty_location, &source, 99)
        .await
        .unwrap_err();
    assert!(matches!(
        missing,
        DatasetError::ImageNotFound { objid: 99, .. }
    ));
    assert!(is_bad_image(&missing));
    Ok(())
}

#[tokio::test]
async fn the_source_version_changes_when_an_image_is_rewritten() -> anyhow::Result<()> {
    let location = open_location("memory://dataset-faults-version")?;
    for objid in 1..=3 {
        location
            .put_bytes(&image_path(objid), Bytes::from(tiny_jpeg(4, 4)))
            .await?;
    }
    let source = open_image_source(&location).await?;
    let before = image_source_version(&location, &source, &[1, 2, 3]).await?;
    assert_eq!(
        before,
        image_source_version(&location, &source, &[1, 2, 3]).await?
    );
    let untouched_shard = image_source_version(&location, &source, &[1, 3]).await?;

    // One read for several shards digests each as its own read would (so shard caches stay valid), an image
    // not in the store counting as missing either way.
    let versions = ImageVersions::read(&location, &source, &[1, 2, 3, 7]).await?;
    assert_eq!(versions.digest(&[1, 2, 3]), before);
    assert_eq!(versions.digest(&[1, 3]), untouched_shard);
    assert_eq!(
        versions.digest(&[2, 7]),
        image_source_version(&location, &source, &[2, 7]).await?
    );
    assert_ne!(versions.digest(&[2, 7]), versions.digest(&[2]));

    location
        .put_bytes(&image_path(2), Bytes::from(tiny_jpeg(4, 4)))
        .await?;

    assert_ne!(
        before,
        image_source_version(&location, &source, &[1, 2, 3]).await?
    );
    assert_eq!(
        untouched_shard,
        image_source_version(&location, &source, &[1, 3]).await?
    );
    Ok(())
}
