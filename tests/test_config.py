"""Configuration precedence: defaults < recipe < config file < flags."""

import json

import pytest

from metrix.training.config import RECIPES, ConfigError, TrainConfig, resolve_config


def test_defaults_are_ms_with_feature_mixing():
    config = resolve_config(recipe="full")
    assert (config.loss, config.mixup, config.backbone, config.embedding_size) == (
        "ms",
        "feature",
        "efficientnet_lite0",
        512,
    )
    assert config.train_stages is None and config.cached_views == 0


@pytest.mark.parametrize("gpu, recipe", [(False, "cpu"), (True, "full")])
def test_the_recipe_follows_the_hardware_unless_given(monkeypatch, gpu, recipe):
    monkeypatch.setattr("torch.cuda.is_available", lambda: gpu)
    assert resolve_config().recipe == recipe
    assert resolve_config().to_dict() == resolve_config(recipe=recipe).to_dict()
    assert resolve_config(recipe="paper").recipe == "paper"


def test_paper_recipe():
    config = resolve_config(recipe="paper")
    assert (config.backbone, config.embedding_size, config.batch_size, config.lr, config.weight_decay) == (
        "resnet50",
        512,
        100,
        1e-4,
        1e-4,
    )
    assert config.freeze_bn and config.warmup_epochs == 5 and config.image_size == 224


def test_paper_recipe_optimises_as_the_official_code_and_balances_only_sop_and_inshop():
    config = resolve_config(recipe="paper")
    assert (config.optimizer, config.grad_clip, config.grad_clip_mode) == ("adam", 10.0, "value")
    assert (config.lr_schedule, config.lr_step_epochs, config.lr_gamma, config.epochs) == ("step", 10, 0.1, 60)
    assert (config.sampler, config.pair_choice) == ("random", "coin")
    for dataset, sampler in (("cub", "random"), ("cars", "random"), ("sop", "balanced"), ("inshop", "balanced")):
        assert resolve_config(recipe="paper", dataset=dataset, data_root="/x").sampler == sampler
    assert resolve_config(recipe="paper", dataset="sop", data_root="/x", sampler="random").sampler == "random"


def test_metrix_code_recipe_is_the_official_variant_on_the_full_cpu_backbone():
    config, full_cpu = resolve_config(recipe="metrix-code"), resolve_config(recipe="full-cpu")
    for same in ("backbone", "image_size", "embedding_size", "decode_once", "epochs", "warmup_epochs", "lr"):
        assert getattr(config, same) == getattr(full_cpu, same), same
    assert config.negatives_per_anchor is None and config.mixed_reduction == "nonzero"
    assert (config.pair_choice, config.embed_anchor_negative_weight, config.mixup_weight) == ("coin", 0.3, 0.4)
    assert (config.optimizer, config.grad_clip_mode, config.lr_step_epochs, config.lr_gamma) == (
        "adam",
        "value",
        10,
        0.1,
    )
    assert (config.sampler, config.ms_preset, config.mixup) == ("random", "metrix-code", "feature")
    assert resolve_config(recipe="metrix-code", mixup="none").mixup == "none"


def test_full_cpu_recipe_trains_everything_on_fresh_crops():
    config = resolve_config(recipe="full-cpu")
    assert config.train_stages is None and config.cached_views == 0 and config.decode_once
    assert (config.backbone, config.image_size, config.warmup_epochs) == ("efficientnet_lite0", 96, 1)
    assert config.train_retrieval and config.sampler == "balanced"


@pytest.mark.parametrize(
    "suffix, text",
    [
        (".json", '{"epochs": 7, "lr": 0.001, "recipe": "paper"}'),
        (".toml", 'epochs = 7\nlr = 0.001\nrecipe = "paper"\n'),
    ],
)
def test_file_overrides_recipe_and_flags_override_file(tmp_path, suffix, text):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    config = resolve_config(path, epochs=3, loss=None)
    assert config.epochs == 3  # flag
    assert config.lr == 0.001  # file over recipe
    assert config.backbone == "resnet50" and config.recipe == "paper"  # recipe from the file
    assert config.loss == "ms"  # a flag left unset changes nothing


def test_round_trip():
    config = resolve_config(epochs=4, mixup="embed")
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(recipe="fast"), "unknown recipe 'fast'"),
        (dict(data="a", dataset="cub", data_root="r"), "not both"),
        (dict(dataset="cub"), "needs --data-root"),
        (dict(lr_schedule="linear"), "unknown lr schedule"),
        (dict(epochs=0), "epochs must be at least 1"),
        (dict(sampler="stratified"), "unknown sampler 'stratified'; choose one of balanced, random"),
        (dict(pair_choice="some"), "unknown pair choice 'some'; choose one of all, coin"),
        (dict(precision="fp16"), "unknown precision 'fp16'; choose fp32 or bf16"),
        (dict(optimizer="sgd"), "unknown optimizer 'sgd'; choose adamw or adam"),
        (dict(grad_clip_mode="global"), "unknown grad-clip mode 'global'; choose norm or value"),
        (dict(mixed_reduction="sum"), "unknown mixed reduction 'sum'; choose mean or nonzero"),
        (dict(mixup="embed", embed_anchor_negative_weight=0.3), "set pair-choice coin"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(**kwargs)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{epochs: 3")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_config(tmp_path / "bad.json")
    (tmp_path / "unknown.json").write_text('{"epoch": 3}')
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve_config(tmp_path / "unknown.json")
    assert set(RECIPES) >= {"full", "cpu", "paper"}
