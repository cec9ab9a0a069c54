"""A grpcio client of plankton-serve: generates stubs from the .proto files, calls Predict and Health.Check.

Usage: client.py --address 127.0.0.1:PORT --proto-root proto IMAGE [IMAGE ...]
Prints one JSON object on stdout: the health status and, per image, its id (the file name), top class and error.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

HEALTH_PROTO = """
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
"""


def generate_stubs(proto_root: str, out_dir: str) -> None:
    import grpc_tools
    from grpc_tools import protoc

    # Not under grpc/: that Python package is grpcio itself. The proto package (the wire name) is unchanged.
    health_dir = os.path.join(out_dir, "protos", "health_check")
    os.makedirs(health_dir)
    with open(os.path.join(health_dir, "health.proto"), "w") as health_file:
        health_file.write(HEALTH_PROTO)
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    protos = sorted(glob.glob(os.path.join(proto_root, "plankton", "v1", "*.proto")))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_root}/plankton/v1")
    relative = [os.path.relpath(path, proto_root) for path in protos] + ["health_check/health.proto"]
    arguments = [
        "protoc",
        f"-I{proto_root}",
        f"-I{os.path.join(out_dir, 'protos')}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
    ] + relative
    if protoc.main(arguments) != 0:
        raise SystemExit(f"protoc failed: {arguments}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--proto-root", required=True)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("images", nargs="+")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as stub_dir:
        generate_stubs(options.proto_root, stub_dir)
        sys.path.insert(0, stub_dir)
        import grpc
        from health_check import health_pb2, health_pb2_grpc
        from plankton.v1 import inference_pb2, inference_pb2_grpc

        with grpc.insecure_channel(options.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            images = []
            for path in options.images:
                with open(path, "rb") as image_file:
                    images.append(inference_pb2.ImageInput(data=image_file.read(), id=os.path.basename(path)))
            response = inference_pb2_grpc.InferenceStub(channel).Predict(
                inference_pb2.PredictRequest(images=images, top_k=options.top_k), timeout=30
            )
            try:
                inference_pb2_grpc.InferenceStub(channel).Predict(inference_pb2.PredictRequest(), timeout=10)
                empty_request_code = "OK"
            except grpc.RpcError as error:
                empty_request_code = error.code().name

    print(
        json.dumps(
            {
                "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
                "model_name": response.model_name,
                "model_version": response.model_version,
                "empty_request_code": empty_request_code,
                "predictions": [
                    {
                        "id": prediction.id,
                        "top": [[score.class_name, score.class_index, score.probability] for score in prediction.top],
                        "error": prediction.error,
                    }
                    for prediction in response.predictions
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
