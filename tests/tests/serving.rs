//! Train through the cluster, find the model in the coordinator's registry, promote it, serve it with
//! plankton-serve, and check the served predictions equal the weights' own predictions on the same images.

use futures::StreamExt;

use plankton_proto::v1::{
    ImageInput, JobSpec, ListModelsRequest, PredictRequest, PromoteModelRequest,
};
use plankton_tests::{TestCluster, TestServer, synth_dataset};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trained_model_is_registered_promoted_and_served_exactly() -> anyhow::Result<()> {
    let dataset_url = "memory://tests/serving-e2e";
    synth_dataset(dataset_url, 400, 23, false).await?;
    let cluster = TestCluster::start(2).await?;
    let spec = JobSpec {
        dataset_url: dataset_url.into(),
        world_size: 2,
        model: "lenet".into(),
        epochs: 1,
        batch_size: 16,
        name: "e2e-lenet".into(),
        ..Default::default()
    };
    let finished = cluster.run_job(spec).await?;
    let job = &finished;

    let mut registry = cluster.access.registry().await?;
    let models = registry
        .list_models(ListModelsRequest {
            name: "e2e-lenet".into(),
        })
        .await?
        .into_inner()
        .models;
    assert_eq!(
        models.len(),
        1,
        "the succeeded job registered one model version"
    );
    assert_eq!(models[0].job_id, job.id);
    assert_eq!(models[0].class_names, finished.class_names);
    registry
        .promote_model(PromoteModelRequest {
            name: "e2e-lenet".into(),
            version: 1,
            alias: "production".into(),
        })
        .await?;

    let test_server = TestServer::start(&cluster.coordinator_url, "e2e-lenet@production").await?;
    let server = test_server.access.clone();

    // Twelve images of the dataset, as raw JPEG bytes.
    let location = plankton_dataset::open_location(dataset_url)?;
    let meta = plankton_dataset::read_meta(&location).await?;
    let source = plankton_dataset::open_image_source(&location).await?;
    let objids: Vec<i64> = meta
        .records
        .iter()
        .take(12)
        .map(|record| record.objid)
        .collect();
    let images: Vec<(i64, bytes::Bytes)> =
        plankton_dataset::fetch_images(&location, &source, objids, 4)
            .map(|(objid, result)| (objid, result.expect("image readable")))
            .collect()
            .await;

    // Direct predictions from the same weights.
    let output =
        plankton_dataset::open_location(finished.model_url.trim_end_matches("/model.safetensors"))?;
    let weights = output.get_bytes("model.safetensors").await?;
    let num_classes = finished.class_names.len();
    let mut inputs = Vec::new();
    for (_, jpeg) in &images {
        inputs.extend(plankton_preprocess::preprocess_image(
            jpeg,
            &plankton_preprocess::PreprocessConfig::default(),
        )?);
    }
    let direct = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<f32>> {
        let model = plankton_trainer::InferenceModel::from_safetensors(
            plankton_trainer::Architecture::LeNet,
            num_classes,
            &weights,
            tch::Device::Cpu,
        )?;
        Ok(model.predict_probabilities(&inputs, inputs.len() / plankton_preprocess::IMAGE_LEN)?)
    })
    .await??;

    let mut client = plankton_tests::wait_for_inference_server(&server).await?;
    let request = PredictRequest {
        model: "e2e-lenet@production".into(),
        images: images
            .iter()
            .map(|(objid, jpeg)| ImageInput {
                data: jpeg.to_vec(),
                id: objid.to_string(),
                ..Default::default()
            })
            .collect(),
        top_k: num_classes as u32,
    };
    let response = client.predict(request).await?.into_inner();
    assert_eq!(
        (response.model_name.as_str(), response.model_version),
        ("e2e-lenet", 1)
    );
    assert_eq!(response.predictions.len(), images.len());
    for (index, prediction) in response.predictions.iter().enumerate() {
        assert!(prediction.error.is_empty(), "{}", prediction.error);
        assert_eq!(prediction.top.len(), num_classes);
        for score in &prediction.top {
            let expected = direct[index * num_classes + score.class_index as usize];
            assert!(
                (score.probability - expected).abs() < 1e-5,
                "image {index} class {}: served {} direct {expected}",
                score.class_index,
                score.probability
            );
            assert_eq!(
                score.class_name,
                finished.class_names[score.class_index as usize]
            );
        }
    }

    test_server.stop().await?;
    cluster.shutdown().await
}
