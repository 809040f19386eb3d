"""Settings precedence (overrides > THEME_ENGINE_* env > TOML file > defaults) and errors."""

from __future__ import annotations

import json


import pytest

from theme_engine.engine.config import ConfigError, RunConfig, load_config

TOML = """
seed = 1
device = "cpu"

[kmeans]
k = 5
max_iter = 20

[dedup]
threshold = 0.8
keep = "longest"
"""


@pytest.fixture
def toml_file(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text(TOML)
    return p


def test_defaults(clean_env):
    cfg = load_config()
    assert cfg == RunConfig.model_validate({})
    assert cfg.seed == 0 and cfg.kmeans.k is None and cfg.kmeans.max_iter == 100
    assert cfg.dedup.threshold == 0.9 and cfg.dedup.grouping == "ranked" and cfg.inputs == []


def test_toml_over_defaults(clean_env, toml_file):
    cfg = load_config(config_file=toml_file)
    assert (cfg.seed, cfg.device, cfg.kmeans.k, cfg.kmeans.max_iter) == (1, "cpu", 5, 20)
    assert cfg.dedup.threshold == 0.8 and cfg.dedup.keep == "longest"
    assert cfg.kmeans.tol == 1e-4 and cfg.dedup.batch_rows == 4096  # untouched fields keep defaults


def test_env_over_toml(clean_env, toml_file):
    clean_env.setenv("THEME_ENGINE_KMEANS__K", "7")
    clean_env.setenv("THEME_ENGINE_SEED", "3")
    cfg = load_config(config_file=toml_file)
    assert cfg.kmeans.k == 7 and cfg.seed == 3
    assert cfg.kmeans.max_iter == 20  # a sibling set only in the file survives the nested env value
    assert cfg.dedup.threshold == 0.8


def test_overrides_over_env_and_toml(clean_env, toml_file):
    clean_env.setenv("THEME_ENGINE_KMEANS__K", "7")
    clean_env.setenv("THEME_ENGINE_SEED", "3")
    cfg = load_config({"seed": 9, "kmeans": {"max_iter": 4}}, config_file=toml_file)
    assert cfg.seed == 9  # override beats env
    assert cfg.kmeans.k == 7  # env beats file
    assert cfg.kmeans.max_iter == 4  # override beats file
    assert cfg.dedup.keep == "longest"  # file beats default


@pytest.mark.parametrize(
    "layer",
    ["default", "file", "env", "override"],
)
def test_each_layer_wins_over_the_ones_below(clean_env, tmp_path, layer):
    layers = ["default", "file", "env", "override"]
    upto = layers[: layers.index(layer) + 1]
    cfg_file = None
    if "file" in upto:
        cfg_file = tmp_path / "c.toml"
        cfg_file.write_text("[label]\nkeywords = 11\n")
    if "env" in upto:
        clean_env.setenv("THEME_ENGINE_LABEL__KEYWORDS", "12")
    overrides = {"label": {"keywords": 13}} if "override" in upto else None
    cfg = load_config(overrides, config_file=cfg_file)
    assert cfg.label.keywords == {"default": 10, "file": 11, "env": 12, "override": 13}[layer]


def test_env_inputs_comma_separated(clean_env):
    clean_env.setenv("THEME_ENGINE_INPUTS", "a.jsonl,dir/b.csv")
    assert load_config().inputs == ["a.jsonl", "dir/b.csv"]
    assert load_config({"inputs": ["c.txt"]}).inputs == ["c.txt"]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"kmeans": {"k": 0}}, "kmeans.k"),
        ({"dedup": {"threshold": 1.5}}, "dedup.threshold"),
        ({"dedup": {"keep": "random"}}, "dedup.keep"),
        ({"device": "tpu"}, "device"),
        ({"read": {"min_chars": 50, "max_chars": 40}}, "max_chars"),
        ({"kmeans": {"bogus": 1}}, "kmeans.bogus"),
        ({"nope": 1}, "nope"),
        ({"select_k": {"k_min": 1}}, "select_k.k_min"),
        ({"seed": -3}, "seed"),
        ({"select_k": {"k_min": 5, "k_max": 3}}, "k_max"),
    ],
)
def test_invalid_override_names_the_field(clean_env, overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(overrides)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_invalid_env_value_names_the_field(clean_env):
    clean_env.setenv("THEME_ENGINE_KMEANS__K", "many")
    with pytest.raises(ConfigError, match=r"environment variable THEME_ENGINE_KMEANS__K: "):
        load_config()


def test_malformed_env_section_is_a_config_error(clean_env):
    clean_env.setenv("THEME_ENGINE_KMEANS", "{not json")
    with pytest.raises(ConfigError, match="kmeans"):
        load_config()


def test_invalid_value_in_file_names_file_and_field(clean_env, tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[kmeans]\nmax_iter = 0\n")
    with pytest.raises(ConfigError) as exc:
        load_config(config_file=p)
    assert str(p) in str(exc.value) and "kmeans.max_iter" in str(exc.value)


def test_missing_and_malformed_toml(clean_env, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(config_file=tmp_path / "absent.toml")
    p = tmp_path / "broken.toml"
    p.write_text("[kmeans\nk = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(config_file=p)



def test_credentials_are_redacted(clean_env):
    from theme_engine.engine.config import public_config, redact_url

    assert redact_url("http://user:secret@qdrant.example:6333/x?y=1") == "http://user:***@qdrant.example:6333/x?y=1"
    assert redact_url("https://:secret@host") == "https://:***@host"
    assert redact_url("http://host:6333") == "http://host:6333" and redact_url(None) is None
    cfg = load_config({"cache": {"qdrant_url": "http://me:hunter2@127.0.0.1:6333"}})
    data = public_config(cfg)
    assert "hunter2" not in json.dumps(data) and data["cache"]["qdrant_url"] == "http://me:***@127.0.0.1:6333"
    assert cfg.cache.qdrant_url.endswith("hunter2@127.0.0.1:6333")  # the run itself still has it


def test_an_unreachable_qdrant_url_error_hides_the_password(clean_env):
    from theme_engine.engine.cache import CacheUnavailable, ServerCache

    with pytest.raises(CacheUnavailable) as info:
        ServerCache("http://me:hunter2@127.0.0.1:9", "c", 4)
    assert "hunter2" not in str(info.value) and "me:***@127.0.0.1:9" in str(info.value)
