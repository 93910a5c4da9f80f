"""Extraction in whole batches of one fixed shape, padding only the run's last batch, and little of it."""

from pathlib import Path

import numpy as np
import pytest

from ensemble_group.features import even_batch

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "flipkart" / "images"


@pytest.mark.parametrize("n, largest, want", [(200, 32, 29), (64, 32, 32), (65, 32, 22), (20, 32, 20),
                                              (1, 32, 1), (0, 32, 32), (7, 1, 1)])
def test_even_batch_covers_n_in_the_fewest_batches_with_the_least_padding(n, largest, want):
    assert even_batch(n, largest) == want
    if n:
        batches = -(-n // want)
        assert batches == -(-n // largest)  # no more batches than the largest size needs
        assert batches * want - n < batches  # under one padded image per batch


def test_a_run_pads_only_its_last_batch(tmp_path):
    """6 images with batch size 4: two batches of 3 (one shape), not 4 + 4 with 2 padded."""
    pytest.importorskip("tensorflow")
    from ensemble_group.features import LazyExtractor, extract
    from ensemble_group.images import hash_folder
    from ensemble_group.pipeline import Reporter

    for p in sorted(SAMPLE.iterdir())[:6]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    images, _ = hash_folder(tmp_path)
    lazy = LazyExtractor("mobilenet-v2", None, batch_size=4, framing="squash")
    shapes = []
    forward = lazy.extractor._forward
    lazy.extractor._forward = lambda x: shapes.append(x.shape[0]) or forward(x)
    feats = extract(images, {"mobilenet-v2": lazy}, {"mobilenet-v2": "random"}, None, Reporter())
    assert shapes == [3, 3]
    assert feats.vectors["mobilenet-v2"].shape == (6, 1280)
    assert np.allclose(np.linalg.norm(feats.vectors["mobilenet-v2"], axis=1), 1, atol=1e-5)
