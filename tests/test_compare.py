"""compare and tune on the bundled sample, end to end through the CLI, real weights."""

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from ensemble_group.cli import app
from ensemble_group.evaluation.compare import split_products

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "flipkart"
runner = CliRunner()


def test_split_is_by_product_and_seeded():
    products = np.array(list("aaabbbcccdddeeefff"))
    tune, test = split_products(products, seed=3)
    assert not set(products[tune]) & set(products[test])  # no product on both sides
    assert len(set(products[tune])) == 3 and tune.sum() + test.sum() == len(products)
    assert (split_products(products, seed=3)[0] == tune).all()


def test_splits_by_default_hold_out_about_a_thousand_photos():
    from ensemble_group.evaluation.compare import auto_splits

    assert [auto_splits(n) for n in (20, 200, 201, 810, 2000, 5502)] == [10, 10, 10, 3, 1, 1]


def test_compare_and_tune_on_the_sample(tmp_path, weights_cache):
    cache = tmp_path / "emb.sqlite"
    result = runner.invoke(app, ["compare", str(SAMPLE), "--labels", str(SAMPLE / "labels.csv"),
                                 "--out", str(tmp_path / "cmp"), "--cache-file", str(cache), "--descriptors"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    arms = [r["arm"] for r in doc["rows"]]
    members = ["vgg16-tv", "efficientnet-lite0", "mobilenet-v2", "colour-lab"]
    assert arms[0].startswith("ensemble (") and set(members) <= set(arms)
    assert {f"ensemble without {m}" for m in members} <= set(arms)  # what each member earns
    assert any(a.startswith("original:") and "0.60" in a for a in arms)
    assert {"ahash, same grouper", "dhash, same grouper", "phash, same grouper"} <= set(arms)
    # every candidate option has its A/B row; the descriptor rows come from their own extractions
    assert {"ensemble, lone images not attached", "ensemble + local scaling (k 10)",
            "ensemble + database-side augmentation (k 5)", "ensemble, avg pooling", "ensemble, gem pooling",
            "ensemble, pad framing", "ensemble + flip (mirror image added)", "ensemble, no re-ranking",
            "ensemble, quantile normalisation (rank-based)"} <= set(arms)
    split = doc["split"]
    assert split["by"] == "product" and split["tune_products"] + split["test_products"] == 6
    assert split["seeds"] == list(range(10))  # 20 photos: ten splits by default, one would be a coin toss
    for row in doc["rows"]:
        assert row["n_images"] == doc["rows"][0]["n_images"]  # every arm scored on the held-out products only
        assert abs(row["n_images"] - split["test_images"]) <= 0.5  # a mean over splits; the header rounds it
        assert 0 <= row["pairwise_f1"] <= 1 and 0 <= row["recall_at_1"] <= 1
    assert "| arm |" in (tmp_path / "cmp" / "compare.md").read_text()

    tuned = runner.invoke(app, ["tune", str(SAMPLE), "--labels", str(SAMPLE / "labels.csv"),
                                "--out", str(tmp_path / "tune"), "--cache-file", str(cache)], catch_exceptions=False)
    assert tuned.exit_code == 0, tuned.output
    curve = json.loads((tmp_path / "tune" / "tune.json").read_text())
    best = curve["best_pairwise_f1"]
    assert best["pairwise_f1"] == max(r["pairwise_f1"] for r in curve["curve"]) and best["pairwise_f1"] > 0.8
    png = Image.open(tmp_path / "tune" / "tune.png")
    assert png.size[0] > 800 and len(png.getcolors(1 << 20)) > 50


def test_several_splits_average_the_single_split_tables(tmp_path, weights_cache):
    from ensemble_group.config import load_config
    from ensemble_group.evaluation.compare import compare, describe_split

    config = load_config(ROOT / "configs" / "offline.toml")
    cache = tmp_path / "emb.sqlite"
    three = compare(SAMPLE, SAMPLE / "labels.csv", config, seed=0, splits=3, cache_file=cache)
    second = compare(SAMPLE, SAMPLE / "labels.csv", config, seed=1, splits=1, cache_file=cache)
    assert three["split"]["seeds"] == [0, 1, 2] and "mean over 3 splits" in describe_split(three["split"])
    assert "seed 1." in describe_split(second["split"])
    for row, alone in zip(three["rows"], second["rows"]):
        assert row["arm"] == alone["arm"]
        assert len(row["pairwise_f1_per_split"]) == 3
        assert row["pairwise_f1_per_split"][1] == round(alone["pairwise_f1"], 4)  # split 1 is seed 1's table
        assert abs(row["pairwise_f1"] - np.mean(row["pairwise_f1_per_split"])) < 1e-4


def test_the_plain_and_original_rows_read_average_pooled_vectors_whatever_the_config_pools(tmp_path, weights_cache):
    from ensemble_group.config import load_config
    from ensemble_group.evaluation.compare import compare, default_arms, extraction_change

    config = load_config(ROOT / "configs" / "offline.toml")
    assert config.pooling == "rmac"
    changes = {a.name: extraction_change(a, config) for a in default_arms(config, "vgg16-tv")}
    assert changes[next(n for n in changes if n.startswith("ensemble ("))] == ()
    assert {c for n, c in changes.items() if "plain" in n or n.startswith("original")} == {(("pooling", "avg"),)}
    avg = config.replace(pooling="avg")  # then nothing needs another extraction
    assert all(c == () for c in (extraction_change(a, avg) for a in default_arms(avg, "vgg16-tv")))

    cache = tmp_path / "emb.sqlite"
    rows = {p: {r["arm"]: r for r in compare(SAMPLE, SAMPLE / "labels.csv", config.replace(pooling=p),
                                             cache_file=cache)["rows"]} for p in ("avg", "rmac")}
    fixed = [n for n in rows["avg"] if "plain" in n or n.startswith("original") or "same grouper" in n]
    assert len(fixed) == 6
    for name in fixed:  # the same vectors, so the same figures
        assert rows["rmac"][name]["pairwise_f1"] == rows["avg"][name]["pairwise_f1"], name
    ensemble = next(n for n in rows["avg"] if n.startswith("ensemble ("))
    assert rows["rmac"][ensemble]["cutoff"] != rows["avg"][ensemble]["cutoff"]  # R-MAC vectors there
