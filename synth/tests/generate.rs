//! End-to-end tests of `generate` against an in-memory object store.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use plankton_dataset::layout::{META_COLUMNS, NATIVE_FEATURE_COLUMNS, UNLABELED_CLASS};
use plankton_synth::{SynthConfig, SynthError, class_counts, generate};

/// Every object under `prefix`, keyed by path relative to it.
async fn read_all(store: &Arc<dyn ObjectStore>, prefix: &Path) -> BTreeMap<String, Vec<u8>> {
    let listed: Vec<_> = store.list(Some(prefix)).try_collect().await.unwrap();
    let mut files = BTreeMap::new();
    for meta in listed {
        let bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let relative = meta
            .location
            .prefix_match(prefix)
            .unwrap()
            .map(|part| part.as_ref().to_string())
            .collect::<Vec<_>>()
            .join("/");
        files.insert(relative, bytes.to_vec());
    }
    files
}

async fn generate_into_memory(config: &SynthConfig) -> BTreeMap<String, Vec<u8>> {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let prefix = Path::from("datasets/synthetic");
    let summary = generate(Arc::clone(&store), prefix.clone(), config)
        .await
        .unwrap();
    assert_eq!(summary.objects, config.count);
    let files = read_all(&store, &prefix).await;
    let stored_bytes: u64 = files.values().map(|bytes| bytes.len() as u64).sum();
    assert_eq!(summary.bytes_written, stored_bytes);
    files
}

fn csv_rows(bytes: &[u8]) -> Vec<Vec<String>> {
    let text = std::str::from_utf8(bytes).unwrap();
    text.lines()
        .map(|line| line.split(',').map(str::to_string).collect())
        .collect()
}

fn config(count: u64, seed: u64) -> SynthConfig {
    SynthConfig {
        count,
        seed,
        images_as_zip: false,
        gzip_features: false,
        concurrency: 8,
    }
}

fn assert_grayscale_jpeg(bytes: &[u8]) {
    let mut decoder = zune_jpeg::JpegDecoder::new(bytes);
    decoder.decode_headers().unwrap();
    assert_eq!(
        decoder.get_input_colorspace(),
        Some(zune_core::colorspace::ColorSpace::Luma)
    );
    let (width, height) = decoder.dimensions().unwrap();
    assert!(
        (2..=972).contains(&width) && (2..=739).contains(&height),
        "{width}x{height}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_is_byte_identical_and_layout_is_consistent() {
    let first = generate_into_memory(&config(200, 11)).await;
    let second = generate_into_memory(&config(200, 11)).await;
    assert_eq!(first.len(), 202, "meta, features and 200 images");
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &first {
        assert!(second[path] == *bytes, "{path} differs between runs");
    }

    let meta = csv_rows(&first["meta.csv"]);
    assert_eq!(meta[0], META_COLUMNS);
    assert_eq!(meta.len(), 201);
    assert!(
        meta[1..]
            .iter()
            .all(|row| row.len() == 14 && row[3] == "validated")
    );
    let features = csv_rows(&first["features_native.csv"]);
    assert_eq!(features[0][0], "objid");
    assert_eq!(features[0][1..], NATIVE_FEATURE_COLUMNS);
    assert!(features.iter().all(|row| row.len() == 65));
    let meta_objids: Vec<&String> = meta[1..].iter().map(|row| &row[0]).collect();
    let feature_objids: Vec<&String> = features[1..].iter().map(|row| &row[0]).collect();
    assert_eq!(meta_objids, feature_objids);
    let mut unique_objids: Vec<u64> = meta_objids
        .iter()
        .map(|objid| objid.parse().unwrap())
        .collect();
    unique_objids.sort_unstable();
    unique_objids.dedup();
    assert_eq!(unique_objids.len(), 200);
    for objid in &meta_objids {
        assert!(
            first.contains_key(&format!("imgs/{objid}.jpg")),
            "no image for {objid}"
        );
    }
    assert_grayscale_jpeg(&first[&format!("imgs/{}.jpg", meta_objids[0])]);

    // Class counts follow class_counts, unlabeled objects have an empty level2, rows are shuffled.
    let mut level2_counts: BTreeMap<String, u64> = BTreeMap::new();
    for row in &meta[1..] {
        let level2 = if row[13].is_empty() {
            UNLABELED_CLASS.to_string()
        } else {
            row[13].clone()
        };
        *level2_counts.entry(level2).or_default() += 1;
    }
    let expected: BTreeMap<String, u64> = class_counts(200).unwrap().into_iter().collect();
    assert_eq!(level2_counts, expected);
    let first_twenty: std::collections::BTreeSet<&String> =
        meta[1..21].iter().map(|row| &row[13]).collect();
    assert!(first_twenty.len() > 3, "rows look sorted by class");
    // Feature values parse as numbers where present.
    for row in &features[1..] {
        for value in row[1..].iter().filter(|value| !value.is_empty()) {
            assert!(
                value.parse::<f32>().is_ok_and(f32::is_finite),
                "bad feature value {value}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_seed_gives_different_data() {
    let first = generate_into_memory(&config(80, 1)).await;
    let second = generate_into_memory(&config(80, 2)).await;
    assert_ne!(first["meta.csv"], second["meta.csv"]);
    assert_ne!(first["features_native.csv"], second["features_native.csv"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_and_gzip_variant_reads_back() {
    let zipped = SynthConfig {
        count: 120,
        seed: 5,
        images_as_zip: true,
        gzip_features: true,
        concurrency: 4,
    };
    let files = generate_into_memory(&zipped).await;
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["features_native.csv.gz", "imgs.zip", "meta.csv"]
    );
    let meta = csv_rows(&files["meta.csv"]);
    let meta_objids: Vec<String> = meta[1..].iter().map(|row| row[0].clone()).collect();

    let mut features_text = Vec::new();
    flate2::read::GzDecoder::new(&files["features_native.csv.gz"][..])
        .read_to_end(&mut features_text)
        .unwrap();
    let features = csv_rows(&features_text);
    assert!(features.iter().all(|row| row.len() == 65));
    assert_eq!(
        features[1..]
            .iter()
            .map(|row| row[0].clone())
            .collect::<Vec<_>>(),
        meta_objids
    );

    let mut archive = zip::ZipArchive::new(Cursor::new(files["imgs.zip"].clone())).unwrap();
    assert_eq!(archive.len(), 120);
    for objid in &meta_objids {
        let mut member = archive.by_name(&format!("imgs/{objid}.jpg")).unwrap();
        let mut jpeg = Vec::new();
        member.read_to_end(&mut jpeg).unwrap();
        assert_grayscale_jpeg(&jpeg);
    }
}

#[tokio::test]
async fn bad_configs_are_errors() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let too_few = generate(Arc::clone(&store), Path::from("x"), &config(79, 1)).await;
    assert!(matches!(
        too_few,
        Err(SynthError::TooFewObjects { requested: 79, .. })
    ));
    let no_concurrency = SynthConfig {
        concurrency: 0,
        ..config(100, 1)
    };
    let invalid = generate(Arc::clone(&store), Path::from("x"), &no_concurrency).await;
    assert!(matches!(invalid, Err(SynthError::InvalidConfig(_))));
    assert!(
        store
            .list(None)
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .is_empty()
    );
}
