"""Per-member inference speed: the engine's path, the model as built, and `model.predict`.

  * engine: Winograd where it pays (+ XLA), else TensorFlow Lite (XNNPACK), as `group` runs it;
  * direct: the same fixed-shape graph in TensorFlow with none of that (the Keras model as built);
  * predict: `model.predict(batch_size=32)`.

In one process, on the same decoded and framed photos, the three paths take turns (`--rounds`
times), so a noisy machine slows them alike; the best round of each is kept. Also checks that the
engine's path gives the same vectors as `model.predict` (lowest per-image cosine).

    python benchmarks/members.py --models vgg16-tv efficientnet-lite0 mobilenet-v2
    python benchmarks/members.py --models resnet50 vgg16 inception_v3 --random-weights

Speed does not depend on the weights' values, so the Keras members, whose ImageNet files cannot be
downloaded here, are timed with random weights (`--random-weights`); their cosine check still holds.
"""

from __future__ import annotations

from pathlib import Path

from common import best_of, per_member_main
from speed import predicted, twin


def member(name: str, files: list[Path], rounds: int, random_weights: bool) -> dict:
    import numpy as np

    from ensemble_group.extractors import MODELS, Extractor

    from ensemble_group.images import frame_batch
    from ensemble_group.images import load
    from ensemble_group.weights import resolve

    spec = MODELS[name]
    path = resolve(name, allow_random=random_weights).path  # None: random weights (and only if asked)
    framed = frame_batch([load(f) for f in files], spec.input_size, "squash")
    fast = Extractor(spec, path)
    direct = Extractor(spec, path, winograd=False, fold=False, lite=False)
    direct.model.set_weights(fast.model.get_weights())  # random weights too: all three paths share them
    model = twin(spec, path, fast)
    paths = {"engine": lambda x: fast.embed_framed(x), "direct": lambda x: direct.embed_framed(x),
             "predict": lambda x: predicted(spec, model, x)}
    out = {name: f(framed[:32]) for name, f in paths.items()}  # tracing and XLA compiling are not inference
    cosine = float(np.sum(out["engine"] * out["predict"], axis=1).min())
    best = best_of(rounds, {p: (lambda f=f: f(framed)) for p, f in paths.items()})
    n = len(files)
    return {"model": name, "weights": "random" if path is None else "real", "n_images": n,
            "runtime": fast.runtime, "winograd_layers": fast.winograd_layers, "folded_layers": fast.folded_layers,
            **{f"{p}_img_per_s": round(n / s, 2) for p, s in best.items()},
            "engine_vs_direct": round(best["direct"] / best["engine"], 2),
            "engine_vs_predict": round(best["predict"] / best["engine"], 2),
            "min_cosine_engine_vs_predict": round(cosine, 6)}


if __name__ == "__main__":
    per_member_main(__doc__, member, "members", images=128)
