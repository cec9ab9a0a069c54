"""The PyTorch script the cluster replaces, for bench/src/bin/quality_compare.rs: DDP (gloo) over `--world`
processes, a DataLoader reading each epoch's JPEGs with OpenCV preprocessing (the cluster's: grey, bicubic 64x64,
threshold below the mean, 4x4 opening), the same network (torch_train.py's), balanced class weights in
`F.cross_entropy` (each rank's weighted mean, averaged by DDP), Adam at a constant rate, a DistributedSampler
shuffled per epoch. The split and class weights come from the cluster's planner (a CSV and a JSON), so both
sides train and test on the same objects.

Prints one JSON line: {"accuracy": ..., "macro_f1": ..., "seconds": ..., "eval_seconds": ..., "peak_rank_rss_mb":
...} (macro-F1 as scikit-learn's, over the classes with support or predictions; training seconds, rank 0's test
pass, the largest peak resident set of the ranks and their DataLoader processes).
"""
import argparse
import csv
import ctypes
import json
import os

STARTED_BY = os.getppid()  # read first: the imports below take seconds

import resource
import signal
import time

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from torch_train import ARCHITECTURES, free_port, read_safetensors

KERNEL = np.ones((4, 4), np.uint8)
PR_SET_PDEATHSIG = 1


def die_with_parent(parent):
    """Asks Linux to kill this process when `parent`, the process that started it, dies (kill -9 included), so
    that a stopped benchmark leaves no rank training on."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        return
    if os.getppid() != parent:  # it died before the request
        os._exit(1)


class FlowCamImages(Dataset):
    def __init__(self, images_dir, rows, preprocessed=None):
        self.images_dir = images_dir
        self.rows = rows
        # objid -> CHW u8 image preprocessed by the cluster's own pipeline (--preprocessed), instead of OpenCV.
        self.preprocessed = preprocessed

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        objid, label = self.rows[index]
        if self.preprocessed is not None:
            return torch.from_numpy(self.preprocessed[objid].astype(np.float32) / 255.0), label
        grey = cv2.imread(os.path.join(self.images_dir, f"{objid}.jpg"), cv2.IMREAD_GRAYSCALE)
        resized = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_CUBIC)
        threshold = np.where(resized < resized.mean(), 255, 0).astype(np.uint8)
        opening = cv2.morphologyEx(threshold, cv2.MORPH_OPEN, KERNEL)
        image = np.stack([resized, threshold, opening]).astype(np.float32) / 255.0
        return torch.from_numpy(image), label


def read_split(path):
    """{"train": [(objid, label)], "test": [...], "shards": [[train (objid, label) of rank 0], ...]}."""
    parts = {"train": [], "test": [], "shards": {}}
    with open(path) as handle:
        for row in csv.DictReader(handle):
            item = (int(row["objid"]), int(row["label"]))
            parts[row["part"]].append(item)
            if row["part"] == "train":
                parts["shards"].setdefault(int(row.get("shard") or 0), []).append(item)
    parts["shards"] = [parts["shards"][rank] for rank in sorted(parts["shards"])]
    return parts


def read_preprocessed(prefix):
    """The cluster pipeline's images: PREFIX.objids (i64) and PREFIX.u8 ([N, 3, 64, 64])."""
    objids = np.fromfile(prefix + ".objids", dtype=np.int64)
    images = np.fromfile(prefix + ".u8", dtype=np.uint8).reshape(len(objids), 3, 64, 64)
    return {int(objid): images[index] for index, objid in enumerate(objids)}


def macro_f1_and_accuracy(confusion):
    true_positive = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    present = (support > 0) | (predicted > 0)
    return float(f1[present].mean()), float(true_positive.sum() / confusion.sum())


class FixedShardSampler(torch.utils.data.Sampler):
    """The first `count` of a fresh permutation of one shard each epoch."""

    def __init__(self, length, count, seed):
        self.length, self.count, self.seed, self.epoch = length, count, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator)[: self.count].tolist())

    def __len__(self):
        return self.count


class OrderSampler(torch.utils.data.Sampler):
    """The cluster's batch order on this rank's shard: each epoch's objids, as positions in the shard's rows."""

    def __init__(self, rows, path, rank):
        position = {objid: index for index, (objid, _) in enumerate(rows)}
        self.epochs, self.epoch = {}, 0
        with open(path) as handle:
            for row in csv.DictReader(handle):
                if int(row["rank"]) == rank:
                    self.epochs.setdefault(int(row["epoch"]), []).append(position[int(row["objid"])])

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return iter(self.epochs[self.epoch])

    def __len__(self):
        return len(self.epochs[0])


def run(rank, args, port, result_path, launcher):
    die_with_parent(launcher)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    torch.manual_seed(args.seed)
    with open(args.weights) as handle:
        setup = json.load(handle)
    num_classes = len(setup["class_weights"])
    class_weights = torch.tensor(setup["class_weights"], dtype=torch.float32)
    split = read_split(args.split)
    images_dir = os.path.join(args.dataset, "imgs")
    model = ARCHITECTURES[args.arch](num_classes)
    initial_weights_equal_own = None
    if args.initial_weights:
        # The cluster's initial weights (the names match); a missing or extra tensor fails loudly.
        given = read_safetensors(args.initial_weights)
        own = model.state_dict()
        initial_weights_equal_own = all(torch.equal(own[name], tensor) for name, tensor in given.items()
                                        if name in own)
        missing, unexpected = model.load_state_dict(given, strict=False)
        assert not unexpected and all(name.endswith("num_batches_tracked") for name in missing), (missing, unexpected)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    preprocessed = read_preprocessed(args.preprocessed) if args.preprocessed else None
    if args.order:
        # Each rank on the cluster's shard of its rank, in the cluster's batch order.
        train = FlowCamImages(images_dir, split["shards"][rank], preprocessed)
        sampler = OrderSampler(split["shards"][rank], args.order, rank)
    elif args.fixed_shards:
        # Each rank trains on the cluster's shard of its rank only, reshuffled within it each epoch.
        shards = split["shards"]
        steps_per_epoch = min(len(shard) for shard in shards) // args.batch
        train = FlowCamImages(images_dir, shards[rank], preprocessed)
        sampler = FixedShardSampler(len(shards[rank]), steps_per_epoch * args.batch, args.sampler_seed + rank)
    else:
        train = FlowCamImages(images_dir, split["train"], preprocessed)
        sampler = DistributedSampler(train, num_replicas=args.world, rank=rank, shuffle=True, seed=args.sampler_seed,
                                     drop_last=True)
    loader = DataLoader(train, batch_size=args.batch, sampler=sampler, num_workers=args.loader_workers, drop_last=True)
    started = time.time()
    train_losses = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        loss_sum, steps_done = 0.0, 0
        for images, labels in loader:
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images), labels, weight=class_weights)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            steps_done += 1
        # The epoch's mean step loss, averaged over ranks (each rank's weighted mean, as DDP's gradient is).
        mean = torch.tensor([loss_sum / max(steps_done, 1)])
        dist.all_reduce(mean)
        train_losses.append(mean.item() / args.world)
    seconds = time.time() - started
    eval_started = time.time()
    if rank == 0:
        model.eval()
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        test = DataLoader(FlowCamImages(images_dir, split["test"], preprocessed), batch_size=256,
                          num_workers=args.loader_workers)
        test_loss_sum = 0.0
        with torch.no_grad():
            for images, labels in test:
                logits = model.module(images)
                test_loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
                predictions = logits.argmax(dim=1)
                np.add.at(confusion, (labels.numpy(), predictions.numpy()), 1)
        macro_f1, accuracy = macro_f1_and_accuracy(confusion)
    eval_seconds = time.time() - eval_started
    # ru_maxrss is in KiB on Linux; a DataLoader's worker processes count as children.
    peak_kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    peak = torch.tensor([float(peak_kib)])
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if rank == 0:
        with open(result_path, "w") as handle:
            json.dump({"accuracy": accuracy, "macro_f1": macro_f1, "seconds": seconds, "train_losses": train_losses,
                       "test_loss": test_loss_sum / confusion.sum(), "eval_seconds": eval_seconds,
                       "peak_rank_rss_mb": peak.item() / 1024.0,
                       "initial_weights_equal_own": initial_weights_equal_own}, handle)
    dist.barrier()
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", required=True, help="folder with imgs/<objid>.jpg")
    parser.add_argument("--split", required=True, help="CSV objid,label,part (train|test)")
    parser.add_argument("--weights", required=True, help="JSON {class_weights: [...]}")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="wide_lenet")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128, help="per rank")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--sampler-seed", type=int, default=None,
                        help="the sampler's seed (the batch order), apart from --seed's initial weights; "
                             "default --seed")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--preprocessed", default=None,
                        help="PREFIX of PREFIX.objids + PREFIX.u8: train and test on these images (the cluster's "
                             "preprocessing) instead of OpenCV's")
    parser.add_argument("--fixed-shards", action="store_true",
                        help="each rank trains on its own shard of the split (column shard), as the cluster does, "
                             "instead of a DistributedSampler over the whole train part")
    parser.add_argument("--initial-weights", default=None,
                        help="safetensors file to start from (the cluster's initial weights) instead of torch's init")
    parser.add_argument("--order", default=None,
                        help="CSV epoch,rank,objid: each rank trains on its shard in this order (the cluster's)")
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    if args.sampler_seed is None:
        args.sampler_seed = args.seed
    die_with_parent(STARTED_BY)
    mp.spawn(run, args=(args, free_port(), args.result, os.getpid()), nprocs=args.world, join=True)
    with open(args.result) as handle:
        print(handle.read())


if __name__ == "__main__":
    main()
