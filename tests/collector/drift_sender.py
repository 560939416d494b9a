"""Sends predictions through the modeltel SDK in three timed phases (run as a subprocess).

``python -m tests.collector.drift_sender WARMUP_N STABLE_SECONDS SHIFTED_SECONDS RATE``:
``WARMUP_N`` predictions at once, then ``RATE`` per second from the reference
distribution, then with feature ``x`` shifted by 3 standard deviations.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np

import modeltel


def send(rng: np.random.Generator, shift: float) -> None:
    features = {
        "x": float(rng.normal(10 + 3 * shift, 1)),
        "y": float(rng.normal(0, 1)),
        "city": str(rng.choice(["berlin", "paris", "rome"])),
    }
    modeltel.log_prediction(features, features["x"] * 2, model="m", version="1")


def paced(rng: np.random.Generator, seconds: float, rate: float, shift: float) -> None:
    pause = threading.Event()  # never set: its wait() paces the load
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        send(rng, shift)
        pause.wait(1 / rate)


def main() -> None:
    warmup, stable, shifted, rate = (
        int(sys.argv[1]),
        float(sys.argv[2]),
        float(sys.argv[3]),
        float(sys.argv[4]),
    )
    rng = np.random.default_rng(7)
    for _ in range(warmup):
        send(rng, 0.0)
    paced(rng, stable, rate, 0.0)
    paced(rng, shifted, rate, 1.0)
    assert modeltel.force_flush()


if __name__ == "__main__":
    main()
