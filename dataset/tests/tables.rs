//! Storage URLs, meta.csv, native features and label encoding, including bad input.

mod common;

use std::io::Write;

use bytes::Bytes;
use common::{meta_csv, meta_line};
use plankton_dataset::layout::{
    FEATURES_FILE, FEATURES_GZ_FILE, META_FILE, NATIVE_FEATURE_COLUMNS, UNLABELED_CLASS,
};
use plankton_dataset::{DatasetError, LabelEncoding, open_location, read_features, read_meta};

#[tokio::test]
async fn memory_locations_with_the_same_name_share_data() -> anyhow::Result<()> {
    let writer = open_location("memory://tables-shared/root")?;
    writer
        .put_bytes("a/b.txt", Bytes::from_static(b"hello"))
        .await?;
    let reader = open_location("memory://tables-shared/root/")?;
    assert_eq!(
        reader.get_bytes("a/b.txt").await?,
        Bytes::from_static(b"hello")
    );
    let other = open_location("memory://tables-other/root")?;
    assert!(matches!(
        other.get_bytes("a/b.txt").await,
        Err(DatasetError::NotFound { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn local_paths_and_file_urls_create_the_directory() -> anyhow::Result<()> {
    let temporary = tempfile::tempdir()?;
    let plain_directory = temporary.path().join("plain/nested");
    let plain = open_location(plain_directory.to_str().unwrap())?;
    plain
        .put_bytes("imgs/1.jpg", Bytes::from_static(b"x"))
        .await?;
    assert!(plain_directory.join("imgs/1.jpg").is_file());
    assert!(plain.url.starts_with("file://"), "{}", plain.url);

    let url_directory = temporary.path().join("by-url");
    let by_url = open_location(&format!("file://{}", url_directory.display()))?;
    by_url
        .put_bytes("meta.csv", Bytes::from_static(b"objid\n"))
        .await?;
    assert_eq!(std::fs::read(url_directory.join("meta.csv"))?, b"objid\n");
    Ok(())
}

#[test]
fn bad_locations_are_refused_with_the_url() {
    for url in ["", "ftp://host/x", "memory:///no-name", "s3:///no-bucket"] {
        match open_location(url) {
            Err(DatasetError::InvalidLocation { url: named, .. }) => assert_eq!(named, url),
            other => panic!("{url}: expected InvalidLocation, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn meta_reads_labels_and_skips_bad_rows_by_line() -> anyhow::Result<()> {
    let location = open_location("memory://tables-meta")?;
    let lines = vec![
        meta_line(10, "detritus"),            // line 2
        meta_line(11, ""),                    // line 3: unlabeled
        meta_line(12, "nauplii (Crustacea)"), // line 4
        "13,4,only,three".to_string(),        // line 5: wrong field count
        meta_line(14, "nan"),                 // line 6: NaN = unlabeled
        meta_line(15, "Copepoda").replace("15_id,validated", "\"15_id,validated\""), // line 7: quotes merge fields
        meta_line(10, "feces"),         // line 8: duplicate objid
        meta_line(16, "Mystery class"), // line 9: unknown class, kept
        "x17,4,x,validated,0,0,d,t,0,1,u,l,l1,feces".to_string(), // line 10: non-integer objid
        meta_line(18, "Copepoda"),      // line 11
        meta_line(19, "feces").replace("19_id", "\"19_id"), // line 12: unterminated quote
    ];
    location
        .put_bytes(META_FILE, Bytes::from(meta_csv(&lines)))
        .await?;
    let table = read_meta(&location).await?;
    let objids: Vec<i64> = table.records.iter().map(|record| record.objid).collect();
    assert_eq!(objids, vec![10, 11, 12, 14, 16, 18]);
    assert_eq!(table.records[0].level2.as_deref(), Some("detritus"));
    assert_eq!(table.records[0].unique_name, "name_10");
    assert_eq!(table.records[1].level2, None);
    assert_eq!(table.records[3].level2, None);
    assert_eq!(table.unlabeled, 2);
    assert_eq!(table.unknown_classes.get("Mystery class"), Some(&1));
    let skipped: Vec<&str> = table
        .summary
        .skipped
        .iter()
        .map(|item| item.location.as_str())
        .collect();
    assert_eq!(
        skipped,
        vec![
            "meta.csv:5",
            "meta.csv:7",
            "meta.csv:8",
            "meta.csv:10",
            "meta.csv:12"
        ]
    );
    assert!(
        table.summary.skipped[2]
            .reason
            .contains("duplicate objid 10")
    );
    assert_eq!(table.summary.rows_read, 11);
    assert_eq!(table.summary.rows_kept, 6);
    Ok(())
}

#[tokio::test]
async fn meta_errors_name_the_object() -> anyhow::Result<()> {
    let location = open_location("memory://tables-meta-errors")?;
    match read_meta(&location).await {
        Err(DatasetError::NotFound { object }) => {
            assert_eq!(object, "memory://tables-meta-errors/meta.csv")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    location
        .put_bytes(META_FILE, Bytes::from_static(b"objid,level1\n1,x\n"))
        .await?;
    match read_meta(&location).await {
        Err(DatasetError::MissingColumn { object, column }) => {
            assert_eq!(column, "level2");
            assert!(object.ends_with("meta.csv"), "{object}");
        }
        other => panic!("expected MissingColumn, got {other:?}"),
    }
    Ok(())
}

fn features_text(rows: &[String]) -> String {
    let mut text = format!("objid,{}\n", NATIVE_FEATURE_COLUMNS.join(","));
    for row in rows {
        text.push_str(row);
        text.push('\n');
    }
    text
}

fn feature_row(objid: i64, overrides: &[(usize, &str)]) -> String {
    let mut cells: Vec<String> = (0..NATIVE_FEATURE_COLUMNS.len())
        .map(|column| format!("{}.5", column))
        .collect();
    for (column, value) in overrides {
        cells[*column] = value.to_string();
    }
    format!("{objid},{}", cells.join(","))
}

#[tokio::test]
async fn features_read_missing_and_invalid_values_as_none() -> anyhow::Result<()> {
    let location = open_location("memory://tables-features")?;
    let rows = vec![
        feature_row(1, &[]),
        feature_row(2, &[(43, ""), (44, "NaN"), (48, "nan")]),
        feature_row(3, &[(0, "abc"), (5, "inf")]),
        "4,1,2,3".to_string(),
        feature_row(5, &[]),
    ];
    location
        .put_bytes(FEATURES_FILE, Bytes::from(features_text(&rows)))
        .await?;
    let table = read_features(&location).await?;
    assert!(table.has_native_columns());
    let objids: Vec<i64> = table.rows.iter().map(|row| row.0).collect();
    assert_eq!(objids, vec![1, 2, 3, 5]);
    assert_eq!(table.rows[0].1[1], Some(1.5));
    assert_eq!(table.rows[1].1[43], None);
    assert_eq!(table.rows[1].1[44], None);
    assert_eq!(table.rows[1].1[48], None);
    assert_eq!(table.rows[1].1[47], Some(47.5));
    assert_eq!(table.rows[2].1[0], None);
    assert_eq!(table.rows[2].1[5], None);
    assert_eq!(table.summary.missing_values, 3);
    let invalid: Vec<String> = table
        .summary
        .invalid_values
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(invalid.len(), 2);
    assert!(
        invalid[0].starts_with("features_native.csv:4: column 'area'"),
        "{invalid:?}"
    );
    assert!(invalid[1].contains("column 'perim.'"), "{invalid:?}");
    assert_eq!(table.summary.skipped.len(), 1);
    assert_eq!(table.summary.skipped[0].location, "features_native.csv:5");
    Ok(())
}

#[tokio::test]
async fn gzipped_features_are_read_when_the_plain_file_is_absent() -> anyhow::Result<()> {
    let location = open_location("memory://tables-features-gz")?;
    match read_features(&location).await {
        Err(DatasetError::NotFound { object }) => {
            assert!(object.contains(FEATURES_GZ_FILE), "{object}")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(features_text(&[feature_row(7, &[]), feature_row(8, &[(63, "")])]).as_bytes())?;
    location
        .put_bytes(FEATURES_GZ_FILE, Bytes::from(encoder.finish()?))
        .await?;
    let table = read_features(&location).await?;
    assert_eq!(table.rows.len(), 2);
    assert_eq!(table.rows[1].1[63], None);
    assert_eq!(table.summary.missing_values, 1);

    location
        .put_bytes(
            FEATURES_GZ_FILE,
            Bytes::from_static(b"\x1f\x8b\x08not really gzip"),
        )
        .await?;
    assert!(matches!(
        read_features(&location).await,
        Err(DatasetError::Decompress { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn label_encoding_sorts_classes_and_keeps_unlabeled() -> anyhow::Result<()> {
    let location = open_location("memory://tables-labels")?;
    let lines = vec![
        meta_line(1, "feces"),
        meta_line(2, ""),
        meta_line(3, "Copepoda"),
        meta_line(4, "feces"),
    ];
    location
        .put_bytes(META_FILE, Bytes::from(meta_csv(&lines)))
        .await?;
    let table = read_meta(&location).await?;
    let encoding = LabelEncoding::from_records(&table.records);
    assert_eq!(encoding.classes, vec![UNLABELED_CLASS, "Copepoda", "feces"]);
    assert_eq!(encoding.encode(None), Some(0));
    assert_eq!(encoding.encode(Some("feces")), Some(2));
    assert_eq!(encoding.encode(Some("detritus")), None);
    assert_eq!(encoding.decode(1), Some("Copepoda"));
    let restored = LabelEncoding::from_json(&encoding.to_json())?;
    assert_eq!(restored, encoding);
    assert!(LabelEncoding::from_json(r#"{"classes":["b","a"]}"#).is_err());
    assert!(LabelEncoding::from_json("not json").is_err());
    Ok(())
}
