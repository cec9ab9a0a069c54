"""OpenCV reference pipeline timing for preprocess_bench (single thread).

Usage: opencv_preprocess.py DIR [--limit N] [--min-seconds S] [--dump FILE]

Reads DIR recursively (*.jpg, sorted by path), keeps the bytes in memory, then times, per image:
cv2.imdecode(IMREAD_GRAYSCALE) -> cv2.resize 64x64 INTER_CUBIC -> threshold (255 where grey < mean)
-> cv2.morphologyEx MORPH_OPEN 4x4. Prints one JSON line: images, seconds, img_per_s, failed.
--dump writes the CHW u8 outputs of one pass (zeros for undecodable images) for a parity check.
"""
import argparse
import json
import pathlib
import time

import cv2
import numpy as np


def preprocess(jpeg_bytes, kernel):
    grey = cv2.imdecode(np.frombuffer(jpeg_bytes, np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        return None
    resized = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_CUBIC)
    threshold = np.where(resized < resized.mean(), 255, 0).astype(np.uint8)
    opening = cv2.morphologyEx(threshold, cv2.MORPH_OPEN, kernel)
    return resized, threshold, opening


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--dump", default=None)
    parser.add_argument("--dump-decoded", default=None,
                        help="also write each image as cv2.imdecode gives it: u32 width, u32 height, pixels (LE)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    kernel = np.ones((4, 4), np.uint8)
    paths = sorted(pathlib.Path(args.dir).rglob("*.jpg"), key=lambda path: str(path))
    if args.limit is not None:
        paths = paths[: args.limit]
    blobs = [path.read_bytes() for path in paths]
    if not blobs:
        raise SystemExit(f"no *.jpg under {args.dir}")

    failed = 0
    outputs = []
    for blob in blobs:  # warm-up pass, also the parity dump
        result = preprocess(blob, kernel)
        if result is None:
            failed += 1
            outputs.append(np.zeros((3, 64, 64), np.uint8))
        else:
            outputs.append(np.stack(result))
    if args.dump:
        np.concatenate([output.reshape(-1) for output in outputs]).tofile(args.dump)
    if args.dump_decoded:
        with open(args.dump_decoded, "wb") as handle:
            for blob in blobs:
                grey = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_GRAYSCALE)
                if grey is None:
                    grey = np.zeros((0, 0), np.uint8)
                handle.write(np.array([grey.shape[1], grey.shape[0]], "<u4").tobytes())
                handle.write(np.ascontiguousarray(grey).tobytes())

    processed = 0
    started = time.perf_counter()
    while True:
        for blob in blobs:
            preprocess(blob, kernel)
        processed += len(blobs)
        elapsed = time.perf_counter() - started
        if elapsed >= args.min_seconds:
            break
    print(json.dumps({"images": processed, "seconds": elapsed, "img_per_s": processed / elapsed, "failed": failed}))


if __name__ == "__main__":
    main()
