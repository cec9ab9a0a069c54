//! `meta.csv` rows: taxonomy per class and plausible sampling metadata (bay of Villefranche).
//!
//! Objects are grouped into samples by object-id span (consecutive ids come from one FlowCam run),
//! so objects of one sample share date, position and depth range, as in the real data.

use std::fmt::Write as _;

use plankton_dataset::layout::UNLABELED_CLASS;
use rand::Rng;

use crate::rng::{Stream, chance, keyed_rng, standard_normal};

/// Object ids spanned by one sample.
const OBJIDS_PER_SAMPLE: u64 = 1_500;
/// The EcoTaxa-like project id of every synthetic object.
const PROJECT_ID: u32 = 2_171;

const DINOPHYCEAE: &str = "living>Eukaryota>Harosa>Alveolata>Myzozoa>Holodinophyta>Dinophyceae";
const TINTINNIDA: &str = "living>Eukaryota>Harosa>Alveolata>Ciliophora>Spirotrichea>Tintinnida";
const DIATOMS: &str = "living>Eukaryota>Harosa>Stramenopiles>Ochrophyta>Bacillariophyta";
const CRUSTACEA: &str = "living>Eukaryota>Opisthokonta>Holozoa>Metazoa>Arthropoda>Crustacea";

/// Lineage (prefix + suffix) and the finer `level1` labels an operator may have used for a class.
fn taxonomy(class_name: &str) -> (&'static str, &'static str, &'static [&'static str]) {
    match class_name {
        "detritus" => (
            "not-living",
            ">detritus",
            &[
                "detritus",
                "fiber<detritus",
                "light<detritus",
                "dark<detritus",
            ],
        ),
        "feces" => (
            "not-living",
            ">feces",
            &["feces", "pellet<feces", "fluffy<feces"],
        ),
        "Neoceratium" => (
            DINOPHYCEAE,
            ">Gonyaulacales>Ceratiaceae>Neoceratium",
            &[
                "Neoceratium",
                "Neoceratium fusus",
                "Neoceratium furca",
                "Neoceratium tripos",
            ],
        ),
        "nauplii (Crustacea)" => (
            CRUSTACEA,
            ">nauplii",
            &["nauplii<Crustacea", "nauplii<Cirripedia"],
        ),
        "badfocus (artefact)" => ("not-living", ">artefact>badfocus", &["badfocus<artefact"]),
        "silks" => (
            "not-living",
            ">detritus>fiber>silks",
            &["silks", "fiber<silks"],
        ),
        "Copepoda" => (
            CRUSTACEA,
            ">Maxillopoda>Copepoda",
            &["Copepoda", "Calanoida", "Oithonidae", "Corycaeidae"],
        ),
        "Thalassionema" => (
            DIATOMS,
            ">Bacillariophyceae>Thalassionematales>Thalassionema",
            &["Thalassionema", "Thalassionema nitzschioides"],
        ),
        "rods" => ("not-living", ">other>rods", &["rods"]),
        "multiple (other)" => (
            "not-living",
            ">multiple",
            &["multiple<other", "multiple<Copepoda"],
        ),
        "Codonellopsis (Dictyocystidae)" => (
            TINTINNIDA,
            ">Dictyocystidae>Codonellopsis",
            &["Codonellopsis", "Codonellopsis morchella"],
        ),
        "Protoperidinium" => (
            DINOPHYCEAE,
            ">Peridiniales>Protoperidiniaceae>Protoperidinium",
            &["Protoperidinium"],
        ),
        "Tintinnidiidae" => (
            TINTINNIDA,
            ">Tintinnidiidae",
            &["Tintinnidiidae", "Tintinnidium"],
        ),
        "Rhizosolenids" => (
            DIATOMS,
            ">Mediophyceae>Rhizosoleniales",
            &["Rhizosolenids", "Rhizosolenia", "Guinardia"],
        ),
        "Chaetoceros" => (
            DIATOMS,
            ">Mediophyceae>Chaetocerotales>Chaetoceros",
            &["Chaetoceros", "Chaetoceros curvisetus"],
        ),
        "artefact" => (
            "not-living",
            ">artefact",
            &["artefact", "bubble<artefact", "dead<artefact"],
        ),
        "pollen" => (
            "living>Eukaryota>Archaeplastida>Viridiplantae>Tracheophyta",
            ">pollen",
            &["pollen"],
        ),
        "Codonaria" => (TINTINNIDA, ">Codonellidae>Codonaria", &["Codonaria"]),
        "chainlarge" => (
            DIATOMS,
            ">chainlarge",
            &["chainlarge", "chain<Bacillariophyta"],
        ),
        "Undellidae" => (TINTINNIDA, ">Undellidae", &["Undellidae", "Undella"]),
        "egg (other)" => ("living>other", ">egg", &["egg<other", "egg<Actinopterygii"]),
        "Hemiaulus" => (
            DIATOMS,
            ">Mediophyceae>Hemiaulales>Hemiaulus",
            &["Hemiaulus", "Hemiaulus hauckii"],
        ),
        "Dictyocysta" => (TINTINNIDA, ">Dictyocystidae>Dictyocysta", &["Dictyocysta"]),
        "Dinophysiales" => (
            DINOPHYCEAE,
            ">Dinophysiales",
            &["Dinophysiales", "Dinophysis", "Ornithocercus"],
        ),
        "Annelida" => (
            "living>Eukaryota>Opisthokonta>Holozoa>Metazoa",
            ">Annelida",
            &["Annelida", "Polychaeta", "larvae<Annelida"],
        ),
        "Rhabdonella" => (TINTINNIDA, ">Rhabdonellidae>Rhabdonella", &["Rhabdonella"]),
        "Stenosemella" => (
            TINTINNIDA,
            ">Codonellopsidae>Stenosemella",
            &["Stenosemella"],
        ),
        "Coscinodiscids" => (
            DIATOMS,
            ">Coscinodiscophyceae>Coscinodiscids",
            &["Coscinodiscids", "Coscinodiscus"],
        ),
        "Retaria" => (
            "living>Eukaryota>Harosa>Rhizaria",
            ">Retaria",
            &["Retaria", "Acantharea", "Foraminifera"],
        ),
        "Pleurosigma" => (
            DIATOMS,
            ">Bacillariophyceae>Naviculales>Pleurosigma",
            &["Pleurosigma"],
        ),
        "Ceratocorys horrida" => (
            DINOPHYCEAE,
            ">Gonyaulacales>Ceratocoryaceae>Ceratocorys>Ceratocorys horrida",
            &["Ceratocorys horrida"],
        ),
        "centric" => (DIATOMS, ">centric", &["centric"]),
        "Odontella (Mediophyceae)" => (
            DIATOMS,
            ">Mediophyceae>Eupodiscales>Odontella",
            &["Odontella<Mediophyceae"],
        ),
        "Asterionellopsis" => (
            DIATOMS,
            ">Fragilariophyceae>Asterionellopsis",
            &["Asterionellopsis", "Asterionellopsis glacialis"],
        ),
        "Cyttarocylis" => (
            TINTINNIDA,
            ">Cyttarocylidae>Cyttarocylis",
            &["Cyttarocylis"],
        ),
        "Lithodesmioides" => (
            DIATOMS,
            ">Mediophyceae>Lithodesmiales>Lithodesmioides",
            &["Lithodesmioides", "Ditylum"],
        ),
        "tempChaetoceros danicus" => (
            DIATOMS,
            ">Mediophyceae>Chaetocerotales>Chaetoceros>Chaetoceros danicus",
            &["tempChaetoceros danicus"],
        ),
        "Xystonellidae" => (
            TINTINNIDA,
            ">Xystonellidae",
            &["Xystonellidae", "Xystonella"],
        ),
        "Bacteriastrum" => (
            DIATOMS,
            ">Mediophyceae>Chaetocerotales>Bacteriastrum",
            &["Bacteriastrum"],
        ),
        _ => (
            "not-living",
            ">other",
            &["othertocheck", "part<other", "dead<other"],
        ),
    }
}

/// Calendar date `days` after 2013-01-01.
fn civil_date(days: u32) -> (u32, u32, u32) {
    let mut year = 2013;
    let mut remaining = days;
    loop {
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let year_length = if leap { 366 } else { 365 };
        if remaining < year_length {
            let month_lengths = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            for (month_index, month_length) in month_lengths.iter().enumerate() {
                if remaining < *month_length {
                    return (year, month_index as u32 + 1, remaining + 1);
                }
                remaining -= month_length;
            }
        }
        remaining -= year_length;
        year += 1;
    }
}

/// Appends a CSV field, quoted when it holds a comma, quote or line break.
pub(crate) fn push_csv_field(row: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        row.push('"');
        row.push_str(&field.replace('"', "\"\""));
        row.push('"');
    } else {
        row.push_str(field);
    }
}

/// Appends the `meta.csv` row (with line break) of object `objid` of class `class_name`.
pub(crate) fn push_meta_row(
    row: &mut String,
    objid: u64,
    class_name: &str,
    seed: u64,
    first_objid: u64,
) {
    let sample_index = objid.saturating_sub(first_objid) / OBJIDS_PER_SAMPLE;
    let mut sample_rng = keyed_rng(seed, sample_index, Stream::Sample);
    let (year, month, day) = civil_date(sample_rng.random_range(0..5 * 365));
    let latitude = 43.685 + 0.008 * standard_normal(&mut sample_rng);
    let longitude = 7.316 + 0.008 * standard_normal(&mut sample_rng);
    let depth_min = [0u32, 0, 5, 10, 20, 30, 50, 75][sample_rng.random_range(0..8)];
    let depth_max = depth_min + [5u32, 10, 20, 25][sample_rng.random_range(0..4)];
    let start_second = sample_rng.random_range(7 * 3600..17 * 3600);
    let second_of_day = (start_second
        + (objid.saturating_sub(first_objid) % OBJIDS_PER_SAMPLE) as u32 / 4)
        .min(86_399);

    let mut object_rng = keyed_rng(seed, objid, Stream::Meta);
    let (lineage_prefix, lineage_suffix, level1_choices) = taxonomy(class_name);
    let level1 = level1_choices[object_rng.random_range(0..level1_choices.len())];
    let parent = lineage_suffix
        .rsplit('>')
        .nth(1)
        .filter(|segment| !segment.is_empty())
        .unwrap_or("other");
    // Operators' raw labels sometimes carry the parent group, as in EcoTaxa display names.
    let unique_name = if level1.contains('<') || chance(&mut object_rng, 0.5) {
        level1.to_string()
    } else {
        format!("{level1}<{parent}")
    };
    let level2 = if class_name == UNLABELED_CLASS {
        ""
    } else {
        class_name
    };

    let _ = write!(
        row,
        "{objid},{PROJECT_ID},villefranche_{year:04}{month:02}{day:02}_s{sample_index:04}_{objid},validated,\
         {latitude:.4},{longitude:.4},{year:04}-{month:02}-{day:02},{:02}:{:02}:{:02},{depth_min},{depth_max},",
        second_of_day / 3600,
        (second_of_day / 60) % 60,
        second_of_day % 60,
    );
    push_csv_field(row, &unique_name);
    row.push(',');
    push_csv_field(row, &format!("{lineage_prefix}{lineage_suffix}"));
    row.push(',');
    push_csv_field(row, level1);
    row.push(',');
    push_csv_field(row, level2);
    row.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use plankton_dataset::layout::{META_COLUMNS, REFERENCE_CLASS_COUNTS};

    #[test]
    fn rows_have_fourteen_fields_and_the_label_last() {
        for (name, _) in REFERENCE_CLASS_COUNTS.iter().chain([&(UNLABELED_CLASS, 0)]) {
            let mut row = String::new();
            push_meta_row(&mut row, 30_001_234, name, 3, 30_000_000);
            let fields: Vec<&str> = row.trim_end().split(',').collect();
            assert_eq!(fields.len(), META_COLUMNS.len(), "{row}");
            assert_eq!(fields[0], "30001234");
            assert_eq!(fields[3], "validated");
            let expected_level2 = if *name == UNLABELED_CLASS { "" } else { name };
            assert_eq!(fields[13], expected_level2);
            if *name != UNLABELED_CLASS {
                assert_ne!(
                    taxonomy(name).2[0],
                    "othertocheck",
                    "{name} has no taxonomy"
                );
            }
        }
    }

    /// The dataset profile's non-living list is exactly the classes whose generated lineage is `not-living`.
    #[test]
    fn non_living_classes_are_the_not_living_lineages() {
        for (name, _) in REFERENCE_CLASS_COUNTS {
            let not_living = taxonomy(name).0 == "not-living";
            assert_eq!(
                plankton_dataset::layout::NON_LIVING_CLASSES.contains(&name),
                not_living,
                "{name}"
            );
            assert_eq!(
                plankton_dataset::layout::is_biological_class(name),
                !not_living
            );
        }
        assert!(!plankton_dataset::layout::is_biological_class(
            UNLABELED_CLASS
        ));
    }

    #[test]
    fn dates_are_calendar_dates() {
        assert_eq!(civil_date(0), (2013, 1, 1));
        assert_eq!(civil_date(31 + 28), (2013, 3, 1));
        assert_eq!(civil_date(365 + 365 + 365 + 31 + 28), (2016, 2, 29));
    }
}
