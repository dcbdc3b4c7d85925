"""Audit a local ImageFolder data set before training on it (duplicates within and across splits,
small classes, imbalance, images under the crop): the image's own checks, the ones `train` runs
with audit=full, run on this machine as the image's program (image_classifier.training.audit),
so the launch side imports none of the training code.

    python -m launch.audit DATA_DIR [--backbone efficientnet_lite0] [--threshold 0.90]
                                    [--out DATA_DIR/audit.tsv] [--feature-cache-dir DIR]

`--help` lists every option. Exits 0 with warnings, whatever it finds; 1 only when the data cannot
be read at all.
"""
from __future__ import annotations

import subprocess
import sys

PROGRAM = "image_classifier.training.audit"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return subprocess.call([sys.executable, "-m", PROGRAM, *argv])


if __name__ == "__main__":
    sys.exit(main())
