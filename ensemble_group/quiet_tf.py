"""TensorFlow and Keras, imported in one place and quietly.

TensorFlow's C++ side logs at start-up through absl before any log level applies: on a CPU with
AVX-512, every run printed "oneDNN custom operations are on" and "All log messages before
absl::InitializeLog()", whatever TF_CPP_MIN_LOG_LEVEL said. Every module takes TensorFlow and Keras
from here, so the first import, wherever it happens, holds file descriptor 2 and drops only those
informational lines; anything else TensorFlow writes there (a warning, a crash's last words) is
passed on.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # later C++ INFO and WARNING lines (XLA's, say)

# absl's INFO lines ("I1202 17:35:51.123 ...") and its note that logging is not set up yet
_CHATTER = re.compile(r"^(I\d{4} |WARNING: All log messages before absl::InitializeLog\(\) is called)")


def tensorflow():
    """The `tensorflow` module, imported quietly the first time."""
    if "tensorflow" not in sys.modules:
        with _start_up_chatter_dropped():
            import tensorflow  # noqa: F401
    return sys.modules["tensorflow"]


def keras():
    """The `keras` module (on the TensorFlow backend), imported quietly the first time."""
    tensorflow()
    import keras

    return keras


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C++ logging that Python's warnings cannot reach); errors still raise."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextmanager
def _start_up_chatter_dropped() -> Iterator[None]:
    """Hold what is written to file descriptor 2, then pass on every line that is not start-up chatter."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        try:
            os.dup2(held.fileno(), 2)
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines(keepends=True)
                    if not _CHATTER.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
