//! `dataset stats` on a hand-made dataset with every kind of bad image, and its plots.

mod common;

use bytes::Bytes;
use common::{
    jpeg_claiming_size, meta_csv, meta_line, tiny_jpeg, write_directory_dataset, zip_archive,
};
use plankton_dataset::layout::{IMAGES_ZIP, META_FILE, UNLABELED_CLASS};
use plankton_dataset::{compute_stats, open_location, write_plots};

fn bad_dataset_lines() -> Vec<String> {
    vec![
        meta_line(1, "detritus"),
        meta_line(2, "detritus"),
        meta_line(3, "detritus"),
        meta_line(4, "feces"),
        meta_line(5, ""),
        meta_line(6, "feces"),    // corrupt JPEG
        meta_line(7, "feces"),    // zero bytes
        meta_line(8, "Copepoda"), // decompression bomb header
        meta_line(9, "Copepoda"), // listed but missing
        "10,too,few".to_string(), // malformed row (line 11)
    ]
}

fn bad_dataset_images() -> Vec<(i64, Vec<u8>)> {
    let whole = tiny_jpeg(40, 40);
    vec![
        (1, tiny_jpeg(10, 20)),
        (2, tiny_jpeg(30, 20)),
        (3, tiny_jpeg(10, 20)),
        (4, tiny_jpeg(50, 60)),
        (5, tiny_jpeg(20, 40)),
        (6, whole[..whole.len() / 2].to_vec()),
        (7, Vec::new()),
        (8, jpeg_claiming_size(20_000, 20_000)),
        (42, tiny_jpeg(8, 8)), // present but not listed
    ]
}

fn check_bad_dataset_stats(stats: &plankton_dataset::DatasetStats) {
    assert_eq!(stats.objects, 9);
    assert_eq!(stats.unlabeled, 1);
    let counts: Vec<(&str, u64)> = stats
        .class_counts
        .iter()
        .map(|class| (class.name.as_str(), class.count))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("detritus", 3),
            ("feces", 3),
            ("Copepoda", 2),
            (UNLABELED_CLASS, 1)
        ]
    );
    let biological: Vec<bool> = stats
        .class_counts
        .iter()
        .map(|class| class.biological)
        .collect();
    assert_eq!(biological, vec![false, false, true, false]);
    assert_eq!(stats.images_present, 9);
    assert_eq!(stats.missing_images, vec![9]);
    assert_eq!(stats.unlisted_images, vec![42]);
    let bad: Vec<&str> = stats
        .bad_images
        .iter()
        .map(|item| item.location.as_str())
        .collect();
    assert_eq!(bad, vec!["imgs/6.jpg", "imgs/7.jpg", "imgs/8.jpg"]);
    assert!(
        stats.bad_images[0].reason.contains("truncated"),
        "{:?}",
        stats.bad_images[0]
    );
    assert!(
        stats.bad_images[1].reason.contains("empty"),
        "{:?}",
        stats.bad_images[1]
    );
    assert!(
        stats.bad_images[2].reason.contains("20000x20000"),
        "{:?}",
        stats.bad_images[2]
    );
    assert_eq!(stats.meta_summary.skipped.len(), 1);
    assert_eq!(stats.meta_summary.skipped[0].location, "meta.csv:11");
    let sizes = stats.size_summary.expect("sizes of the good images");
    assert_eq!(stats.image_sizes.len(), 5);
    assert_eq!(
        (sizes.min_width, sizes.median_width, sizes.max_width),
        (10, 20, 50)
    );
    assert_eq!(
        (sizes.min_height, sizes.median_height, sizes.max_height),
        (20, 20, 60)
    );
    assert_eq!(sizes.distinct_sizes, 4);
    let report = stats.to_string();
    assert!(report.contains("detritus"), "{report}");
    assert!(
        report
            .lines()
            .any(|line| line.starts_with("Copepoda") && line.ends_with("biological")),
        "{report}"
    );
    assert!(report.contains("meta.csv:11"), "{report}");
    assert!(report.contains("imgs/8.jpg"), "{report}");
    assert!(report.contains("distinct sizes: 4"), "{report}");
}

#[tokio::test]
async fn stats_count_classes_sizes_and_every_kind_of_bad_image() -> anyhow::Result<()> {
    let temporary = tempfile::tempdir()?;
    let location = open_location(&format!(
        "file://{}",
        temporary.path().join("dataset").display()
    ))?;
    write_directory_dataset(
        &location,
        &meta_csv(&bad_dataset_lines()),
        &bad_dataset_images(),
    )
    .await;
    let stats = compute_stats(&location, 4).await?;
    assert_eq!(stats.image_source, "directory");
    check_bad_dataset_stats(&stats);

    let plot_directory = temporary.path().join("plots");
    let plots = write_plots(&stats, &plot_directory)?;
    assert_eq!(plots.len(), 2);
    for plot in &plots {
        let svg = std::fs::read_to_string(plot)?;
        assert!(
            svg.starts_with("<svg") || svg.contains("<svg"),
            "{}",
            plot.display()
        );
        assert!(svg.contains("<rect"), "{}", plot.display());
    }
    let class_plot = std::fs::read_to_string(&plots[0])?;
    assert!(class_plot.contains("Copepoda"));
    assert!(class_plot.contains(UNLABELED_CLASS));
    Ok(())
}

#[tokio::test]
async fn stats_read_the_same_from_a_zip_in_memory() -> anyhow::Result<()> {
    let location = open_location("memory://stats-zip/flowcam")?;
    location
        .put_bytes(META_FILE, Bytes::from(meta_csv(&bad_dataset_lines())))
        .await?;
    let members: Vec<(String, Vec<u8>)> = bad_dataset_images()
        .into_iter()
        .map(|(objid, bytes)| (format!("imgs/{objid}.jpg"), bytes))
        .collect();
    location
        .put_bytes(IMAGES_ZIP, Bytes::from(zip_archive(&members, false, false)))
        .await?;
    let stats = compute_stats(&location, 3).await?;
    assert_eq!(stats.image_source, "zip");
    check_bad_dataset_stats(&stats);
    Ok(())
}

#[tokio::test]
async fn stats_of_an_empty_dataset_plot_without_failing() -> anyhow::Result<()> {
    let location = open_location("memory://stats-empty")?;
    location
        .put_bytes(META_FILE, Bytes::from(meta_csv(&[])))
        .await?;
    let stats = compute_stats(&location, 2).await?;
    assert_eq!(stats.objects, 0);
    assert!(stats.size_summary.is_none());
    assert!(stats.imbalance_ratio().is_none());
    let temporary = tempfile::tempdir()?;
    assert_eq!(write_plots(&stats, temporary.path())?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn local_dataset_without_an_images_folder_reports_every_image_missing() -> anyhow::Result<()>
{
    let temporary = tempfile::tempdir()?;
    let location = open_location(temporary.path().to_str().unwrap())?;
    write_directory_dataset(
        &location,
        &meta_csv(&[meta_line(1, "feces"), meta_line(2, "")]),
        &[],
    )
    .await;
    let stats = compute_stats(&location, 2).await?;
    assert_eq!(stats.missing_images, vec![1, 2]);
    assert_eq!(stats.images_present, 0);
    Ok(())
}
