"""Calls plankton-serve through tritonclient's gRPC client (the Open Inference Protocol), over TLS with a bearer
token, as any Triton/KServe user would; prints one JSON object for tests/tests/inference_protocol.rs."""

import argparse
import json
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="host:port of the inference server")
    parser.add_argument("--ca", required=True, help="PEM of the CA that signed the server certificate")
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--model", required=True, help="registry name, e.g. plankton@production")
    parser.add_argument("--scaled", required=True, help="raw little-endian f32 [N,3,64,64]: preprocessed images")
    parser.add_argument("images", nargs="+", help="JPEG files")
    arguments = parser.parse_args()

    with open(arguments.token_file) as token_file:
        headers = {"authorization": "Bearer " + token_file.read().strip()}
    client = grpcclient.InferenceServerClient(
        url=arguments.url, ssl=True, root_certificates=arguments.ca
    )
    answer = {
        "server_live": client.is_server_live(headers=headers),
        "server_ready": client.is_server_ready(headers=headers),
        "model_ready": client.is_model_ready(arguments.model, headers=headers),
        "metadata": client.get_model_metadata(arguments.model, headers=headers, as_json=True),
    }

    jpegs = []
    for path in arguments.images:
        with open(path, "rb") as image_file:
            jpegs.append(image_file.read())
    image = grpcclient.InferInput("image", [len(jpegs)], "BYTES")
    image.set_data_from_numpy(np.array(jpegs, dtype=np.object_))
    result = client.infer(
        arguments.model,
        [image],
        outputs=[grpcclient.InferRequestedOutput("probabilities"), grpcclient.InferRequestedOutput("class")],
        request_id="jpeg-request",
        headers=headers,
    )
    response = result.get_response()
    answer["jpeg"] = {
        "id": response.id,
        "model_name": response.model_name,
        "model_version": response.model_version,
        "probabilities": result.as_numpy("probabilities").tolist(),
        "class": [name.decode() for name in result.as_numpy("class").tolist()],
    }

    # Triton's streaming extension: one stream, answers in order, a bad request answers an error and the stream
    # goes on.
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=headers)
    client.async_stream_infer(arguments.model, [image], request_id="stream-jpeg")
    broken = grpcclient.InferInput("image", [1], "BYTES")
    broken.set_data_from_numpy(np.array([b"not a jpeg"], dtype=np.object_))
    client.async_stream_infer(arguments.model, [broken], request_id="stream-broken")
    (streamed, streamed_error), (_, broken_error) = answers.get(timeout=60), answers.get(timeout=60)
    client.stop_stream()
    answer["stream"] = {
        "error": None if streamed_error is None else str(streamed_error),
        "id": None if streamed is None else streamed.get_response().id,
        "probabilities": None if streamed is None else streamed.as_numpy("probabilities").tolist(),
        "broken_error": None if broken_error is None else broken_error.message(),
    }

    scaled = np.fromfile(arguments.scaled, dtype="<f4").reshape(-1, 3, 64, 64)
    tensor = grpcclient.InferInput("input", list(scaled.shape), "FP32")
    tensor.set_data_from_numpy(scaled)
    result = client.infer(arguments.model, [tensor], headers=headers)
    answer["scaled"] = {
        "probabilities": result.as_numpy("probabilities").tolist(),
        "class": [name.decode() for name in result.as_numpy("class").tolist()],
    }

    try:
        client.get_model_config(arguments.model, headers=headers)
        answer["model_config"] = "OK"
    except InferenceServerException as error:
        answer["model_config"] = str(error.status())

    try:
        client.is_server_live()
        answer["without_token"] = "OK"
    except InferenceServerException as error:
        answer["without_token"] = str(error.status())

    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
