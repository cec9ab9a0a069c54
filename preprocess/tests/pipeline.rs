//! Pipeline behaviour: bad input is an error (never a panic), tiny images work, modes, batches, cache.

use plankton_preprocess::{
    CacheError, CachedShard, IMAGE_LEN, INPUT_SIZE, PreprocessConfig, PreprocessError, ResizeMode,
    ShardCache, decode_grey, preprocess_batch_into, preprocess_image, preprocess_many, to_unit_f32,
};

const PLANE: usize = INPUT_SIZE * INPUT_SIZE;

/// A dark ellipse on a light background, like a FlowCam vignette.
fn vignette(width: usize, height: usize) -> Vec<u8> {
    let mut pixels = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            let dx = (x as f64 + 0.5 - width as f64 / 2.0) / (width as f64 / 3.0);
            let dy = (y as f64 + 0.5 - height as f64 / 2.0) / (height as f64 / 3.0);
            pixels.push(if dx * dx + dy * dy <= 1.0 { 30 } else { 225 });
        }
    }
    pixels
}

fn encode_grey_jpeg(pixels: &[u8], width: usize, height: usize) -> Vec<u8> {
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, 92)
        .encode(
            pixels,
            width as u16,
            height as u16,
            jpeg_encoder::ColorType::Luma,
        )
        .expect("encode test jpeg");
    jpeg
}

/// Rewrites the frame header (SOF0) of a baseline JPEG to claim other dimensions.
fn with_claimed_size(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut patched = jpeg.to_vec();
    let sof = patched
        .windows(2)
        .position(|pair| pair == [0xFF, 0xC0])
        .expect("baseline jpeg has SOF0");
    // FF C0, length (2), precision (1), height (2), width (2)
    patched[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    patched[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    patched
}

#[test]
fn empty_input_is_an_error() {
    let error = preprocess_image(&[], &PreprocessConfig::default()).unwrap_err();
    assert_eq!(error, PreprocessError::Empty);
}

#[test]
fn non_jpeg_input_is_an_error() {
    let error = preprocess_image(b"P5\n2 2\n255\n....", &PreprocessConfig::default()).unwrap_err();
    assert!(
        matches!(error, PreprocessError::NotJpeg { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("[50, 35, 0a, 32]"),
        "message shows the first bytes: {error}"
    );
    // SOI followed by garbage
    let error = preprocess_image(
        &[0xFF, 0xD8, 0x12, 0x34, 0x56],
        &PreprocessConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(error, PreprocessError::Corrupt(_)), "{error:?}");
}

#[test]
fn truncated_jpeg_is_an_error_at_any_cut() {
    let jpeg = encode_grey_jpeg(&vignette(67, 87), 67, 87);
    let cfg = PreprocessConfig::default();
    assert!(preprocess_image(&jpeg, &cfg).is_ok());
    for cut in [jpeg.len() - 2, jpeg.len() - 50, jpeg.len() / 2, 200, 20, 3] {
        let error = preprocess_image(&jpeg[..cut], &cfg).unwrap_err();
        assert!(
            matches!(
                error,
                PreprocessError::Truncated { .. } | PreprocessError::Corrupt(_)
            ),
            "cut at {cut}: {error:?}"
        );
    }
    let error = preprocess_image(&jpeg[..jpeg.len() / 2], &cfg).unwrap_err();
    assert_eq!(
        error,
        PreprocessError::Truncated {
            len: jpeg.len() / 2
        }
    );
}

#[test]
fn damaged_bytes_give_an_error_or_an_image_never_a_crash() {
    // libjpeg's fatal errors unwind out of the C decoder; every damaged copy must come back as a value.
    let jpeg = encode_grey_jpeg(&vignette(67, 87), 67, 87);
    let cfg = PreprocessConfig::default();
    let (mut errors, mut decoder_errors, mut images) = (0, 0, 0);
    for position in (2..jpeg.len() - 2).step_by(7) {
        for value in [0x00u8, 0xFF, 0x5A] {
            let mut damaged = jpeg.clone();
            damaged[position] = value;
            match preprocess_image(&damaged, &cfg) {
                Ok(image) => {
                    assert_eq!(image.len(), 3 * 64 * 64);
                    images += 1;
                }
                Err(PreprocessError::Corrupt(message)) => {
                    // Unwound out of libjpeg, with its message.
                    decoder_errors += usize::from(message.starts_with("libjpeg fatal error"));
                    errors += 1;
                }
                Err(_) => errors += 1,
            }
        }
    }
    // Header damage must be caught (some copies fail inside libjpeg itself) and scan-data damage still decodes.
    assert!(
        decoder_errors > 0 && images > 0,
        "{errors} errors ({decoder_errors} from libjpeg), {images} images"
    );
}

#[test]
fn oversized_header_is_refused_before_decoding() {
    let jpeg = encode_grey_jpeg(&vignette(16, 16), 16, 16);
    let cfg = PreprocessConfig::default();
    let bomb = with_claimed_size(&jpeg, 20_000, 20_000);
    let started = std::time::Instant::now();
    let error = preprocess_image(&bomb, &cfg).unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_millis(500),
        "refusal must not decode"
    );
    assert_eq!(
        error,
        PreprocessError::TooLarge {
            width: 20_000,
            height: 20_000,
            max_side: cfg.max_side,
            max_pixels: cfg.max_pixels
        }
    );
    // each side within max_side but too many pixels
    let too_many_pixels = with_claimed_size(&jpeg, 8_000, 6_000);
    assert!(matches!(
        preprocess_image(&too_many_pixels, &cfg),
        Err(PreprocessError::TooLarge { .. })
    ));
    // a tighter limit applies too
    let strict = PreprocessConfig {
        max_side: 15,
        ..PreprocessConfig::default()
    };
    assert!(matches!(
        preprocess_image(&jpeg, &strict),
        Err(PreprocessError::TooLarge { width: 16, .. })
    ));
}

#[test]
fn tiny_images_are_valid() {
    let cfg = PreprocessConfig::default();
    let one = preprocess_image(&encode_grey_jpeg(&[77], 1, 1), &cfg).expect("1x1");
    assert_eq!(one.len(), IMAGE_LEN);
    let decoded_value = one[0];
    assert!(
        one[..PLANE].iter().all(|&value| value == decoded_value),
        "a 1x1 image resizes to a flat plane"
    );
    assert!(
        one[PLANE..].iter().all(|&value| value == 0),
        "a flat image has nothing below its mean"
    );

    let two = preprocess_image(&encode_grey_jpeg(&[0, 255, 255, 0], 2, 2), &cfg).expect("2x2");
    assert_eq!(two.len(), IMAGE_LEN);
    let for_pad = PreprocessConfig {
        resize_mode: ResizeMode::PadToSquare,
        ..cfg
    };
    assert!(preprocess_image(&encode_grey_jpeg(&[10, 250], 2, 1), &for_pad).is_ok());
}

#[test]
fn channels_show_the_dark_object() {
    let (width, height) = (90, 70);
    let jpeg = encode_grey_jpeg(&vignette(width, height), width, height);
    let channels = preprocess_image(&jpeg, &PreprocessConfig::default()).expect("valid jpeg");
    let centre = 32 * INPUT_SIZE + 32;
    let corner = 0;
    assert!(
        channels[centre] < 60 && channels[corner] > 200,
        "grey plane keeps the dark object"
    );
    assert_eq!(
        (channels[PLANE + centre], channels[PLANE + corner]),
        (255, 0),
        "threshold marks the object"
    );
    assert_eq!(
        (channels[2 * PLANE + centre], channels[2 * PLANE + corner]),
        (255, 0),
        "opening keeps it"
    );
    assert!(
        channels[PLANE..]
            .iter()
            .all(|&value| value == 0 || value == 255)
    );
}

#[test]
fn pad_to_square_keeps_aspect_ratio() {
    // A wide image with a dark band across the middle rows.
    let (width, height) = (120, 30);
    let pixels: Vec<u8> = (0..height)
        .flat_map(|y| (0..width).map(move |_| if (10..20).contains(&y) { 20 } else { 230 }))
        .collect();
    let jpeg = encode_grey_jpeg(&pixels, width, height);
    let stretched = preprocess_image(&jpeg, &PreprocessConfig::default()).unwrap();
    let padded = preprocess_image(
        &jpeg,
        &PreprocessConfig {
            resize_mode: ResizeMode::PadToSquare,
            ..Default::default()
        },
    )
    .unwrap();
    let dark_rows = |channels: &[u8]| {
        (0..INPUT_SIZE)
            .filter(|&row| channels[row * INPUT_SIZE + 32] < 100)
            .count()
    };
    // stretched: band covers 1/3 of the height; padded: 10/120 of it
    assert!(
        (18..=24).contains(&dark_rows(&stretched)),
        "stretched band rows {}",
        dark_rows(&stretched)
    );
    assert!(
        (4..=7).contains(&dark_rows(&padded)),
        "padded band rows {}",
        dark_rows(&padded)
    );
    // the padding is the border median (light background), not black
    assert!(padded[0] > 200 && padded[PLANE - 1] > 200);
}

#[test]
fn colour_jpeg_decodes_to_luma() {
    let (width, height) = (40, 30);
    let rgb: Vec<u8> = vignette(width, height)
        .iter()
        .flat_map(|&value| [value, value, value])
        .collect();
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, 95)
        .encode(
            &rgb,
            width as u16,
            height as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .unwrap();
    let grey = decode_grey(&jpeg, &PreprocessConfig::default()).expect("colour jpeg");
    assert_eq!(
        (grey.width, grey.height, grey.pixels.len()),
        (width, height, width * height)
    );
    assert!(grey.get(0, 0) > 200 && grey.get(20, 15) < 60);
}

#[test]
fn batch_keeps_order_and_isolates_errors() {
    let good = encode_grey_jpeg(&vignette(33, 44), 33, 44);
    let inputs: Vec<&[u8]> = vec![&good, b"", &good[..good.len() / 2], &good];
    let results = preprocess_many(&inputs, &PreprocessConfig::default());
    assert_eq!(results.len(), 4);
    assert!(results[0].is_ok() && results[3].is_ok());
    assert_eq!(results[0], results[3]);
    assert_eq!(results[1], Err(PreprocessError::Empty));
    assert!(matches!(results[2], Err(PreprocessError::Truncated { .. })));
    let single = preprocess_image(&good, &PreprocessConfig::default()).unwrap();
    assert_eq!(results[0].as_ref().unwrap(), &single);
}

#[test]
fn batch_into_one_buffer_matches_single_images() {
    let first = encode_grey_jpeg(&vignette(33, 44), 33, 44);
    let second = encode_grey_jpeg(&vignette(120, 70), 120, 70);
    let inputs: Vec<&[u8]> = vec![&first, b"not a jpeg", &second];
    let mut batch = vec![7u8; inputs.len() * IMAGE_LEN];
    let results = preprocess_batch_into(&inputs, &PreprocessConfig::default(), &mut batch);
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(matches!(results[1], Err(PreprocessError::NotJpeg { .. })));
    let config = PreprocessConfig::default();
    assert_eq!(
        &batch[..IMAGE_LEN],
        preprocess_image(&first, &config).unwrap().as_slice()
    );
    assert_eq!(
        &batch[2 * IMAGE_LEN..],
        preprocess_image(&second, &config).unwrap().as_slice()
    );
}

#[test]
fn unit_scaling() {
    let mut out = [0f32; 3];
    to_unit_f32(&[0, 255, 51], &mut out);
    assert_eq!(out, [0.0, 1.0, 0.2]);
}

fn sample_shard() -> CachedShard {
    let objids = vec![42, 7, -3];
    let images = (0..objids.len() * IMAGE_LEN)
        .map(|index| (index % 251) as u8)
        .collect();
    CachedShard {
        objids,
        images,
        skipped: vec![(99, "truncated JPEG: no end-of-image".to_string())],
    }
}

#[test]
fn cache_round_trip_and_misses() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ShardCache::open(dir.path().join("nested/cache")).unwrap();
    let shard = sample_shard();
    let key = ShardCache::key("s3://bucket/flowcam", ResizeMode::Stretch, &shard.objids);
    assert_eq!(cache.load(&key).unwrap(), None);
    cache.store(&key, &shard).unwrap();
    assert_eq!(cache.load(&key).unwrap(), Some(shard.clone()));
    // overwrite is atomic and leaves no temporary files behind
    cache.store(&key, &shard).unwrap();
    let leftover: Vec<_> = std::fs::read_dir(cache.dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(leftover.len(), 1, "{leftover:?}");
    // an empty shard is fine
    let empty = CachedShard {
        objids: vec![],
        images: vec![],
        skipped: vec![],
    };
    cache.store("empty", &empty).unwrap();
    assert_eq!(cache.load("empty").unwrap(), Some(empty));
}

#[test]
fn cache_keys_are_stable_and_distinct() {
    let key = ShardCache::key("file:///data", ResizeMode::Stretch, &[1, 2, 3]);
    assert_eq!(
        key,
        ShardCache::key("file:///data", ResizeMode::Stretch, &[1, 2, 3])
    );
    assert_ne!(
        key,
        ShardCache::key("file:///data", ResizeMode::PadToSquare, &[1, 2, 3])
    );
    assert_ne!(
        key,
        ShardCache::key("file:///data", ResizeMode::Stretch, &[1, 2, 4])
    );
    assert_ne!(
        key,
        ShardCache::key("file:///other", ResizeMode::Stretch, &[1, 2, 3])
    );
    assert!(
        key.bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    );
}

#[test]
fn cache_rejects_corruption_bad_keys_and_bad_shards() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ShardCache::open(dir.path().to_path_buf()).unwrap();
    let shard = sample_shard();
    cache.store("shard-a", &shard).unwrap();
    let path = dir.path().join("shard-a.shard");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let error = cache.load("shard-a").unwrap_err();
    assert!(matches!(error, CacheError::Corrupt { .. }), "{error:?}");
    assert!(
        error.to_string().contains("shard-a.shard"),
        "message names the file: {error}"
    );
    std::fs::write(&path, &bytes[..10]).unwrap();
    assert!(matches!(
        cache.load("shard-a"),
        Err(CacheError::Corrupt { .. })
    ));

    assert!(matches!(
        cache.load("../escape"),
        Err(CacheError::InvalidKey(_))
    ));
    assert!(matches!(
        cache.store("", &shard),
        Err(CacheError::InvalidKey(_))
    ));
    let inconsistent = CachedShard {
        objids: vec![1, 2],
        images: vec![0; IMAGE_LEN],
        skipped: vec![],
    };
    assert!(matches!(
        cache.store("shard-b", &inconsistent),
        Err(CacheError::InvalidShard { .. })
    ));
}
