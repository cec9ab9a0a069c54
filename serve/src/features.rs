//! The native features of a Predict request: each image's raw values (`ImageInput.native_features` in the
//! model's column order, and/or `feature_map` by name; NaN = missing) through the model card's transform.

use plankton_dataset::{FeatureTransform, ImputationCounts};
use plankton_proto::v1::ImageInput;

use crate::error::{ServeError, ServeResult};

/// The transformed features of every image of a request (row-major, the transform's output width each), for a
/// model labelled `model_label`. An image without any feature input, a `native_features` of the wrong length or
/// an unknown `feature_map` name is an INVALID_ARGUMENT naming the image and the input; missing values inside
/// a row are imputed (and counted in the returned counts).
pub fn transform_request_features(
    transform: &FeatureTransform,
    model_label: &str,
    images: &[ImageInput],
) -> ServeResult<(Vec<f32>, ImputationCounts)> {
    let columns = &transform.input_columns;
    let mut counts = ImputationCounts::new(columns.len());
    let mut transformed = Vec::with_capacity(images.len() * transform.output_width());
    let mut raw = vec![f32::NAN; columns.len()];
    for (index, image) in images.iter().enumerate() {
        let naming = || format!("image {index} (id {:?})", image.id);
        if image.native_features.is_empty() && image.feature_map.is_empty() {
            return Err(ServeError::InvalidRequest(format!(
                "{}: model {model_label} takes native features, but the input \"native_features\" ({} values in \
                 features_native.csv column order, NaN = missing) and the input \"feature_map\" (values by \
                 column name) are both missing",
                naming(),
                columns.len()
            )));
        }
        raw.fill(f32::NAN);
        if !image.native_features.is_empty() {
            if image.native_features.len() != columns.len() {
                return Err(ServeError::InvalidRequest(format!(
                    "{}: input \"native_features\" has {} values, model {model_label} reads {} (features_native.csv \
                     column order, NaN = missing)",
                    naming(),
                    image.native_features.len(),
                    columns.len()
                )));
            }
            raw.copy_from_slice(&image.native_features);
        }
        for (name, value) in &image.feature_map {
            let Some(position) = columns.iter().position(|column| column == name) else {
                return Err(ServeError::InvalidRequest(format!(
                    "{}: input \"feature_map\" names {name:?}, which is not a feature column of model \
                     {model_label}",
                    naming()
                )));
            };
            raw[position] = *value;
        }
        transformed.extend(transform.apply_raw(&raw, &mut counts));
    }
    Ok((transformed, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transform() -> FeatureTransform {
        let columns: Vec<String> = ["area", "width"]
            .iter()
            .map(|name| name.to_string())
            .collect();
        let rows: Vec<Vec<Option<f32>>> = (0..8)
            .map(|index| vec![Some(index as f32), Some(((index * 5) % 7) as f32)])
            .collect();
        let borrowed: Vec<&[Option<f32>]> = rows.iter().map(Vec::as_slice).collect();
        FeatureTransform::fit(&columns, &borrowed)
    }

    fn image(id: &str, native: Vec<f32>, map: &[(&str, f32)]) -> ImageInput {
        ImageInput {
            id: id.to_string(),
            native_features: native,
            feature_map: map
                .iter()
                .map(|(name, value)| (name.to_string(), *value))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn positional_and_named_values_are_transformed_and_nan_imputed() {
        let transform = transform();
        let images = [
            image("a", vec![3.0, f32::NAN], &[]),
            image("b", Vec::new(), &[("area", 3.0)]),
        ];
        let (rows, counts) = transform_request_features(&transform, "m:1", &images).unwrap();
        assert_eq!(rows.len(), 2 * transform.output_width());
        assert_eq!(rows[..2], rows[2..]);
        assert_eq!(counts.per_column, vec![0, 2]);
    }

    #[test]
    fn a_missing_or_malformed_feature_input_names_the_image_and_input() {
        let transform = transform();
        let missing = transform_request_features(
            &transform,
            "m:1",
            &[image("a", vec![1.0, 2.0], &[]), image("b", Vec::new(), &[])],
        )
        .unwrap_err()
        .to_string();
        assert!(
            missing.contains("image 1 (id \"b\")") && missing.contains("native_features"),
            "{missing}"
        );
        let short = transform_request_features(&transform, "m:1", &[image("a", vec![1.0], &[])])
            .unwrap_err()
            .to_string();
        assert!(short.contains("has 1 values"), "{short}");
        let unknown = transform_request_features(
            &transform,
            "m:1",
            &[image("a", Vec::new(), &[("size", 1.0)])],
        )
        .unwrap_err()
        .to_string();
        assert!(unknown.contains("\"size\""), "{unknown}");
    }
}
