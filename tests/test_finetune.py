"""Transfer-learning controls: blocks, parameter groups, staged unfreezing, frozen BatchNorm,
and the class-balanced (distributed) sampler."""

from collections import Counter

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from ddp_probe import changed, snapshot
from torch.utils.data import DataLoader, Dataset

from cxrlab.data.samplers import DistributedWeightedSampler, class_balanced_weights
from cxrlab.models.backbones import BACKBONES, build_backbone
from cxrlab.models.finetune import FinetuneConfig, param_groups, resolve_blocks
from cxrlab.models.module import CXRClassifier


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_names_five_blocks_that_cover_its_trunk(name):
    net, _, _ = build_backbone(name, 2, pretrained=False)
    blocks = resolve_blocks(net, BACKBONES[name].blocks)
    assert len(blocks) == 5
    in_blocks = [id(p) for b in blocks for m in b for p in m.parameters()]
    assert len(in_blocks) == len(set(in_blocks))  # no parameter in two blocks
    assert set(in_blocks) == {id(p) for p in net.features.parameters()}  # and none left out


def test_groups_split_head_backbone_and_decay():
    net, _, _ = build_backbone("resnet18", 2, pretrained=False)
    cfg = FinetuneConfig(policy="full", backbone_lr_scale=0.1)
    groups = {g["name"]: g for g in param_groups(net, cfg, lr=1e-3, weight_decay=1e-4)}
    assert set(groups) == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    assert groups["head"]["lr"] == 1e-3 and groups["backbone"]["lr"] == pytest.approx(1e-4)
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert groups["backbone"]["weight_decay"] == 1e-4
    bn = net.features[1]  # the stem's BatchNorm
    no_decay = {id(p) for p in groups["backbone_no_decay"]["params"]}
    assert id(bn.weight) in no_decay and id(bn.bias) in no_decay
    assert id(net.features[0].weight) in {id(p) for p in groups["backbone"]["params"]}
    assert id(net.head.bias) in {id(p) for p in groups["head_no_decay"]["params"]}
    head_only = param_groups(net, FinetuneConfig(policy="head"), 1e-3, 0.0)
    assert {g["name"] for g in head_only} == {"head", "head_no_decay"}


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"policy": "partial"}, "policy"),
        ({"unfreeze_blocks": 0}, "unfreeze_blocks"),
        ({"unfreeze_blocks": "some"}, "unfreeze_blocks"),
        ({"unfreeze_at_epoch": -1}, "unfreeze_at_epoch"),
    ],
)
def test_bad_finetune_settings_name_the_key(bad, key):
    with pytest.raises(ValueError, match=f"model.finetune.{key}"):
        FinetuneConfig(**bad)


class RandomImages(Dataset):
    def __init__(self, n=48, size=32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
        self.y = torch.arange(n) % 2

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]), i


class Probe(pl.Callback):
    """Per epoch: which blocks' weights and BatchNorm statistics changed, each group's lr, and
    which blocks the backward pass runs through (their outputs are part of the autograd graph)."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.epochs = []
        self.graph = [False] * len(blocks)
        for i, block in enumerate(blocks):
            for m in block:
                m.register_forward_hook(self._hook(i))

    def _hook(self, i):
        def hook(module, args, out):
            if module.training and torch.is_grad_enabled() and out.requires_grad:
                self.graph[i] = True

        return hook

    def on_train_epoch_start(self, trainer, pl_module):
        self.before = snapshot(self.blocks, pl_module.net.head)
        self.graph = [False] * len(self.blocks)

    def on_train_epoch_end(self, trainer, pl_module):
        moved = changed(self.before, snapshot(self.blocks, pl_module.net.head))
        lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
        self.epochs.append(
            {"blocks": moved[:-1], "head": moved[-1], "lrs": lrs, "backward": self.graph}
        )


def fit(finetune, epochs=3):
    pl.seed_everything(0)
    model = CXRClassifier(
        backbone="resnet18",
        class_names=["normal", "pneumonia"],
        class_counts=[24, 24],
        preprocess={"size": 32},
        pretrained=False,
        optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 1e-2},
        finetune=finetune,
    )
    probe = Probe(resolve_blocks(model.net, BACKBONES["resnet18"].blocks))
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[probe],
    )
    trainer.fit(model, DataLoader(RandomImages(), batch_size=16))
    return model, probe.epochs


def test_staged_trains_the_head_first_then_the_last_blocks_at_their_own_rate():
    _, epochs = fit(
        {"policy": "staged", "unfreeze_at_epoch": 1, "unfreeze_blocks": 2, "backbone_lr_scale": 0.1}
    )
    # epoch 0: only the head moves; the frozen backbone keeps weights AND BatchNorm statistics
    assert epochs[0]["head"] and epochs[0]["blocks"] == [False] * 5
    # ... and the backward pass stops at the head (one process: frozen blocks are left out of
    # the autograd graph, so the head phase costs what policy=head costs)
    assert epochs[0]["backward"] == [False] * 5
    # epochs 1, 2: the last two blocks train too; the first three stay as they were and the
    # backward pass stops where they begin
    for e in epochs[1:]:
        assert e["head"] and e["blocks"] == [False, False, False, True, True]
        assert e["backward"] == [False, False, False, True, True]
    for e in epochs:
        assert e["lrs"]["head"] == pytest.approx(1e-3)
        assert e["lrs"]["backbone"] == pytest.approx(1e-4)
        assert e["lrs"]["backbone_no_decay"] == pytest.approx(1e-4)


def test_head_policy_never_touches_the_backbone():
    model, epochs = fit({"policy": "head"}, epochs=2)
    assert all(e["head"] and e["blocks"] == [False] * 5 for e in epochs)
    assert not any(p.requires_grad for p in model.net.features.parameters())
    assert {g["name"] for g in model.trainer.optimizers[0].param_groups} == {
        "head",
        "head_no_decay",
    }


def test_full_trains_everything():
    _, epochs = fit({"policy": "full"}, epochs=1)
    assert epochs[0]["head"] and epochs[0]["blocks"] == [True] * 5
    assert epochs[0]["backward"] == [True] * 5


# ---------------------------------------------------------------- class-balanced sampling
def test_weighted_sampler_balances_classes():
    labels = np.array([0] * 900 + [1] * 100)
    s = DistributedWeightedSampler(class_balanced_weights(labels), 4000, 1, 0, seed=1)
    counts = Counter(labels[list(s)].tolist())
    assert abs(counts[0] - counts[1]) < 400  # ~2000 each instead of 3600 / 400


def test_weighted_sampler_gives_ranks_disjoint_parts_of_one_epoch():
    w = class_balanced_weights(np.array([0] * 30 + [1] * 10))
    one = DistributedWeightedSampler(w, 40, num_replicas=1, rank=0, seed=5)
    ranks = [DistributedWeightedSampler(w, 40, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    draws = [list(r) for r in ranks]
    assert len(draws[0]) == len(draws[1]) == 20
    # the two shards interleave back into the single-process epoch: disjoint draws of it
    assert [i for pair in zip(*draws) for i in pair] == list(one)
    for r in ranks + [one]:
        r.set_epoch(1)
    assert [list(r) for r in ranks] != draws  # a new epoch, new draws
    with pytest.raises(ValueError, match="epoch_size"):
        DistributedWeightedSampler(w, -3, 1, 0)


@pytest.mark.slow
def test_train_py_runs_staged_finetuning_with_weighted_sampling(tmp_path):
    from conftest import train_here

    proc = train_here(
        tmp_path,
        "model=resnet18",
        "model.finetune.policy=staged",
        "model.finetune.unfreeze_at_epoch=1",
        "model.finetune.unfreeze_blocks=1",
        "model.finetune.backbone_lr_scale=0.1",
        "data.sampler=weighted",
        "data.epoch_size=40",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=null",
        "evaluation.bootstrap=20",
    )
    log = proc.stderr  # the run's log lines
    assert "Fine-tuning (staged) from epoch 0: 0 of 5 backbone blocks train" in log
    assert "Fine-tuning (staged) from epoch 1: 1 of 5 backbone blocks train" in log
    assert (tmp_path / "run" / "test_metrics.json").is_file(), proc.stdout[-2000:]


def test_bad_sampler_fails_early(tmp_path):
    from conftest import train_here

    proc = train_here(tmp_path, "data.sampler=balanced", check=False)
    assert proc.returncode == 2
    assert "data.sampler='balanced' is not allowed" in proc.stderr


def test_init_from_copies_another_models_trunk_not_its_head(tmp_path):
    source, _ = fit({"policy": "full"}, epochs=1)
    ckpt = tmp_path / "source.ckpt"
    source.trainer.save_checkpoint(ckpt)
    kwargs = dict(
        class_names=["a", "b", "c"],  # another task: three classes
        class_counts=[1, 1, 1],
        preprocess={"size": 32},
        pretrained=False,
    )
    model = CXRClassifier(backbone="resnet18", init_from=str(ckpt), **kwargs)
    for (k, a), b in zip(
        source.net.features.state_dict().items(), model.net.features.state_dict().values()
    ):
        assert torch.equal(a, b), k
    assert model.net.head.out_features == 3
    with pytest.raises(ValueError, match="holds a resnet18 backbone, not efficientnet_b0"):
        CXRClassifier(backbone="efficientnet_b0", init_from=str(ckpt), **kwargs)
    with pytest.raises(FileNotFoundError, match="model.init_from="):
        CXRClassifier(backbone="resnet18", init_from=str(tmp_path / "nope.ckpt"), **kwargs)
