"""Configs: the shipped files load; typos and bad values fail at once with the valid choices."""

from pathlib import Path

import pytest

from ensemble_group.config import Config, ConfigError, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_shipped_configs_load():
    assert load_config(CONFIGS / "default.toml").models == ("resnet50", "vgg16", "inception_v3")
    assert load_config(CONFIGS / "offline.toml").models == ("vgg16-tv", "efficientnet-lite0", "mobilenet-v2", "colour-lab")
    seed = load_config(CONFIGS / "seed.toml")
    assert (seed.models, seed.n_trees, seed.k, seed.cutoff, seed.mode, seed.normalisation) == \
        (("resnet50",), 20, 5, 0.60, "seed", "none")
    assert (seed.power, seed.whiten_dim, seed.dba_k) == (1.0, 0, 0)  # plain features, like the original


def test_unknown_key_names_the_valid_ones(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[grouping]\ncutof = 0.5\n")
    with pytest.raises(ConfigError, match=r"grouping.cutof.*cutoff"):
        load_config(p)


@pytest.mark.parametrize("change, message", [
    ({"models": ("resnet51",)}, "unknown model 'resnet51'"),
    ({"mode": "kmeans"}, "mode must be one of average, seed, components, mutual, graph"),
    ({"k": 0}, "k must be >= 1"),
    ({"model_weights": {"vgg16-tv": -1.0}}, "must be >= 0"),
    ({"models": ("vgg16-tv", "vgg16-tv")}, "listed twice"),
    ({"winograd": "yes"}, "winograd must be true or false"),
    ({"lite": "yes"}, "lite must be true or false"),
    ({"alone_margin": -1.0}, "alone_margin must be >= 0"),
    ({"pooling": "max"}, "pooling must be one of avg, gem, rmac"),
    ({"flip": 1}, "flip must be true or false"),
    ({"local_k": -1}, "local_k must be >= 0"),
    ({"rerank_k": -1}, "rerank_k must be >= 0"),
    ({"rerank_weight": -0.5}, "rerank_weight must be >= 0"),
    ({"whiten_min": 1}, "whiten_min must be >= 2"),
    ({"cutoff": float("nan")}, "cutoff must be a finite number"),
    ({"cutoff": float("-inf")}, "cutoff must be"),
    ({"cutoff": "abc"}, "cutoff must be .* got 'abc'"),
    ({"cutoff": True}, "cutoff must be"),
    ({"alone_margin": float("nan")}, "alone_margin must be a finite number, got nan"),
    ({"rerank_weight": float("inf")}, "rerank_weight must be a finite number"),
    ({"n_trees": 2.5}, "n_trees must be a whole number, got 2.5"),
    ({"k": "20"}, "k must be a whole number, got '20'"),
    ({"seed": "x"}, "seed must be a whole number"),
])
def test_bad_values(change, message):
    with pytest.raises(ConfigError, match=message):
        Config().replace(**change)


def test_cutoff_takes_a_number_or_auto():
    assert Config().cutoff == "auto" and load_config(CONFIGS / "offline.toml").cutoff == "auto"
    assert load_config(CONFIGS / "default.toml").cutoff == "auto" and Config().replace(cutoff=-3).cutoff == -3
    with pytest.raises(ConfigError, match="or \"auto\", got 'Auto!'"):
        Config().replace(cutoff="Auto!")
    with pytest.raises(ConfigError, match='cutoff "auto" works on the normalised fused scale'):
        Config().replace(normalisation="none")
    assert Config().replace(normalisation="none", cutoff=0.6).cutoff == 0.6


def test_non_finite_values_never_reach_a_json_output(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[fusion]\nrerank_weight = nan\n")
    with pytest.raises(ConfigError, match="rerank_weight must be a finite number, got nan"):
        load_config(p)
    p.write_text("[grouping]\ncutoff = inf\n")
    with pytest.raises(ConfigError, match="cutoff must be a finite number"):
        load_config(p)


def test_overrides_keep_the_rest():
    c = load_config(CONFIGS / "offline.toml").replace(models=["mobilenet-v2"], cutoff=-3.0, k=None)
    assert c.models == ("mobilenet-v2",) and c.cutoff == -3.0 and c.k == 20
    assert c.fusion_weights() == {"mobilenet-v2": 1.0}


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[grouping\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_extraction_and_grouping_keys_are_read(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[extraction]\nwinograd = false\nlite = false\npooling = \"gem\"\n[fusion]\nlocal_k = 10\nrerank_k = 0\n"
                 "[grouping]\nalone_margin = 1.5\n")
    c = load_config(p)
    assert (c.winograd, c.lite, c.pooling, c.local_k, c.rerank_k, c.alone_margin) == (False, False, "gem", 10, 0, 1.5)
    d = Config()
    assert d.lite
    assert (d.winograd, d.pooling, d.local_k, d.rerank_k, d.rerank_weight, d.alone_margin) == (True, "rmac", 0, 20, 1.0, 0.5)


def test_built_in_defaults_are_the_offline_config():
    assert Config() == load_config(CONFIGS / "offline.toml")  # the CLI's --help promises this


def test_the_engine_section_picks_where_members_run_and_stays_out_of_groups_json(tmp_path, monkeypatch):
    p = tmp_path / "c.toml"
    p.write_text('[engine]\nbackend = "ray"\naddress = "ray://head:10001"\nworkers = 4\n')
    c = load_config(p)
    assert (c.backend, c.ray_address, c.ray_workers, c.uses_ray()) == ("ray", "ray://head:10001", 4, True)
    assert "backend" not in c.to_dict() and c.to_dict() == Config().to_dict()  # same groups.json either way
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not Config(backend="auto").uses_ray() and not Config().uses_ray()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert Config(backend="auto").uses_ray() and not Config().uses_ray()  # local stays local
    p.write_text('[engine]\nbackend = "spark"\n')
    with pytest.raises(ConfigError, match="^backend must be one of local, ray, auto; got 'spark'$"):
        load_config(p)
    p.write_text("[engine]\nworkers = -1\n")
    with pytest.raises(ConfigError, match="ray_workers must be >= 0"):
        load_config(p)
