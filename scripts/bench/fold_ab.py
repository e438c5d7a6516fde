"""The production digest fold of two source trees, side by side: CPU per
element of ``Digest.fold`` over slices of ``--slice`` fresh elements (the
node folds ``antientropy_fold_batch``, 512, at a time), each tree in its own
process, alternating, so machine noise hits both alike.

Made to compare digest scheme 1 (BLAKE2b walks, XOR symbols; before session
15) with scheme 2 (splitmix64 in numpy, sums); session 16 compared two folds
of scheme 2 with it (``--slices 600,1200,2000``: the sizes of a pushed batch's
and a batch call's folds):

    git archive <rev> | tar -x -C /tmp/old
    python scripts/bench/fold_ab.py --trees old=/tmp/old,new=. --slices 512,2048

Prints the median [min..max] over ``--reps`` processes of each process's
median slice.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

_CHILD = r"""
import random, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from mesh.core.digest import Digest
rng = random.Random(1)
n = int(sys.argv[2])
digest = Digest(4096)
slices = [[rng.getrandbits(64) or 1 for _ in range(n)] for _ in range(20)]
signs = np.ones(n, dtype=np.int64)
spent = []
for elements in slices:
    start = time.process_time()
    digest.fold(elements, signs)
    spent.append(time.process_time() - start)
print(1e6 * sorted(spent)[len(spent) // 2] / n)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", required=True, help="name=dir,name=dir")
    parser.add_argument("--slices", default="512,2048")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    trees = dict(item.split("=", 1) for item in args.trees.split(","))
    print("| slice | " + " | ".join(f"{name} µs per element" for name in trees) + " |")
    print("|---|" + "---|" * len(trees))
    for size in [int(x) for x in args.slices.split(",")]:
        got: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.reps):
            for name, tree in trees.items():
                out = subprocess.run(
                    [sys.executable, "-c", _CHILD, tree, str(size)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                got[name].append(float(out.stdout))
        cells = [
            f"{statistics.median(v):.2f} [{min(v):.2f}..{max(v):.2f}]"
            for v in got.values()
        ]
        print(f"| {size} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
