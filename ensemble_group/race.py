"""Which engine runs a float32 member faster on this machine: TFLite (XNNPACK) or TensorFlow (oneDNN).

TFLite runs the depthwise members 2-3.5x faster than TensorFlow on every CPU measured, but with
AVX-512 oneDNN's direct float32 convolutions run VGG16 as fast as XNNPACK's Winograd or faster
(benchmarks/README.md, "Speed"). Which wins depends on the member and the machine, so the first
large run on a machine times both engines on the same images, in turns, and the result is
remembered beside the member's TFLite flatbuffer under this machine's CPU signature (`record_file`).
Later runs take whichever finishes their number of images first, start-up included: TensorFlow
builds the Keras model and traces it, TFLite only reads its file.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ensemble_group import cpu
from ensemble_group.outputs import atomic_write

ENGINES = ("tflite", "tensorflow")  # on a tie, the first: it starts in a tenth of a second
SAMPLE = 8  # images each engine embeds per turn: two of TFLite's slices
ROUNDS = 2  # turns each, after a first one that loads it; the best is kept, so noise slows both alike
AFTER = 64  # a run embedding fewer images keeps TFLite and times nothing: the race costs more than it can win


@dataclass(frozen=True)
class Race:
    """Seconds per image of each engine (`per_image`) and its start-up beyond that (`start`: loading the
    member and its first batch), measured on the CPU `cpu` (`cpu.signature`) with TFLite on `threads`."""

    per_image: dict[str, float]
    start: dict[str, float]
    cpu: str
    threads: int

    def faster(self, images: int) -> str:
        """The engine that embeds `images` images first, start-up included."""
        return min(ENGINES, key=lambda e: self.start[e] + images * self.per_image[e])

    def tensorflow_from(self) -> int | None:
        """The fewest images for which TensorFlow finishes first (never: None)."""
        gain = self.per_image["tflite"] - self.per_image["tensorflow"]
        if gain <= 0:
            return None
        return max(AFTER, int((self.start["tensorflow"] - self.start["tflite"]) / gain) + 1)

    def describe(self) -> str:
        """What the race found, for the log and `prepare`: the two speeds and which runs the member."""
        speed = {e: 1 / self.per_image[e] for e in ENGINES}
        line = (f"TensorFlow {speed['tensorflow']:.1f} images/s, TFLite {speed['tflite']:.1f} on this CPU "
                f"(raced once, remembered): ")
        start = self.tensorflow_from()
        return line + (f"TensorFlow runs it for {start} images or more" if start else "TFLite runs it")


def record_file(lite_file: Path, threads: int) -> Path:
    """Beside the flatbuffer (whose name carries the weights and the TensorFlow version): one record
    per CPU signature and TFLite thread count, so a cache shared by two kinds of machine keeps both."""
    tag = hashlib.sha256(f"{cpu.signature()} | {threads} threads".encode()).hexdigest()[:12]
    return Path(lite_file).with_name(f"{Path(lite_file).name}.race-{tag}.json")


def remembered(lite_file: Path, threads: int) -> Race | None:
    """The race measured on this machine for this flatbuffer, or None (never run, or unreadable)."""
    try:
        doc = json.loads(record_file(lite_file, threads).read_text())
        found = Race({e: float(doc["per_image"][e]) for e in ENGINES}, {e: float(doc["start"][e]) for e in ENGINES},
                     str(doc["cpu"]), int(doc["threads"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = found.cpu == cpu.signature() and all(v > 0 for v in found.per_image.values())
    return found if ok else None


def remember(lite_file: Path, race: Race) -> None:
    """Write the race beside the flatbuffer; a cache that cannot be written only costs a race next time."""
    try:
        atomic_write(record_file(lite_file, race.threads), json.dumps(asdict(race), indent=1) + "\n")
    except OSError:
        pass


def run(loaders: dict[str, Callable[[], object]], input_size: int, threads: int) -> tuple[Race, dict[str, object]]:
    """Load each engine's extractor (`loaders[engine]()`, one with `embed_framed`), time its start-up and
    then `ROUNDS` turns of `SAMPLE` images each: the race, and the loaded extractors."""
    sample = np.zeros((SAMPLE, input_size, input_size, 3), np.float32)  # float32 kernels take no shortcut on zeros
    loaded, first = {}, {}
    for engine in ENGINES:
        t0 = time.perf_counter()
        loaded[engine] = loaders[engine]()
        loaded[engine].embed_framed(sample, batch_size=SAMPLE)
        first[engine] = time.perf_counter() - t0
    best = {e: float("inf") for e in ENGINES}
    for _ in range(ROUNDS):
        for engine in ENGINES:
            t0 = time.perf_counter()
            loaded[engine].embed_framed(sample, batch_size=SAMPLE)
            best[engine] = min(best[engine], time.perf_counter() - t0)
    race = Race({e: best[e] / SAMPLE for e in ENGINES}, {e: max(0.0, first[e] - best[e]) for e in ENGINES},
                cpu.signature(), threads)
    return race, loaded
