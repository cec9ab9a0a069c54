//! Shards of preprocessed images (with their transformed native features when the model takes them) and the
//! per-epoch batch order, with u8 augmentation.
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{AugmentationMode, IMAGE_CHANNELS, IMAGE_LEN, IMAGE_SIZE};
use crate::error::TrainError;

/// Largest random shift of an augmented image, in pixels.
pub const MAX_SHIFT_PIXELS: i64 = 4;

/// Images of a shard kept outside the heap, e.g. a record file on disk read image by image, or images still
/// streaming in: image `index` is `IMAGE_LEN` u8 CHW bytes.
pub trait ImageRecords: Send + Sync + std::fmt::Debug {
    /// Appends image `index`'s bytes to `out`, or fails naming what could not be read (leaving `out` as it
    /// was). For records still being filled, callers first [`ImageRecords::wait_for`] it and check
    /// [`ImageRecords::contains`].
    fn append_image(&self, index: usize, out: &mut Vec<u8>) -> Result<(), String>;

    /// Blocks until every image of `indices` is readable or known to be missing, for records still being
    /// filled while training runs (streaming ingestion); fails, naming what it waited for, when they cannot
    /// be delivered. Records complete from the start return at once.
    fn wait_for(&self, _indices: &[usize]) -> Result<(), String> {
        Ok(())
    }

    /// Whether image `index` exists: false for an image that turned out unreadable after the shard's
    /// length was fixed (streaming ingestion), which batches then leave out.
    fn contains(&self, _index: usize) -> bool {
        true
    }
}

/// The preprocessed images of one virtual shard of a split: `labels.len()` u8 CHW images, held in `images`
/// or, when `records` is set, read from it batch by batch; `features` (when `feature_width > 0`) each image's
/// transformed native features.
#[derive(Debug, Clone, Default)]
pub struct ShardData {
    /// `labels.len() * IMAGE_LEN` bytes; empty when `records` holds the images.
    pub images: Vec<u8>,
    /// Class index of each image.
    pub labels: Vec<u32>,
    /// Where the images are when they are not in `images`.
    pub records: Option<std::sync::Arc<dyn ImageRecords>>,
    /// `labels.len() * feature_width` values, row-major (empty when `feature_width` is 0).
    pub features: Vec<f32>,
    /// Feature values per image; 0 when the shard carries no features.
    pub feature_width: usize,
}

impl ShardData {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the shard holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// A shard whose images are read from `records`.
    pub fn from_records(records: std::sync::Arc<dyn ImageRecords>, labels: Vec<u32>) -> Self {
        ShardData {
            images: Vec::new(),
            labels,
            records: Some(records),
            ..ShardData::default()
        }
    }

    /// Blocks until the images `indices` can be read (at once unless the records are still streaming in).
    pub fn wait_for(&self, indices: &[usize]) -> Result<(), TrainError> {
        match &self.records {
            Some(records) => records
                .wait_for(indices)
                .map_err(TrainError::ImagesUnavailable),
            None => Ok(()),
        }
    }

    /// Whether image `index` exists (false only for a streamed image that turned out unreadable).
    pub fn contains(&self, index: usize) -> bool {
        self.records
            .as_ref()
            .is_none_or(|records| records.contains(index))
    }

    /// Appends the u8 CHW bytes of image `index` to `out`.
    pub fn append_image(&self, index: usize, out: &mut Vec<u8>) -> Result<(), TrainError> {
        match &self.records {
            Some(records) => records
                .append_image(index, out)
                .map_err(TrainError::ImagesUnavailable),
            None => {
                out.extend_from_slice(&self.images[index * IMAGE_LEN..(index + 1) * IMAGE_LEN]);
                Ok(())
            }
        }
    }

    /// The images `range` as one contiguous slice: borrowed from `images`, or copied into `scratch` from the
    /// records.
    pub fn images_in<'a>(
        &'a self,
        range: std::ops::Range<usize>,
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], TrainError> {
        match &self.records {
            None => Ok(&self.images[range.start * IMAGE_LEN..range.end * IMAGE_LEN]),
            Some(records) => {
                scratch.clear();
                for index in range {
                    records
                        .append_image(index, scratch)
                        .map_err(TrainError::ImagesUnavailable)?;
                }
                Ok(scratch)
            }
        }
    }

    /// The transformed features of image `index` (empty when the shard carries none).
    pub fn feature_row(&self, index: usize) -> &[f32] {
        &self.features[index * self.feature_width..(index + 1) * self.feature_width]
    }

    /// Checks sizes and labels; `shard` names it in the error ("train", "test").
    pub fn validate(&self, shard: &'static str, num_classes: usize) -> Result<(), TrainError> {
        if self.features.len() != self.labels.len() * self.feature_width {
            return Err(TrainError::InvalidShard {
                shard,
                reason: format!(
                    "{} feature values for {} labels (expected {} per image)",
                    self.features.len(),
                    self.labels.len(),
                    self.feature_width
                ),
            });
        }
        let expected_heap_bytes = if self.records.is_some() {
            0
        } else {
            self.labels.len() * IMAGE_LEN
        };
        if self.images.len() != expected_heap_bytes {
            return Err(TrainError::InvalidShard {
                shard,
                reason: format!(
                    "{} image bytes for {} labels (expected {} bytes per image)",
                    self.images.len(),
                    self.labels.len(),
                    IMAGE_LEN
                ),
            });
        }
        if let Some((row, label)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, label)| **label as usize >= num_classes)
        {
            return Err(TrainError::InvalidShard {
                shard,
                reason: format!(
                    "label {label} of image {row} is not below num_classes {num_classes}"
                ),
            });
        }
        Ok(())
    }
}

/// One step's images (u8 CHW, possibly augmented), labels and transformed features (row-major, empty when
/// the shards carry none).
#[derive(Debug, Clone, Default)]
pub struct AssembledBatch {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    pub features: Vec<f32>,
}

impl AssembledBatch {
    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.images.clear();
        self.labels.clear();
        self.features.clear();
    }
}

/// The order in which one virtual shard is visited during one epoch: a permutation seeded by
/// (seed, virtual shard, epoch), read `batch_size` at a time and wrapping around when the shard is
/// shorter than `steps_per_epoch * batch_size`. Each step's augmentation draws from its own generator
/// seeded by (seed, virtual shard, epoch, step), so any step can be assembled on its own (a rank that
/// takes a shard over mid-epoch assembles exactly what its previous owner would have).
#[derive(Debug)]
pub struct EpochBatches {
    order: Vec<usize>,
    epoch_seed: u64,
    batch_size: usize,
    augmentation: AugmentationMode,
    augmented_classes: Vec<bool>,
}

fn splitmix(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    value ^ (value >> 31)
}

/// Mixes seed, virtual shard and epoch into one generator seed (splitmix64 finalizer over each word),
/// in a domain of its own so the batch order draws from a stream apart from the subsample's and split's.
fn mix_seed(seed: u64, virtual_shard: usize, epoch: u32) -> u64 {
    const ORDER_DOMAIN: u64 = 0x4241_5443_484f_5244; // "BATCHORD"
    splitmix(splitmix(splitmix(seed ^ ORDER_DOMAIN) ^ virtual_shard as u64) ^ epoch as u64)
}

/// The augmentation seed of one step, distinct from the epoch's shuffle seed.
fn step_seed(epoch_seed: u64, step: usize) -> u64 {
    const STEP_DOMAIN: u64 = 0x5354_4550_5345_4544; // "STEPSEED"
    splitmix(splitmix(epoch_seed ^ STEP_DOMAIN) ^ step as u64)
}

/// Which classes are augmented: all, none, or those whose weight is above the median weight.
pub fn augmented_classes(mode: AugmentationMode, class_weights: &[f32]) -> Vec<bool> {
    match mode {
        AugmentationMode::None => vec![false; class_weights.len()],
        AugmentationMode::All => vec![true; class_weights.len()],
        AugmentationMode::RareClasses => {
            let mut sorted_weights = class_weights.to_vec();
            sorted_weights.sort_by(f32::total_cmp);
            let middle = sorted_weights.len() / 2;
            let median = if sorted_weights.is_empty() {
                0.0
            } else if sorted_weights.len() % 2 == 1 {
                sorted_weights[middle]
            } else {
                (sorted_weights[middle - 1] + sorted_weights[middle]) / 2.0
            };
            class_weights
                .iter()
                .map(|weight| *weight > median)
                .collect()
        }
    }
}

impl EpochBatches {
    /// The batches of `epoch` (0-based) for `virtual_shard` over a shard of `shard_len` images.
    pub fn new(
        shard_len: usize,
        batch_size: usize,
        seed: u64,
        virtual_shard: usize,
        epoch: u32,
        augmentation: AugmentationMode,
        class_weights: &[f32],
    ) -> Self {
        let epoch_seed = mix_seed(seed, virtual_shard, epoch);
        let mut shuffle_generator = ChaCha8Rng::seed_from_u64(epoch_seed);
        let mut order: Vec<usize> = (0..shard_len).collect();
        order.shuffle(&mut shuffle_generator);
        EpochBatches {
            order,
            epoch_seed,
            batch_size,
            augmentation,
            augmented_classes: augmented_classes(augmentation, class_weights),
        }
    }

    /// The shard indices of step `step`'s images, in batch order (empty for an empty shard).
    pub fn step_indices(&self, step: usize) -> impl Iterator<Item = usize> + '_ {
        let positions = if self.order.is_empty() {
            0..0
        } else {
            step * self.batch_size..(step + 1) * self.batch_size
        };
        positions.map(|position| self.order[position % self.order.len()])
    }

    /// Replaces `batch` by step `step`'s images (a pure function of seed, shard, epoch and step).
    pub fn assemble(
        &self,
        shard: &ShardData,
        step: usize,
        batch: &mut AssembledBatch,
    ) -> Result<(), TrainError> {
        batch.clear();
        self.append(shard, step, batch)
    }

    /// Appends step `step`'s images to `batch`: a rank owning several virtual shards appends each
    /// shard's batch in ascending shard index to form its local batch.
    pub fn append(
        &self,
        shard: &ShardData,
        step: usize,
        batch: &mut AssembledBatch,
    ) -> Result<(), TrainError> {
        if self.order.is_empty() {
            return Ok(());
        }
        debug_assert_eq!(shard.len(), self.order.len());
        let mut generator = ChaCha8Rng::seed_from_u64(step_seed(self.epoch_seed, step));
        batch.images.reserve(self.batch_size * IMAGE_LEN);
        batch.labels.reserve(self.batch_size);
        for image_index in self.step_indices(step) {
            if !shard.contains(image_index) {
                continue;
            }
            let label = shard.labels[image_index];
            let start = batch.images.len();
            shard.append_image(image_index, &mut batch.images)?;
            batch.labels.push(label);
            batch
                .features
                .extend_from_slice(shard.feature_row(image_index));
            let augment = self.augmentation != AugmentationMode::None
                && self
                    .augmented_classes
                    .get(label as usize)
                    .copied()
                    .unwrap_or(false);
            if augment {
                let transform = RandomTransform::draw(&mut generator);
                transform.apply(&mut batch.images[start..start + IMAGE_LEN]);
            }
        }
        Ok(())
    }
}

/// A random flip / 90-degree rotation / shift of a square image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomTransform {
    pub flip_horizontal: bool,
    pub flip_vertical: bool,
    /// Counter-clockwise quarter turns, 0..=3.
    pub quarter_turns: u8,
    pub shift_x: i64,
    pub shift_y: i64,
}

impl RandomTransform {
    /// Draws flips (p = 0.5 each), a rotation and a shift of up to 4 px on each axis.
    pub fn draw(generator: &mut impl Rng) -> Self {
        RandomTransform {
            flip_horizontal: generator.random_bool(0.5),
            flip_vertical: generator.random_bool(0.5),
            quarter_turns: generator.random_range(0..4u8),
            shift_x: generator.random_range(-MAX_SHIFT_PIXELS..=MAX_SHIFT_PIXELS),
            shift_y: generator.random_range(-MAX_SHIFT_PIXELS..=MAX_SHIFT_PIXELS),
        }
    }

    /// Where output pixel (x, y) reads from in the source, edges replicated.
    fn source_of(&self, x: i64, y: i64) -> (usize, usize) {
        let last = IMAGE_SIZE as i64 - 1;
        let (mut source_x, mut source_y) = (
            (x - self.shift_x).clamp(0, last),
            (y - self.shift_y).clamp(0, last),
        );
        for _ in 0..self.quarter_turns {
            (source_x, source_y) = (last - source_y, source_x);
        }
        if self.flip_horizontal {
            source_x = last - source_x;
        }
        if self.flip_vertical {
            source_y = last - source_y;
        }
        (source_x as usize, source_y as usize)
    }

    /// Transforms one u8 CHW image in place.
    pub fn apply(&self, image: &mut [u8]) {
        debug_assert_eq!(image.len(), IMAGE_LEN);
        let identity = *self
            == RandomTransform {
                flip_horizontal: false,
                flip_vertical: false,
                quarter_turns: 0,
                shift_x: 0,
                shift_y: 0,
            };
        if identity {
            return;
        }
        let plane_len = IMAGE_SIZE * IMAGE_SIZE;
        let mut source_plane = vec![0u8; plane_len];
        let source_index: Vec<usize> = (0..plane_len)
            .map(|pixel| {
                let (source_x, source_y) =
                    self.source_of((pixel % IMAGE_SIZE) as i64, (pixel / IMAGE_SIZE) as i64);
                source_y * IMAGE_SIZE + source_x
            })
            .collect();
        for channel in 0..IMAGE_CHANNELS {
            let plane = &mut image[channel * plane_len..(channel + 1) * plane_len];
            source_plane.copy_from_slice(plane);
            for (output, source) in plane.iter_mut().zip(&source_index) {
                *output = source_plane[*source];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard_with_ids(count: usize) -> ShardData {
        let mut images = Vec::with_capacity(count * IMAGE_LEN);
        for index in 0..count {
            images.extend(std::iter::repeat_n(index as u8, IMAGE_LEN));
        }
        ShardData {
            images,
            labels: (0..count as u32).map(|index| index % 2).collect(),
            records: None,
            features: (0..count * 2).map(|value| value as f32).collect(),
            feature_width: 2,
        }
    }

    #[test]
    fn an_epoch_visits_every_image_once_then_wraps() {
        let shard = shard_with_ids(10);
        let batches = EpochBatches::new(10, 4, 7, 0, 0, AugmentationMode::None, &[1.0, 1.0]);
        let mut batch = AssembledBatch::default();
        let mut seen = Vec::new();
        for step in 0..3 {
            batches
                .assemble(&shard, step, &mut batch)
                .expect("assemble");
            assert_eq!(batch.labels.len(), 4);
            // Each sample's features travel with its image (image `i` has features `[2i, 2i + 1]`).
            for (sample, image) in batch.images.chunks(IMAGE_LEN).enumerate() {
                assert_eq!(batch.features[sample * 2], 2.0 * image[0] as f32);
            }
            seen.extend(
                batch
                    .images
                    .chunks(IMAGE_LEN)
                    .map(|image| image[0] as usize),
            );
        }
        let mut first_pass = seen[..10].to_vec();
        first_pass.sort();
        assert_eq!(first_pass, (0..10).collect::<Vec<_>>());
        assert_eq!(seen[10..], seen[..2]);
    }

    /// A job's batch order is part of what its seed reproduces: a change to the order's stream changes every
    /// job's model, so it must be deliberate (and this pin updated with it).
    #[test]
    fn the_order_of_a_seed_is_pinned() {
        let batches = EpochBatches::new(12, 12, 42, 1, 2, AugmentationMode::None, &[]);
        let order: Vec<usize> = batches.step_indices(0).collect();
        assert_eq!(order, PINNED_ORDER);
    }

    const PINNED_ORDER: [usize; 12] = [8, 9, 5, 10, 3, 0, 2, 1, 11, 7, 6, 4];

    #[test]
    fn step_indices_are_the_images_a_step_assembles() {
        let shard = shard_with_ids(10);
        let batches = EpochBatches::new(10, 4, 7, 1, 2, AugmentationMode::None, &[1.0, 1.0]);
        let mut batch = AssembledBatch::default();
        for step in 0..4 {
            batches
                .assemble(&shard, step, &mut batch)
                .expect("assemble");
            let expected: Vec<u8> = batches
                .step_indices(step)
                .flat_map(|index| shard.images[index * IMAGE_LEN..(index + 1) * IMAGE_LEN].to_vec())
                .collect();
            assert_eq!(batch.images, expected, "step {step}");
        }
        let empty = EpochBatches::new(0, 4, 7, 0, 0, AugmentationMode::None, &[]);
        assert_eq!(empty.step_indices(3).count(), 0);
    }

    #[test]
    fn order_depends_on_virtual_shard_and_epoch() {
        let order = |virtual_shard, epoch| {
            EpochBatches::new(50, 1, 3, virtual_shard, epoch, AugmentationMode::None, &[]).order
        };
        assert_eq!(order(0, 0), order(0, 0));
        assert_ne!(order(0, 0), order(1, 0));
        assert_ne!(order(0, 0), order(0, 1));
    }

    #[test]
    fn any_step_assembles_alone_and_shards_append_in_order() {
        let shard = shard_with_ids(12);
        let weights = [1.0, 1.0];
        let in_order = EpochBatches::new(12, 3, 5, 1, 2, AugmentationMode::All, &weights);
        let mut batch = AssembledBatch::default();
        let mut replayed = Vec::new();
        for step in 0..4 {
            in_order
                .assemble(&shard, step, &mut batch)
                .expect("assemble");
            replayed.push(batch.clone());
        }
        let fresh = EpochBatches::new(12, 3, 5, 1, 2, AugmentationMode::All, &weights);
        fresh.assemble(&shard, 3, &mut batch).expect("assemble");
        assert_eq!(batch.images, replayed[3].images);
        assert_eq!(batch.labels, replayed[3].labels);
        assert_ne!(replayed[2].images, replayed[3].images);

        let other_shard = EpochBatches::new(12, 3, 5, 0, 2, AugmentationMode::All, &weights);
        let mut combined = AssembledBatch::default();
        other_shard
            .append(&shard, 3, &mut combined)
            .expect("append");
        fresh.append(&shard, 3, &mut combined).expect("append");
        let mut alone = AssembledBatch::default();
        other_shard
            .assemble(&shard, 3, &mut alone)
            .expect("assemble");
        assert_eq!(combined.labels.len(), 6);
        assert_eq!(combined.images[..3 * IMAGE_LEN], alone.images[..]);
        assert_eq!(combined.images[3 * IMAGE_LEN..], replayed[3].images[..]);
        assert_eq!(combined.features.len(), 6 * 2);
    }

    #[test]
    fn rare_classes_are_those_above_the_median_weight() {
        assert_eq!(
            augmented_classes(AugmentationMode::RareClasses, &[0.5, 4.0, 1.0, 8.0]),
            vec![false, true, false, true]
        );
        assert_eq!(
            augmented_classes(AugmentationMode::All, &[0.5, 4.0]),
            vec![true, true]
        );
    }

    #[test]
    fn transforms_move_pixels_as_described() {
        let mut image = vec![0u8; IMAGE_LEN];
        image[0] = 200; // channel 0, x 0, y 0
        let mut flipped = image.clone();
        RandomTransform {
            flip_horizontal: true,
            flip_vertical: false,
            quarter_turns: 0,
            shift_x: 0,
            shift_y: 0,
        }
        .apply(&mut flipped);
        assert_eq!(flipped[IMAGE_SIZE - 1], 200);
        assert_eq!(flipped.iter().filter(|value| **value == 200).count(), 1);

        let mut rotated = image.clone();
        RandomTransform {
            flip_horizontal: false,
            flip_vertical: false,
            quarter_turns: 1,
            shift_x: 0,
            shift_y: 0,
        }
        .apply(&mut rotated);
        assert_eq!(rotated.iter().filter(|value| **value == 200).count(), 1);
        assert_eq!(rotated[(IMAGE_SIZE - 1) * IMAGE_SIZE], 200);

        let mut centre = vec![0u8; IMAGE_LEN];
        centre[10 * IMAGE_SIZE + 10] = 99;
        RandomTransform {
            flip_horizontal: false,
            flip_vertical: false,
            quarter_turns: 0,
            shift_x: 3,
            shift_y: -2,
        }
        .apply(&mut centre);
        assert_eq!(centre[8 * IMAGE_SIZE + 13], 99);
    }

    #[test]
    fn bad_shards_are_rejected_with_the_row() {
        let mut shard = shard_with_ids(3);
        shard.labels[2] = 9;
        let error = shard.validate("train", 2).unwrap_err().to_string();
        assert!(error.contains("image 2"), "{error}");
        shard.images.pop();
        assert!(shard.validate("train", 10).is_err());
    }
}
