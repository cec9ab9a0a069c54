"""PyTorch side of bench/src/bin/trainer_parity.rs: from the Rust side's initial weights, train one step per batch
(Adam 1e-3, class-weighted cross-entropy, the weighted mean) and print the losses as a JSON list."""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from torch_train import IMAGE_SIZE, build_model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--arch", default="wide_lenet")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--num-classes", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = np.fromfile(os.path.join(args.dir, "images.u8"), dtype=np.uint8).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
    labels = np.fromfile(os.path.join(args.dir, "labels.u32"), dtype="<u4").astype(np.int64)
    class_weights = torch.from_numpy(np.fromfile(os.path.join(args.dir, "weights.f32"), dtype="<f4").copy())
    args.weights = os.path.join(args.dir, "initial.safetensors")
    model = build_model(args)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(args.steps):
        batch = slice(step * args.batch, (step + 1) * args.batch)
        inputs = torch.from_numpy(images[batch].copy()).float().div_(255.0)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), torch.from_numpy(labels[batch].copy()), weight=class_weights)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    print(json.dumps(losses))


if __name__ == "__main__":
    main()
