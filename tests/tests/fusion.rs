//! The fusion model (resnet trunk + native-features MLP) end to end: trained through the cluster with the
//! feature transform fitted on the training split (objects without a feature row and unparsable values imputed
//! and counted in the job), registered, served with each image's raw features exactly as the weights and the
//! card's transform predict (plankton.v1 Predict and the Open Inference Protocol), and refused with
//! INVALID_ARGUMENT naming the missing input when features are absent.

use plankton_dataset::layout::FEATURES_FILE;
use plankton_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use plankton_proto::inference::model_infer_request::InferInputTensor;
use plankton_proto::inference::{InferTensorContents, ModelInferRequest};
use plankton_proto::v1::{GetModelInfoRequest, JobSpec};
use plankton_tests::{TestCluster, TestServer, synth_dataset};
use plankton_trainer::{Architecture, ModelCard};

/// Objects whose feature row is removed from the file.
const ROWS_REMOVED: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fusion_job_trains_registers_and_is_served_with_features() -> anyhow::Result<()> {
    let dataset_url = "memory://tests/fusion-e2e";
    synth_dataset(dataset_url, 300, 29, false).await?;
    let location = plankton_dataset::open_location(dataset_url)?;
    // Three objects lose their feature row, a fourth gets a non-numeric value.
    let csv = String::from_utf8(location.get_bytes(FEATURES_FILE).await?.to_vec())?;
    let mut lines: Vec<String> = csv.lines().map(str::to_string).collect();
    let removed: Vec<String> = lines.drain(1..1 + ROWS_REMOVED).collect();
    let mut cells: Vec<String> = lines[1].split(',').map(str::to_string).collect();
    cells[1] = "not-a-number".to_string();
    lines[1] = cells.join(",");
    location
        .put_bytes(FEATURES_FILE, format!("{}\n", lines.join("\n")).into())
        .await?;
    assert_eq!(removed.len(), ROWS_REMOVED);

    let cluster = TestCluster::start(2).await?;
    let finished = cluster
        .run_job(JobSpec {
            dataset_url: dataset_url.into(),
            world_size: 2,
            model: "fusion".into(),
            epochs: 1,
            batch_size: 16,
            name: "e2e-fusion".into(),
            ..Default::default()
        })
        .await?;
    let imputation = finished
        .feature_imputation
        .clone()
        .expect("a fusion job reports its feature imputation");
    assert_eq!(
        imputation.objects,
        finished.train_objects + finished.test_objects
    );
    assert_eq!(imputation.objects_without_row, ROWS_REMOVED as u64);
    assert!(imputation.imputed_values >= 1, "{imputation:?}");
    assert!(imputation.transformed_width > 0 && imputation.input_columns == 64);

    let output =
        plankton_dataset::open_location(finished.model_url.trim_end_matches("/model.safetensors"))?;
    let card: ModelCard = serde_json::from_slice(&output.get_bytes("model-card.json").await?)?;
    assert_eq!(card.architecture, Architecture::Fusion);
    let transform = card
        .feature_transform
        .clone()
        .expect("the card records the transform");
    assert_eq!(
        transform.output_width() as u32,
        imputation.transformed_width
    );

    let test_server = TestServer::start(&cluster.coordinator_url, "e2e-fusion").await?;
    let server = test_server.access.clone();

    // Six objects with a feature row, their JPEGs and raw features (NaN where the file has none).
    let objects = plankton_tests::objects_with_features(dataset_url, 6).await?;
    let images = &objects.images;
    let features_of = |objid: i64| objects.features_of(objid);

    // Direct predictions: the weights, the card's transform, the training preprocessing.
    let weights = output.get_bytes("model.safetensors").await?;
    let num_classes = finished.class_names.len();
    let mut pixels = Vec::new();
    let mut transformed = Vec::new();
    let mut counts = plankton_dataset::ImputationCounts::default();
    for (objid, jpeg) in images {
        pixels.extend(plankton_preprocess::preprocess_image(
            jpeg,
            &plankton_preprocess::PreprocessConfig::default(),
        )?);
        transformed.extend(transform.apply_raw(&features_of(*objid), &mut counts));
    }
    let direct = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<f32>> {
        let model = plankton_trainer::InferenceModel::from_safetensors(
            Architecture::Fusion,
            num_classes,
            &weights,
            tch::Device::Cpu,
        )?;
        let count = pixels.len() / plankton_preprocess::IMAGE_LEN;
        Ok(model.predict_probabilities_with_features(&pixels, &transformed, count)?)
    })
    .await??;

    let mut client = plankton_tests::wait_for_inference_server(&server).await?;
    let info = client
        .get_model_info(GetModelInfoRequest {
            model: "e2e-fusion".into(),
        })
        .await?
        .into_inner();
    assert!(info.requires_features);
    assert_eq!(info.feature_columns, transform.input_columns);

    plankton_tests::check_predictions_with_features(
        &mut client,
        "e2e-fusion",
        images,
        &features_of,
        &direct,
        num_classes,
        1e-5,
    )
    .await?;

    // The Open Inference Protocol: JPEGs plus the FP32 "features" input [N,64] give the same probabilities;
    // without "features" the request is refused naming the input.
    let mut open_inference = GrpcInferenceServiceClient::new(server.channel().await?);
    let jpeg_input = InferInputTensor {
        name: "image".into(),
        datatype: "BYTES".into(),
        shape: vec![images.len() as i64],
        contents: Some(InferTensorContents {
            bytes_contents: images.iter().map(|(_, jpeg)| jpeg.to_vec()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let features_input = InferInputTensor {
        name: "features".into(),
        datatype: "FP32".into(),
        shape: vec![images.len() as i64, transform.input_columns.len() as i64],
        contents: Some(InferTensorContents {
            fp32_contents: images
                .iter()
                .flat_map(|(objid, _)| features_of(*objid))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer = open_inference
        .model_infer(ModelInferRequest {
            model_name: "e2e-fusion".into(),
            inputs: vec![jpeg_input.clone(), features_input],
            ..Default::default()
        })
        .await?
        .into_inner();
    let probabilities = &answer
        .outputs
        .iter()
        .find(|output| output.name == "probabilities")
        .expect("probabilities output")
        .contents
        .as_ref()
        .expect("typed contents")
        .fp32_contents;
    assert_eq!(probabilities.len(), direct.len());
    for (served, expected) in probabilities.iter().zip(&direct) {
        assert!(
            (served - expected).abs() < 1e-5,
            "served {served} direct {expected}"
        );
    }
    let refused = open_inference
        .model_infer(ModelInferRequest {
            model_name: "e2e-fusion".into(),
            inputs: vec![jpeg_input],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("input \"features\""),
        "{}",
        refused.message()
    );

    test_server.stop().await?;
    cluster.shutdown().await
}
