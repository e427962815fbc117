"""Issue 11 checks under load: one TVM runner called from 16 threads (answers compared bit for
bit with single-threaded ones), and runner reloads with cache_size=1 (process RSS).

    .venv/bin/python benchmarks/stress_tvm_threads.py [--reloads 12000] [--rounds 5]
"""

import argparse
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def rss_mb() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20


def threads_round(b, xs, want, n_threads: int, calls: int) -> int:
    wrong = []

    def work(k: int) -> None:
        for i in range(calls):
            j = (i + k) % len(xs)
            got = b.run({"input": xs[j]}, task=1, backend="tvm")["output"]
            if not np.array_equal(got, want[j]):
                wrong.append(float(np.abs(got - want[j]).max()))

    ts = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return len(wrong)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reloads", type=int, default=12000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from conftest import ref

    import hypercompile as hc

    out = Path(tempfile.mkdtemp()) / "tiny_tvm"
    hc.build(ref("TinyHyper"), out=out, backends=["onnxruntime", "tvm"])
    b = hc.load(out, cache_size=1)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((4, 8)).astype(np.float32) for _ in range(32)]
    want = [b.run({"input": x}, task=1, backend="tvm")["output"] for x in xs]
    for r in range(args.rounds):
        wrong = threads_round(b, xs, want, 16, 300)
        print(f"round {r}: 16 threads x 300 calls, wrong answers: {wrong}")
    before = rss_mb()
    x = xs[0]
    for i in range(args.reloads):  # cache_size=1: every task switch reloads a runner
        b.run({"input": x}, task=i % 5, backend="tvm")
    print(f"{args.reloads} reloads: RSS {before} MB -> {rss_mb()} MB")


if __name__ == "__main__":
    main()
