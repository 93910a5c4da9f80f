"""The cost of each descriptor option: framing (squash | pad), pooling (avg | gem | rmac), flip on or off.

Framing is timed per photo on decoded photos (`images.frame` to the members' input size). Each
member's inference is timed with the engine's path (`Extractor.embed_framed`) for average pooling
without flip (the reference), `pooling = "gem"`, `pooling = "rmac"` and `flip = true`, taking turns
in one process (`--rounds` times, best kept), so a noisy machine slows them alike. The accuracy of each option is in the
`compare --descriptors` rows (`accuracy.py --descriptors`).

    python benchmarks/options.py                                  # offline trio, 64 grocery photos
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from common import best_of, cpu, member_options, photos, write_result

VARIANTS = {"avg": {}, "gem": {"pooling": "gem"}, "rmac": {"pooling": "rmac"}, "flip": {"flip": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    member_options(parser, images=64)
    args = parser.parse_args()

    from ensemble_group.extractors import MODELS, Extractor

    from ensemble_group.images import frame_batch
    from ensemble_group.images import load
    from ensemble_group.weights import resolve

    files = photos(args.images)
    decoded = [load(f) for f in files]
    n = len(files)
    framing = best_of(args.rounds, {f: (lambda f=f: frame_batch(decoded, 224, f)) for f in ("squash", "pad")})
    report = {"n_images": n, "framing_ms_per_image": {f: round(1000 * s / n, 2) for f, s in framing.items()},
              "members": [], "machine": {"cores": os.cpu_count(), "cpu": cpu(), "python": sys.version.split()[0]}}
    print(json.dumps(report["framing_ms_per_image"]), flush=True)
    for name in args.models:
        spec = MODELS[name]
        path = resolve(name, allow_random=args.random_weights).path
        framed = frame_batch(decoded, spec.input_size, "squash")
        extractors = {v: Extractor(spec, path, **kw) for v, kw in VARIANTS.items()}
        for ex in extractors.values():
            ex.embed_framed(framed[:32])  # tracing and compiling are not inference
        seconds = best_of(args.rounds, {v: (lambda ex=ex: ex.embed_framed(framed)) for v, ex in extractors.items()})
        row = {"model": name, **{f"{v}_img_per_s": round(n / s, 2) for v, s in seconds.items()},
               **{f"{v}_cost_vs_avg": round(s / seconds["avg"], 2) for v, s in seconds.items() if v != "avg"}}
        report["members"].append(row)
        print(json.dumps(row), flush=True)
    write_result(f"options-{'-'.join(args.models)}.json", report)


if __name__ == "__main__":
    main()
