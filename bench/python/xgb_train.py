"""XGBoost side of bench/src/bin/gbdt_compare.rs: trains `hist` trees with `multi:softprob` and the given sample
weights on the train matrix the Rust side wrote, predicts the test matrix, writes the predicted classes.

Files in DIR: train.f32 / test.f32 (row-major float32, NaN = missing), train_labels.u32, train_weights.f32,
test rows count from the sizes. Writes DIR/predictions.u32. Prints one JSON line: {"train_seconds": ...}.
"""
import argparse
import json
import os
import time

import numpy as np
import xgboost as xgb


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--features", type=int, required=True)
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--max-depth", type=int, default=6)
    parser.add_argument("--eta", type=float, default=0.1)
    parser.add_argument("--max-bin", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    read = lambda name, dtype: np.fromfile(os.path.join(args.dir, name), dtype=dtype)
    train = read("train.f32", "<f4").reshape(-1, args.features)
    test = read("test.f32", "<f4").reshape(-1, args.features)
    labels = read("train_labels.u32", "<u4").astype(np.int64)
    weights = read("train_weights.f32", "<f4")
    params = {
        "tree_method": "hist",
        "objective": "multi:softprob",
        "num_class": args.classes,
        "max_depth": args.max_depth,
        "eta": args.eta,
        "max_bin": args.max_bin,
        "lambda": 1.0,
        "min_child_weight": 1.0,
        "nthread": args.threads,
        "seed": 42,
    }
    started = time.perf_counter()
    matrix = xgb.DMatrix(train, label=labels, weight=weights, missing=np.nan)
    booster = xgb.train(params, matrix, num_boost_round=args.rounds)
    train_seconds = time.perf_counter() - started
    probabilities = booster.predict(xgb.DMatrix(test, missing=np.nan))
    probabilities.argmax(axis=1).astype("<u4").tofile(os.path.join(args.dir, "predictions.u32"))
    print(json.dumps({"train_seconds": train_seconds}))


if __name__ == "__main__":
    main()
