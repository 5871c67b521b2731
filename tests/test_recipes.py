"""Every experiment recipe (configs/experiment/) trains and tests on a small layout-faithful
fixture of its dataset, with the model built at the recipe's own input size."""

import json
import sys
from pathlib import Path

import layouts
import pytest
import torch
from conftest import CONFIGS, ROOT, compose_train, run_process, script_env, train_in_process

RECIPES = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
# the recipe's data source -> how its fixture is made from the tiny phantom
FIXTURES = {
    "kaggle_pneumonia": None,  # the phantom is written in the Kaggle layout itself
    "siim_covid": layouts.siim_covid,
    "covid_radiography": layouts.covid_radiography,
    "nih": layouts.nih,
    "rsna_pneumonia": layouts.rsna,
}
# only what makes the run short: one epoch of one batch, a small balanced subset, no
# downloads, CSV logging; never the input size, backbone, loss, sampler or fine-tuning policy
TINY = [
    "model.pretrained=false",
    "logger=csv",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=1",
    "data.dataset_size=48",
    "data.batch_size=4",
    "data.eval_batch_size=16",
    "data.num_workers=0",
    "evaluation.bootstrap=20",
    "~callbacks.progress_bar",
]


@pytest.fixture(scope="module")
def fixtures(tiny_phantom, tmp_path_factory):
    base = tmp_path_factory.mktemp("recipe-data")
    made = {}

    def root(source: str) -> Path:
        if FIXTURES[source] is None:
            return tiny_phantom
        if source not in made:
            FIXTURES[source](tiny_phantom, base / source)
            made[source] = base / source
        return made[source]

    return root


def test_every_original_system_has_a_recipe():
    tags = {t for r in RECIPES for t in compose_train([f"experiment={r}"]).tags}
    for n in range(5):
        assert f"original-00{n}" in tags, f"no recipe for original system 00{n}"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_and_tests_at_its_input_size(recipe, fixtures, tmp_path):
    recipe_cfg = compose_train([f"experiment={recipe}"])
    source = recipe_cfg.data.source.name
    if source == "synthetic":  # a small phantom of its own (generated under tmp_path)
        data = ["data.source.num_patients=60"]
    else:
        data = [f"data.source.root={fixtures(source)}"]
    overrides = [f"experiment={recipe}", *data, *TINY]
    metrics, objs = train_in_process(overrides, tmp_path)

    # it trained and was tested on the recipe's own task
    model = objs["model"]
    task = recipe_cfg.data.get("task", "binary")
    assert 0.0 <= metrics["test/auroc"] <= 1.0
    assert (model.num_classes == 2) == (task == "binary")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=False)
    meta = ckpt["cxrlab"]
    # the model was built and fed at the recipe's size, with the recipe's backbone
    assert ckpt["hyper_parameters"]["preprocess"] == dict(recipe_cfg.data.preprocess)
    assert ckpt["hyper_parameters"]["backbone"] == recipe_cfg.model.backbone
    assert model.finetune.policy == recipe_cfg.model.finetune.policy
    # the run says what it started from (here: from scratch, by the test's own override)
    assert meta["pretrained"]["pretrained"] is False
    if task == "binary":
        assert meta["threshold_policy"] == str(recipe_cfg.evaluation.threshold)
    assert (tmp_path / "run" / "report" / "model_card.md").is_file()


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_is_gpu_ready(recipe):
    """Mixed precision where the run trains, loader workers, pretrained weights asked for."""
    cfg = compose_train([f"experiment={recipe}"])
    if recipe == "template":  # the CPU-sized phantom recipe stays as it is
        return
    assert cfg.model.pretrained is True
    assert cfg.trainer.precision == "32-true" or not torch.cuda.is_available()
    gpu = compose_train([f"experiment={recipe}", "trainer.accelerator=gpu"])
    if torch.cuda.is_available():
        assert gpu.trainer.precision in ("bf16-mixed", "16-mixed")
    assert compose_train([f"experiment={recipe}", "trainer=cpu"]).trainer.precision == "32-true"
    assert cfg.data.num_workers >= 0 and cfg.model.channels_last is True


@pytest.mark.gpu
def test_recipe_trains_on_the_gpu_in_mixed_precision(fixtures, tmp_path):
    metrics, objs = train_in_process(
        ["experiment=resnet18_pneumonia", f"data.source.root={fixtures('kaggle_pneumonia')}",
         *TINY],
        tmp_path,
    )  # fmt: skip
    trainer = objs["trainer"]
    assert trainer.strategy.root_device.type == "cuda"
    assert trainer.precision in ("bf16-mixed", "16-mixed")
    assert 0.0 <= metrics["test/auroc"] <= 1.0


@pytest.mark.slow
def test_gpu_check_runs_in_its_reduced_mode(tmp_path, monkeypatch):
    """benchmarks/gpu_check.py, the one script a GPU machine runs, cannot rot: every part of it
    runs here at tiny sizes (its pytest -m gpu part is left out: this is that suite)."""
    out = tmp_path / "gpu_check.json"
    sys.path.insert(0, str(ROOT / "benchmarks"))  # as the script runs: next to common.py
    try:
        import gpu_check

        def train_py(*args):  # common.train_py's command, started as the tests start theirs
            proc = run_process([sys.executable, str(ROOT / "train.py"), *args], env=script_env())
            if proc.returncode != 0:
                raise RuntimeError(f"train.py {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
            return proc

        monkeypatch.setattr(gpu_check, "train_py", train_py)

        gpu_check.main(["--reduced", "--work", str(tmp_path), "--out", str(out), "--skip", "tests"])
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    result = json.loads(out.read_text())
    assert result["mode"] == "reduced" and "machine" in result
    assert [r["recipe"] for r in result["recipes"]] == RECIPES
    for row in result["recipes"]:
        assert row["size"] == 32 and row["train_img_s"] > 0 and row["ceiling_img_s"] > 0
    assert result["augment"]["batch"] > 0 and result["augment"]["cpu"] > 0
    assert result["ddp"]["ok"], result["ddp"]["error"]
