"""The colour member: Lab values, the backdrop left out, histograms that tell colours apart, and the
member running through the engine like any other (cached, grouped) with no model and no TensorFlow."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ensemble_group.colour import DIM, colour_histogram, foreground, srgb_to_lab
from ensemble_group.config import ConfigError, load_config


def photo(colour, box=(20, 20, 80, 90), backdrop=(255, 255, 255), size=(100, 120)) -> np.ndarray:
    """A product shot: one coloured block on a plain backdrop (small enough not to be shrunk)."""
    a = np.zeros((size[1], size[0], 3), np.uint8) + np.array(backdrop, np.uint8)
    l, t, r, b = box
    a[t:b, l:r] = colour
    return a


def test_srgb_to_lab_gives_the_reference_values():
    lab = srgb_to_lab(np.array([[255, 255, 255], [255, 0, 0], [0, 0, 255], [0, 0, 0], [128, 128, 128]], np.uint8))
    want = [[100, 0, 0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86], [0, 0, 0], [53.59, 0, 0]]
    np.testing.assert_allclose(lab, want, atol=0.02)


def test_the_backdrop_is_left_out_unless_it_is_all_there_is():
    a = photo((200, 30, 30))
    mask = foreground(a)
    assert mask.sum() == 60 * 70 and mask[20:90, 20:80].all()
    noise = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)  # no plain border
    assert foreground(noise).mean() > 0.9
    assert foreground(np.full((40, 40, 3), 7, np.uint8)).all()  # a blank photo: nothing is backdrop, use it all


def test_histograms_tell_colours_apart_whatever_the_backdrop_and_the_placement():
    red, red_elsewhere = colour_histogram(photo((200, 30, 30))), colour_histogram(photo((198, 32, 28), box=(5, 40, 90, 115)))
    red_on_grey = colour_histogram(photo((200, 30, 30), backdrop=(180, 180, 180)))
    blue = colour_histogram(photo((30, 40, 200)))
    for v in (red, blue):
        assert v.shape == (DIM,) and v.dtype == np.float32 and abs(np.linalg.norm(v) - 1) < 1e-6
    assert red @ red_elsewhere > 0.99 and red @ red_on_grey > 0.99  # the backdrop does not count
    assert red @ blue < 0.01


def test_neutral_pixels_fall_in_one_bin_not_on_either_side_of_its_edge():
    grey = colour_histogram(photo((120, 120, 120)))  # a = b = 0 up to float noise: the edge between two bins
    assert (grey > 0).sum() == 1
    for other in ((121, 120, 119), (119, 120, 121), (0, 0, 0), (255, 255, 255)):  # the backdrop, a shade off,
        assert (colour_histogram(photo(other, backdrop=(90, 200, 40))) > 0).sum() == 1  # black, white


def test_weights_files_for_the_colour_member_is_a_config_error(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[models]\nmembers = ["colour-lab"]\nweights_files = { "colour-lab" = "x.h5" }\n')
    with pytest.raises(ConfigError, match=r"colour-lab has no weights file .*remove its entry"):
        load_config(toml)


@pytest.fixture()
def colour_folder(tmp_path) -> Path:
    """Three shots of a red product and three of a blue one: shaded top to bottom as lit photos are,
    in different sizes, places and light."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, colour in (("red", (200, 30, 30)), ("blue", (30, 40, 200))):
        for i in range(3):
            l, t = rng.integers(5, 25, 2)
            h = int(rng.integers(50, 70))
            light = np.linspace(rng.uniform(0.6, 0.7), rng.uniform(1.0, 1.1), h)[:, None, None]
            a = photo((0, 0, 0), box=(0, 0, 0, 0))
            a[t:t + h, l:l + 60] = np.clip(light * np.array(colour), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(folder / f"{name}-{i}.png")
    return folder


def test_a_colour_only_run_groups_by_colour_caches_and_never_loads_tensorflow(colour_folder, tmp_path):
    config = tmp_path / "colour.toml"
    config.write_text('[models]\nmembers = ["colour-lab"]\n')
    cache = tmp_path / "emb.sqlite"

    def run(out):
        args = ["group", str(colour_folder), "--config", str(config), "--out", str(tmp_path / out), "--cache-file", str(cache)]
        code = (f"import sys\nfrom ensemble_group.cli import app\ntry:\n    app({args!r})\nexcept SystemExit as e:\n"
                "    assert not e.code, e.code\nprint(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    first = run("o1")
    assert "(6 extracted, 0 from the cache)" in first and first.splitlines()[-1] == "[]", first
    assert "(0 extracted, 6 from the cache)" in run("o2")
    doc = json.loads((tmp_path / "o1" / "groups.json").read_text())
    groups = sorted(sorted(Path(p).name.split("-")[0] for p in g["images"]) for g in doc["groups"])
    assert groups == [["blue"] * 3, ["red"] * 3]
    assert doc["models"][0]["weights_id"].startswith("builtin:")
