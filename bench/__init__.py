"""Benchmarks of the pipeline's hot paths against the recipe's implementations.

``python -m bench`` runs them all (``make bench``); ``python -m bench NAME [--quick]
[--repeats N]`` runs one. Each prints its tables and writes ``bench/results/NAME.json``.
"""

import os

# libgomp (torch's OpenMP) busy-waits at every barrier by default. On a machine shared with
# other work a parallel region then waits for a thread that another process has descheduled:
# on the 2-core reference machine a 0.05 ms torch.stack at times took ~100 ms and a training
# step 2.7x longer. Passive waiting makes the figures depend on our code rather than on the neighbours;
# the generator benchmark measures both policies side by side. Set OMP_WAIT_POLICY to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# name -> module, in the order ``python -m bench`` runs them
BENCHMARKS = {
    "crappify": "bench.crappify",
    "data": "bench.data",
    "generator": "bench.generator",
    "gan": "bench.gan",
    "restore": "bench.restore",
    "distributed": "bench.distributed",
    "pipeline": "bench.pipeline",
    "quality": "bench.quality",
    "damage": "bench.damage",
}
# run only when named: quality trains the whole pipeline (``make pipeline``'s budget), damage
# scores models it trained
ON_REQUEST = ("quality", "damage")
