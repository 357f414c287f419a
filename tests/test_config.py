"""Setup files, overrides and their error messages."""

from __future__ import annotations

import pytest

from sgdjax.config import KEYS, SetupConfig, list_experiments, load_setup, parse_overrides
from sgdjax.errors import ConfigError
from sgdjax.families import FAMILIES

# Folders of experiments/ that a study family runs (others hold e.g. sweep files).
ALL_SETUPS = [(e, s) for e, setups in list_experiments().items() if e in FAMILIES
              for s in setups]


def test_every_expected_setup_exists():
    names = {f"{e}/{s}" for e, s in ALL_SETUPS}
    expected = {f"exp1/setup{i}" for i in (1, 2, 3, 4, 6, 7, 8)} | {"exp2/setup1", "exp2/setup2"}
    assert expected <= names


@pytest.mark.parametrize(("experiment", "setup"), ALL_SETUPS)
def test_every_setup_file_loads(experiment, setup):
    """Every setup of every study family loads through its family and describes itself."""
    from sgdjax.families import family_for

    cfg = family_for(experiment).load_config(experiment, setup, [])
    assert cfg.description and (cfg.experiment, cfg.setup) == (experiment, setup)
    assert isinstance(cfg.to_dict(), dict) and isinstance(cfg.x64, bool)
    if experiment in ("exp1", "exp2"):
        assert isinstance(cfg, SetupConfig)
        assert cfg.seed == 42 and cfg.batch_size == 64


def test_spec_values_of_the_setups():
    s1, s2, s3 = (load_setup("exp1", f"setup{i}") for i in (1, 2, 3))
    assert (s1.model, s1.dataloader, s1.dtype, s1.many_runs_samples) == (
        "mlp", "default", "float64", 1000)
    assert s1.lrs == (0.05, 0.01, 0.005, 0.001)
    assert (s1.epochs_sgd, s1.epochs_gd, s1.hessian_steps, s1.many_runs_steps) == (
        10000, 10000, 1000, 1111)
    assert s2.dataloader == "replacement"
    assert (s3.model, s3.many_runs_samples) == ("cnn", 3000)
    s4, s6 = load_setup("exp1", "setup4"), load_setup("exp1", "setup6")
    assert (s4.dataset_train, s4.epochs_sgd, s4.lrs, s4.dtype) == (
        "mnist_similar", 1000, (0.1, 0.01), "float32")
    assert (s6.many_runs_samples, s6.epochs_gd) == (1, 1000)
    e1, e2 = load_setup("exp2", "setup1"), load_setup("exp2", "setup2")
    assert (e1.model, e1.lr, e1.many_runs_samples, e1.lrs, e1.n_train) == (
        "nanogpt", 0.01, 10, (0.001,), 4736)
    assert (e2.many_runs_samples, e2.dataloader) == (10000, "replacement")


def test_overrides_are_typed():
    cfg = load_setup("exp1", "setup1", ["many_runs_samples=10", "lrs=0.1,0.02", "lr=1e-2",
                                        "store_hessians=false", "train_split=test[:100]"])
    assert cfg.many_runs_samples == 10 and cfg.lrs == (0.1, 0.02) and cfg.lr == 0.01
    assert cfg.store_hessians is False and cfg.train_split == "test[:100]"
    assert load_setup("exp1", "1").setup == "setup1"


def test_mistyped_key_gets_closest_match():
    with pytest.raises(ConfigError, match="unknown key 'many_run_samples'.*many_runs_samples"):
        parse_overrides(["many_run_samples=10"])
    with pytest.raises(ConfigError, match="epochs_sgd"):
        parse_overrides(["epoch_sgd=3"])


@pytest.mark.parametrize(("item", "pattern"), [
    ("dataloader=replacment", "choose one of default, replacement.*'replacement'"),
    ("dtype=float16", "float32, float64"),
    ("seed=1.5", "expected an integer"),
    ("lrs=abc", "comma-separated list"),
    ("batch_size=0", "positive"),
    ("lrs=0.1,-1", "positive"),
    ("model=nanogpt", "shakespeare"),
    ("noequals", "key=value"),
])
def test_bad_values_name_the_key_and_the_fix(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_setup("exp1", "setup1", [item])


def test_unknown_experiment_and_setup():
    with pytest.raises(ConfigError, match="unknown experiment 'exp3'.*exp1"):
        load_setup("exp3", "setup1")
    with pytest.raises(ConfigError, match="unknown setup 'setup5'.*setup1"):
        load_setup("exp1", "setup5")


def test_x64_follows_the_dtypes():
    assert load_setup("exp1", "setup1").x64
    assert not load_setup("exp1", "setup8").x64
    assert load_setup("exp1", "setup8", ["compute_dtype=float64"]).x64


def test_keys_are_the_originals_in_lower_case():
    for key in ("batch_size", "sample_size", "lr", "epochs_sgd", "epochs_gd", "seed",
                "hessian_steps", "many_runs_steps", "many_runs_samples", "dataloader",
                "gd_scaling", "lrs", "dtype", "device", "dataset_train", "dataset_val", "model"):
        assert key in KEYS
