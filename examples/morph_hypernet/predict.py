"""Run every width of a built morph-hypernet bundle on one random signal (no torch needed).

Usage: python examples/morph_hypernet/predict.py BUNDLE_DIR
"""

from __future__ import annotations

import sys

import numpy as np

import hypercompile as hc

INPUT_SHAPE = (1, 64)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    bundle = hc.load(argv[1])
    print("variants:", bundle.variants)
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    for cond in bundle.variants:
        outputs = bundle.run({"x": x}, **cond)
        logits = next(iter(outputs.values()))
        print(f"{cond}: argmax {int(np.argmax(logits))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
