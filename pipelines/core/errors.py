"""The one base class of the failures a user can act on: a stage prints its message and
exits with status 1, without a traceback."""


class StageError(RuntimeError):
    """An expected failure (bad data, network, checksum, divergence, unusable checkpoint)."""


class DivergenceError(StageError):
    """Training diverged: a loss, or weights about to be saved, became NaN or infinite."""
