//! `model: gbdt` end to end: gradient-boosted trees trained by one worker on the native features (the transform
//! the coordinator fitted on the training split), evaluated with the usual metrics, registered with their card,
//! served from the features of each Predict exactly as the trees and the card's transform predict, and refused
//! with INVALID_ARGUMENT naming the missing input when features are absent; a gbdt spec for two workers is
//! refused at submit.

use plankton_gbdt::{FeatureMatrix, GbdtModel};
use plankton_proto::v1::{GetModelInfoRequest, JobSpec};
use plankton_tests::{TestCluster, TestServer, synth_dataset};
use plankton_trainer::{Architecture, ModelCard};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gbdt_job_trains_on_one_worker_registers_and_is_served_from_features()
-> anyhow::Result<()> {
    let dataset_url = "memory://tests/gbdt-e2e";
    synth_dataset(dataset_url, 400, 31, false).await?;
    let cluster = TestCluster::start(1).await?;
    let spec = JobSpec {
        dataset_url: dataset_url.into(),
        world_size: 1,
        model: "gbdt".into(),
        batch_size: 16,
        name: "e2e-gbdt".into(),
        ..Default::default()
    };
    let refused = cluster
        .submit(JobSpec {
            world_size: 2,
            ..spec.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("one worker"),
        "{}",
        refused.message()
    );

    let finished = cluster.run_job(spec).await?;
    assert!(
        finished.training_summary.contains("one worker"),
        "{}",
        finished.training_summary
    );
    assert!(
        finished.model_url.ends_with("/model-gbdt.json"),
        "{}",
        finished.model_url
    );
    let last = finished.epochs.last().expect("one evaluation");
    assert_eq!((finished.epochs.len(), last.epoch), (1, 1));
    let tested: u64 = last.confusion.iter().sum();
    assert_eq!(tested, finished.test_objects);
    // The synthetic features separate the classes well: trees do far better than chance.
    assert!(last.accuracy > 0.5, "accuracy {}", last.accuracy);
    assert!(last.biological_classes > 0 && last.biological_macro_f1 > 0.0);

    let output =
        plankton_dataset::open_location(finished.model_url.trim_end_matches("/model-gbdt.json"))?;
    let card: ModelCard = serde_json::from_slice(&output.get_bytes("model-card.json").await?)?;
    assert_eq!(card.architecture, Architecture::Gbdt);
    assert_eq!(card.weights_file, "model-gbdt.json");
    let transform = card
        .feature_transform
        .clone()
        .expect("the card records the transform");
    let trees = GbdtModel::from_bytes(&output.get_bytes("model-gbdt.json").await?)?;
    assert_eq!(trees.num_features(), transform.output_width());

    let test_server = TestServer::start(&cluster.coordinator_url, "e2e-gbdt").await?;
    let server = test_server.access.clone();

    // Five objects: their JPEGs and raw features (NaN where the file has none).
    let objects = plankton_tests::objects_with_features(dataset_url, 5).await?;
    let images = &objects.images;
    let features_of = |objid: i64| objects.features_of(objid);
    let mut transformed = Vec::new();
    let mut counts = plankton_dataset::ImputationCounts::default();
    for (objid, _) in images {
        transformed.extend(transform.apply_raw(&features_of(*objid), &mut counts));
    }
    let direct = trees.predict_probabilities(&FeatureMatrix::new(
        &transformed,
        images.len(),
        transform.output_width(),
    )?)?;
    let num_classes = finished.class_names.len();

    let mut client = plankton_tests::wait_for_inference_server(&server).await?;
    let info = client
        .get_model_info(GetModelInfoRequest {
            model: "e2e-gbdt".into(),
        })
        .await?
        .into_inner();
    assert!(info.requires_features);
    assert_eq!(info.architecture, "gbdt");
    plankton_tests::check_predictions_with_features(
        &mut client,
        "e2e-gbdt",
        images,
        &features_of,
        &direct,
        num_classes,
        1e-6,
    )
    .await?;

    test_server.stop().await?;
    cluster.shutdown().await
}
