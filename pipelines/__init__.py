"""Decrappify's stages and their building blocks.

Importing the package makes MKL's BLAS results independent of memory alignment. Without it,
a matrix-vector product (the spectral-norm power iteration of the critic) can round differently
for the same values depending on where the allocator put them, so the same params could give a
different critic from one process to the next. MKL reads the setting at its first call, so it
is made here, before any stage code computes.
"""

import os

os.environ.setdefault("MKL_CBWR", "AUTO")
