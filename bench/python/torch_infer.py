"""PyTorch eager inference of the same weights as plankton-serve's model, for bench/src/bin/serve_bench.rs.

Loads the safetensors file the Rust side wrote into the twin network of torch_train.py, in eval mode under
torch.inference_mode(), with the given thread count; feeds the same u8 CHW images divided by 255, softmax
included (as the server computes). Prints one JSON line: images/s per batch size for NCHW (PyTorch's default) and
channels-last, and the probabilities of the first images (to check both sides compute the same function).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_train import IMAGE_LEN, ResNet, read_safetensors  # noqa: E402


def images_per_second(model, inputs, repetitions, rounds):
    """The best round's images/s (the machine is shared; its load swings)."""
    best = 0.0
    with torch.inference_mode():
        for _ in range(3):
            torch.softmax(model(inputs), dim=-1)
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(repetitions):
                torch.softmax(model(inputs), dim=-1)
            best = max(best, inputs.shape[0] * repetitions / (time.perf_counter() - started))
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True)
    parser.add_argument("--images", required=True, help="raw u8 CHW 3x64x64 images")
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--rounds", type=int, default=7)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)

    model = ResNet(arguments.num_classes)
    state = read_safetensors(arguments.weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(name.endswith("num_batches_tracked") for name in missing), missing
    model.eval()
    pixels = np.fromfile(arguments.images, dtype=np.uint8).reshape(-1, 3, 64, 64)
    assert pixels.size % IMAGE_LEN == 0
    all_inputs = torch.from_numpy(pixels.astype(np.float32)) / 255.0

    answer = {"nchw": {}, "channels_last": {}}
    with torch.inference_mode():
        answer["probabilities"] = torch.softmax(model(all_inputs[:4]), dim=-1).tolist()
    for batch_size in [int(text) for text in arguments.batch_sizes.split(",")]:
        inputs = all_inputs[:batch_size].contiguous()
        repetitions = max(128 // batch_size, 2)
        answer["nchw"][str(batch_size)] = images_per_second(model, inputs, repetitions, arguments.rounds)
        channels_last_model = model.to(memory_format=torch.channels_last)
        channels_last_inputs = inputs.contiguous(memory_format=torch.channels_last)
        answer["channels_last"][str(batch_size)] = images_per_second(
            channels_last_model, channels_last_inputs, repetitions, arguments.rounds
        )
        model = model.to(memory_format=torch.contiguous_format)
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
