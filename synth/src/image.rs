//! Grey images and the soft-edged shape rasteriser that class morphologies draw with.

use crate::rng::{PixelNoise, hash01};

/// An 8-bit grayscale image, row-major, `pixels.len() == width * height`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreyImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl GreyImage {
    /// Wraps `pixels`, or `None` when the buffer does not hold `width * height` pixels.
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Option<Self> {
        (pixels.len() as u64 == u64::from(width) * u64::from(height)).then_some(Self {
            width,
            height,
            pixels,
        })
    }

    /// The grey value at (`x`, `y`).
    pub fn pixel(&self, x: u32, y: u32) -> u8 {
        self.pixels[(y * self.width + x) as usize]
    }

    /// Encodes the image as a baseline grayscale (Luma) JPEG.
    pub fn encode_jpeg(&self, quality: u8) -> Result<Vec<u8>, String> {
        let width =
            u16::try_from(self.width).map_err(|_| format!("width {} exceeds 65535", self.width))?;
        let height = u16::try_from(self.height)
            .map_err(|_| format!("height {} exceeds 65535", self.height))?;
        let mut encoded = Vec::with_capacity(self.pixels.len() / 4 + 1024);
        let encoder = jpeg_encoder::Encoder::new(&mut encoded, quality);
        encoder
            .encode(&self.pixels, width, height, jpeg_encoder::ColorType::Luma)
            .map_err(|error| error.to_string())?;
        Ok(encoded)
    }
}

/// A point in pixel coordinates (x right, y down).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point {
    pub x: f32,
    pub y: f32,
}

pub(crate) const fn point(x: f32, y: f32) -> Point {
    Point { x, y }
}

impl Point {
    fn rotated(self, angle: f32) -> Point {
        let (sin, cos) = angle.sin_cos();
        point(self.x * cos - self.y * sin, self.x * sin + self.y * cos)
    }

    fn scaled(self, factor: f32) -> Point {
        point(self.x * factor, self.y * factor)
    }

    fn shifted(self, offset: Point) -> Point {
        point(self.x + offset.x, self.y + offset.y)
    }
}

/// How ink is modulated inside a shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Texture {
    Plain,
    /// Grainy blotches of `grain` pixels removing up to `amount` of the ink.
    Speckle {
        amount: f32,
        grain: f32,
        salt: u32,
    },
    /// `spokes` radial ribs around the shape centre (centric diatoms).
    Radial {
        spokes: f32,
        depth: f32,
    },
    /// Ribs across the shape's long axis every `period` pixels.
    Stripes {
        period: f32,
        depth: f32,
    },
    /// A square grid of windows (reticulated loricae).
    Lattice {
        period: f32,
        depth: f32,
    },
}

/// A harmonic of a blob's outline: radius factor `1 + amplitude * sin(order * theta + phase)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Harmonic {
    pub order: f32,
    pub amplitude: f32,
    pub phase: f32,
}

/// One soft-edged primitive; `ink` is the darkness in `[0, 1]` at full coverage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    /// A rotated ellipse, filled, or a wall of `wall` pixels around an interior inked at `fill`.
    Ellipse {
        center: Point,
        radius_x: f32,
        radius_y: f32,
        angle: f32,
        ink: f32,
        wall: Option<f32>,
        fill: f32,
        texture: Texture,
    },
    /// A thick segment with round caps.
    Capsule {
        start: Point,
        end: Point,
        radius: f32,
        ink: f32,
    },
    /// A star-shaped blob whose radius varies with angle.
    Blob {
        center: Point,
        radius: f32,
        harmonics: Vec<Harmonic>,
        angle: f32,
        ink: f32,
        texture: Texture,
    },
}

/// An axis-aligned box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bounds {
    pub min: Point,
    pub max: Point,
}

impl Bounds {
    fn union(self, other: Bounds) -> Bounds {
        Bounds {
            min: point(self.min.x.min(other.min.x), self.min.y.min(other.min.y)),
            max: point(self.max.x.max(other.max.x), self.max.y.max(other.max.y)),
        }
    }

    pub fn width(&self) -> f32 {
        self.max.x - self.min.x
    }

    pub fn height(&self) -> f32 {
        self.max.y - self.min.y
    }
}

impl Shape {
    fn bounds(&self) -> Bounds {
        match self {
            Shape::Ellipse {
                center,
                radius_x,
                radius_y,
                angle,
                ..
            } => {
                let (sin, cos) = angle.sin_cos();
                let half_width = ((radius_x * cos).powi(2) + (radius_y * sin).powi(2)).sqrt();
                let half_height = ((radius_x * sin).powi(2) + (radius_y * cos).powi(2)).sqrt();
                Bounds {
                    min: point(center.x - half_width, center.y - half_height),
                    max: point(center.x + half_width, center.y + half_height),
                }
            }
            Shape::Capsule {
                start, end, radius, ..
            } => Bounds {
                min: point(start.x.min(end.x) - radius, start.y.min(end.y) - radius),
                max: point(start.x.max(end.x) + radius, start.y.max(end.y) + radius),
            },
            Shape::Blob {
                center,
                radius,
                harmonics,
                angle,
                ..
            } => {
                // Sample the outline; a little slack covers the samples' gaps and the soft edge.
                const OUTLINE_SAMPLES: usize = 72;
                let mut bounds = Bounds {
                    min: *center,
                    max: *center,
                };
                for sample in 0..OUTLINE_SAMPLES {
                    let theta = sample as f32 / OUTLINE_SAMPLES as f32 * std::f32::consts::TAU;
                    let outline_radius =
                        blob_radius(*radius, harmonics, theta - angle) * 1.02 + 0.5;
                    let (sin, cos) = theta.sin_cos();
                    let outline_point = point(
                        center.x + cos * outline_radius,
                        center.y + sin * outline_radius,
                    );
                    bounds.min = point(
                        bounds.min.x.min(outline_point.x),
                        bounds.min.y.min(outline_point.y),
                    );
                    bounds.max = point(
                        bounds.max.x.max(outline_point.x),
                        bounds.max.y.max(outline_point.y),
                    );
                }
                bounds
            }
        }
    }

    fn transform(&mut self, rotation: f32, scale: f32, offset: Point) {
        let map = |position: Point| position.rotated(rotation).scaled(scale).shifted(offset);
        match self {
            Shape::Ellipse {
                center,
                radius_x,
                radius_y,
                angle,
                wall,
                ..
            } => {
                *center = map(*center);
                *radius_x *= scale;
                *radius_y *= scale;
                *angle += rotation;
                if let Some(wall_width) = wall {
                    *wall_width = (*wall_width * scale).max(1.0);
                }
            }
            Shape::Capsule {
                start, end, radius, ..
            } => {
                *start = map(*start);
                *end = map(*end);
                *radius = (*radius * scale).max(0.45);
            }
            Shape::Blob {
                center,
                radius,
                angle,
                ..
            } => {
                *center = map(*center);
                *radius *= scale;
                *angle += rotation;
            }
        }
    }
}

/// A drawing in object coordinates: shapes plus an optional defocus blur.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sketch {
    pub shapes: Vec<Shape>,
    pub blur_radius: f32,
}

impl Sketch {
    pub fn ellipse(&mut self, center: Point, radius_x: f32, radius_y: f32, angle: f32, ink: f32) {
        self.shapes.push(Shape::Ellipse {
            center,
            radius_x: radius_x.max(0.5),
            radius_y: radius_y.max(0.5),
            angle,
            ink,
            wall: None,
            fill: 0.0,
            texture: Texture::Plain,
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub fn textured_ellipse(
        &mut self,
        center: Point,
        radius_x: f32,
        radius_y: f32,
        angle: f32,
        ink: f32,
        wall: Option<f32>,
        fill: f32,
        texture: Texture,
    ) {
        self.shapes.push(Shape::Ellipse {
            center,
            radius_x: radius_x.max(0.5),
            radius_y: radius_y.max(0.5),
            angle,
            ink,
            wall: wall.map(|wall_width| wall_width.max(1.0)),
            fill,
            texture,
        });
    }

    pub fn capsule(&mut self, start: Point, end: Point, radius: f32, ink: f32) {
        self.shapes.push(Shape::Capsule {
            start,
            end,
            radius: radius.max(0.45),
            ink,
        });
    }

    pub fn blob(
        &mut self,
        center: Point,
        radius: f32,
        harmonics: Vec<Harmonic>,
        ink: f32,
        texture: Texture,
    ) {
        self.shapes.push(Shape::Blob {
            center,
            radius: radius.max(0.5),
            harmonics,
            angle: 0.0,
            ink,
            texture,
        });
    }

    /// Appends another sketch moved by `offset`.
    pub fn merge(&mut self, other: Sketch, offset: Point) {
        for mut shape in other.shapes {
            shape.transform(0.0, 1.0, offset);
            self.shapes.push(shape);
        }
        self.blur_radius = self.blur_radius.max(other.blur_radius);
    }

    /// Rotates about the origin, then scales and shifts every shape.
    pub fn transform(&mut self, rotation: f32, scale: f32, offset: Point) {
        for shape in &mut self.shapes {
            shape.transform(rotation, scale, offset);
        }
        self.blur_radius *= scale;
    }

    pub fn bounds(&self) -> Option<Bounds> {
        self.shapes.iter().map(Shape::bounds).reduce(Bounds::union)
    }
}

/// How the drawing is turned into grey levels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Appearance {
    /// Grey of the background at the image centre.
    pub background: f32,
    /// How much darker the corners are than the centre.
    pub vignette: f32,
    /// Grey of fully inked pixels.
    pub object_grey: f32,
    /// Standard deviation of the sensor noise.
    pub noise_sigma: f32,
}

/// Rasterises `sketch` into a `width` x `height` image.
pub(crate) fn rasterize(
    sketch: &Sketch,
    width: u32,
    height: u32,
    appearance: Appearance,
    noise: &mut PixelNoise,
) -> GreyImage {
    let width_px = width as usize;
    let height_px = height as usize;
    let mut darkness = vec![0f32; width_px * height_px];
    for shape in &sketch.shapes {
        draw_shape(shape, &mut darkness, width_px, height_px);
    }
    if sketch.blur_radius >= 0.75 {
        let radius = sketch.blur_radius.round() as usize;
        for _ in 0..2 {
            box_blur(&mut darkness, width_px, height_px, radius);
        }
    }
    let center_x = width as f32 / 2.0;
    let center_y = height as f32 / 2.0;
    let inverse_corner_squared = 1.0 / (center_x * center_x + center_y * center_y).max(1.0);
    let mut pixels = Vec::with_capacity(width_px * height_px);
    for y in 0..height_px {
        let offset_y = y as f32 + 0.5 - center_y;
        for x in 0..width_px {
            let offset_x = x as f32 + 0.5 - center_x;
            let background = appearance.background
                - appearance.vignette
                    * (offset_x * offset_x + offset_y * offset_y)
                    * inverse_corner_squared;
            let ink = darkness[y * width_px + x].min(1.0);
            let grey = background - ink * (background - appearance.object_grey)
                + appearance.noise_sigma * noise.next_normal();
            pixels.push(grey.round().clamp(0.0, 255.0) as u8);
        }
    }
    GreyImage {
        width,
        height,
        pixels,
    }
}

/// Pixel range `[first, last)` covered by `low..high` (with a one-pixel apron), clipped to `limit`.
fn pixel_span(low: f32, high: f32, limit: usize) -> (usize, usize) {
    let first = (low - 1.0).floor().max(0.0) as usize;
    let last = ((high + 1.0).ceil().max(0.0) as usize).min(limit);
    (first.min(limit), last)
}

fn coverage(signed_distance: f32) -> f32 {
    (0.5 - signed_distance).clamp(0.0, 1.0)
}

fn texture_factor(texture: Texture, x: usize, y: usize, local_u: f32, local_v: f32) -> f32 {
    match texture {
        Texture::Plain => 1.0,
        Texture::Speckle {
            amount,
            grain,
            salt,
        } => {
            let cell = grain.max(1.0);
            let value = hash01((x as f32 / cell) as i32, (y as f32 / cell) as i32, salt);
            1.0 - amount * value
        }
        Texture::Radial { spokes, depth } => {
            let theta = local_v.atan2(local_u);
            1.0 - depth * (0.5 + 0.5 * (spokes * theta).cos())
        }
        Texture::Stripes { period, depth } => {
            1.0 - depth * (0.5 + 0.5 * (std::f32::consts::TAU * local_u / period.max(1.0)).cos())
        }
        Texture::Lattice { period, depth } => {
            let phase = std::f32::consts::TAU / period.max(1.0);
            let window =
                (0.5 + 0.5 * (phase * local_u).cos()) * (0.5 + 0.5 * (phase * local_v).cos());
            1.0 - depth * window
        }
    }
}

fn deposit(darkness: &mut [f32], index: usize, ink: f32) {
    if ink > darkness[index] {
        darkness[index] = ink;
    }
}

fn draw_shape(shape: &Shape, darkness: &mut [f32], width: usize, height: usize) {
    let bounds = shape.bounds();
    let (first_x, last_x) = pixel_span(bounds.min.x, bounds.max.x, width);
    let (first_y, last_y) = pixel_span(bounds.min.y, bounds.max.y, height);
    match shape {
        Shape::Ellipse {
            center,
            radius_x,
            radius_y,
            angle,
            ink,
            wall,
            fill,
            texture,
        } => {
            let (sin, cos) = angle.sin_cos();
            let inner_radii = wall.map(|wall_width| {
                (
                    (radius_x - wall_width).max(0.3),
                    (radius_y - wall_width).max(0.3),
                )
            });
            for y in first_y..last_y {
                let delta_y = y as f32 + 0.5 - center.y;
                for x in first_x..last_x {
                    let delta_x = x as f32 + 0.5 - center.x;
                    let local_u = delta_x * cos + delta_y * sin;
                    let local_v = -delta_x * sin + delta_y * cos;
                    let distance_from_center = (local_u * local_u + local_v * local_v).sqrt();
                    let outer_q =
                        ((local_u / radius_x).powi(2) + (local_v / radius_y).powi(2)).sqrt();
                    if outer_q > 1.0 + 2.0 / radius_x.min(*radius_y) + 0.5 {
                        continue;
                    }
                    let outer_distance = signed_radial_distance(distance_from_center, outer_q);
                    let outer_coverage = coverage(outer_distance);
                    if outer_coverage <= 0.0 {
                        continue;
                    }
                    let shape_ink = match inner_radii {
                        None => outer_coverage * ink,
                        Some((inner_x, inner_y)) => {
                            let inner_q =
                                ((local_u / inner_x).powi(2) + (local_v / inner_y).powi(2)).sqrt();
                            let inside_inner = 1.0
                                - coverage(-signed_radial_distance(distance_from_center, inner_q));
                            let wall_ink = outer_coverage * (1.0 - inside_inner) * ink;
                            wall_ink.max(inside_inner * fill * ink)
                        }
                    };
                    let textured = shape_ink * texture_factor(*texture, x, y, local_u, local_v);
                    deposit(darkness, y * width + x, textured);
                }
            }
        }
        Shape::Capsule {
            start,
            end,
            radius,
            ink,
        } => {
            let segment_x = end.x - start.x;
            let segment_y = end.y - start.y;
            let length_squared = (segment_x * segment_x + segment_y * segment_y).max(1e-6);
            for y in first_y..last_y {
                let delta_y = y as f32 + 0.5 - start.y;
                for x in first_x..last_x {
                    let delta_x = x as f32 + 0.5 - start.x;
                    let along = ((delta_x * segment_x + delta_y * segment_y) / length_squared)
                        .clamp(0.0, 1.0);
                    let off_x = delta_x - along * segment_x;
                    let off_y = delta_y - along * segment_y;
                    let distance = (off_x * off_x + off_y * off_y).sqrt() - radius;
                    let shape_ink = coverage(distance) * ink;
                    if shape_ink > 0.0 {
                        deposit(darkness, y * width + x, shape_ink);
                    }
                }
            }
        }
        Shape::Blob {
            center,
            radius,
            harmonics,
            angle,
            ink,
            texture,
        } => {
            const TABLE_SIZE: usize = 256;
            let mut outline = [0f32; TABLE_SIZE];
            for (slot, outline_radius) in outline.iter_mut().enumerate() {
                let theta = slot as f32 / TABLE_SIZE as f32 * std::f32::consts::TAU - angle;
                *outline_radius = blob_radius(*radius, harmonics, theta);
            }
            let (sin, cos) = angle.sin_cos();
            for y in first_y..last_y {
                let delta_y = y as f32 + 0.5 - center.y;
                for x in first_x..last_x {
                    let delta_x = x as f32 + 0.5 - center.x;
                    let distance_from_center = (delta_x * delta_x + delta_y * delta_y).sqrt();
                    let theta = delta_y.atan2(delta_x).rem_euclid(std::f32::consts::TAU);
                    let slot = ((theta / std::f32::consts::TAU * TABLE_SIZE as f32) as usize)
                        .min(TABLE_SIZE - 1);
                    let distance = distance_from_center - outline[slot];
                    let shape_coverage = coverage(distance);
                    if shape_coverage <= 0.0 {
                        continue;
                    }
                    let local_u = delta_x * cos + delta_y * sin;
                    let local_v = -delta_x * sin + delta_y * cos;
                    let textured =
                        shape_coverage * ink * texture_factor(*texture, x, y, local_u, local_v);
                    deposit(darkness, y * width + x, textured);
                }
            }
        }
    }
}

/// Radius of a blob outline at angle `theta` (in the blob's own frame).
fn blob_radius(radius: f32, harmonics: &[Harmonic], theta: f32) -> f32 {
    let factor: f32 = harmonics
        .iter()
        .map(|harmonic| harmonic.amplitude * (harmonic.order * theta + harmonic.phase).sin())
        .sum();
    radius * (1.0 + factor).max(0.15)
}

/// Distance from a point to an ellipse boundary along the ray from the centre (negative inside).
fn signed_radial_distance(distance_from_center: f32, ellipse_q: f32) -> f32 {
    if ellipse_q <= 1e-6 {
        return -distance_from_center.max(1.0);
    }
    distance_from_center * (1.0 - 1.0 / ellipse_q)
}

/// One separable box-blur pass of half-width `radius`, clamped at the edges.
fn box_blur(values: &mut [f32], width: usize, height: usize, radius: usize) {
    if radius == 0 || width == 0 || height == 0 {
        return;
    }
    let mut line = Vec::with_capacity(width.max(height));
    for y in 0..height {
        line.clear();
        line.extend_from_slice(&values[y * width..(y + 1) * width]);
        blur_line(&line, radius, |x, value| values[y * width + x] = value);
    }
    for x in 0..width {
        line.clear();
        line.extend((0..height).map(|y| values[y * width + x]));
        blur_line(&line, radius, |y, value| values[y * width + x] = value);
    }
}

fn blur_line(line: &[f32], radius: usize, mut store: impl FnMut(usize, f32)) {
    let length = line.len();
    let mut prefix = Vec::with_capacity(length + 1);
    prefix.push(0f32);
    let mut running = 0f32;
    for value in line {
        running += value;
        prefix.push(running);
    }
    for position in 0..length {
        let low = position.saturating_sub(radius);
        let high = (position + radius + 1).min(length);
        store(position, (prefix[high] - prefix[low]) / (high - low) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Stream, keyed_rng};

    fn plain_appearance() -> Appearance {
        Appearance {
            background: 220.0,
            vignette: 0.0,
            object_grey: 40.0,
            noise_sigma: 0.0,
        }
    }

    #[test]
    fn filled_ellipse_is_dark_inside_and_light_outside() {
        let mut sketch = Sketch::default();
        sketch.ellipse(point(20.0, 15.0), 10.0, 5.0, 0.0, 1.0);
        let mut noise = PixelNoise::new(&mut keyed_rng(1, 1, Stream::Image));
        let image = rasterize(&sketch, 40, 30, plain_appearance(), &mut noise);
        assert_eq!(image.pixel(20, 15), 40);
        assert_eq!(image.pixel(2, 2), 220);
        assert_eq!(image.pixel(28, 15), 40);
        assert_eq!(image.pixel(20, 22), 220);
    }

    #[test]
    fn hollow_ellipse_keeps_a_light_interior() {
        let mut sketch = Sketch::default();
        sketch.textured_ellipse(
            point(20.0, 20.0),
            15.0,
            15.0,
            0.0,
            1.0,
            Some(3.0),
            0.1,
            Texture::Plain,
        );
        let mut noise = PixelNoise::new(&mut keyed_rng(1, 2, Stream::Image));
        let image = rasterize(&sketch, 40, 40, plain_appearance(), &mut noise);
        assert!(
            image.pixel(20, 20) > 190,
            "interior {}",
            image.pixel(20, 20)
        );
        assert_eq!(image.pixel(20, 6), 40);
    }

    #[test]
    fn encodes_a_decodable_grayscale_jpeg() {
        let image = GreyImage::new(3, 2, vec![0, 50, 100, 150, 200, 250]).unwrap();
        let jpeg = image.encode_jpeg(90).unwrap();
        let mut decoder = zune_jpeg::JpegDecoder::new(&jpeg);
        decoder.decode_headers().unwrap();
        assert_eq!(decoder.dimensions(), Some((3, 2)));
        assert!(GreyImage::new(3, 3, vec![0; 6]).is_none());
    }
}
