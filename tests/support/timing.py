"""How long the tests wait for things that take time (a daemon to start, a
container to exit). PYCTR_TEST_TIME_SCALE multiplies every such wait: the
guest lane sets it, as an emulated (TCG) guest runs several times slower."""

from __future__ import annotations

import os

SCALE = max(1.0, float(os.environ.get("PYCTR_TEST_TIME_SCALE") or 1))


def scaled(seconds: float) -> float:
    return seconds * SCALE
