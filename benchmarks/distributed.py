"""The Ray backend against the local path: N real photos grouped both ways in the same run.

Each arm runs in a fresh process timed from outside (interpreter, imports, model loading and, for Ray,
starting a local instance of `--workers` CPUs included), with a cold embedding cache of its own (a
temporary file: the user's cache is never touched):
  * local: `group_folder` as `ensemble-group group` runs it;
  * ray: the same with backend "ray" on a local Ray instance (`ray.init(num_cpus=workers)`),
    `workers` actors, each holding every member.
Reported: wall seconds and images per second of each, their ratio, Ray's overhead (its start, and its
features stage minus the local one), the peak memory of each Ray worker process (VmHWM, sampled from
/proc while the job runs) beside the local process's, and whether both gave the same vectors
(least cosine) and the same groups. The arms take turns `--rounds` times; the best of each is kept.

    python benchmarks/distributed.py --images 200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import config_options, cpu, photos, write_result


def ray_workers_memory(stop: threading.Event, peaks: dict[int, tuple[str, int]]) -> None:
    """Until `stop`: the peak resident memory (kB) of every `ray::` process, by pid (name, VmHWM)."""
    while not stop.wait(0.25):
        for pid in os.listdir("/proc"):
            try:
                name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                if not name.startswith("ray::"):
                    continue
                hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if line.startswith("VmHWM:"))
            except (OSError, ValueError, StopIteration):
                continue
            if hwm > peaks.get(int(pid), ("", 0))[1]:
                peaks[int(pid)] = (name, hwm)


def measure(arm: str, config_path: str, precision: str | None, n: int, workers: int, out: Path) -> dict:
    """One arm in this (fresh) process; the vectors and groups go to `out` for the parent to compare."""
    import numpy as np

    from ensemble_group.config import load_config
    from ensemble_group.pipeline import group_folder

    config = load_config(config_path).replace(precision=precision)
    result: dict = {}
    peaks: dict[int, tuple[str, int]] = {}
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for f in photos(n):
            (folder / f.name).symlink_to(f)
        if arm == "ray":
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
            result["ray_start_s"] = round(time.perf_counter() - t0, 2)
            config = config.replace(backend="ray", ray_workers=workers)
            threading.Thread(target=ray_workers_memory, args=(stop, peaks), daemon=True).start()
        run = group_folder(folder, config, cache_file=Path(tmp) / "cold.sqlite", vectors=Path(tmp) / "vectors")
        stop.set()
    result["stages_s"] = run.timings
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["helpers_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    if peaks:
        result["ray_workers_peak_rss_mb"] = sorted((round(kb / 1024) for _, kb in peaks.values()), reverse=True)
        result["ray_actors_peak_rss_mb"] = sorted((round(kb / 1024) for name, kb in peaks.values()
                                                   if "MapWorker" in name or "_Member" in name), reverse=True)
    np.savez(out / f"{arm}.npz", names=np.array([im.rel for im in run.images]), **run.vectors)
    (out / f"{arm}.json").write_text(json.dumps([g["images"] for g in run.groups()]))
    return result


def run_arm(arm: str, args, out: Path) -> tuple[float, dict]:
    """(wall seconds of a fresh process running `arm`, what it measured inside)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--config", args.config, "--images", str(args.images),
                           "--workers", str(args.workers), *(["--precision", args.precision] if args.precision else []),
                           "--arm", arm, "--out", str(out)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def machine_tag(info: dict) -> str:
    """A short name for the machine, for result files ("xeon-amx", else the cores and widest extension)."""
    ext = info["extensions"]
    if "Xeon" in info["model"] and "amx_int8" in ext:
        return "xeon-amx"
    return f"{os.cpu_count()}cpu-" + next((e for e in ("avx512f", "avx2") if e in ext), "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_options(parser)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance = actors (each holds every member)")
    parser.add_argument("--rounds", type=int, default=1, help="the arms take turns this many times; best kept")
    parser.add_argument("--arm", choices=["local", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(measure(args.arm, args.config, args.precision, args.images, args.workers, Path(args.out))))
        return
    import numpy as np

    machine = {"cores": os.cpu_count(), "cpu": cpu(), "python": sys.version.split()[0]}
    print(json.dumps(machine), flush=True)
    best: dict[str, tuple[float, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for arm in ("local", "ray"):
                wall, inside = run_arm(arm, args, Path(tmp))
                print(json.dumps({"arm": arm, "wall_s": round(wall, 2), **inside}), flush=True)
                if arm not in best or wall < best[arm][0]:
                    best[arm] = (wall, inside)
        local, ray = (np.load(Path(tmp) / f"{arm}.npz") for arm in ("local", "ray"))
        assert list(local["names"]) == list(ray["names"])
        cosine = min(float(((local[m] * ray[m]).sum(1) / np.linalg.norm(local[m], axis=1)
                            / np.linalg.norm(ray[m], axis=1)).min()) for m in local.files if m != "names")
        same_groups = (Path(tmp) / "local.json").read_text() == (Path(tmp) / "ray.json").read_text()
    (lw, li), (rw, ri) = best["local"], best["ray"]
    n = li["stages_s"]["extracted"]
    row = {"n_images": n, "workers": args.workers,
           "local_wall_s": round(lw, 2), "ray_wall_s": round(rw, 2),
           "local_img_per_s": round(n / lw, 2), "ray_img_per_s": round(n / rw, 2),
           "ray_vs_local_throughput": round(lw / rw, 3),
           "local_features_s": li["stages_s"]["features"], "ray_features_s": ri["stages_s"]["features"],
           "ray_start_s": ri["ray_start_s"],
           "ray_overhead_s": round(rw - lw, 2),  # all of it: the instance's start, the actors' start, scheduling
           "local_peak_rss_mb": li["peak_rss_mb"], "ray_driver_peak_rss_mb": ri["peak_rss_mb"],
           "ray_actors_peak_rss_mb": ri.get("ray_actors_peak_rss_mb"),
           "ray_workers_peak_rss_mb": ri.get("ray_workers_peak_rss_mb"),
           "min_cosine_ray_vs_local": round(cosine, 6), "same_groups": same_groups}
    print(json.dumps(row), flush=True)
    name = f"distributed-{Path(args.config).stem}" + (f"-{args.precision}" if args.precision else "")
    workers = f"-{args.workers}workers" if args.workers != 2 else ""
    write_result(f"{name}-{args.images}{workers}-{machine_tag(machine['cpu'])}.json",
                 {"config": args.config, "precision": args.precision, "images": args.images, "rounds": args.rounds,
                  "machine": machine, "row": row})


if __name__ == "__main__":
    main()
