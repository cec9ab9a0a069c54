//! Per-class morphology families: what each synthetic plankton class looks like, and how big it is.
//!
//! Every class draws a [`Sketch`] in object coordinates (long axis along x, size `length`), which is
//! then rotated (biased towards vertical, as objects align in the FlowCam flow cell), fitted into the
//! real image-size limits (972 x 739), framed with a small margin (sometimes cut by the frame edge)
//! and rasterised on a light, vignetted, noisy background. Look-alike classes share builders
//! (chains, loricae, spined cells, discs) with overlapping parameter ranges on purpose.

use std::f32::consts::{FRAC_PI_2, PI, TAU};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::counts::class_name;
use crate::image::{Appearance, GreyImage, Harmonic, Point, Sketch, Texture, point, rasterize};
use crate::rng::{PixelNoise, Stream, chance, keyed_rng, log_normal, standard_normal, uniform};

/// Largest image width of the real data.
pub(crate) const MAX_WIDTH: u32 = 972;
/// Largest image height of the real data.
pub(crate) const MAX_HEIGHT: u32 = 739;

/// The morphology family of each class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Detritus,
    Feces,
    Neoceratium,
    Nauplii,
    Badfocus,
    Silks,
    Copepoda,
    Thalassionema,
    Rods,
    Multiple,
    Codonellopsis,
    Protoperidinium,
    Tintinnidiidae,
    Rhizosolenids,
    Chaetoceros,
    Artefact,
    Pollen,
    Codonaria,
    Chainlarge,
    Undellidae,
    Egg,
    Hemiaulus,
    Dictyocysta,
    Dinophysiales,
    Annelida,
    Rhabdonella,
    Stenosemella,
    Coscinodiscids,
    Retaria,
    Pleurosigma,
    CeratocorysHorrida,
    Centric,
    Odontella,
    Asterionellopsis,
    Cyttarocylis,
    Lithodesmioides,
    ChaetocerosDanicus,
    Xystonellidae,
    Bacteriastrum,
    Unlabeled,
}

/// Families a "multiple", "badfocus" or unlabeled object can be made of.
const SINGLE_OBJECT_FAMILIES: [Family; 36] = [
    Family::Detritus,
    Family::Feces,
    Family::Neoceratium,
    Family::Nauplii,
    Family::Silks,
    Family::Copepoda,
    Family::Thalassionema,
    Family::Rods,
    Family::Codonellopsis,
    Family::Protoperidinium,
    Family::Tintinnidiidae,
    Family::Rhizosolenids,
    Family::Chaetoceros,
    Family::Artefact,
    Family::Pollen,
    Family::Codonaria,
    Family::Chainlarge,
    Family::Undellidae,
    Family::Egg,
    Family::Hemiaulus,
    Family::Dictyocysta,
    Family::Dinophysiales,
    Family::Annelida,
    Family::Rhabdonella,
    Family::Stenosemella,
    Family::Coscinodiscids,
    Family::Retaria,
    Family::Pleurosigma,
    Family::CeratocorysHorrida,
    Family::Centric,
    Family::Odontella,
    Family::Asterionellopsis,
    Family::Cyttarocylis,
    Family::Lithodesmioides,
    Family::ChaetocerosDanicus,
    Family::Xystonellidae,
];

/// The family drawn for a class name; names outside the reference list draw the unlabeled mixture.
pub(crate) fn family_for_class(class_name: &str) -> Family {
    match class_name {
        "detritus" => Family::Detritus,
        "feces" => Family::Feces,
        "Neoceratium" => Family::Neoceratium,
        "nauplii (Crustacea)" => Family::Nauplii,
        "badfocus (artefact)" => Family::Badfocus,
        "silks" => Family::Silks,
        "Copepoda" => Family::Copepoda,
        "Thalassionema" => Family::Thalassionema,
        "rods" => Family::Rods,
        "multiple (other)" => Family::Multiple,
        "Codonellopsis (Dictyocystidae)" => Family::Codonellopsis,
        "Protoperidinium" => Family::Protoperidinium,
        "Tintinnidiidae" => Family::Tintinnidiidae,
        "Rhizosolenids" => Family::Rhizosolenids,
        "Chaetoceros" => Family::Chaetoceros,
        "artefact" => Family::Artefact,
        "pollen" => Family::Pollen,
        "Codonaria" => Family::Codonaria,
        "chainlarge" => Family::Chainlarge,
        "Undellidae" => Family::Undellidae,
        "egg (other)" => Family::Egg,
        "Hemiaulus" => Family::Hemiaulus,
        "Dictyocysta" => Family::Dictyocysta,
        "Dinophysiales" => Family::Dinophysiales,
        "Annelida" => Family::Annelida,
        "Rhabdonella" => Family::Rhabdonella,
        "Stenosemella" => Family::Stenosemella,
        "Coscinodiscids" => Family::Coscinodiscids,
        "Retaria" => Family::Retaria,
        "Pleurosigma" => Family::Pleurosigma,
        "Ceratocorys horrida" => Family::CeratocorysHorrida,
        "centric" => Family::Centric,
        "Odontella (Mediophyceae)" => Family::Odontella,
        "Asterionellopsis" => Family::Asterionellopsis,
        "Cyttarocylis" => Family::Cyttarocylis,
        "Lithodesmioides" => Family::Lithodesmioides,
        "tempChaetoceros danicus" => Family::ChaetocerosDanicus,
        "Xystonellidae" => Family::Xystonellidae,
        "Bacteriastrum" => Family::Bacteriastrum,
        _ => Family::Unlabeled,
    }
}

/// Size (log-normal object length in pixels) and darkest grey of a family.
struct FamilyStyle {
    median_length: f32,
    length_sigma: f32,
    object_grey: (f32, f32),
}

const fn style(median_length: f32, length_sigma: f32, darkest: f32, lightest: f32) -> FamilyStyle {
    FamilyStyle {
        median_length,
        length_sigma,
        object_grey: (darkest, lightest),
    }
}

fn family_style(family: Family) -> FamilyStyle {
    match family {
        Family::Detritus => style(69.0, 0.55, 45.0, 140.0),
        Family::Feces => style(70.0, 0.45, 10.0, 50.0),
        Family::Neoceratium => style(190.0, 0.3, 45.0, 100.0),
        Family::Nauplii => style(120.0, 0.3, 35.0, 90.0),
        Family::Badfocus => style(80.0, 0.55, 80.0, 150.0),
        Family::Silks => style(210.0, 0.55, 90.0, 170.0),
        Family::Copepoda => style(220.0, 0.35, 30.0, 90.0),
        Family::Thalassionema => style(165.0, 0.4, 60.0, 120.0),
        Family::Rods => style(70.0, 0.4, 30.0, 100.0),
        Family::Multiple => style(130.0, 0.35, 35.0, 110.0),
        Family::Codonellopsis => style(125.0, 0.25, 50.0, 105.0),
        Family::Protoperidinium => style(75.0, 0.25, 45.0, 100.0),
        Family::Tintinnidiidae => style(110.0, 0.3, 80.0, 140.0),
        Family::Rhizosolenids => style(250.0, 0.4, 70.0, 130.0),
        Family::Chaetoceros => style(160.0, 0.4, 55.0, 115.0),
        Family::Artefact => style(35.0, 0.8, 20.0, 130.0),
        Family::Pollen => style(45.0, 0.2, 50.0, 110.0),
        Family::Codonaria => style(100.0, 0.25, 50.0, 105.0),
        Family::Chainlarge => style(220.0, 0.4, 55.0, 115.0),
        Family::Undellidae => style(90.0, 0.25, 55.0, 110.0),
        Family::Egg => style(90.0, 0.3, 45.0, 100.0),
        Family::Hemiaulus => style(150.0, 0.35, 60.0, 115.0),
        Family::Dictyocysta => style(85.0, 0.25, 50.0, 105.0),
        Family::Dinophysiales => style(70.0, 0.25, 45.0, 100.0),
        Family::Annelida => style(300.0, 0.4, 35.0, 90.0),
        Family::Rhabdonella => style(165.0, 0.25, 50.0, 105.0),
        Family::Stenosemella => style(65.0, 0.25, 40.0, 95.0),
        Family::Coscinodiscids => style(130.0, 0.3, 55.0, 110.0),
        Family::Retaria => style(120.0, 0.35, 35.0, 90.0),
        Family::Pleurosigma => style(180.0, 0.3, 60.0, 115.0),
        Family::CeratocorysHorrida => style(120.0, 0.25, 45.0, 95.0),
        Family::Centric => style(55.0, 0.3, 55.0, 110.0),
        Family::Odontella => style(100.0, 0.3, 55.0, 110.0),
        Family::Asterionellopsis => style(150.0, 0.35, 60.0, 120.0),
        Family::Cyttarocylis => style(160.0, 0.25, 50.0, 105.0),
        Family::Lithodesmioides => style(90.0, 0.25, 55.0, 110.0),
        Family::ChaetocerosDanicus => style(160.0, 0.3, 55.0, 110.0),
        Family::Xystonellidae => style(230.0, 0.25, 50.0, 105.0),
        Family::Bacteriastrum => style(200.0, 0.3, 55.0, 115.0),
        Family::Unlabeled => style(90.0, 0.5, 40.0, 130.0),
    }
}

/// Renders object `objid` of class `class_index` (reference order, unlabeled last) for dataset `seed`.
///
/// Deterministic in (`class_index`, `objid`, `seed`). An index outside the 40 classes renders the
/// unlabeled mixture.
pub fn render_object(class_index: usize, objid: u64, seed: u64) -> GreyImage {
    let family = class_name(class_index).map_or(Family::Unlabeled, family_for_class);
    render_family(family, objid, seed)
}

pub(crate) fn render_family(family: Family, objid: u64, seed: u64) -> GreyImage {
    let mut rng = keyed_rng(seed, objid, Stream::Image);
    let (mut sketch, object_grey) = draw_object(&mut rng, family);
    let appearance = Appearance {
        background: uniform(&mut rng, 200.0, 235.0),
        vignette: uniform(&mut rng, 0.0, 14.0),
        object_grey,
        noise_sigma: uniform(&mut rng, 1.2, 3.5),
    };
    let (width, height) = frame(&mut rng, &mut sketch);
    let mut noise = PixelNoise::new(&mut rng);
    rasterize(&sketch, width, height, appearance, &mut noise)
}

/// Draws a whole object of `family`: its sketch and the grey of its darkest parts.
fn draw_object(rng: &mut ChaCha8Rng, family: Family) -> (Sketch, f32) {
    match family {
        Family::Unlabeled => {
            let mixed_family = pick_family(rng);
            let (mut sketch, object_grey) = draw_object(rng, mixed_family);
            if chance(rng, 0.25) {
                sketch.blur_radius = uniform(rng, 1.0, 3.0);
            }
            (sketch, object_grey)
        }
        Family::Badfocus => {
            let focused_family = pick_family(rng);
            let (mut sketch, _) = draw_object(rng, focused_family);
            let extent = sketch
                .bounds()
                .map_or(10.0, |bounds| bounds.width().max(bounds.height()));
            sketch.blur_radius = (extent * uniform(rng, 0.015, 0.05)).max(1.5);
            let object_grey = object_grey_of(rng, &family_style(Family::Badfocus));
            (sketch, object_grey)
        }
        Family::Multiple => {
            let first_family = pick_family(rng);
            let second_family = pick_family(rng);
            let (first, first_grey) = draw_object(rng, first_family);
            let (second, second_grey) = draw_object(rng, second_family);
            let first_half_width = first.bounds().map_or(5.0, |bounds| bounds.max.x);
            let second_half_width = second.bounds().map_or(5.0, |bounds| -bounds.min.x);
            let spacing = uniform(rng, -0.1, 0.25) * (first_half_width + second_half_width);
            let mut pair = Sketch::default();
            pair.merge(first, point(-first_half_width - spacing / 2.0, 0.0));
            pair.merge(
                second,
                point(second_half_width + spacing / 2.0, uniform(rng, -15.0, 15.0)),
            );
            (pair, first_grey.min(second_grey))
        }
        single => {
            let family_style = family_style(single);
            let length = object_length(rng, single, &family_style);
            let sketch = draw_single(rng, single, length);
            (sketch, object_grey_of(rng, &family_style))
        }
    }
}

fn pick_family(rng: &mut ChaCha8Rng) -> Family {
    SINGLE_OBJECT_FAMILIES[rng.random_range(0..SINGLE_OBJECT_FAMILIES.len())]
}

fn object_grey_of(rng: &mut ChaCha8Rng, family_style: &FamilyStyle) -> f32 {
    uniform(rng, family_style.object_grey.0, family_style.object_grey.1)
}

fn object_length(rng: &mut ChaCha8Rng, family: Family, family_style: &FamilyStyle) -> f32 {
    let tiny_speck_probability = match family {
        Family::Detritus => 0.03,
        Family::Artefact => 0.2,
        _ => 0.0,
    };
    if chance(rng, tiny_speck_probability) {
        return uniform(rng, 1.5, 9.0);
    }
    log_normal(rng, family_style.median_length, family_style.length_sigma).clamp(3.0, 1_400.0)
}

/// Rotates, shrinks to the size limits and frames the sketch; returns the image size.
fn frame(rng: &mut ChaCha8Rng, sketch: &mut Sketch) -> (u32, u32) {
    let rotation = if chance(rng, 0.75) {
        FRAC_PI_2 + 0.3 * standard_normal(rng)
    } else {
        uniform(rng, 0.0, TAU)
    };
    sketch.transform(rotation, 1.0, point(0.0, 0.0));
    let Some(bounds) = sketch.bounds() else {
        return (2, 2);
    };
    let fit_scale = ((MAX_WIDTH as f32 - 6.0) / bounds.width().max(1.0))
        .min((MAX_HEIGHT as f32 - 6.0) / bounds.height().max(1.0))
        .min(1.0);
    if fit_scale < 1.0 {
        sketch.transform(0.0, fit_scale, point(0.0, 0.0));
    }
    let Some(bounds) = sketch.bounds() else {
        return (2, 2);
    };
    let extent = bounds.width().max(bounds.height());
    let margin_limit = (extent * 0.12).clamp(0.5, 6.0);
    let margin_left = uniform(rng, 0.0, margin_limit);
    let margin_top = uniform(rng, 0.0, margin_limit);
    let margin_right = uniform(rng, 0.0, margin_limit);
    let margin_bottom = uniform(rng, 0.0, margin_limit);
    let mut width = (bounds.width() + margin_left + margin_right)
        .ceil()
        .clamp(2.0, MAX_WIDTH as f32);
    let mut height = (bounds.height() + margin_top + margin_bottom)
        .ceil()
        .clamp(2.0, MAX_HEIGHT as f32);
    let mut offset = point(margin_left - bounds.min.x, margin_top - bounds.min.y);
    // Partial occlusion: the object runs out of the camera frame on one side.
    if extent > 16.0 && chance(rng, 0.06) {
        let cut_fraction = uniform(rng, 0.1, 0.35);
        match rng.random_range(0..4) {
            0 => width = (width * (1.0 - cut_fraction)).ceil(),
            1 => height = (height * (1.0 - cut_fraction)).ceil(),
            2 => {
                let cut = (width * cut_fraction).floor();
                width -= cut;
                offset.x -= cut;
            }
            _ => {
                let cut = (height * cut_fraction).floor();
                height -= cut;
                offset.y -= cut;
            }
        }
    }
    sketch.transform(0.0, 1.0, offset);
    (width.max(2.0) as u32, height.max(2.0) as u32)
}

fn speckle(rng: &mut ChaCha8Rng, amount: f32, grain: f32) -> Texture {
    Texture::Speckle {
        amount,
        grain,
        salt: rng.random(),
    }
}

fn speckle_between(rng: &mut ChaCha8Rng, amount: (f32, f32), grain: (f32, f32)) -> Texture {
    let amount = uniform(rng, amount.0, amount.1);
    let grain = uniform(rng, grain.0, grain.1);
    speckle(rng, amount, grain)
}

fn random_harmonics(
    rng: &mut ChaCha8Rng,
    count: usize,
    orders: (u32, u32),
    max_amplitude: f32,
) -> Vec<Harmonic> {
    (0..count)
        .map(|_| Harmonic {
            order: rng.random_range(orders.0..=orders.1) as f32,
            amplitude: uniform(rng, 0.0, max_amplitude),
            phase: uniform(rng, 0.0, TAU),
        })
        .collect()
}

fn polar(origin: Point, angle: f32, distance: f32) -> Point {
    point(
        origin.x + angle.cos() * distance,
        origin.y + angle.sin() * distance,
    )
}

fn thin(length: f32, fraction: f32) -> f32 {
    (length * fraction).max(0.55)
}

fn draw_single(rng: &mut ChaCha8Rng, family: Family, length: f32) -> Sketch {
    let mut sketch = Sketch::default();
    match family {
        Family::Detritus => draw_detritus(rng, &mut sketch, length),
        Family::Feces => draw_feces(rng, &mut sketch, length),
        Family::Neoceratium => draw_horned_cell(rng, &mut sketch, length, HornedCell::Neoceratium),
        Family::Protoperidinium => {
            draw_horned_cell(rng, &mut sketch, length, HornedCell::Protoperidinium)
        }
        Family::CeratocorysHorrida => {
            draw_horned_cell(rng, &mut sketch, length, HornedCell::Ceratocorys)
        }
        Family::Nauplii => draw_nauplius(rng, &mut sketch, length),
        Family::Copepoda => draw_copepod(rng, &mut sketch, length),
        Family::Silks => draw_silk(rng, &mut sketch, length),
        Family::Thalassionema => draw_zigzag_colony(rng, &mut sketch, length),
        Family::Asterionellopsis => draw_star_colony(rng, &mut sketch, length),
        Family::Rods => draw_rod(rng, &mut sketch, length),
        Family::Codonellopsis => draw_lorica(rng, &mut sketch, length, &CODONELLOPSIS),
        Family::Tintinnidiidae => draw_lorica(rng, &mut sketch, length, &TINTINNIDIIDAE),
        Family::Undellidae => draw_lorica(rng, &mut sketch, length, &UNDELLIDAE),
        Family::Codonaria => draw_lorica(rng, &mut sketch, length, &CODONARIA),
        Family::Dictyocysta => draw_lorica(rng, &mut sketch, length, &DICTYOCYSTA),
        Family::Rhabdonella => draw_lorica(rng, &mut sketch, length, &RHABDONELLA),
        Family::Stenosemella => draw_lorica(rng, &mut sketch, length, &STENOSEMELLA),
        Family::Cyttarocylis => draw_lorica(rng, &mut sketch, length, &CYTTAROCYLIS),
        Family::Xystonellidae => draw_lorica(rng, &mut sketch, length, &XYSTONELLIDAE),
        Family::Rhizosolenids => draw_rhizosolenid(rng, &mut sketch, length),
        Family::Chaetoceros => draw_cell_chain(rng, &mut sketch, length, &CHAETOCEROS),
        Family::Chainlarge => draw_cell_chain(rng, &mut sketch, length, &CHAINLARGE),
        Family::Hemiaulus => draw_cell_chain(rng, &mut sketch, length, &HEMIAULUS),
        Family::ChaetocerosDanicus => draw_cell_chain(rng, &mut sketch, length, &DANICUS),
        Family::Bacteriastrum => draw_cell_chain(rng, &mut sketch, length, &BACTERIASTRUM),
        Family::Odontella => draw_cell_chain(rng, &mut sketch, length, &ODONTELLA),
        Family::Artefact => draw_artefact(rng, &mut sketch, length),
        Family::Pollen => draw_pollen(rng, &mut sketch, length),
        Family::Egg => draw_egg(rng, &mut sketch, length),
        Family::Coscinodiscids => draw_disc(rng, &mut sketch, length, (18.0, 40.0)),
        Family::Centric => draw_disc(rng, &mut sketch, length, (10.0, 24.0)),
        Family::Pleurosigma => draw_sigmoid(rng, &mut sketch, length),
        Family::Annelida => draw_worm(rng, &mut sketch, length),
        Family::Dinophysiales => draw_dinophysis(rng, &mut sketch, length),
        Family::Retaria => draw_radiolarian(rng, &mut sketch, length),
        Family::Lithodesmioides => draw_triangle_cell(rng, &mut sketch, length),
        // Composite families are drawn by `draw_object`; a bare call draws amorphous matter.
        Family::Badfocus | Family::Multiple | Family::Unlabeled => {
            draw_detritus(rng, &mut sketch, length)
        }
    }
    sketch
}

fn draw_detritus(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let elongation = uniform(rng, 0.1, 0.55);
    let main_radius = length * 0.5 / (1.0 + elongation);
    let mut harmonics = vec![Harmonic {
        order: 2.0,
        amplitude: elongation,
        phase: FRAC_PI_2,
    }];
    let extra = rng.random_range(2..=4);
    harmonics.extend(random_harmonics(rng, extra, (3, 9), 0.15));
    let ink = uniform(rng, 0.45, 0.95);
    let texture = speckle_between(rng, (0.3, 0.7), (1.0, 3.0));
    sketch.blob(point(0.0, 0.0), main_radius, harmonics, ink, texture);
    for _ in 0..rng.random_range(0..=2) {
        let satellite_angle = uniform(rng, 0.0, TAU);
        let satellite_center = polar(
            point(0.0, 0.0),
            satellite_angle,
            main_radius * uniform(rng, 0.5, 0.8),
        );
        let satellite_harmonics = random_harmonics(rng, 3, (2, 7), 0.2);
        let satellite_ink = ink * uniform(rng, 0.7, 1.1);
        let satellite_texture = speckle_between(rng, (0.3, 0.7), (1.0, 3.0));
        sketch.blob(
            satellite_center,
            main_radius * uniform(rng, 0.3, 0.6),
            satellite_harmonics,
            satellite_ink,
            satellite_texture,
        );
    }
    if chance(rng, 0.2) {
        let tail_angle = uniform(rng, 0.0, TAU);
        let tail_end = polar(point(0.0, 0.0), tail_angle, length * uniform(rng, 0.5, 0.8));
        sketch.capsule(point(0.0, 0.0), tail_end, uniform(rng, 0.6, 1.5), ink * 0.8);
    }
}

fn draw_feces(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let aspect = uniform(rng, 1.3, 4.0);
    let radius_x = length / 2.0;
    let radius_y = radius_x / aspect;
    let ink = uniform(rng, 0.9, 1.0);
    if chance(rng, 0.55) {
        let texture = speckle(rng, 0.15, 1.0);
        sketch.textured_ellipse(
            point(0.0, 0.0),
            radius_x,
            radius_y,
            0.0,
            ink,
            None,
            0.0,
            texture,
        );
    } else {
        let bend = uniform(rng, -0.15, 0.15) * length;
        sketch.capsule(
            point(-radius_x + radius_y, 0.0),
            point(0.0, bend),
            radius_y,
            ink,
        );
        sketch.capsule(
            point(0.0, bend),
            point(radius_x - radius_y, 0.0),
            radius_y,
            ink,
        );
    }
    if chance(rng, 0.3) {
        let harmonics = random_harmonics(rng, 3, (3, 6), 0.25);
        let texture = speckle(rng, 0.2, 2.0);
        sketch.blob(
            point(uniform(rng, -0.3, 0.3) * radius_x, 0.0),
            radius_y * 1.1,
            harmonics,
            ink,
            texture,
        );
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HornedCell {
    Neoceratium,
    Protoperidinium,
    Ceratocorys,
}

fn draw_horned_cell(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32, kind: HornedCell) {
    let body_radius = match kind {
        HornedCell::Neoceratium => length * uniform(rng, 0.11, 0.16),
        HornedCell::Protoperidinium => length * uniform(rng, 0.3, 0.38),
        HornedCell::Ceratocorys => length * uniform(rng, 0.18, 0.25),
    };
    let mut harmonics = vec![Harmonic {
        order: 1.0,
        amplitude: uniform(rng, 0.0, 0.15),
        phase: PI,
    }];
    harmonics.extend(random_harmonics(rng, 2, (2, 5), 0.07));
    let body_texture = speckle_between(rng, (0.15, 0.4), (1.0, 2.5));
    let body_ink = uniform(rng, 0.75, 0.95);
    sketch.blob(
        point(0.0, 0.0),
        body_radius,
        harmonics,
        body_ink,
        body_texture,
    );
    let horn_ink = body_ink * uniform(rng, 0.8, 1.0);
    match kind {
        HornedCell::Neoceratium => {
            let apical_tip = point(-length * 0.5, length * uniform(rng, -0.05, 0.05));
            sketch.capsule(
                point(-body_radius * 0.6, 0.0),
                apical_tip,
                thin(length, 0.018),
                horn_ink,
            );
            for side in [-1.0f32, 1.0] {
                let elbow = point(
                    length * uniform(rng, 0.15, 0.3),
                    side * length * uniform(rng, 0.07, 0.15),
                );
                let tip = point(
                    elbow.x + length * uniform(rng, -0.22, 0.18),
                    side * length * uniform(rng, 0.15, 0.35),
                );
                sketch.capsule(
                    point(body_radius * 0.5, side * body_radius * 0.5),
                    elbow,
                    thin(length, 0.016),
                    horn_ink,
                );
                sketch.capsule(elbow, tip, thin(length, 0.012), horn_ink);
            }
        }
        HornedCell::Protoperidinium => {
            let apical_tip = point(-length * uniform(rng, 0.42, 0.5), 0.0);
            sketch.capsule(
                point(-body_radius * 0.8, 0.0),
                apical_tip,
                thin(length, 0.04),
                body_ink,
            );
            for side in [-1.0f32, 1.0] {
                let tip = point(
                    length * uniform(rng, 0.38, 0.5),
                    side * length * uniform(rng, 0.1, 0.22),
                );
                sketch.capsule(
                    point(body_radius * 0.7, side * body_radius * 0.4),
                    tip,
                    thin(length, 0.03),
                    body_ink,
                );
            }
        }
        HornedCell::Ceratocorys => {
            let spine_count = rng.random_range(4..=7);
            for _ in 0..spine_count {
                let spine_angle = uniform(rng, -1.1, 1.1);
                let base = polar(point(0.0, 0.0), spine_angle, body_radius * 0.8);
                let tip = polar(
                    point(0.0, 0.0),
                    spine_angle,
                    body_radius + length * uniform(rng, 0.3, 0.55),
                );
                sketch.capsule(base, tip, thin(length, 0.009), horn_ink);
            }
            let apical_tip = point(-body_radius - length * uniform(rng, 0.05, 0.15), 0.0);
            sketch.capsule(
                point(-body_radius * 0.8, 0.0),
                apical_tip,
                thin(length, 0.01),
                horn_ink,
            );
        }
    }
}

fn draw_nauplius(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let radius_x = length * uniform(rng, 0.26, 0.32);
    let radius_y = length * uniform(rng, 0.18, 0.24);
    let harmonics = vec![
        Harmonic {
            order: 1.0,
            amplitude: uniform(rng, 0.05, 0.18),
            phase: 0.0,
        },
        Harmonic {
            order: 2.0,
            amplitude: (radius_x / radius_y - 1.0) * 0.5,
            phase: FRAC_PI_2,
        },
    ];
    let body_ink = uniform(rng, 0.75, 0.95);
    let body_texture = speckle_between(rng, (0.2, 0.45), (2.0, 2.0));
    sketch.blob(
        point(0.0, 0.0),
        (radius_x + radius_y) / 2.0,
        harmonics,
        body_ink,
        body_texture,
    );
    for pair in 0..3 {
        let base_x = -radius_x * 0.6 + pair as f32 * radius_x * 0.5;
        for side in [-1.0f32, 1.0] {
            let base = point(base_x, side * radius_y * 0.8);
            let tip = point(
                base_x + length * uniform(rng, -0.15, 0.1),
                side * (radius_y + length * uniform(rng, 0.15, 0.3)),
            );
            sketch.capsule(base, tip, thin(length, 0.016), body_ink * 0.85);
            let seta_tip = point(
                tip.x + length * uniform(rng, -0.1, 0.1),
                tip.y + side * length * 0.1,
            );
            sketch.capsule(tip, seta_tip, 0.55, body_ink * 0.6);
        }
    }
    sketch.ellipse(
        point(-radius_x * 0.7, 0.0),
        thin(length, 0.035),
        thin(length, 0.035),
        0.0,
        1.0,
    );
}

fn draw_copepod(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let body_ink = uniform(rng, 0.75, 0.95);
    let prosome_radius_y = length * uniform(rng, 0.07, 0.12);
    let prosome_texture = speckle_between(rng, (0.15, 0.35), (2.0, 2.0));
    sketch.textured_ellipse(
        point(-length * 0.12, 0.0),
        length * 0.24,
        prosome_radius_y,
        0.0,
        body_ink,
        None,
        0.0,
        prosome_texture,
    );
    let segment_count = rng.random_range(3..=5);
    let urosome_bend = uniform(rng, -0.3, 0.3);
    let mut segment_center = point(length * 0.13, 0.0);
    for segment in 0..segment_count {
        let radius = length * 0.035 * (1.0 - segment as f32 * 0.12);
        sketch.ellipse(
            segment_center,
            length * 0.045,
            radius,
            urosome_bend,
            body_ink,
        );
        segment_center = polar(segment_center, urosome_bend, length * 0.07);
    }
    for side in [-1.0f32, 1.0] {
        let seta_tip = polar(
            segment_center,
            urosome_bend + side * 0.25,
            length * uniform(rng, 0.08, 0.16),
        );
        sketch.capsule(segment_center, seta_tip, 0.6, body_ink * 0.7);
        let antenna_base = point(-length * 0.3, side * prosome_radius_y * 0.5);
        let antenna_tip = point(
            -length * 0.3 + length * uniform(rng, -0.05, 0.3),
            side * length * uniform(rng, 0.25, 0.5),
        );
        sketch.capsule(
            antenna_base,
            antenna_tip,
            thin(length, 0.008),
            body_ink * 0.75,
        );
    }
    for leg in 0..rng.random_range(2..=4) {
        let base = point(
            -length * 0.2 + leg as f32 * length * 0.07,
            prosome_radius_y * 0.7,
        );
        let tip = point(
            base.x + length * 0.03,
            prosome_radius_y + length * uniform(rng, 0.04, 0.09),
        );
        sketch.capsule(base, tip, thin(length, 0.007), body_ink * 0.7);
    }
}

fn draw_silk(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let fibre_count = if chance(rng, 0.25) { 2 } else { 1 };
    for _ in 0..fibre_count {
        let segment_count = rng.random_range(6..=14);
        let segment_length = length / segment_count as f32;
        let radius = uniform(rng, 0.55, 1.6);
        let ink = uniform(rng, 0.55, 0.9);
        let mut heading = uniform(rng, -0.3, 0.3);
        let mut position = point(-length / 2.0, uniform(rng, -0.05, 0.05) * length);
        let curl = uniform(rng, 0.05, 0.4);
        for _ in 0..segment_count {
            let next = polar(position, heading, segment_length);
            sketch.capsule(position, next, radius, ink);
            position = next;
            heading += curl * standard_normal(rng);
        }
    }
}

fn draw_zigzag_colony(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let rod_count = rng.random_range(3..=8);
    let rod_length = length * uniform(rng, 0.3, 0.45);
    let radius = thin(length, uniform(rng, 0.008, 0.014));
    let ink = uniform(rng, 0.75, 0.95);
    let zig = uniform(rng, 0.3, 1.2);
    let mut position = point(-length * 0.4, 0.0);
    for rod in 0..rod_count {
        let direction = if rod % 2 == 0 { zig } else { -zig } + 0.15 * standard_normal(rng);
        let end = polar(position, direction, rod_length);
        sketch.capsule(position, end, radius, ink);
        sketch.ellipse(end, radius * 2.0, radius * 2.0, 0.0, ink);
        position = end;
    }
}

fn draw_star_colony(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let rod_count = rng.random_range(4..=10);
    let arc = if chance(rng, 0.6) {
        TAU
    } else {
        uniform(rng, 1.5, 3.5)
    };
    let radius = thin(length, uniform(rng, 0.006, 0.012));
    let ink = uniform(rng, 0.7, 0.95);
    for rod in 0..rod_count {
        let rod_angle = arc * rod as f32 / rod_count as f32 + 0.1 * standard_normal(rng);
        let base = polar(point(0.0, 0.0), rod_angle, length * 0.03);
        let tip = polar(point(0.0, 0.0), rod_angle, length * uniform(rng, 0.38, 0.5));
        sketch.capsule(base, tip, radius, ink);
        sketch.ellipse(base, length * 0.03, length * 0.02, rod_angle, ink);
    }
}

fn draw_rod(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let aspect = uniform(rng, 4.0, 12.0);
    let radius = (length / (2.0 * aspect)).max(0.8);
    let ink = uniform(rng, 0.7, 0.95);
    let half = length / 2.0 - radius;
    if chance(rng, 0.3) {
        let elbow = point(0.0, length * uniform(rng, -0.1, 0.1));
        sketch.capsule(point(-half, 0.0), elbow, radius, ink);
        sketch.capsule(elbow, point(half, 0.0), radius, ink);
    } else {
        sketch.capsule(point(-half, 0.0), point(half, 0.0), radius, ink);
    }
}

/// Wall texture of a tintinnid lorica.
#[derive(Clone, Copy)]
enum LoricaWall {
    Plain,
    Agglutinated { amount: f32 },
    Reticulated,
    Ribbed,
}

/// Shape parameters of a tintinnid lorica; ranges overlap between look-alike genera.
struct LoricaStyle {
    aspect: (f32, f32),
    wall_fraction: f32,
    collar_fraction: f32,
    collar_flare: f32,
    taper_fraction: f32,
    wall: LoricaWall,
}

const CODONELLOPSIS: LoricaStyle = LoricaStyle {
    aspect: (1.3, 1.8),
    wall_fraction: 0.25,
    collar_fraction: 0.25,
    collar_flare: 1.0,
    taper_fraction: 0.0,
    wall: LoricaWall::Agglutinated { amount: 0.5 },
};
const TINTINNIDIIDAE: LoricaStyle = LoricaStyle {
    aspect: (2.0, 3.2),
    wall_fraction: 0.3,
    collar_fraction: 0.0,
    collar_flare: 1.0,
    taper_fraction: 0.0,
    wall: LoricaWall::Agglutinated { amount: 0.35 },
};
const UNDELLIDAE: LoricaStyle = LoricaStyle {
    aspect: (1.1, 1.4),
    wall_fraction: 0.12,
    collar_fraction: 0.05,
    collar_flare: 1.0,
    taper_fraction: 0.05,
    wall: LoricaWall::Plain,
};
const CODONARIA: LoricaStyle = LoricaStyle {
    aspect: (1.1, 1.5),
    wall_fraction: 0.2,
    collar_fraction: 0.2,
    collar_flare: 1.5,
    taper_fraction: 0.0,
    wall: LoricaWall::Agglutinated { amount: 0.4 },
};
const DICTYOCYSTA: LoricaStyle = LoricaStyle {
    aspect: (1.0, 1.3),
    wall_fraction: 0.25,
    collar_fraction: 0.3,
    collar_flare: 1.3,
    taper_fraction: 0.0,
    wall: LoricaWall::Reticulated,
};
const RHABDONELLA: LoricaStyle = LoricaStyle {
    aspect: (2.8, 4.0),
    wall_fraction: 0.2,
    collar_fraction: 0.08,
    collar_flare: 1.0,
    taper_fraction: 0.2,
    wall: LoricaWall::Ribbed,
};
const STENOSEMELLA: LoricaStyle = LoricaStyle {
    aspect: (1.05, 1.3),
    wall_fraction: 0.35,
    collar_fraction: 0.08,
    collar_flare: 1.0,
    taper_fraction: 0.0,
    wall: LoricaWall::Agglutinated { amount: 0.65 },
};
const CYTTAROCYLIS: LoricaStyle = LoricaStyle {
    aspect: (1.6, 2.3),
    wall_fraction: 0.2,
    collar_fraction: 0.15,
    collar_flare: 1.2,
    taper_fraction: 0.1,
    wall: LoricaWall::Reticulated,
};
const XYSTONELLIDAE: LoricaStyle = LoricaStyle {
    aspect: (4.0, 6.0),
    wall_fraction: 0.25,
    collar_fraction: 0.1,
    collar_flare: 1.0,
    taper_fraction: 0.25,
    wall: LoricaWall::Ribbed,
};

fn draw_lorica(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32, lorica: &LoricaStyle) {
    let collar_length = length * lorica.collar_fraction * uniform(rng, 0.8, 1.2);
    let taper_length = length * lorica.taper_fraction * uniform(rng, 0.8, 1.2);
    let body_length = (length - collar_length - taper_length).max(length * 0.4);
    let radius_x = body_length / 2.0;
    let radius_y = radius_x / uniform(rng, lorica.aspect.0, lorica.aspect.1);
    let wall = (radius_y * lorica.wall_fraction * uniform(rng, 0.8, 1.2)).max(1.2);
    let ink = uniform(rng, 0.75, 0.95);
    let texture = match lorica.wall {
        LoricaWall::Plain => Texture::Plain,
        LoricaWall::Agglutinated { amount } => speckle_between(rng, (amount, amount), (1.5, 3.0)),
        LoricaWall::Reticulated => Texture::Lattice {
            period: (radius_y * 0.3).max(3.0),
            depth: 0.75,
        },
        LoricaWall::Ribbed => Texture::Stripes {
            period: (length * 0.035).max(3.0),
            depth: 0.45,
        },
    };
    let fill = uniform(rng, 0.05, 0.2);
    sketch.textured_ellipse(
        point(0.0, 0.0),
        radius_x,
        radius_y,
        0.0,
        ink,
        Some(wall),
        fill,
        texture,
    );
    if collar_length > 0.5 {
        let collar_start = -radius_x * 0.85;
        let collar_end = -radius_x - collar_length;
        let start_half_width = radius_y * 0.55;
        let end_half_width = start_half_width * lorica.collar_flare * uniform(rng, 0.9, 1.1);
        for side in [-1.0f32, 1.0] {
            let start = point(collar_start, side * start_half_width);
            let end = point(collar_end, side * end_half_width);
            sketch.capsule(start, end, (wall * 0.5).max(0.6), ink);
        }
    }
    if taper_length > 0.5 {
        let tip = point(radius_x + taper_length, 0.0);
        for side in [-1.0f32, 1.0] {
            sketch.capsule(
                point(radius_x * 0.6, side * radius_y * 0.75),
                tip,
                (wall * 0.5).max(0.6),
                ink,
            );
        }
    }
    if chance(rng, 0.5) {
        let cell_harmonics = random_harmonics(rng, 2, (2, 4), 0.15);
        sketch.blob(
            point(radius_x * 0.1, 0.0),
            radius_y * 0.5,
            cell_harmonics,
            ink * 0.4,
            Texture::Plain,
        );
    }
}

fn draw_rhizosolenid(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let cell_count = rng.random_range(1..=3);
    let cell_length = length / cell_count as f32;
    let radius_y = (length * uniform(rng, 0.025, 0.06)).max(2.0);
    let ink = uniform(rng, 0.75, 0.95);
    let fill = uniform(rng, 0.15, 0.35);
    for cell in 0..cell_count {
        let center = point(-length / 2.0 + cell_length * (cell as f32 + 0.5), 0.0);
        sketch.textured_ellipse(
            center,
            cell_length * 0.48,
            radius_y,
            0.0,
            ink,
            Some((radius_y * 0.3).max(1.0)),
            fill,
            Texture::Plain,
        );
    }
    for end in [-1.0f32, 1.0] {
        let base = point(end * length * 0.48, 0.0);
        sketch.capsule(
            base,
            point(end * length * 0.55, radius_y * 0.5),
            0.6,
            ink * 0.8,
        );
    }
}

/// A chain of cells with optional setae or horns (chain-forming diatoms).
struct ChainStyle {
    cells: (u32, u32),
    /// Cell breadth across the chain over cell length along it.
    breadth: (f32, f32),
    gap_fraction: f32,
    wall_fraction: f32,
    fill: f32,
    setae_per_cell: (u32, u32),
    setae_length: (f32, f32),
    setae_radius_fraction: f32,
    /// Setae spread all around the cell (true) or leave near the junction (false).
    radiating_setae: bool,
    horns: bool,
}

const CHAETOCEROS: ChainStyle = ChainStyle {
    cells: (3, 10),
    breadth: (1.2, 1.8),
    gap_fraction: 0.2,
    wall_fraction: 0.2,
    fill: 0.4,
    setae_per_cell: (2, 2),
    setae_length: (0.15, 0.35),
    setae_radius_fraction: 0.003,
    radiating_setae: false,
    horns: false,
};
const CHAINLARGE: ChainStyle = ChainStyle {
    cells: (2, 6),
    breadth: (0.8, 1.6),
    gap_fraction: 0.0,
    wall_fraction: 0.18,
    fill: 0.45,
    setae_per_cell: (0, 0),
    setae_length: (0.0, 0.0),
    setae_radius_fraction: 0.0,
    radiating_setae: false,
    horns: false,
};
const HEMIAULUS: ChainStyle = ChainStyle {
    cells: (2, 5),
    breadth: (0.5, 0.8),
    gap_fraction: 0.3,
    wall_fraction: 0.2,
    fill: 0.3,
    setae_per_cell: (0, 0),
    setae_length: (0.0, 0.0),
    setae_radius_fraction: 0.0,
    radiating_setae: false,
    horns: true,
};
const DANICUS: ChainStyle = ChainStyle {
    cells: (1, 3),
    breadth: (1.0, 1.4),
    gap_fraction: 0.15,
    wall_fraction: 0.25,
    fill: 0.5,
    setae_per_cell: (4, 4),
    setae_length: (0.35, 0.5),
    setae_radius_fraction: 0.008,
    radiating_setae: false,
    horns: false,
};
const BACTERIASTRUM: ChainStyle = ChainStyle {
    cells: (2, 5),
    breadth: (1.2, 1.8),
    gap_fraction: 0.2,
    wall_fraction: 0.2,
    fill: 0.4,
    setae_per_cell: (8, 14),
    setae_length: (0.2, 0.35),
    setae_radius_fraction: 0.003,
    radiating_setae: true,
    horns: false,
};
const ODONTELLA: ChainStyle = ChainStyle {
    cells: (1, 3),
    breadth: (0.6, 0.9),
    gap_fraction: 0.25,
    wall_fraction: 0.15,
    fill: 0.35,
    setae_per_cell: (0, 0),
    setae_length: (0.0, 0.0),
    setae_radius_fraction: 0.0,
    radiating_setae: false,
    horns: true,
};

fn draw_cell_chain(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32, chain: &ChainStyle) {
    let cell_count = rng.random_range(chain.cells.0..=chain.cells.1);
    let cell_length = length / (cell_count as f32 * (1.0 + chain.gap_fraction) + 0.5);
    let cell_breadth = cell_length * uniform(rng, chain.breadth.0, chain.breadth.1);
    let ink = uniform(rng, 0.75, 0.95);
    let curvature = uniform(rng, -0.6, 0.6) / length.max(1.0);
    let pitch = cell_length * (1.0 + chain.gap_fraction);
    let first_x = -pitch * (cell_count as f32 - 1.0) / 2.0;
    let texture = if chain.fill > 0.4 {
        speckle(rng, 0.3, 2.0)
    } else {
        Texture::Plain
    };
    for cell in 0..cell_count {
        let center_x = first_x + pitch * cell as f32;
        let center = point(center_x, curvature * center_x * center_x);
        let wall = (cell_breadth * chain.wall_fraction).max(1.0);
        sketch.textured_ellipse(
            center,
            cell_length / 2.0,
            cell_breadth / 2.0,
            2.0 * curvature * center_x,
            ink,
            Some(wall),
            chain.fill,
            texture,
        );
        let setae_count = rng.random_range(chain.setae_per_cell.0..=chain.setae_per_cell.1);
        for seta in 0..setae_count {
            let seta_length = length * uniform(rng, chain.setae_length.0, chain.setae_length.1);
            let radius = thin(length, chain.setae_radius_fraction);
            let (base, angle) = if chain.radiating_setae {
                let around = TAU * seta as f32 / setae_count as f32 + 0.2 * standard_normal(rng);
                (polar(center, around, cell_breadth * 0.4), around)
            } else {
                let side = if seta % 2 == 0 { -1.0 } else { 1.0 };
                let forward = if (seta / 2) % 2 == 0 { 1.0 } else { -1.0 };
                let junction = point(
                    center.x + forward * cell_length * 0.5,
                    center.y + side * cell_breadth * 0.45,
                );
                let leave_angle = side * uniform(rng, 0.5, 1.3);
                let angle = if forward > 0.0 {
                    leave_angle
                } else {
                    PI - leave_angle
                };
                (junction, angle)
            };
            sketch.capsule(base, polar(base, angle, seta_length), radius, ink * 0.75);
        }
        if chain.horns {
            for side in [-1.0f32, 1.0] {
                for forward in [-1.0f32, 1.0] {
                    let base = point(
                        center.x + forward * cell_length * 0.35,
                        center.y + side * cell_breadth * 0.4,
                    );
                    let tip = point(
                        center.x + forward * cell_length * uniform(rng, 0.6, 0.8),
                        center.y + side * cell_breadth * 0.45,
                    );
                    sketch.capsule(base, tip, thin(cell_length, 0.05), ink);
                }
            }
        }
    }
}

fn draw_artefact(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let ink = uniform(rng, 0.6, 1.0);
    let radius = length / 2.0;
    match rng.random_range(0..4) {
        0 => {
            let wall = (radius * uniform(rng, 0.15, 0.35)).max(1.0);
            sketch.textured_ellipse(
                point(0.0, 0.0),
                radius,
                radius / uniform(rng, 1.0, 1.1),
                0.0,
                ink,
                Some(wall),
                0.0,
                Texture::Plain,
            );
        }
        1 => {
            sketch.textured_ellipse(
                point(0.0, 0.0),
                radius,
                radius / uniform(rng, 1.0, 1.3),
                0.0,
                ink,
                Some(uniform(rng, 1.0, 2.0)),
                0.05,
                Texture::Plain,
            );
        }
        2 => {
            for _ in 0..rng.random_range(1..=4) {
                let center = point(
                    uniform(rng, -0.5, 0.5) * radius,
                    uniform(rng, -0.5, 0.5) * radius,
                );
                let harmonics = random_harmonics(rng, 2, (2, 5), 0.2);
                sketch.blob(
                    center,
                    radius * uniform(rng, 0.2, 0.5),
                    harmonics,
                    ink,
                    Texture::Plain,
                );
            }
        }
        _ => {
            sketch.capsule(
                point(-radius, 0.0),
                point(radius, uniform(rng, -0.2, 0.2) * radius),
                uniform(rng, 0.6, 2.0),
                ink,
            );
        }
    }
}

fn draw_pollen(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let radius = length * 0.45;
    let harmonics = vec![
        Harmonic {
            order: rng.random_range(14..=24) as f32,
            amplitude: uniform(rng, 0.05, 0.1),
            phase: uniform(rng, 0.0, TAU),
        },
        Harmonic {
            order: 2.0,
            amplitude: uniform(rng, 0.0, 0.05),
            phase: 0.0,
        },
    ];
    let ink = uniform(rng, 0.7, 0.9);
    let texture = speckle(rng, 0.35, 1.0);
    sketch.blob(point(0.0, 0.0), radius, harmonics, ink, texture);
    sketch.textured_ellipse(
        point(0.0, 0.0),
        radius * 0.65,
        radius * 0.65,
        0.0,
        1.0,
        Some(1.5),
        0.0,
        Texture::Plain,
    );
}

fn draw_egg(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let radius_x = length / 2.0;
    let radius_y = radius_x / uniform(rng, 1.0, 1.12);
    let wall = (radius_x * uniform(rng, 0.06, 0.14)).max(1.5);
    let ink = uniform(rng, 0.8, 0.95);
    sketch.textured_ellipse(
        point(0.0, 0.0),
        radius_x,
        radius_y,
        0.0,
        ink,
        Some(wall),
        uniform(rng, 0.15, 0.4),
        Texture::Plain,
    );
    if chance(rng, 0.3) {
        let embryo_harmonics = random_harmonics(rng, 2, (2, 3), 0.1);
        sketch.blob(
            point(0.0, 0.0),
            radius_x * 0.6,
            embryo_harmonics,
            ink * 0.55,
            Texture::Plain,
        );
    }
}

fn draw_disc(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32, spokes: (f32, f32)) {
    let radius_x = length / 2.0;
    let side_view = chance(rng, 0.15);
    let radius_y = if side_view {
        radius_x / uniform(rng, 2.0, 3.0)
    } else {
        radius_x / uniform(rng, 1.0, 1.15)
    };
    let ink = uniform(rng, 0.6, 0.85);
    let spoke_count = uniform(rng, spokes.0, spokes.1).round();
    sketch.textured_ellipse(
        point(0.0, 0.0),
        radius_x,
        radius_y,
        0.0,
        ink,
        None,
        0.0,
        Texture::Radial {
            spokes: spoke_count,
            depth: 0.5,
        },
    );
    sketch.textured_ellipse(
        point(0.0, 0.0),
        radius_x,
        radius_y,
        0.0,
        0.95,
        Some((radius_x * 0.08).max(1.2)),
        0.0,
        Texture::Plain,
    );
}

fn draw_sigmoid(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let amplitude = length * uniform(rng, 0.04, 0.1);
    let breadth = length * uniform(rng, 0.06, 0.1);
    let ink = uniform(rng, 0.55, 0.75);
    let pieces = 12;
    let mut previous: Option<Point> = None;
    for piece in 0..=pieces {
        let along = piece as f32 / pieces as f32 - 0.5;
        let x = along * length;
        let y = amplitude * (TAU * along).sin();
        let slope = amplitude * TAU / length * (TAU * along).cos();
        let half_breadth = breadth * (1.0 - 4.0 * along * along).max(0.0).sqrt() + 0.8;
        sketch.ellipse(
            point(x, y),
            length / pieces as f32 * 0.9,
            half_breadth,
            slope.atan(),
            ink,
        );
        if let Some(previous_point) = previous {
            sketch.capsule(
                previous_point,
                point(x, y),
                (half_breadth * 0.15).max(0.6),
                0.95,
            );
        }
        previous = Some(point(x, y));
    }
}

fn draw_worm(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let segment_count = rng.random_range(10..=24);
    let spacing = length / segment_count as f32;
    let breadth = length * uniform(rng, 0.035, 0.065);
    let ink = uniform(rng, 0.7, 0.9);
    let texture = speckle(rng, 0.25, 2.0);
    let mut heading = uniform(rng, -0.2, 0.2);
    let mut position = point(-length / 2.0, 0.0);
    for segment in 0..segment_count {
        let along = segment as f32 / (segment_count - 1).max(1) as f32;
        let half_breadth = breadth * (0.6 + 0.4 * (PI * along).sin());
        sketch.textured_ellipse(
            position,
            spacing * 0.6,
            half_breadth,
            heading,
            ink,
            None,
            0.0,
            texture,
        );
        for side in [-1.0f32, 1.0] {
            let base = polar(position, heading + side * FRAC_PI_2, half_breadth * 0.8);
            let tip = polar(
                base,
                heading + side * (FRAC_PI_2 + uniform(rng, -0.4, 0.4)),
                half_breadth * uniform(rng, 0.8, 1.6),
            );
            sketch.capsule(base, tip, 0.5, ink * 0.7);
        }
        heading += 0.12 * standard_normal(rng);
        position = polar(position, heading, spacing);
    }
}

fn draw_dinophysis(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let radius_x = length * uniform(rng, 0.3, 0.36);
    let radius_y = radius_x / uniform(rng, 1.1, 1.4);
    let ink = uniform(rng, 0.75, 0.95);
    let texture = speckle(rng, 0.25, 1.5);
    sketch.textured_ellipse(
        point(0.0, 0.0),
        radius_x,
        radius_y,
        0.0,
        ink,
        None,
        0.0,
        texture,
    );
    let sail_radius_y = length * uniform(rng, 0.08, 0.15);
    sketch.textured_ellipse(
        point(-length * 0.05, -radius_y - sail_radius_y * 0.6),
        radius_x * 0.9,
        sail_radius_y,
        0.0,
        ink * 0.8,
        Some(1.2),
        0.2,
        Texture::Plain,
    );
    sketch.capsule(
        point(radius_x * 0.3, radius_y * 0.8),
        point(radius_x * 0.5, radius_y + length * 0.1),
        thin(length, 0.01),
        ink,
    );
}

fn draw_radiolarian(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let body_radius = length * uniform(rng, 0.16, 0.28);
    let harmonics = random_harmonics(rng, 2, (3, 8), 0.06);
    let ink = uniform(rng, 0.8, 0.95);
    let texture = speckle(rng, 0.4, 1.5);
    sketch.blob(point(0.0, 0.0), body_radius, harmonics, ink, texture);
    let spine_count = rng.random_range(10..=24);
    for spine in 0..spine_count {
        let spine_angle = TAU * spine as f32 / spine_count as f32 + 0.1 * standard_normal(rng);
        let base = polar(point(0.0, 0.0), spine_angle, body_radius * 0.9);
        let tip = polar(
            point(0.0, 0.0),
            spine_angle,
            body_radius + length * uniform(rng, 0.1, 0.5 - body_radius / length),
        );
        sketch.capsule(base, tip, thin(length, 0.005), ink * 0.75);
    }
    if chance(rng, 0.4) {
        let halo = length * 0.42;
        sketch.textured_ellipse(
            point(0.0, 0.0),
            halo,
            halo,
            0.0,
            0.3,
            Some(1.0),
            0.12,
            Texture::Plain,
        );
    }
}

fn draw_triangle_cell(rng: &mut ChaCha8Rng, sketch: &mut Sketch, length: f32) {
    let radius = length * 0.45;
    let phase = uniform(rng, 0.0, TAU);
    let ink = uniform(rng, 0.75, 0.95);
    let texture = speckle(rng, 0.3, 2.0);
    let harmonics = vec![Harmonic {
        order: 3.0,
        amplitude: uniform(rng, 0.15, 0.25),
        phase,
    }];
    sketch.blob(point(0.0, 0.0), radius * 0.8, harmonics, ink * 0.5, texture);
    let corner_angles =
        [0.0f32, TAU / 3.0, 2.0 * TAU / 3.0].map(|offset| (FRAC_PI_2 - phase) / 3.0 + offset);
    let corners = corner_angles.map(|angle| polar(point(0.0, 0.0), angle, radius));
    for corner in 0..3 {
        sketch.capsule(
            corners[corner],
            corners[(corner + 1) % 3],
            thin(length, 0.02),
            ink,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counts::CLASS_COUNT;
    use plankton_dataset::layout::REFERENCE_CLASS_COUNTS;

    #[test]
    fn every_reference_class_has_its_own_family() {
        let mut seen = Vec::new();
        for (name, _) in REFERENCE_CLASS_COUNTS {
            let family = family_for_class(name);
            assert_ne!(family, Family::Unlabeled, "{name}");
            assert!(!seen.contains(&family), "{name} shares a family");
            seen.push(family);
        }
    }

    #[test]
    fn renders_are_deterministic_in_bounds_and_dark_on_light() {
        for class_index in 0..CLASS_COUNT {
            for objid in [30_000_001u64, 30_000_002] {
                let image = render_object(class_index, objid, 7);
                assert_eq!(image, render_object(class_index, objid, 7));
                assert!(
                    (2..=MAX_WIDTH).contains(&image.width),
                    "class {class_index}: width {}",
                    image.width
                );
                assert!(
                    (2..=MAX_HEIGHT).contains(&image.height),
                    "class {class_index}: height {}",
                    image.height
                );
                assert_eq!(image.pixels.len(), (image.width * image.height) as usize);
                let darkest = *image.pixels.iter().min().unwrap();
                let mut sorted = image.pixels.clone();
                sorted.sort_unstable();
                let lightest_decile = sorted[sorted.len() * 9 / 10];
                assert!(
                    lightest_decile > 170,
                    "class {class_index}: background {lightest_decile}"
                );
                assert!(
                    darkest + 30 < lightest_decile,
                    "class {class_index}: no dark object"
                );
            }
        }
        assert_ne!(
            render_object(0, 30_000_001, 7),
            render_object(0, 30_000_001, 8)
        );
    }
}
