"""A small application that embeds a bundle: load it once, then serve calls.

Each request is one JSON line, `{"id": ..., "cond": {"task": 3}, "inputs": {"x": [...]}}`
(nested lists in the input's shape), and gets one JSON line back: `{"id": ..., "outputs":
{...}, "ms": ...}`, or `{"id": ..., "error": "..."}` for a request the bundle refuses (an
unknown task, a wrong shape): one bad request never stops the service. Torch-free: this is what
runs on the device.

Usage: python examples/app/app.py BUNDLE_DIR [REQUESTS.jsonl]   (default: stdin)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

import hypercompile as hc


class Service:
    """The bundle, loaded and checked once; `__call__` answers one request. Safe to call from
    several threads (Bundle.run is)."""

    def __init__(self, bundle_dir: str) -> None:
        self.bundle = hc.load(bundle_dir)  # checks every file's hash, once
        self.dtypes = {i["name"]: np.dtype(i["dtype"]) for i in self.bundle.inputs}

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = {"id": request.get("id")}
        try:
            inputs = {
                name: np.asarray(value, dtype=self.dtypes.get(name))
                for name, value in request.get("inputs", {}).items()
            }
            t = time.perf_counter()
            outputs = self.bundle.run(inputs, **request.get("cond", {}))
            reply["ms"] = round((time.perf_counter() - t) * 1e3, 3)
            reply["outputs"] = {k: v.tolist() for k, v in outputs.items()}
        except hc.HypercompileError as e:  # the caller's mistake: say so, keep serving
            reply["error"] = str(e)
        return reply


def serve(service: Service, lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.strip():
            yield service(json.loads(line))


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    service = Service(argv[1])
    lines = open(argv[2]) if len(argv) == 3 else sys.stdin
    with lines:
        for reply in serve(service, lines):
            print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
