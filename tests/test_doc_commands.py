"""Every shell command in README.md and docs/*.md works as typed into bash.

Each ```bash block is read as bash reads it (comments, line continuations, quotes: shlex in
POSIX mode), then every command is checked the way its program reads it:
- train.py, eval.py, explore.py: Hydra's override grammar and the composed config (and
  train.py's own validation), placeholders such as ``<run>`` standing for a real run's files;
- predict.py, serve.py, ``-m cxrlab.export``, ``-m cxrlab.data.augment_preview``, download_data.py:
  their argument parsers;
- make, pip, curl, torchrun, srun: bash parsing, and the train.py command inside them.
Inline `python ...` commands in the prose count too.
The commands that can run here are also run, at tiny size, as a user runs them (``bash -c``
from a folder laid out like the repository): the README's sweep, eval.py on another split,
predict.py on a folder and a quoted glob, the augmentation preview (export and explore
commands run in their own tests). A doc command that stops working fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFIGS, ROOT, shared_data_dir, warm_python
from hydra import compose, initialize_config_dir

from cxrlab.config import validate

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = "logs/train/runs/RUN/checkpoints/best.ckpt"  # where a doc's <run> points, in the scratch
ENV = {"NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1", "SLURM_JOB_ID": "7", "WORKER_ID": "1"}
HYDRA_SCRIPTS = {"train.py": "train.yaml", "eval.py": "eval.yaml", "explore.py": "explore.yaml"}
# a line of Hydra overrides alone (docs/sweeps.md lists pruner settings so) belongs to a sweep
FRAGMENT_BASE = "python train.py -m hparams_search=optuna"
# what runs here, by (document, start of the command); everything else is parsed and composed
# (export and explore commands run in test_serve.py and test_explore.py)
RUNS = {
    ("README.md", "python train.py -m hparams_search=optuna experiment=template"),
    ("evaluation.md", "python eval.py ckpt_path=... split=val"),
    ("serving.md", "python predict.py --ckpt best.ckpt data/my_xrays/"),
    ("augmentation.md", "python -m cxrlab.data.augment_preview"),
}
# appended to the commands that run, so they run in seconds (later overrides win)
TINY = {
    "train.py": [
        "data.source.num_patients=40", "data.dataset_size=null", "data.preprocess.size=32",
        "data.batch_size=8", "data.num_workers=0", "trainer.max_epochs=1",
        "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1",
        "++trainer.limit_test_batches=1", "trainer.accelerator=cpu", "evaluation.bootstrap=10",
        "hydra.sweeper.n_trials=1", "hydra.sweeper.params=null", "model.dropout=interval(0.0,0.5)",
        "hydra.sweeper.plots=false", "logger=csv",
    ],
    "eval.py": ["evaluation.bootstrap=10", "accelerator=cpu"],
}  # fmt: skip


def is_synopsis(line: str) -> bool:
    """An inline usage pattern (``[--flag N]``, ``<name>``, ``STORAGE:STUDY``, a trailing
    ``...`` for "more options"), not a command to copy."""
    return bool(re.search(r"\[|<(?!run>)\w+>|\b[A-Z]{3,}:[A-Z]{3,}|\n|\s\.\.\.(\s|$)", line))


def doc_commands() -> list[tuple[str, str]]:
    """(document, command line) for every command of every ```bash block, and every inline
    `python ...` command in the text (the README names many that way)."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`(python [^`]+)`", prose):
            if not is_synopsis(span):
                out.append((doc.name, span.replace("\\|", "|")))
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                first = shlex.split(line, comments=True)[0]
                if "=" in first and not first.startswith(("./", "/")):
                    line = f"{FRAGMENT_BASE} {line}"
                out.append((doc.name, line))
    return out


COMMANDS = doc_commands()


def as_typed(line: str) -> list[str]:
    """The words bash makes of the line, with the docs' placeholders filled in."""
    line = line.replace("<run>", "RUN").replace("ckpt_path=...", f"ckpt_path={RUN}")
    words = shlex.split(line, comments=True)
    return [re.sub(r"\$(\w+)", lambda m: ENV.get(m.group(1), m.group(0)), w) for w in words]


def first_job(overrides: list[str]) -> list[str]:
    """A multirun's first job: each sweep over values (``range(5)``, ``a,b``) at its first
    value; an ``interval`` (a sweeper's search space, tested in test_sweep.py) left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for text, o in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        if not o.is_sweep_override():
            out.append(text)
        elif o.is_discrete_sweep():
            out.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
    return out


def check_hydra(script: str, args: list[str]) -> None:
    overrides = [a for a in args if a != "-m"]
    if "-m" in args:
        overrides = first_job(overrides)
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(HYDRA_SCRIPTS[script], overrides=overrides, return_hydra_config=True)
    if script == "train.py":
        validate(cfg)


class Parsed(Exception):
    """Raised instead of running a program once its command line has been parsed."""


def check_argparse(words: list[str], monkeypatch) -> None:
    """Run a Python program's command line up to its argument parser and no further."""
    import argparse
    import runpy

    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    if words[1] == "-m":
        target, args = words[2], words[3:]
        monkeypatch.setattr(sys, "argv", [target, *args])
        run = lambda: runpy.run_module(target, run_name="__main__", alter_sys=True)  # noqa: E731
    else:
        script = ROOT / words[1]
        assert script.is_file(), f"{words[1]}: no such script"
        if "parse_args" not in script.read_text():
            return  # takes no options (e.g. benchmarks/run.py's section names)
        monkeypatch.setattr(sys, "argv", [str(script), *words[2:]])
        monkeypatch.syspath_prepend(str(script.parent))  # as `python script.py` does
        run = lambda: runpy.run_path(str(script), run_name="__main__")  # noqa: E731
    with pytest.raises(Parsed):
        run()


def check(words: list[str], monkeypatch) -> str:
    """Parse ``words`` as their program does; returns what was checked."""
    if words[0] in ("torchrun", "srun"):
        i = next(i for i, w in enumerate(words) if w.endswith("train.py"))
        check_hydra("train.py", words[i + 1 :])
        return "the train.py command"
    if words[0] != "python":
        return "bash parsing"  # make, pip, curl: a network, a build or a running server
    if words[1] in HYDRA_SCRIPTS:
        check_hydra(words[1], words[2:])
        return "Hydra overrides and config"
    check_argparse(words, monkeypatch)
    return "argument parser"


@pytest.mark.parametrize("doc, line", COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_every_doc_command_parses_as_its_program_reads_it(doc, line, monkeypatch):
    try:
        check(as_typed(line), monkeypatch)
    except SystemExit as e:  # argparse
        pytest.fail(f"{doc}: `{line}` is refused by its program (exit {e.code})")


def test_the_docs_have_commands_and_the_runs_name_real_ones():
    assert len(COMMANDS) > 30
    for doc, start in RUNS:
        assert any(d == doc and c.startswith(start) for d, c in COMMANDS), (doc, start)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, tiny_phantom):
    """A folder laid out like the repository: the entry points and configs, a trained run at
    logs/train/runs/RUN, the Kaggle dataset where data=kaggle_pneumonia looks, and the files
    the serving docs name."""
    from conftest import train_here

    from cxrlab.data.dicomwrite import write_dicom

    root = tmp_path_factory.mktemp("repo")
    for name in ("train.py", "eval.py", "explore.py", "predict.py", "serve.py",
                 "download_data.py", "configs"):  # fmt: skip
        (root / name).symlink_to(ROOT / name)
    (root / "data").mkdir()
    (root / "data" / "chest-xray-pneumonia").symlink_to(tiny_phantom)
    # the session's phantoms and cache (built once, under their locks), as a user links a
    # data folder kept elsewhere
    for name in ("synthetic", "cache"):
        (shared_data_dir() / name).mkdir(parents=True, exist_ok=True)
        (root / "data" / name).symlink_to(shared_data_dir() / name)
    train_here(root / "train", "model=resnet18", "trainer.max_epochs=1", "evaluation.bootstrap=10")
    ckpt = root / RUN
    ckpt.parent.mkdir(parents=True)
    shutil.copy(root / "train" / "run" / "checkpoints" / "best.ckpt", ckpt)
    shutil.copy(ckpt, root / "best.ckpt")
    images = sorted((tiny_phantom / "chest_xray" / "test").rglob("*.jpeg"))
    (root / "data" / "my_xrays").mkdir()
    for img in images[:2]:
        shutil.copy(img, root / "data" / "my_xrays" / img.name)
    (root / "more").mkdir()
    import cv2

    px = cv2.imread(str(images[2]), cv2.IMREAD_GRAYSCALE).astype("uint16") * 16
    write_dicom(root / "more" / "a.dcm", px, bits_stored=12)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("doc, start", sorted(RUNS))
def test_doc_commands_run_as_typed(doc, start, scratch):
    (line,) = [c for d, c in COMMANDS if d == doc and c.startswith(start)][:1]
    words = as_typed(line)
    script = words[1] if words[1] in TINY else None
    line = shlex.join(words + TINY.get(script, []))
    # `python` is this interpreter; `python <script>.py` starts forked from the worker's warm
    # server (its imports done, tests/warm.py), as every entry point the tests start
    warm = warm_python(scratch / ".warm-bin")
    path = [str(warm)] if warm else []
    env = dict(
        os.environ,
        **ENV,
        CXRLAB_ROOT=str(scratch),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        PATH=os.pathsep.join([*path, str(Path(sys.executable).parent), os.environ["PATH"]]),
    )
    proc = subprocess.run(["bash", "-c", line], cwd=scratch, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"{doc}: {line}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
