"""Run settings: one validated object built from a TOML file plus command-line overrides.

Validation happens once, here, so that every later stage can trust its inputs and a typo in a
config file fails at once with the list of valid keys instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GROUPING_MODES = ("average", "seed", "components", "mutual", "graph")
FRAMINGS = ("squash", "pad", "center-crop")
NORMALISATIONS = ("robust-z", "quantile", "none")
POOLINGS = ("avg", "gem", "rmac")
PRECISIONS = ("auto", "float32", "int8")
BACKENDS = ("local", "ray", "auto")  # auto: Ray when $RAY_ADDRESS names a cluster, else local
ENGINE_KEYS = ("backend", "ray_address", "ray_workers")  # where the vectors are made, never what they are
AUTO = "auto"  # the cutoff read off each folder (autocut.py) instead of a fixed number
_FLOATS = ("power", "whiten_shrink", "dba_alpha", "rerank_weight", "alone_margin")
_INTS = ("batch_size", "n_trees", "k", "whiten_dim", "dba_k", "local_k", "rerank_k", "whiten_min", "search_k", "seed",
         "ray_workers")


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range; the message says which and what is valid."""


@dataclass(frozen=True)
class Config:
    """Everything that decides a run's result; written into groups.json so the run can be reproduced."""

    models: tuple[str, ...] = ("vgg16-tv", "efficientnet-lite0", "mobilenet-v2", "colour-lab")
    model_weights: dict[str, float] = field(default_factory=dict)  # fusion weight per model, default 1
    weights_files: dict[str, str] = field(default_factory=dict)  # explicit weight file per model
    allow_random_weights: bool = False  # only for smoke tests; results are meaningless
    framing: str = "squash"
    pooling: str = "rmac"  # global pooling of each member's last map: avg | gem (generalized mean, p = 3) | rmac
    flip: bool = False  # also embed each image's mirror image and add the two vectors (2x the work)
    batch_size: int = 32  # the largest batch (see features.even_batch)
    winograd: bool = True  # Winograd 3x3 convolutions where they pay (VGG16): same features, faster
    lite: bool = True  # members run through TensorFlow Lite (XNNPACK), else TensorFlow: same features, faster
    precision: str = "auto"  # int8 where the CPU has int8 dot products (cpu.choose_precision), else float32
    calibration: str = ""  # int8's calibration photos: a folder; "" = the set shipped with the package
    power: float = 0.5  # signed power normalisation; 0.5 = square root; 1 = off
    whiten_dim: int = 256  # PCA-whitening learned on the folder, this many components; 0 = off
    whiten_shrink: float = 1.0  # eigenvalue shrinkage towards their mean
    whiten_min: int = 10  # folders with fewer images are not whitened (measured: benchmarks/small.py)
    dba_k: int = 0  # database-side augmentation with this many neighbours; 0 = off
    dba_alpha: float = 3.0
    n_trees: int = 20
    search_k: int = -1
    seed: int = 42
    k: int = 20
    normalisation: str = "robust-z"
    local_k: int = 0  # local scaling of fused distances by each image's k-nearest density; 0 = off
    rerank_k: int = 20  # k-reciprocal re-ranking with neighbourhoods of this size; 0 = off
    rerank_weight: float = 1.0  # how far identical neighbourhoods pull a pair (x 5 robust-z units)
    mode: str = "graph"
    cutoff: float | str = AUTO  # "auto": scaled to the folder (autocut.py); or a fused distance, lower = stricter
    alone_margin: float = 0.5  # an image left alone joins the group clearly nearest on average; 0 = off
    corrections: str = ""  # a reviewer's corrections.json (corrections.py) the groups obey; "" = none
    backend: str = "local"  # where members run: here, or on a Ray cluster (distributed.py; same vectors)
    ray_address: str = ""  # "": $RAY_ADDRESS, else the cluster `ray start` started here, else a local instance
    ray_workers: int = 0  # actors (each runs every member); 0 = one per CPU of the cluster

    def __post_init__(self) -> None:
        for key in _INTS:  # types first: every later check compares numbers
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{key} must be a whole number, got {value!r}")
        for key in _FLOATS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
        if self.cutoff != AUTO and (isinstance(self.cutoff, bool) or not isinstance(self.cutoff, (int, float))
                                      or not math.isfinite(self.cutoff)):
            raise ConfigError(f"cutoff must be a finite number (e.g. -3) or \"auto\", got {self.cutoff!r}")
        if self.cutoff == AUTO and self.normalisation == "none":
            raise ConfigError('cutoff "auto" works on the normalised fused scale: with normalisation = "none" '
                              "give a number (a raw angular distance, e.g. 0.6)")
        if not self.models:
            raise ConfigError("models: at least one model is needed")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"models: a model is listed twice: {list(self.models)}")
        from ensemble_group.extractors import MODELS  # late import: the registry imports Keras

        for name in (*self.models, *self.model_weights, *self.weights_files):
            if name not in MODELS:
                raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
        for name in self.weights_files:
            if MODELS[name].builtin:
                raise ConfigError(f"[models] weights_files: {name} has no weights file (it is built in); remove its entry")
        for name, w in self.model_weights.items():
            if not w >= 0:
                raise ConfigError(f"model_weights.{name} must be >= 0, got {w}")
        if self.model_weights and sum(self.model_weights.get(m, 1.0) for m in self.models) <= 0:
            raise ConfigError("model_weights: the models in use all have weight 0")
        for key in ("winograd", "lite", "flip"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(self, key)!r}")
        _choice("framing", self.framing, FRAMINGS)
        _choice("pooling", self.pooling, POOLINGS)
        _choice("precision", self.precision, PRECISIONS)
        if self.precision == "int8" and not self.lite:
            raise ConfigError("precision int8 runs through TensorFlow Lite: it needs lite = true")
        if not isinstance(self.calibration, str):
            raise ConfigError(f"calibration must be a folder path (a string), got {self.calibration!r}")
        if self.calibration and self.precision == "float32":
            raise ConfigError("calibration is the int8 calibration folder: it needs precision = \"int8\" or \"auto\"")
        _choice("backend", self.backend, BACKENDS)
        if not isinstance(self.ray_address, str):
            raise ConfigError(f"[engine] address must be a string such as \"ray://head:10001\", got {self.ray_address!r}")
        _choice("normalisation", self.normalisation, NORMALISATIONS)
        _choice("mode", self.mode, GROUPING_MODES)
        if not isinstance(self.corrections, str):
            raise ConfigError(f"corrections must be a file path (a string), got {self.corrections!r}")
        if self.corrections and self.mode != "graph":
            raise ConfigError(f'corrections need mode = "graph" (the default); mode {self.mode!r} is a baseline')
        if not 0 < self.power <= 1:
            raise ConfigError(f"power must be in (0, 1], got {self.power}")
        for key, low in (("batch_size", 1), ("n_trees", 1), ("k", 1), ("whiten_dim", 0), ("dba_k", 0),
                         ("local_k", 0), ("rerank_k", 0), ("rerank_weight", 0), ("ray_workers", 0), ("whiten_shrink", 0),
                         ("whiten_min", 2), ("dba_alpha", 0), ("alone_margin", 0)):
            if getattr(self, key) < low:
                raise ConfigError(f"{key} must be >= {low}, got {getattr(self, key)}")
        if self.search_k < -1 or self.search_k == 0:
            raise ConfigError(f"search_k must be -1 (Annoy's default, n_trees * k) or > 0, got {self.search_k}")

    def fusion_weights(self) -> dict[str, float]:
        return {m: float(self.model_weights.get(m, 1.0)) for m in self.models}

    def uses_ray(self) -> bool:
        """Whether the members run on Ray: backend "ray", or "auto" with $RAY_ADDRESS set."""
        import os

        return self.backend == "ray" or (self.backend == "auto" and bool(os.environ.get("RAY_ADDRESS")))

    def to_dict(self) -> dict[str, Any]:
        """The settings that decide the result (the engine does not: both backends write the same groups.json)."""
        d = dataclasses.asdict(self)
        d["models"] = list(self.models)
        for key in ENGINE_KEYS:
            del d[key]
        return d

    def replace(self, **changes: Any) -> "Config":
        """A copy with some settings changed (None values are ignored); validated again."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "models" in changes:
            changes["models"] = tuple(changes["models"])
        return dataclasses.replace(self, **changes)


# TOML layout: [models] [extraction] [features] [index] [fusion] [grouping] [engine]; section -> {toml key: Config field}
_SECTIONS: dict[str, dict[str, str]] = {
    "models": {"members": "models", "weights": "model_weights", "weights_files": "weights_files",
               "allow_random_weights": "allow_random_weights"},
    "extraction": {"framing": "framing", "pooling": "pooling", "flip": "flip", "batch_size": "batch_size",
                   "winograd": "winograd", "lite": "lite", "precision": "precision", "calibration": "calibration"},
    "features": {"power": "power", "whiten_dim": "whiten_dim", "whiten_shrink": "whiten_shrink",
                 "whiten_min": "whiten_min", "dba_k": "dba_k", "dba_alpha": "dba_alpha"},
    "index": {"n_trees": "n_trees", "search_k": "search_k", "seed": "seed"},
    "fusion": {"k": "k", "normalisation": "normalisation", "local_k": "local_k", "rerank_k": "rerank_k",
               "rerank_weight": "rerank_weight"},
    "grouping": {"mode": "mode", "cutoff": "cutoff", "alone_margin": "alone_margin", "corrections": "corrections"},
    "engine": {"backend": "backend", "address": "ray_address", "workers": "ray_workers"},
}


def load_config(path: Path | str | None) -> Config:
    """Read a TOML config (see configs/); None gives the built-in defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    values: dict[str, Any] = {}
    for section, body in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}]; valid: {', '.join(_SECTIONS)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {section} must be a table")
        for key, value in body.items():
            if key not in _SECTIONS[section]:
                valid = ", ".join(_SECTIONS[section])
                raise ConfigError(f"{path}: unknown key {section}.{key}; valid keys in [{section}]: {valid}")
            values[_SECTIONS[section][key]] = value
    if "models" in values:
        values["models"] = tuple(values["models"])
    if isinstance(values.get("corrections"), str) and values["corrections"]:  # relative to the config file
        values["corrections"] = str(path.parent / Path(values["corrections"]).expanduser())
    try:
        return Config(**values)
    except TypeError as e:
        raise ConfigError(f"{path}: {e}") from None


def _choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{key} must be one of {', '.join(valid)}; got {value!r}")
