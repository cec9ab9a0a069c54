//! The FlowCam dataset layout: file names, column orders and the reference class counts.

/// Labels and metadata of every object.
pub const META_FILE: &str = "meta.csv";
/// The 64 native features, plain.
pub const FEATURES_FILE: &str = "features_native.csv";
/// The 64 native features, gzipped.
pub const FEATURES_GZ_FILE: &str = "features_native.csv.gz";
/// Folder of `<objid>.jpg` images.
pub const IMAGES_DIR: &str = "imgs";
/// Archive holding `imgs/<objid>.jpg` members.
pub const IMAGES_ZIP: &str = "imgs.zip";

/// The class name given to objects whose `level2` is empty (the reference kept them as a 40th class).
pub const UNLABELED_CLASS: &str = "(unlabeled)";

/// The `level2` classes of the reference's 40 that are not organisms: their EcoTaxa lineage starts with
/// `not-living` (detritus and its fibres and silks, faecal pellets, artefacts including bad focus and bubbles,
/// rods, and images holding several objects). Biological scores leave these out, and [`UNLABELED_CLASS`] too.
pub const NON_LIVING_CLASSES: [&str; 7] = [
    "artefact",
    "badfocus (artefact)",
    "detritus",
    "feces",
    "multiple (other)",
    "rods",
    "silks",
];

/// Whether `class_name` names organisms: neither one of [`NON_LIVING_CLASSES`] nor [`UNLABELED_CLASS`].
pub fn is_biological_class(class_name: &str) -> bool {
    class_name != UNLABELED_CLASS && !NON_LIVING_CLASSES.contains(&class_name)
}

/// Columns of `meta.csv`, in order.
pub const META_COLUMNS: [&str; 14] = [
    "objid",
    "projid",
    "id",
    "status",
    "latitude",
    "longitude",
    "objdate",
    "objtime",
    "depth_min",
    "depth_max",
    "unique_name",
    "lineage",
    "level1",
    "level2",
];

/// Columns of `features_native.csv` after `objid`, in order.
pub const NATIVE_FEATURE_COLUMNS: [&str; 64] = [
    "area",
    "meanimagegrey",
    "mean",
    "stddev",
    "min",
    "perim.",
    "width",
    "height",
    "major",
    "minor",
    "angle",
    "circ.",
    "feret",
    "intden",
    "median",
    "skew",
    "kurt",
    "%area",
    "area_exc",
    "fractal",
    "skelarea",
    "slope",
    "histcum1",
    "histcum2",
    "histcum3",
    "nb1",
    "nb2",
    "nb3",
    "symetrieh",
    "symetriev",
    "symetriehc",
    "symetrievc",
    "convperim",
    "convarea",
    "fcons",
    "thickr",
    "esd",
    "elongation",
    "range",
    "meanpos",
    "centroids",
    "cv",
    "sr",
    "perimareaexc",
    "feretareaexc",
    "perimferet",
    "perimmajor",
    "circex",
    "cdexc",
    "kurt_mean",
    "skew_mean",
    "convperim_perim",
    "convarea_area",
    "symetrieh_area",
    "symetriev_area",
    "nb1_area",
    "nb2_area",
    "nb3_area",
    "nb1_range",
    "nb2_range",
    "nb3_range",
    "median_mean",
    "median_mean_range",
    "skeleton_area",
];

/// Features empty in 34,428 rows of the real data.
pub const FEATURES_MISSING_GROUP_A: [&str; 3] = ["perimareaexc", "feretareaexc", "cdexc"];
/// Rows of the real data with group A empty.
pub const FEATURES_MISSING_GROUP_A_ROWS: u64 = 34_428;
/// Features empty in 6,854 rows of the real data: the `*_area` ratios and `skeleton_area`.
pub const FEATURES_MISSING_GROUP_B: [&str; 7] = [
    "convarea_area",
    "symetrieh_area",
    "symetriev_area",
    "nb1_area",
    "nb2_area",
    "nb3_area",
    "skeleton_area",
];
/// Rows of the real data with group B empty.
pub const FEATURES_MISSING_GROUP_B_ROWS: u64 = 6_854;

/// The 39 named `level2` classes of the real data with their object counts, largest first.
pub const REFERENCE_CLASS_COUNTS: [(&str, u64); 39] = [
    ("detritus", 138_439),
    ("feces", 26_936),
    ("Neoceratium", 14_014),
    ("nauplii (Crustacea)", 9_293),
    ("badfocus (artefact)", 7_848),
    ("silks", 5_629),
    ("Copepoda", 5_141),
    ("Thalassionema", 5_117),
    ("rods", 4_044),
    ("multiple (other)", 3_261),
    ("Codonellopsis (Dictyocystidae)", 2_888),
    ("Protoperidinium", 2_256),
    ("Tintinnidiidae", 2_227),
    ("Rhizosolenids", 2_160),
    ("Chaetoceros", 2_105),
    ("artefact", 1_849),
    ("pollen", 1_821),
    ("Codonaria", 845),
    ("chainlarge", 751),
    ("Undellidae", 710),
    ("egg (other)", 685),
    ("Hemiaulus", 670),
    ("Dictyocysta", 549),
    ("Dinophysiales", 525),
    ("Annelida", 481),
    ("Rhabdonella", 367),
    ("Stenosemella", 357),
    ("Coscinodiscids", 334),
    ("Retaria", 257),
    ("Pleurosigma", 191),
    ("Ceratocorys horrida", 186),
    ("centric", 145),
    ("Odontella (Mediophyceae)", 131),
    ("Asterionellopsis", 117),
    ("Cyttarocylis", 100),
    ("Lithodesmioides", 68),
    ("tempChaetoceros danicus", 61),
    ("Xystonellidae", 37),
    ("Bacteriastrum", 12),
];
/// Objects with an empty `level2` in the real data.
pub const REFERENCE_UNLABELED: u64 = 1_003;
/// Objects in the real data.
pub const REFERENCE_TOTAL: u64 = 243_610;
