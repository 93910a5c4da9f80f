"""A float32 member runs on whichever engine (TFLite or TensorFlow) this machine ran it faster on, timed once."""

import json

import numpy as np
import pytest

from ensemble_group import cpu, race
from ensemble_group.config import Config
from ensemble_group.race import Race


def a_race(tflite: float, tensorflow: float, start_tflite: float = 0.1, start_tensorflow: float = 3.0) -> Race:
    return Race({"tflite": tflite, "tensorflow": tensorflow}, {"tflite": start_tflite, "tensorflow": start_tensorflow},
                cpu.signature(), 2)


def test_the_faster_engine_is_the_one_that_finishes_the_runs_images_first_start_up_included():
    r = a_race(tflite=0.2, tensorflow=0.1)  # TensorFlow: 0.1 s an image faster, 2.9 s slower to start
    assert r.faster(10) == "tflite"  # 2.1 s against 4.0 s
    assert r.faster(100) == "tensorflow"  # 20.1 s against 13.0 s
    assert a_race(0.1, 0.1, 1.0, 1.0).faster(100) == "tflite"  # a tie: the one that ships and starts fastest
    assert a_race(0.1, 0.2).faster(10**6) == "tflite"
    assert r.tensorflow_from() == race.AFTER  # 2.9 s to make up at 0.1 s an image: from 30, but no race below AFTER
    slow_start = a_race(tflite=0.2, tensorflow=0.1, start_tensorflow=20.1)
    assert slow_start.tensorflow_from() == 201 and slow_start.faster(200) == "tflite" == r.faster(29)
    assert slow_start.faster(201) == "tensorflow"
    assert a_race(0.1, 0.2).tensorflow_from() is None
    assert r.describe() == ("TensorFlow 10.0 images/s, TFLite 5.0 on this CPU (raced once, remembered): "
                            "TensorFlow runs it for 64 images or more")
    assert a_race(0.1, 0.2).describe().endswith(": TFLite runs it")


def test_a_race_is_remembered_per_cpu_and_thread_count_and_a_bad_record_is_none(tmp_path):
    file = tmp_path / "m.tflite"
    assert race.remembered(file, 2) is None
    race.remember(file, a_race(0.2, 0.1))
    assert race.remembered(file, 2) == a_race(0.2, 0.1)
    assert race.remembered(file, 1) is None  # one TFLite thread (a Ray actor's share) is another race
    record = race.record_file(file, 2)
    doc = json.loads(record.read_text())
    record.write_text(json.dumps({**doc, "cpu": "another CPU | 16 cores | avx2"}))
    assert race.remembered(file, 2) is None  # copied from another kind of machine: not reused
    record.write_text("{not json")
    assert race.remembered(file, 2) is None
    record.write_text(json.dumps({**doc, "per_image": {"tflite": 0, "tensorflow": 0.1}}))
    assert race.remembered(file, 2) is None


def test_cpu_signature_names_the_model_the_cores_and_the_kernel_flags():
    info = "model name\t: Some CPU 9000\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n"
    model, cores, flags = cpu.signature(info).split(" | ")
    assert model == "Some CPU 9000" and cores.endswith(" cores")
    assert flags.split() == ["avx2", "fma", "avx512f", "avx512_vnni"]
    assert cpu.signature("").startswith("unknown CPU")


tf = pytest.importorskip("tensorflow")

from ensemble_group.extractors import MODELS, Extractor
from ensemble_group.features import ExtractionSettings, LazyExtractor, extract


def member(images: int | None) -> LazyExtractor:
    lazy = LazyExtractor(ExtractionSettings("mobilenet-v2", "random:seed=0", batch_size=8), None)
    lazy.images = images
    return lazy


def test_a_large_run_races_the_engines_once_and_keeps_the_faster_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_GROUP_CACHE", str(tmp_path))
    first = member(500)
    assert first.needs_race()  # not even converted yet: the race converts it first
    timed = first.race()
    assert set(timed.per_image) == {"tflite", "tensorflow"} and min(timed.per_image.values()) > 0
    assert timed.cpu == cpu.signature() and timed.threads >= 1
    assert first.lite_file.is_file() and race.remembered(first.lite_file, timed.threads) == timed
    assert first.runtime == {"tflite": "tflite", "tensorflow": "tensorflow"}[timed.faster(500)]
    again = member(500)
    assert not again.needs_race()  # remembered: a later run times nothing
    assert again.extractor.runtime == first.runtime


def test_a_remembered_win_for_tensorflow_runs_it_there_with_the_same_vectors_but_not_for_a_small_run(
        tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_GROUP_CACHE", str(tmp_path))
    x = np.random.default_rng(0).uniform(0, 255, (5, 224, 224, 3)).astype(np.float32)
    lite = member(None)
    want = lite.embed_framed(x)  # converts and caches the flatbuffer
    assert lite.runtime == "tflite"
    race.remember(lite.lite_file, a_race(tflite=1.0, tensorflow=0.01))  # as if oneDNN were 100x faster here
    large = member(race.AFTER)
    assert not large.needs_race()
    assert np.sum(large.embed_framed(x) * want, axis=1).min() >= 0.9999
    assert large.runtime == "tensorflow" and large.extractor.winograd_layers == 0  # oneDNN's own convolutions
    assert member(race.AFTER - 1).extractor.runtime == "tflite"  # too few images to race or to switch for
    assert member(None).extractor.runtime == "tflite"  # a run of unknown size: TFLite


def test_only_members_both_engines_run_the_same_are_raced(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_GROUP_CACHE", str(tmp_path))
    off = LazyExtractor(ExtractionSettings("mobilenet-v2", "random:seed=0", lite=False), None)
    colour = LazyExtractor(ExtractionSettings.of(Config(), "colour-lab", None), None)
    unnamed = LazyExtractor(ExtractionSettings("mobilenet-v2", None), None)  # weights set by hand: nothing cached
    for lazy in (off, colour, unnamed):
        lazy.images = 1000
        assert not lazy.needs_race() and lazy.race() is None


def test_extract_races_a_float32_member_before_a_large_run_and_says_so(tmp_path, monkeypatch):
    from PIL import Image

    from ensemble_group.images import hash_folder
    from ensemble_group.reporter import Reporter

    monkeypatch.setenv("ENSEMBLE_GROUP_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(race.AFTER):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(folder / f"{i:03}.png")
    images, _ = hash_folder(folder)

    class Log(Reporter):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def log(self, message: str) -> None:
            self.lines.append(message)

    lazy, log = member(None), Log()
    feats = extract(images, {"mobilenet-v2": lazy}, None, log)
    assert lazy.images == race.AFTER and not lazy.needs_race()
    assert [line for line in log.lines if line.startswith("mobilenet-v2: ") and "(raced once, remembered)" in line]
    want = Extractor(MODELS["mobilenet-v2"], None, lite=False).embed(
        [np.asarray(Image.open(im.path).convert("RGB")) for im in feats.images[:3]])
    assert np.sum(feats.vectors["mobilenet-v2"][:3] * want, axis=1).min() >= 0.9999
