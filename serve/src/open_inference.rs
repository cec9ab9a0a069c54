//! The Open Inference Protocol v2 (KServe / Triton `inference.GRPCInferenceService`) on the inference server,
//! so `tritonclient`, KServe and every OIP client query our models unchanged.
//!
//! A model is addressed by its registry name: `model_name` "name" (latest version), "name:3" or
//! "name@production", or "name" with `model_version` "3" (a version) or "production" (an alias); both empty
//! address the server's default model. Inputs (exactly one of the first two per request):
//! - `image`, BYTES, shape [N] (or any shape of N elements): JPEG files, admitted first, then decoded and
//!   preprocessed exactly as `plankton.v1.Predict` does (the model's training preprocessing);
//! - `input`, FP32, shape [N,3,64,64]: images already preprocessed and scaled to [0, 1] (the u8 channels / 255);
//! - `features`, FP32, shape [N,F], required by (and only accepted for) a model that takes native features
//!   (`fusion`): each image's raw native features in the model's column order (the 64 of features_native.csv),
//!   NaN = missing, imputed by the model card's transform.
//!
//! Outputs: `probabilities` FP32 [N,C] (softmax, class order of the model) and `class` BYTES [N] (the most
//! probable class name). Tensor data may come in `contents` or `raw_input_contents`; the answer is raw
//! (`raw_output_contents`, what tritonclient reads) when the request was raw, typed `contents` otherwise, or as
//! the request parameter `raw_output` (bool) says. A request is all or nothing: one undecodable image fails it
//! with INVALID_ARGUMENT naming the image. Admission, batching and deadlines are those of `Predict`.
//!
//! `ModelStreamInfer` (Triton's streaming extension) runs the same inference for each request of a stream, up to
//! [`STREAM_CONCURRENCY`] at a time, answering in request order; a failed request answers `error_message` and
//! the stream goes on.

use std::pin::Pin;
use std::time::Instant;

use futures::{Stream, StreamExt};

use plankton_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use plankton_proto::inference::model_infer_request::InferInputTensor;
use plankton_proto::inference::model_infer_response::InferOutputTensor;
use plankton_proto::inference::model_metadata_response::TensorMetadata;
use plankton_proto::inference::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
    ModelMetadataRequest, ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse,
    ModelStreamInferResponse, ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest,
    ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
    infer_parameter::ParameterChoice,
};
use plankton_proto::v1::ModelVersion;
use plankton_trainer::{IMAGE_CHANNELS, IMAGE_LEN, IMAGE_SIZE};
use tonic::{Request, Response, Status, Streaming};

use crate::deadline::request_deadline;
use crate::error::{ServeError, ServeResult};
use crate::metrics::MethodLabels;
use crate::model_ref::ModelReference;
use crate::models::LoadedModel;
use crate::service::InferenceService;

/// Name of the JPEG input tensor.
pub const IMAGE_INPUT: &str = "image";
/// Name of the preprocessed FP32 input tensor.
pub const SCALED_INPUT: &str = "input";
/// Name of the native-features input tensor (models that take features).
pub const FEATURES_INPUT: &str = "features";
/// Name of the probabilities output tensor.
pub const PROBABILITIES_OUTPUT: &str = "probabilities";
/// Name of the most-probable-class output tensor.
pub const CLASS_OUTPUT: &str = "class";
/// The request parameter choosing raw or typed output contents.
pub const RAW_OUTPUT_PARAMETER: &str = "raw_output";
/// Requests of one `ModelStreamInfer` stream processed concurrently (answers keep the request order).
pub const STREAM_CONCURRENCY: usize = 16;
/// The platform ModelMetadata reports.
pub const PLATFORM: &str = "pytorch_libtorch";

/// The Open Inference Protocol service; it shares the model store, admission and metrics of
/// [`InferenceService`].
#[derive(Clone, Debug)]
pub struct OpenInferenceService {
    core: InferenceService,
}

impl OpenInferenceService {
    pub fn new(core: InferenceService) -> Self {
        OpenInferenceService { core }
    }

    async fn infer(
        &self,
        request: ModelInferRequest,
        deadline: Option<Instant>,
    ) -> ServeResult<ModelInferResponse> {
        let model_text = model_text(&request.model_name, &request.model_version)?;
        let requested_outputs = requested_outputs(&request)?;
        let raw_output = wants_raw_output(&request)?;
        let input = read_input(&request)?;
        let raw_features = read_features_input(&request)?;
        let model = self.core.store().model_for(&model_text).await?;
        let image_count = match &input {
            InputTensor::Jpegs(jpegs) => jpegs.len(),
            InputTensor::Scaled { image_count, .. } => *image_count,
        };
        let features = transform_features_input(&model, raw_features, image_count)?;
        let (image_count, probabilities) = match input {
            InputTensor::Jpegs(jpegs) => {
                let (outcomes, probabilities) = self
                    .core
                    .classify_jpegs(&model, jpegs, features, deadline)
                    .await?;
                let problems: Vec<String> = outcomes
                    .iter()
                    .enumerate()
                    .filter_map(|(index, outcome)| {
                        outcome
                            .as_ref()
                            .err()
                            .map(|problem| format!("image {index}: {problem}"))
                    })
                    .collect();
                if !problems.is_empty() {
                    self.core
                        .metrics()
                        .image_errors
                        .inc_by(problems.len() as u64);
                    return Err(ServeError::InvalidRequest(problems.join("; ")));
                }
                (image_count, probabilities)
            }
            InputTensor::Scaled {
                values,
                image_count,
            } => {
                let probabilities = self
                    .core
                    .classify_scaled(&model, values, features, image_count, deadline)
                    .await?;
                (image_count, probabilities)
            }
        };
        let outputs = build_outputs(
            &probabilities,
            image_count,
            &model.class_names,
            &requested_outputs,
        )?;
        let mut response = ModelInferResponse {
            model_name: model.entry.name.clone(),
            model_version: model.entry.version.to_string(),
            id: request.id,
            ..Default::default()
        };
        for output in outputs {
            let (tensor, raw) = output.into_tensor(raw_output);
            response.outputs.push(tensor);
            if let Some(raw) = raw {
                response.raw_output_contents.push(raw);
            }
        }
        Ok(response)
    }

    /// The registry entry (name, version) addresses, and its loaded model if loaded; never starts a load.
    async fn resolve_entry(&self, name: &str, version: &str) -> ServeResult<ModelVersion> {
        let model_text = model_text(name, version)?;
        let store = self.core.store();
        if model_text.is_empty() {
            return match store.default_model() {
                Some(model) => Ok(model.entry.clone()),
                None => store.resolve(store.default_reference()).await,
            };
        }
        let reference: ModelReference = model_text.parse()?;
        store.resolve(&reference).await
    }

    /// One request of `method`, counted and timed; failures recorded by code.
    async fn infer_counted(
        &self,
        method: &'static str,
        request: ModelInferRequest,
        deadline: Option<Instant>,
    ) -> Result<ModelInferResponse, Status> {
        let started = Instant::now();
        self.count_request(method);
        let outcome = self.infer(request, deadline).await;
        self.core
            .metrics()
            .latency_seconds
            .observe(started.elapsed().as_secs_f64());
        outcome.map_err(|error| self.core.record_error(method, &error))
    }

    fn count_request(&self, method: &'static str) {
        self.core
            .metrics()
            .requests
            .get_or_create(&MethodLabels { method })
            .inc();
    }
}

/// The text [`crate::ModelStore::model_for`] takes for an OIP (model_name, model_version) pair.
pub fn model_text(name: &str, version: &str) -> ServeResult<String> {
    let name = name.trim();
    let version = version.trim();
    if version.is_empty() {
        if !name.is_empty() {
            name.parse::<ModelReference>()?;
        }
        return Ok(name.to_string());
    }
    if name.is_empty() {
        return Err(ServeError::InvalidRequest(format!(
            "model_version {version:?} without a model_name"
        )));
    }
    if name.contains(['@', ':']) {
        return Err(ServeError::InvalidRequest(format!(
            "model_name {name:?} already selects a version; leave model_version ({version:?}) empty"
        )));
    }
    let text = if version.chars().all(|character| character.is_ascii_digit()) {
        format!("{name}:{version}")
    } else {
        format!("{name}@{version}")
    };
    let reference: ModelReference = text.parse()?;
    Ok(reference.to_string())
}

/// The request's one input, decoded from its contents or raw bytes.
#[derive(Debug, PartialEq)]
enum InputTensor {
    Jpegs(Vec<Vec<u8>>),
    Scaled {
        values: Vec<f32>,
        image_count: usize,
    },
}

fn invalid(message: String) -> ServeError {
    ServeError::InvalidRequest(message)
}

/// The element count of `shape`, refusing negative dimensions.
fn element_count(tensor: &InferInputTensor) -> ServeResult<usize> {
    tensor.shape.iter().try_fold(1usize, |count, dimension| {
        usize::try_from(*dimension)
            .ok()
            .and_then(|dimension| count.checked_mul(dimension))
            .ok_or_else(|| {
                invalid(format!(
                    "input {:?} has an invalid shape {:?}",
                    tensor.name, tensor.shape
                ))
            })
    })
}

/// The raw contents of input `index` (`None`: typed contents), refusing a request that sends both or whose raw
/// contents do not pair one-to-one with its inputs.
fn raw_contents_of(request: &ModelInferRequest, index: usize) -> ServeResult<Option<&[u8]>> {
    let raw_contents = &request.raw_input_contents;
    if raw_contents.is_empty() {
        return Ok(None);
    }
    if raw_contents.len() != request.inputs.len() {
        return Err(invalid(format!(
            "{} raw_input_contents for {} input(s)",
            raw_contents.len(),
            request.inputs.len()
        )));
    }
    let tensor = &request.inputs[index];
    if tensor.contents.is_some() {
        return Err(invalid(format!(
            "input {:?} has both contents and raw_input_contents",
            tensor.name
        )));
    }
    Ok(Some(raw_contents[index].as_slice()))
}

/// FP32 values from raw little-endian bytes or typed contents.
fn fp32_values(raw: Option<&[u8]>, contents: InferTensorContents) -> ServeResult<Vec<f32>> {
    match raw {
        Some(raw) => {
            if raw.len() % 4 != 0 {
                return Err(invalid(format!(
                    "raw FP32 input of {} bytes is not a whole number of values",
                    raw.len()
                )));
            }
            Ok(raw
                .chunks_exact(4)
                .map(|bytes| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
                .collect())
        }
        None => Ok(contents.fp32_contents),
    }
}

/// Raw native features of a request: `rows x columns` values, row-major.
type RawFeatures = (Vec<f32>, usize, usize);

/// The optional `features` input: FP32 `[N, F]` values, row-major, with N and F.
fn read_features_input(request: &ModelInferRequest) -> ServeResult<Option<RawFeatures>> {
    let mut found = request
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, tensor)| tensor.name == FEATURES_INPUT);
    let Some((index, tensor)) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() {
        return Err(invalid(format!("input {FEATURES_INPUT:?} is sent twice")));
    }
    if tensor.datatype != "FP32" {
        return Err(invalid(format!(
            "input {FEATURES_INPUT:?} is {}; expected FP32 [N,F]",
            tensor.datatype
        )));
    }
    let [rows, columns] = tensor.shape.as_slice() else {
        return Err(invalid(format!(
            "input {FEATURES_INPUT:?} has shape {:?}; expected [N,F]",
            tensor.shape
        )));
    };
    let count = element_count(tensor)?;
    let values = fp32_values(
        raw_contents_of(request, index)?,
        tensor.contents.clone().unwrap_or_default(),
    )?;
    if values.len() != count {
        return Err(invalid(format!(
            "input {FEATURES_INPUT:?} has shape {:?} ({count} values) but {} values of data",
            tensor.shape,
            values.len()
        )));
    }
    Ok(Some((values, *rows as usize, *columns as usize)))
}

/// The `features` input through the model's transform (row-major, one row per image), or nothing for a model
/// without features. A fusion model without the input, a model without features given one, or a shape that
/// does not match the images and the model's columns is an INVALID_ARGUMENT naming the input.
fn transform_features_input(
    model: &LoadedModel,
    raw_features: Option<RawFeatures>,
    image_count: usize,
) -> ServeResult<Vec<f32>> {
    match (&model.feature_transform, raw_features) {
        (None, None) => Ok(Vec::new()),
        (None, Some(_)) => Err(invalid(format!(
            "model {} takes no native features; remove input {FEATURES_INPUT:?}",
            model.label()
        ))),
        (Some(transform), None) => Err(invalid(format!(
            "model {} takes native features: input {FEATURES_INPUT:?} (FP32 [N,{}], each image's raw values in \
             features_native.csv column order, NaN = missing) is missing",
            model.label(),
            transform.input_columns.len()
        ))),
        (Some(transform), Some((values, rows, columns))) => {
            if rows != image_count || columns != transform.input_columns.len() {
                return Err(invalid(format!(
                    "input {FEATURES_INPUT:?} has shape [{rows},{columns}]; model {} expects [{image_count},{}] \
                     (one row of raw native features per image)",
                    model.label(),
                    transform.input_columns.len()
                )));
            }
            let mut counts = plankton_dataset::ImputationCounts::new(columns);
            Ok(values
                .chunks_exact(columns.max(1))
                .flat_map(|row| transform.apply_raw(row, &mut counts))
                .collect())
        }
    }
}

fn read_input(request: &ModelInferRequest) -> ServeResult<InputTensor> {
    let image_inputs: Vec<(usize, &InferInputTensor)> = request
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, tensor)| tensor.name != FEATURES_INPUT)
        .collect();
    let [(index, tensor)] = image_inputs.as_slice() else {
        return Err(invalid(format!(
            "{} inputs; send exactly one: {IMAGE_INPUT:?} (BYTES, JPEG files) or {SCALED_INPUT:?} (FP32 [N,3,64,64]), \
             plus {FEATURES_INPUT:?} (FP32 [N,F]) for a model that takes native features",
            image_inputs.len()
        )));
    };
    let tensor = *tensor;
    let raw = raw_contents_of(request, *index)?;
    let contents = tensor.contents.clone().unwrap_or_default();
    let count = element_count(tensor)?;
    match (tensor.name.as_str(), tensor.datatype.as_str()) {
        (IMAGE_INPUT, "BYTES") => {
            let jpegs = match raw {
                Some(raw) => deserialize_bytes_tensor(raw)?,
                None => contents.bytes_contents,
            };
            if jpegs.len() != count {
                return Err(invalid(format!(
                    "input {IMAGE_INPUT:?} has shape {:?} ({count} elements) but {} elements of data",
                    tensor.shape,
                    jpegs.len()
                )));
            }
            Ok(InputTensor::Jpegs(jpegs))
        }
        (SCALED_INPUT, "FP32") => {
            let [image_count, channels, height, width] = tensor.shape.as_slice() else {
                return Err(invalid(format!(
                    "input {SCALED_INPUT:?} has shape {:?}; expected [N,{IMAGE_CHANNELS},{IMAGE_SIZE},{IMAGE_SIZE}]",
                    tensor.shape
                )));
            };
            if [*channels, *height, *width]
                != [IMAGE_CHANNELS as i64, IMAGE_SIZE as i64, IMAGE_SIZE as i64]
            {
                return Err(invalid(format!(
                    "input {SCALED_INPUT:?} has shape {:?}; expected [N,{IMAGE_CHANNELS},{IMAGE_SIZE},{IMAGE_SIZE}]",
                    tensor.shape
                )));
            }
            let values: Vec<f32> = fp32_values(raw, contents)?;
            if values.len() != count {
                return Err(invalid(format!(
                    "input {SCALED_INPUT:?} has shape {:?} ({count} values) but {} values of data",
                    tensor.shape,
                    values.len()
                )));
            }
            if let Some(position) = values.iter().position(|value| !value.is_finite()) {
                return Err(invalid(format!(
                    "input {SCALED_INPUT:?} value {position} is not finite"
                )));
            }
            debug_assert_eq!(values.len(), *image_count as usize * IMAGE_LEN);
            Ok(InputTensor::Scaled {
                values,
                image_count: *image_count as usize,
            })
        }
        (name, datatype) => Err(invalid(format!(
            "unknown input {name:?} of type {datatype}; expected {IMAGE_INPUT:?} (BYTES) or {SCALED_INPUT:?} (FP32)"
        ))),
    }
}

/// A BYTES tensor in raw form: each element a 4-byte little-endian length, then its bytes.
pub fn deserialize_bytes_tensor(raw: &[u8]) -> ServeResult<Vec<Vec<u8>>> {
    let mut elements = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let Some((length_bytes, after_length)) = rest.split_first_chunk::<4>() else {
            return Err(invalid(format!(
                "raw BYTES input: {} trailing bytes are not a length",
                rest.len()
            )));
        };
        let length = u32::from_le_bytes(*length_bytes) as usize;
        if after_length.len() < length {
            return Err(invalid(format!(
                "raw BYTES input: element {} claims {length} bytes, {} remain",
                elements.len(),
                after_length.len()
            )));
        }
        let (element, after_element) = after_length.split_at(length);
        elements.push(element.to_vec());
        rest = after_element;
    }
    Ok(elements)
}

/// The raw form of a BYTES tensor.
pub fn serialize_bytes_tensor<Element: AsRef<[u8]>>(elements: &[Element]) -> Vec<u8> {
    let total: usize = elements
        .iter()
        .map(|element| 4 + element.as_ref().len())
        .sum();
    let mut raw = Vec::with_capacity(total);
    for element in elements {
        let bytes = element.as_ref();
        raw.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        raw.extend_from_slice(bytes);
    }
    raw
}

/// The outputs the request asks for, in its order (every output when it names none).
fn requested_outputs(request: &ModelInferRequest) -> ServeResult<Vec<String>> {
    if request.outputs.is_empty() {
        return Ok(vec![
            PROBABILITIES_OUTPUT.to_string(),
            CLASS_OUTPUT.to_string(),
        ]);
    }
    let mut names = Vec::with_capacity(request.outputs.len());
    for output in &request.outputs {
        if output.name != PROBABILITIES_OUTPUT && output.name != CLASS_OUTPUT {
            return Err(invalid(format!(
                "unknown output {:?}; the model has {PROBABILITIES_OUTPUT:?} and {CLASS_OUTPUT:?}",
                output.name
            )));
        }
        if let Some(parameter) = output
            .parameters
            .keys()
            .find(|parameter| parameter.as_str() != "binary_data")
        {
            return Err(invalid(format!(
                "output parameter {parameter:?} is not supported"
            )));
        }
        if !names.contains(&output.name) {
            names.push(output.name.clone());
        }
    }
    Ok(names)
}

fn wants_raw_output(request: &ModelInferRequest) -> ServeResult<bool> {
    match request.parameters.get(RAW_OUTPUT_PARAMETER) {
        None => Ok(!request.raw_input_contents.is_empty()),
        Some(InferParameter {
            parameter_choice: Some(ParameterChoice::BoolParam(raw)),
        }) => Ok(*raw),
        Some(other) => Err(invalid(format!(
            "parameter {RAW_OUTPUT_PARAMETER:?} must be a bool, not {other:?}"
        ))),
    }
}

/// One output tensor's values.
#[derive(Debug, PartialEq)]
enum OutputValues {
    Fp32(Vec<f32>),
    Bytes(Vec<Vec<u8>>),
}

#[derive(Debug, PartialEq)]
struct Output {
    name: String,
    shape: Vec<i64>,
    values: OutputValues,
}

impl Output {
    /// The tensor, with its contents typed (`raw` false) or as the raw bytes to append.
    fn into_tensor(self, raw: bool) -> (InferOutputTensor, Option<Vec<u8>>) {
        let datatype = match self.values {
            OutputValues::Fp32(_) => "FP32",
            OutputValues::Bytes(_) => "BYTES",
        };
        let mut tensor = InferOutputTensor {
            name: self.name,
            datatype: datatype.to_string(),
            shape: self.shape,
            ..Default::default()
        };
        if raw {
            let bytes = match self.values {
                OutputValues::Fp32(values) => values
                    .iter()
                    .flat_map(|value| value.to_le_bytes())
                    .collect(),
                OutputValues::Bytes(elements) => serialize_bytes_tensor(&elements),
            };
            return (tensor, Some(bytes));
        }
        let mut contents = InferTensorContents::default();
        match self.values {
            OutputValues::Fp32(values) => contents.fp32_contents = values,
            OutputValues::Bytes(elements) => contents.bytes_contents = elements,
        }
        tensor.contents = Some(contents);
        (tensor, None)
    }
}

fn build_outputs(
    probabilities: &[f32],
    image_count: usize,
    class_names: &[String],
    requested: &[String],
) -> ServeResult<Vec<Output>> {
    let num_classes = class_names.len();
    if probabilities.len() != image_count * num_classes {
        return Err(ServeError::Internal(format!(
            "the model answered {} values for {image_count} images of {num_classes} classes",
            probabilities.len()
        )));
    }
    let outputs = requested
        .iter()
        .map(|name| {
            if name == PROBABILITIES_OUTPUT {
                Output {
                    name: name.clone(),
                    shape: vec![image_count as i64, num_classes as i64],
                    values: OutputValues::Fp32(probabilities.to_vec()),
                }
            } else {
                let classes = probabilities
                    .chunks_exact(num_classes)
                    .map(|row| {
                        // The most probable class; ties go to the lowest index (as Predict's top-k).
                        let best = row
                            .iter()
                            .enumerate()
                            .fold(0, |best, (index, probability)| {
                                if probability.total_cmp(&row[best]).is_gt() {
                                    index
                                } else {
                                    best
                                }
                            });
                        class_names[best].clone().into_bytes()
                    })
                    .collect();
                Output {
                    name: name.clone(),
                    shape: vec![image_count as i64],
                    values: OutputValues::Bytes(classes),
                }
            }
        })
        .collect();
    Ok(outputs)
}

fn tensor_metadata(name: &str, datatype: &str, shape: &[i64]) -> TensorMetadata {
    TensorMetadata {
        name: name.to_string(),
        datatype: datatype.to_string(),
        shape: shape.to_vec(),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for OpenInferenceService {
    async fn server_live(
        &self,
        _request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        let ready = self.core.store().default_model().is_some();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        const METHOD: &str = "ModelReady";
        self.count_request(METHOD);
        let request = request.into_inner();
        let entry = match self.resolve_entry(&request.name, &request.version).await {
            Ok(entry) => entry,
            Err(ServeError::ModelNotFound(_)) => {
                return Ok(Response::new(ModelReadyResponse { ready: false }));
            }
            Err(error) => return Err(self.core.record_error(METHOD, &error)),
        };
        let ready = self
            .core
            .store()
            .loaded_model(&entry.name, entry.version)
            .is_some();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "plankton-serve".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        const METHOD: &str = "ModelMetadata";
        self.count_request(METHOD);
        let request = request.into_inner();
        let entry = self
            .resolve_entry(&request.name, &request.version)
            .await
            .map_err(|error| self.core.record_error(METHOD, &error))?;
        let num_classes = if entry.class_names.is_empty() {
            // Only the card names the classes: known once loaded.
            self.core
                .store()
                .loaded_model(&entry.name, entry.version)
                .map_or(-1, |model| model.class_names.len() as i64)
        } else {
            entry.class_names.len() as i64
        };
        let image_shape = [
            -1,
            IMAGE_CHANNELS as i64,
            IMAGE_SIZE as i64,
            IMAGE_SIZE as i64,
        ];
        Ok(Response::new(ModelMetadataResponse {
            name: entry.name.clone(),
            versions: vec![entry.version.to_string()],
            platform: PLATFORM.to_string(),
            inputs: {
                let mut inputs = vec![
                    tensor_metadata(IMAGE_INPUT, "BYTES", &[-1]),
                    tensor_metadata(SCALED_INPUT, "FP32", &image_shape),
                ];
                // Whether the model takes features is in its card: known once loaded.
                if let Some(transform) = self
                    .core
                    .store()
                    .loaded_model(&entry.name, entry.version)
                    .and_then(|model| model.feature_transform.clone())
                {
                    inputs.push(tensor_metadata(
                        FEATURES_INPUT,
                        "FP32",
                        &[-1, transform.input_columns.len() as i64],
                    ));
                }
                inputs
            },
            outputs: vec![
                tensor_metadata(PROBABILITIES_OUTPUT, "FP32", &[-1, num_classes]),
                tensor_metadata(CLASS_OUTPUT, "BYTES", &[-1]),
            ],
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let deadline = request_deadline(&request);
        self.infer_counted("ModelInfer", request.into_inner(), deadline)
            .await
            .map(Response::new)
    }

    type ModelStreamInferStream =
        Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send + 'static>>;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let deadline = request_deadline(&request);
        let service = self.clone();
        let responses = request
            .into_inner()
            .map(move |message| {
                let service = service.clone();
                async move {
                    let infer_request = message?;
                    let answer = match service
                        .infer_counted("ModelStreamInfer", infer_request, deadline)
                        .await
                    {
                        Ok(response) => ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(response),
                        },
                        Err(status) => ModelStreamInferResponse {
                            error_message: status.message().to_string(),
                            infer_response: None,
                        },
                    };
                    Ok(answer)
                }
            })
            .buffered(STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(responses)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plankton_proto::inference::model_infer_request::InferRequestedOutputTensor;

    fn input(
        name: &str,
        datatype: &str,
        shape: &[i64],
        contents: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.to_string(),
            datatype: datatype.to_string(),
            shape: shape.to_vec(),
            contents,
            ..Default::default()
        }
    }

    #[test]
    fn model_name_and_version_map_to_registry_references() {
        let text = |name: &str, version: &str| {
            model_text(name, version).map_err(|error| error.to_string())
        };
        assert_eq!(text("plankton", "").unwrap(), "plankton");
        assert_eq!(
            text("plankton@production", "").unwrap(),
            "plankton@production"
        );
        assert_eq!(text("plankton:3", "").unwrap(), "plankton:3");
        assert_eq!(text("plankton", "3").unwrap(), "plankton:3");
        assert_eq!(
            text("plankton", "production").unwrap(),
            "plankton@production"
        );
        assert_eq!(text("", "").unwrap(), "");
        assert!(
            text("plankton@production", "3")
                .unwrap_err()
                .contains("already selects")
        );
        assert!(text("", "3").unwrap_err().contains("without a model_name"));
        assert!(text("plankton", "0").unwrap_err().contains("start at 1"));
    }

    #[test]
    fn bytes_tensors_round_trip_and_truncation_is_refused() {
        let elements = vec![b"abc".to_vec(), Vec::new(), vec![0xFF; 300]];
        let raw = serialize_bytes_tensor(&elements);
        assert_eq!(&raw[..7], &[3, 0, 0, 0, b'a', b'b', b'c']);
        assert_eq!(deserialize_bytes_tensor(&raw).unwrap(), elements);
        assert!(deserialize_bytes_tensor(&raw[..raw.len() - 1]).is_err());
        assert!(deserialize_bytes_tensor(&[1, 0]).is_err());
        assert!(deserialize_bytes_tensor(&[]).unwrap().is_empty());
    }

    #[test]
    fn reads_jpeg_and_fp32_inputs_typed_or_raw() {
        let typed = ModelInferRequest {
            inputs: vec![input(
                "image",
                "BYTES",
                &[2],
                Some(InferTensorContents {
                    bytes_contents: vec![b"a".to_vec(), b"b".to_vec()],
                    ..Default::default()
                }),
            )],
            ..Default::default()
        };
        assert_eq!(
            read_input(&typed).unwrap(),
            InputTensor::Jpegs(vec![b"a".to_vec(), b"b".to_vec()])
        );
        assert!(!wants_raw_output(&typed).unwrap());

        let values: Vec<f32> = (0..IMAGE_LEN)
            .map(|index| (index % 256) as f32 / 255.0)
            .collect();
        let raw = ModelInferRequest {
            inputs: vec![input("input", "FP32", &[1, 3, 64, 64], None)],
            raw_input_contents: vec![
                values
                    .iter()
                    .flat_map(|value| value.to_le_bytes())
                    .collect(),
            ],
            ..Default::default()
        };
        assert_eq!(
            read_input(&raw).unwrap(),
            InputTensor::Scaled {
                values: values.clone(),
                image_count: 1
            }
        );
        assert!(wants_raw_output(&raw).unwrap());

        for (request, expected) in [
            (
                ModelInferRequest {
                    inputs: vec![input("input", "FP32", &[1, 3, 32, 32], None)],
                    raw_input_contents: vec![vec![0; 4 * 3 * 32 * 32]],
                    ..Default::default()
                },
                "expected [N,3,64,64]",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("image", "BYTES", &[3], None)],
                    raw_input_contents: vec![serialize_bytes_tensor(&[b"x"])],
                    ..Default::default()
                },
                "3 elements",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("pixels", "UINT8", &[1], None)],
                    ..Default::default()
                },
                "unknown input",
            ),
            (ModelInferRequest::default(), "0 inputs"),
            (
                ModelInferRequest {
                    inputs: vec![input(
                        "input",
                        "FP32",
                        &[1, 3, 64, 64],
                        Some(InferTensorContents {
                            fp32_contents: vec![f32::NAN; IMAGE_LEN],
                            ..Default::default()
                        }),
                    )],
                    ..Default::default()
                },
                "not finite",
            ),
        ] {
            let error = read_input(&request).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn outputs_hold_probabilities_and_the_most_probable_class_typed_or_raw() {
        let class_names = vec!["a".to_string(), "bb".to_string(), "c".to_string()];
        let probabilities = [0.2, 0.5, 0.3, 0.6, 0.2, 0.2];
        let request = ModelInferRequest {
            outputs: vec![InferRequestedOutputTensor {
                name: "class".to_string(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let requested = requested_outputs(&request).unwrap();
        assert_eq!(requested, ["class"]);
        let outputs = build_outputs(
            &probabilities,
            2,
            &class_names,
            &requested_outputs(&ModelInferRequest::default()).unwrap(),
        )
        .unwrap();
        assert_eq!(outputs.len(), 2);
        assert_eq!(outputs[0].shape, [2, 3]);
        assert_eq!(
            outputs[1].values,
            OutputValues::Bytes(vec![b"bb".to_vec(), b"a".to_vec()])
        );

        let mut outputs = outputs.into_iter();
        let (tensor, raw) = outputs.next().unwrap().into_tensor(true);
        assert_eq!(
            (tensor.name.as_str(), tensor.datatype.as_str()),
            ("probabilities", "FP32")
        );
        assert!(tensor.contents.is_none());
        assert_eq!(raw.unwrap().len(), 6 * 4);
        let (tensor, raw) = outputs.next().unwrap().into_tensor(false);
        assert!(raw.is_none());
        assert_eq!(
            tensor.contents.unwrap().bytes_contents,
            [b"bb".to_vec(), b"a".to_vec()]
        );

        let unknown = ModelInferRequest {
            outputs: vec![InferRequestedOutputTensor {
                name: "logits".to_string(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(
            requested_outputs(&unknown)
                .unwrap_err()
                .to_string()
                .contains("unknown output")
        );
    }
}
