//! Draws the stats plots for the reference class counts (a visual check of the symlog axis).

use plankton_dataset::layout::{REFERENCE_CLASS_COUNTS, REFERENCE_UNLABELED, UNLABELED_CLASS};
use plankton_dataset::stats::{ClassCount, summarize_sizes};
use plankton_dataset::{DatasetStats, ReadSummary, write_plots};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "plots".to_string());
    let mut class_counts: Vec<ClassCount> = REFERENCE_CLASS_COUNTS
        .iter()
        .map(|(name, count)| ClassCount {
            name: name.to_string(),
            count: *count,
            biological: plankton_dataset::layout::is_biological_class(name),
        })
        .collect();
    class_counts.push(ClassCount {
        name: UNLABELED_CLASS.to_string(),
        count: REFERENCE_UNLABELED,
        biological: false,
    });
    class_counts.sort_by_key(|class| std::cmp::Reverse(class.count));
    let image_sizes: Vec<(u32, u32)> = (0..5_000u32)
        .map(|index| (2 + (index * 7919) % 970, 2 + (index * 104_729) % 737))
        .collect();
    let stats = DatasetStats {
        url: "reference".to_string(),
        objects: class_counts.iter().map(|class| class.count).sum(),
        class_counts,
        unlabeled: REFERENCE_UNLABELED,
        image_source: "none".to_string(),
        images_present: image_sizes.len() as u64,
        size_summary: summarize_sizes(&image_sizes),
        image_sizes,
        missing_images: Vec::new(),
        unlisted_images: Vec::new(),
        bad_images: Vec::new(),
        meta_summary: ReadSummary::default(),
    };
    print!("{stats}");
    for path in write_plots(&stats, std::path::Path::new(&out_dir))? {
        println!("wrote {}", path.display());
    }
    Ok(())
}
