//! Images from an `imgs/` directory and from `imgs.zip` (deflated, stored, ZIP64), and JPEG header checks.

mod common;

use bytes::Bytes;
use common::{jpeg_claiming_size, tiny_jpeg, zip_archive};
use futures::StreamExt;
use plankton_dataset::layout::IMAGES_ZIP;
use plankton_dataset::{
    DatasetError, ImageHeaderError, ImageSource, check_image_header, fetch_image, fetch_images,
    list_image_objids, open_image_source, open_location,
};

#[tokio::test]
async fn directory_images_are_fetched_listed_and_missing_ones_named() -> anyhow::Result<()> {
    let temporary = tempfile::tempdir()?;
    let location = open_location(temporary.path().to_str().unwrap())?;
    let first = tiny_jpeg(5, 7);
    let second = tiny_jpeg(9, 3);
    location
        .put_bytes("imgs/101.jpg", Bytes::from(first.clone()))
        .await?;
    location
        .put_bytes("imgs/102.jpg", Bytes::from(second.clone()))
        .await?;
    location
        .put_bytes("imgs/notes.txt", Bytes::from_static(b"not an image"))
        .await?;
    let source = open_image_source(&location).await?;
    assert!(matches!(source, ImageSource::Directory));
    assert_eq!(
        fetch_image(&location, &source, 101).await?,
        Bytes::from(first)
    );
    assert_eq!(list_image_objids(&location, &source).await?, vec![101, 102]);
    match fetch_image(&location, &source, 999).await {
        Err(DatasetError::ImageNotFound { objid: 999, object }) => {
            assert!(object.ends_with("imgs/999.jpg"), "{object}")
        }
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
    let mut fetched: Vec<(i64, bool)> = fetch_images(&location, &source, vec![102, 999, 101], 2)
        .map(|(objid, result)| (objid, result.is_ok()))
        .collect()
        .await;
    fetched.sort_unstable();
    assert_eq!(fetched, vec![(101, true), (102, true), (999, false)]);
    Ok(())
}

#[tokio::test]
async fn zip_members_are_fetched_with_ranged_reads() -> anyhow::Result<()> {
    for (name, stored, large_file) in [
        ("deflated", false, false),
        ("stored", true, false),
        ("zip64-local", false, true),
    ] {
        let location = open_location(&format!("memory://images-zip-{name}"))?;
        let jpegs: Vec<(i64, Vec<u8>)> = (1..=5)
            .map(|objid| (objid * 10, tiny_jpeg(4 + objid as u16, 6)))
            .collect();
        let mut members: Vec<(String, Vec<u8>)> = jpegs
            .iter()
            .map(|(objid, jpeg)| (format!("imgs/{objid}.jpg"), jpeg.clone()))
            .collect();
        members.push(("imgs/readme.txt".to_string(), b"hello".to_vec()));
        location
            .put_bytes(
                IMAGES_ZIP,
                Bytes::from(zip_archive(&members, stored, large_file)),
            )
            .await?;

        let source = open_image_source(&location).await?;
        let ImageSource::Zip(index) = &source else {
            panic!("{name}: expected a zip source")
        };
        assert_eq!(index.total_entries, 6, "{name}");
        assert_eq!(index.ignored_entries.len(), 1, "{name}");
        assert_eq!(
            list_image_objids(&location, &source).await?,
            vec![10, 20, 30, 40, 50],
            "{name}"
        );
        for (objid, jpeg) in &jpegs {
            assert_eq!(
                fetch_image(&location, &source, *objid).await?.as_ref(),
                jpeg.as_slice(),
                "{name} {objid}"
            );
        }
        assert!(matches!(
            fetch_image(&location, &source, 11).await,
            Err(DatasetError::ImageNotFound { objid: 11, .. })
        ));
    }
    Ok(())
}

#[tokio::test]
async fn corrupt_zip_members_and_archives_are_errors() -> anyhow::Result<()> {
    let location = open_location("memory://images-zip-corrupt")?;
    let payload = vec![7u8; 300];
    let mut archive = zip_archive(&[("imgs/1.jpg".to_string(), payload.clone())], true, false);
    // Flip one data byte of the stored member: local header (30) + name (10) comes first.
    archive[30 + 10 + 5] ^= 0xFF;
    location.put_bytes(IMAGES_ZIP, Bytes::from(archive)).await?;
    let source = open_image_source(&location).await?;
    match fetch_image(&location, &source, 1).await {
        Err(DatasetError::Zip { object, reason }) => {
            assert!(object.ends_with("imgs.zip:imgs/1.jpg"), "{object}");
            assert!(reason.contains("CRC-32"), "{reason}");
        }
        other => panic!("expected a CRC error, got {other:?}"),
    }
    location
        .put_bytes(
            IMAGES_ZIP,
            Bytes::from_static(b"this is not a zip archive at all, just text"),
        )
        .await?;
    assert!(matches!(
        open_image_source(&location).await,
        Err(DatasetError::Zip { .. })
    ));
    Ok(())
}

/// More than 65,535 entries forces the ZIP64 end-of-central-directory record, as in the real archive.
#[tokio::test]
async fn zip64_archive_with_more_than_65535_entries() -> anyhow::Result<()> {
    const ENTRIES: i64 = 70_000;
    let members: Vec<(String, Vec<u8>)> = (0..ENTRIES)
        .map(|objid| (format!("imgs/{objid}.jpg"), objid.to_le_bytes().to_vec()))
        .collect();
    let archive = zip_archive(&members, true, false);
    let location = open_location("memory://images-zip64")?;
    location.put_bytes(IMAGES_ZIP, Bytes::from(archive)).await?;
    let source = open_image_source(&location).await?;
    let ImageSource::Zip(index) = &source else {
        panic!("expected a zip source")
    };
    assert!(index.is_zip64);
    assert_eq!(index.total_entries, ENTRIES as u64);
    assert_eq!(index.image_count(), ENTRIES as usize);
    for objid in [0, 1, 65_535, 65_536, ENTRIES - 1] {
        assert_eq!(
            fetch_image(&location, &source, objid).await?.as_ref(),
            objid.to_le_bytes(),
            "objid {objid}"
        );
    }
    Ok(())
}

#[test]
fn header_check_accepts_good_jpegs_and_refuses_bad_ones() {
    assert_eq!(check_image_header(&tiny_jpeg(13, 21)), Ok((13, 21)));
    assert_eq!(check_image_header(&[]), Err(ImageHeaderError::Empty));
    assert_eq!(
        check_image_header(b"GIF89a...."),
        Err(ImageHeaderError::NotJpeg)
    );
    assert!(matches!(
        check_image_header(&[0xFF, 0xD8, 0xFF, 0x12, 0x00, 0x02, 0x99, 0x42, 0x17]),
        Err(ImageHeaderError::CorruptHeader(_))
    ));
    let whole = tiny_jpeg(64, 64);
    let truncated = &whole[..whole.len() - 40];
    assert!(
        matches!(
            check_image_header(truncated),
            Err(ImageHeaderError::Truncated { .. })
        ),
        "{:?}",
        check_image_header(truncated)
    );
    let header_only = &whole[..20];
    assert!(check_image_header(header_only).is_err());
    match check_image_header(&jpeg_claiming_size(20_000, 20_000)) {
        Err(ImageHeaderError::TooLarge {
            width: 20_000,
            height: 20_000,
            ..
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // 9000 x 9000 is within the side limit but over 40 megapixels.
    assert!(matches!(
        check_image_header(&jpeg_claiming_size(9_000, 9_000)),
        Err(ImageHeaderError::TooLarge { .. })
    ));
    assert_eq!(
        check_image_header(&jpeg_claiming_size(972, 739)),
        Ok((972, 739))
    );
}
