"""PyTorch eager / DDP (gloo) twin of plankton-trainer's training step, for bench/src/bin/train_bench.rs.

Same models (parameter names match the Rust var store), same initial weights (read from the safetensors file
the Rust side wrote), same data (raw u8 CHW images + u32 labels), same loss (class-weighted cross-entropy),
same optimizer (Adam 1e-3). Prints one JSON line: {"images_per_second": ..., "seconds": ...}.
"""
import argparse
import json
import os
import socket
import struct
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE_SIZE = 64
IMAGE_LEN = 3 * IMAGE_SIZE * IMAGE_SIZE


class LeNet(nn.Module):
    """The reference notebook's CNN: 2x2 'valid' convolutions of 6/16/16 filters, each + ReLU + 2x2 max-pool
    (64 -> 63 -> 31 -> 30 -> 15 -> 14 -> 7), dense 784 -> 250 -> 100 -> classes."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 2)
        self.conv2 = nn.Conv2d(6, 16, 2)
        self.conv3 = nn.Conv2d(16, 16, 2)
        self.fc1 = nn.Linear(16 * 7 * 7, 250)
        self.fc2 = nn.Linear(250, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class WideLeNet(nn.Module):
    """The LeNet layout with 3x3 'same' convolutions of 32/64/128 filters, dense 8192 -> 250 -> 100 -> classes."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc1 = nn.Linear(128 * 8 * 8, 250)
        self.fc2 = nn.Linear(250, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class ConvBn(nn.Module):
    def __init__(self, cin, cout, kernel, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = ConvBn(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.stem = ConvBn(3, 32, 3, 2)
        self.layer1 = BasicBlock(32, 32, 1)
        self.layer2 = BasicBlock(32, 64, 2)
        self.layer3 = BasicBlock(64, 128, 2)
        self.layer4 = BasicBlock(128, 256, 2)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def read_safetensors(path):
    """Minimal safetensors reader (f32 only): 8-byte header length, JSON header, raw little-endian data."""
    with open(path, "rb") as handle:
        blob = handle.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    data = blob[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", name
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"])
        tensors[name] = torch.from_numpy(array.copy())
    return tensors


ARCHITECTURES = {"lenet": LeNet, "wide_lenet": WideLeNet, "resnet": ResNet}


def build_model(args):
    model = ARCHITECTURES[args.arch](args.num_classes)
    state = read_safetensors(args.weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(name.endswith("num_batches_tracked") for name in missing), missing
    return model


def train(rank, args, world_size, port):
    torch.set_num_threads(1)
    if world_size > 1:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    images = np.fromfile(args.images, dtype=np.uint8).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
    labels = np.fromfile(args.labels, dtype="<u4").astype(np.int64)
    batch_images = torch.from_numpy(images[rank * args.batch : (rank + 1) * args.batch].copy())
    batch_labels = torch.from_numpy(labels[rank * args.batch : (rank + 1) * args.batch].copy())
    class_weights = torch.from_numpy(np.fromfile(args.class_weights, dtype="<f4").copy())
    model = build_model(args)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
        if args.bf16_gradients:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            model.register_comm_hook(None, default_hooks.bf16_compress_hook)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        inputs = batch_images.float().div_(255.0)
        if args.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(inputs)
        loss = F.cross_entropy(logits.float(), batch_labels, weight=class_weights)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if world_size > 1:
        torch.distributed.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    if world_size > 1:
        elapsed = torch.tensor([seconds])
        torch.distributed.all_reduce(elapsed, op=torch.distributed.ReduceOp.MAX)
        seconds = float(elapsed[0])
    if rank == 0:
        images_per_second = world_size * args.batch * args.steps / seconds
        print(json.dumps({"images_per_second": images_per_second, "seconds": seconds}), flush=True)
    if world_size > 1:
        # Both ranks reach the teardown together: a rank that leaves while its peer's gloo threads still talk to
        # it made the peer abort ("terminate called without an active exception") now and then.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--class-weights", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--num-classes", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--channels-last", action="store_true", help="NHWC model and inputs (not PyTorch's default)")
    parser.add_argument("--bf16", action="store_true", help="forward under torch.autocast('cpu', bfloat16)")
    parser.add_argument(
        "--bf16-gradients", action="store_true", help="DDP bf16_compress_hook (bf16 gradients on the wire)"
    )
    args = parser.parse_args()
    if args.world == 1:
        train(0, args, 1, 0)
    else:
        torch.multiprocessing.spawn(train, args=(args, args.world, free_port()), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
