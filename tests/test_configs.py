from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, compose_train
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cxrlab.config import ConfigError, validate


def options(group):
    return sorted(
        p.stem
        for p in (CONFIGS / group).glob("*.yaml")
        if p.stem != "default" or group in ("trainer", "callbacks", "paths", "hydra", "debug")
    )


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_validates(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    validate(cfg)
    OmegaConf.to_container(cfg.data, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize(
    "group", ["data", "model", "augment", "trainer", "logger", "callbacks", "debug"]
)
def test_every_option_of_every_group_composes(group, tmp_path):
    for option in options(group):
        cfg = compose_train([f"{group}={option}"], tmp_path)
        validate(cfg)
        for key in cfg:
            if key != "hydra":  # hydra's own nodes resolve only inside a real run
                OmegaConf.to_container(OmegaConf.create({"k": cfg[key]}), resolve=False)
                OmegaConf.select(cfg, key, throw_on_missing=True)


def test_template_is_the_original_systems_recipe(tmp_path):
    cfg = compose_train(["experiment=template"], tmp_path)
    assert cfg.model.backbone == "densenet121_xrv"
    assert cfg.model.optimizer.name == "adam" and cfg.model.optimizer.amsgrad is True
    assert cfg.data.batch_size == 32 and cfg.data.dataset_size == 640
    assert dict(cfg.data.split.ratios) == {"train": 0.6, "val": 0.2, "test": 0.2}
    assert "early_stopping" in cfg.callbacks


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.backbone=vgg", "model.backbone"),
        ("model.optimizer.name=lbfgs", "model.optimizer.name"),
        ("model.scheduler.name=step", "model.scheduler.name"),
        ("data.task=regression", "data.task"),
        ("data.preprocess.aspect=stretch", "data.preprocess.aspect"),
        ("augment.rotation=-3", "augment.rotation"),
        ("data.split.ratios.val=0.3", "data.split.ratios"),
        ("optimized_metric=test/auroc", "optimized_metric"),
        ("data.on_bad_file=ignore", "data.on_bad_file"),
        ("data.batch_size=abc", "data.batch_size"),
        ("data.num_workers=-1", "data.num_workers"),
        ("trainer.max_epochs=-5", "trainer.max_epochs"),
        ("evaluation.threshold=1.5", "evaluation.threshold"),
    ],
)
def test_bad_values_name_the_key(override, key, tmp_path):
    cfg = compose_train([override], tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


@pytest.mark.parametrize(
    "override",
    [
        "data.sampler=random",
        "data.split.policy=official_ish",
        "data.epoch_size=0",
        "data.source.name=imagenet",
        "model.optimizer.name=lbfgs",
        "model.pretrained=maybe",
        "+model.loss.alpha=inverse",
        "model.dropout=1.5",
    ],
)
def test_each_rule_has_one_owner(override, tmp_path):
    """validate() runs the owner's rule before any work, and building the owner from the same
    config (as a Python user would) stops with the very same message: one rule, one place."""
    from hydra.utils import get_class

    cfg = compose_train([override], tmp_path)
    with pytest.raises(ConfigError) as early:
        validate(cfg)
    group = override.lstrip("+").split(".")[0]
    kwargs = OmegaConf.to_container(cfg[group], resolve=True)
    owner_cls = get_class(kwargs.pop("_target_"))
    if group == "model":
        kwargs.update(class_names=["a", "b"], class_counts=[1, 1], preprocess={})
    with pytest.raises(ConfigError) as owner:
        owner_cls(**kwargs)
    assert str(owner.value) == str(early.value)
    assert override.lstrip("+").split("=")[0] in str(early.value)


def test_paths_are_inside_the_repository_by_default():
    cfg = compose_train([])
    assert Path(cfg.paths.data_dir).name == "data"


@pytest.mark.parametrize("search", options("hparams_search"))
def test_optuna_search_space_names_keys_that_exist(search, tmp_path):
    """Every searched key is a real config key (or a config group), every range parses."""
    from cxrlab.sweep.search_space import parse

    cfg = compose_train([f"hparams_search={search}", "experiment=template"], tmp_path)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("CXRLabOptunaSweeper")
    assert sweeper.study_name == f"train-template-{search}"  # derived from the experiment
    assert str(sweeper.storage).startswith("sqlite:///")
    assert str(cfg.hydra.sweep.dir).endswith(f"optuna/train-template-{search}")
    space, fixed = parse(OmegaConf.to_container(sweeper.params))
    assert len(space) >= 10 and not fixed
    for key in space:
        if (CONFIGS / key).is_dir():  # a group choice: every value is an option
            assert set(space[key].choices) <= set(options(key)), key
        else:
            assert OmegaConf.select(cfg, key) is not None, f"{key} is not in the config"
    # and each group option still has the searched keys
    for model in space["model"].choices:
        chosen = compose_train([f"hparams_search={search}", f"model={model}"], tmp_path)
        for key in space:
            if key.startswith("model."):
                assert OmegaConf.select(chosen, key) is not None, (model, key)


def test_slurm_launcher_config_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_train(["hparams_search=optuna", "hydra/launcher=cxrlab_slurm"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == 1 and cfg.hydra.launcher.gpus_per_node == 1


@pytest.mark.parametrize(("metric", "mode"), [("val/auroc", "max"), ("val/loss", "min")])
def test_checkpoint_and_early_stopping_follow_the_metric_direction(metric, mode, tmp_path):
    """Monitoring a loss with mode=max would keep the worst epoch as best.ckpt."""
    from hydra.utils import instantiate

    cfg = compose_train([f"optimized_metric={metric}"], tmp_path)
    ckpt = instantiate(cfg.callbacks.model_checkpoint)
    stop = instantiate(cfg.callbacks.early_stopping)
    assert (ckpt.monitor, ckpt.mode) == (metric, mode)
    assert stop.monitor == metric
    assert stop.monitor_op(torch.tensor(0.0), torch.tensor(1.0)) == (mode == "min")


@pytest.mark.parametrize("data", options("data"))
def test_debug_shrinks_the_run_with_any_data_source(data, tmp_path):
    """debug=default sets nothing in data.source: it composes and validates with every source,
    and the source's settings are those of data=<name> alone."""
    alone = compose_train([f"data={data}"], tmp_path)
    cfg = compose_train([f"data={data}", "debug=default"], tmp_path)
    validate(cfg)
    assert cfg.data.source == alone.data.source
    assert cfg.trainer.limit_train_batches == 3 and cfg.data.preprocess.size == 32


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model.backbone=vgg11"], "model.backbone='vgg11'"),
        (["evaluation.threshold=sensitivity:1.5"], "evaluation.threshold='sensitivity:1.5'"),
        (["data=folder", "data.source.root=/no/such/folder"], "data.source.root=/no/such/folder"),
        (["data.batch_size=abc"], "data.batch_size='abc'"),
        (["trainer.max_epochs=-5"], "trainer.max_epochs=-5"),
        (["ckpt_path=/no/such/last.ckpt"], "ckpt_path=/no/such/last.ckpt"),
        # CXRLAB_OFFLINE=1 (conftest) and an empty cache: the weights cannot be had
        (["model.pretrained=true"], "or train without them: model.pretrained=false"),
    ],
)
def test_mistakes_end_in_one_line_and_status_2_before_any_work(
    overrides, key, tmp_path, capsys, monkeypatch
):
    """What train.py does with a user's mistake: one line naming the key and value on stderr,
    exit status 2, no traceback on the screen (it goes to the log file), nothing built."""
    import logging

    from cxrlab.errors import exit_on_user_error
    from cxrlab.training import train

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # an empty torchxrayvision cache

    cfg = compose_train(["debug=default", f"paths.data_dir={tmp_path / 'data'}", *overrides],
                        tmp_path)  # fmt: skip
    log_file = tmp_path / "train.log"
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(SystemExit) as e:
            exit_on_user_error(train)(cfg)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and key in err and len(err.splitlines()) == 1, err
    assert "Traceback" in log_file.read_text()
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_explore_writes_a_folder_per_dataset():
    """explore.py's report folder is logs/explore/<dataset>/<timestamp> (as docs/explore.md
    says): explore.yaml's own hydra.run.dir is not overridden by hydra/default.yaml."""
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("explore.yaml", overrides=["data=kaggle_pneumonia"], return_hydra_config=True)
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    assert run_dir == "${paths.log_dir}/explore/${data.source.name}/${now:%Y-%m-%d_%H-%M-%S}"
    assert (
        "logs/explore/<dataset>/<timestamp>/"
        in (CONFIGS.parent / "docs" / "explore.md").read_text()
    )
