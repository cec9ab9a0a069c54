"""OpenCV reference for the parity tests of plankton-preprocess.

Usage: opencv_reference.py DIR

For every DIR/<name>.src.pgm        writes DIR/<name>.cv_resized.pgm   (cv2.resize 64x64 INTER_CUBIC)
For every DIR/<name>.ours_resized.pgm writes DIR/<name>.cv_threshold.pgm and DIR/<name>.cv_opening.pgm
    (255 where grey < mean else 0; cv2.morphologyEx MORPH_OPEN with a 4x4 square), computed from OUR resize
For every DIR/<name>.jpg            writes DIR/<name>.cv_decoded.pgm   (cv2.imdecode IMREAD_GRAYSCALE)
"""
import pathlib
import sys

import cv2
import numpy as np


def threshold_below_mean(grey):
    return np.where(grey < grey.mean(), 255, 0).astype(np.uint8)


def main():
    directory = pathlib.Path(sys.argv[1])
    cv2.setNumThreads(1)
    kernel = np.ones((4, 4), np.uint8)
    for path in sorted(directory.glob("*.src.pgm")):
        grey = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if grey is None:
            sys.exit(f"cannot read {path}")
        resized = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(path).replace(".src.pgm", ".cv_resized.pgm"), resized)
    for path in sorted(directory.glob("*.ours_resized.pgm")):
        grey = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if grey is None:
            sys.exit(f"cannot read {path}")
        threshold = threshold_below_mean(grey)
        opening = cv2.morphologyEx(threshold, cv2.MORPH_OPEN, kernel)
        cv2.imwrite(str(path).replace(".ours_resized.pgm", ".cv_threshold.pgm"), threshold)
        cv2.imwrite(str(path).replace(".ours_resized.pgm", ".cv_opening.pgm"), opening)
    for path in sorted(directory.glob("*.jpg")):
        buffer = np.frombuffer(path.read_bytes(), np.uint8)
        grey = cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE)
        if grey is None:
            sys.exit(f"cannot decode {path}")
        cv2.imwrite(str(path)[: -len(".jpg")] + ".cv_decoded.pgm", grey)


if __name__ == "__main__":
    main()
