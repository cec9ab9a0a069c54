//! Parity with OpenCV (opencv-python in `.venv-tools`): bicubic resize, threshold, opening, JPEG decode.

use std::path::{Path, PathBuf};
use std::process::Command;

use plankton_preprocess::{
    GreyImage, INPUT_SIZE, PreprocessConfig, decode_grey, morphological_open_4x4, resize_bicubic,
    threshold_below_mean,
};

/// Sizes covering upscale, downscale, mixed and tiny images (width, height).
const SIZES: &[(usize, usize)] = &[
    (1, 1),
    (2, 2),
    (2, 3),
    (3, 4),
    (4, 3),
    (4, 4),
    (7, 5),
    (31, 64),
    (64, 64),
    (63, 65),
    (67, 87),
    (150, 40),
    (3, 200),
    (640, 480),
    (972, 739),
];

fn reference_python() -> PathBuf {
    let workspace_root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate has a parent")
        .to_path_buf();
    let python = workspace_root.join(".venv-tools/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh to install the OpenCV reference tools (this test never skips)",
        python.display()
    );
    python
}

/// Deterministic xorshift64 noise.
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A plankton-like picture: light noisy background with a gradient, a dark textured ellipse, and a few
/// sharp single-pixel specks (which stress the cubic overshoot and saturation).
fn synthetic_image(width: usize, height: usize, seed: u64) -> GreyImage {
    let mut noise = Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut pixels = Vec::with_capacity(width * height);
    let (center_x, center_y) = (width as f64 * 0.45, height as f64 * 0.55);
    let (radius_x, radius_y) = (
        (width as f64 * 0.3).max(0.6),
        (height as f64 * 0.25).max(0.6),
    );
    for y in 0..height {
        for x in 0..width {
            let background =
                200.0 + 30.0 * (x as f64 / width as f64) - 10.0 * (y as f64 / height as f64);
            let dx = (x as f64 - center_x) / radius_x;
            let dy = (y as f64 - center_y) / radius_y;
            let inside = dx * dx + dy * dy <= 1.0;
            let jitter = (noise.next() % 21) as f64 - 10.0;
            let mut value = if inside {
                40.0 + 50.0 * ((x + 2 * y) % 7) as f64 / 7.0 + jitter
            } else {
                background + jitter
            };
            if noise.next().is_multiple_of(97) {
                value = if value > 128.0 { 0.0 } else { 255.0 };
            }
            pixels.push(value.clamp(0.0, 255.0) as u8);
        }
    }
    GreyImage::new(width, height, pixels).expect("consistent size")
}

fn write_pgm(path: &Path, image: &GreyImage) {
    let mut bytes = format!("P5\n{} {}\n255\n", image.width, image.height).into_bytes();
    bytes.extend_from_slice(&image.pixels);
    std::fs::write(path, bytes)
        .unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
}

fn read_pgm(path: &Path) -> GreyImage {
    let bytes =
        std::fs::read(path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    let mut fields = Vec::new();
    let mut position = 0;
    while fields.len() < 4 {
        while bytes[position].is_ascii_whitespace() {
            position += 1;
        }
        if bytes[position] == b'#' {
            while bytes[position] != b'\n' {
                position += 1;
            }
            continue;
        }
        let start = position;
        while !bytes[position].is_ascii_whitespace() {
            position += 1;
        }
        fields.push(String::from_utf8_lossy(&bytes[start..position]).to_string());
    }
    assert_eq!(fields[0], "P5", "{} is not a binary PGM", path.display());
    let width: usize = fields[1].parse().expect("pgm width");
    let height: usize = fields[2].parse().expect("pgm height");
    let pixels = bytes[position + 1..position + 1 + width * height].to_vec();
    GreyImage::new(width, height, pixels).expect("pgm size")
}

fn run_reference(python: &Path, dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/opencv_reference.py");
    let output = Command::new(python)
        .arg(&script)
        .arg(dir)
        .output()
        .expect("running the opencv reference script");
    assert!(
        output.status.success(),
        "opencv_reference.py failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// (pixels equal, pixels within one grey level, total)
fn compare(ours: &[u8], reference: &[u8]) -> (usize, usize, usize) {
    assert_eq!(ours.len(), reference.len());
    let exact = ours.iter().zip(reference).filter(|(a, b)| a == b).count();
    let within_one = ours
        .iter()
        .zip(reference)
        .filter(|(a, b)| a.abs_diff(**b) <= 1)
        .count();
    (exact, within_one, ours.len())
}

#[test]
fn resize_threshold_and_opening_match_opencv() {
    let python = reference_python();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut resized_by_name = Vec::new();
    for (index, &(width, height)) in SIZES.iter().enumerate() {
        let name = format!("img{index}_{width}x{height}");
        let source = synthetic_image(width, height, index as u64 + 1);
        let resized = resize_bicubic(&source, INPUT_SIZE, INPUT_SIZE);
        write_pgm(&dir.path().join(format!("{name}.src.pgm")), &source);
        write_pgm(
            &dir.path().join(format!("{name}.ours_resized.pgm")),
            &resized,
        );
        resized_by_name.push((name, resized));
    }
    run_reference(&python, dir.path());

    let (mut resize_exact, mut resize_close, mut resize_total) = (0, 0, 0);
    let (mut threshold_equal, mut opening_equal, mut channel_total) = (0, 0, 0);
    for (name, ours) in &resized_by_name {
        let reference = read_pgm(&dir.path().join(format!("{name}.cv_resized.pgm")));
        let (exact, close, total) = compare(&ours.pixels, &reference.pixels);
        println!("{name}: resize exact {exact}/{total}, within 1 grey level {close}/{total}");
        assert!(
            close as f64 >= 0.99 * total as f64,
            "{name}: only {close}/{total} pixels within 1 grey level of opencv"
        );
        resize_exact += exact;
        resize_close += close;
        resize_total += total;

        let mut threshold = vec![0u8; ours.pixels.len()];
        threshold_below_mean(&ours.pixels, &mut threshold);
        let mut opening = vec![0u8; ours.pixels.len()];
        morphological_open_4x4(&threshold, INPUT_SIZE, INPUT_SIZE, &mut opening);
        let reference_threshold = read_pgm(&dir.path().join(format!("{name}.cv_threshold.pgm")));
        let reference_opening = read_pgm(&dir.path().join(format!("{name}.cv_opening.pgm")));
        let (threshold_same, _, total) = compare(&threshold, &reference_threshold.pixels);
        let (opening_same, _, _) = compare(&opening, &reference_opening.pixels);
        println!(
            "{name}: threshold equal {threshold_same}/{total}, opening equal {opening_same}/{total}"
        );
        assert!(
            threshold_same as f64 >= 0.99 * total as f64,
            "{name}: threshold differs from opencv"
        );
        assert!(
            opening_same as f64 >= 0.99 * total as f64,
            "{name}: opening differs from opencv"
        );
        threshold_equal += threshold_same;
        opening_equal += opening_same;
        channel_total += total;
    }
    println!(
        "overall: resize exact {:.5}, within 1 {:.5}; threshold {:.5}; opening {:.5}",
        resize_exact as f64 / resize_total as f64,
        resize_close as f64 / resize_total as f64,
        threshold_equal as f64 / channel_total as f64,
        opening_equal as f64 / channel_total as f64
    );
    // Both of OpenCV's paths are reproduced (fixed point below 4 px, IPP float above): nearly all exact.
    assert!(
        resize_exact as f64 >= 0.999 * resize_total as f64,
        "resize exact match fell to {resize_exact}/{resize_total}"
    );
}

#[test]
fn jpeg_decode_matches_opencv_imdecode() {
    let python = reference_python();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = PreprocessConfig::default();
    let mut names = Vec::new();
    // (width, height, colour, progressive)
    for (index, &(width, height, colour, progressive)) in [
        (67usize, 87usize, false, false),
        (150, 40, false, false),
        (2, 2, false, false),
        (333, 251, true, false),
        (31, 64, true, false),
        (97, 61, false, true),
        (120, 77, true, true),
    ]
    .iter()
    .enumerate()
    {
        let name = format!("jpeg{index}_{width}x{height}");
        let grey = synthetic_image(width, height, 100 + index as u64);
        let mut jpeg = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut jpeg, 90);
        encoder.set_progressive(progressive);
        if colour {
            // a colour JPEG: opencv's IMREAD_GRAYSCALE keeps libjpeg's luma plane
            let rgb: Vec<u8> = grey
                .pixels
                .iter()
                .flat_map(|&value| [value, value / 2, 255 - value])
                .collect();
            encoder
                .encode(
                    &rgb,
                    width as u16,
                    height as u16,
                    jpeg_encoder::ColorType::Rgb,
                )
                .expect("encode rgb");
        } else {
            encoder
                .encode(
                    &grey.pixels,
                    width as u16,
                    height as u16,
                    jpeg_encoder::ColorType::Luma,
                )
                .expect("encode");
        }
        std::fs::write(dir.path().join(format!("{name}.jpg")), &jpeg).expect("write jpeg");
        names.push((name, decode_grey(&jpeg, &cfg).expect("our decode")));
    }
    run_reference(&python, dir.path());
    for (name, ours) in &names {
        let reference = read_pgm(&dir.path().join(format!("{name}.cv_decoded.pgm")));
        assert_eq!(
            (ours.width, ours.height),
            (reference.width, reference.height),
            "{name}: size"
        );
        let (exact, close, total) = compare(&ours.pixels, &reference.pixels);
        println!("{name}: decode exact {exact}/{total}, within 1 {close}/{total}");
        // The same decoder as OpenCV's (libjpeg-turbo): the same bytes, not merely close ones.
        assert_eq!(
            exact, total,
            "{name}: decode differs from opencv: {exact}/{total} equal, {close}/{total} within 1"
        );
    }
}
