"""A search space written in Hydra's override grammar, as Optuna distributions.

The grammar is hydra-optuna-sweeper's, so its configs carry over unchanged::

    model.optimizer.lr: tag(log, interval(1e-4, 3e-3))   # FloatDistribution(log=True)
    model.dropout: interval(0.0, 0.5)                     # FloatDistribution
    trainer.max_epochs: int(interval(4, 12))              # IntDistribution
    data.batch_size: choice(16, 32, 64)                   # CategoricalDistribution
    model: choice(densenet121_xrv, resnet18)              # a config group choice
    data.preprocess.size: range(64, 128, 32)              # IntDistribution(64, 128, step=32)
    model.loss.name: focal                                # fixed in every trial

``range(a, b, step)`` includes ``b`` here (as in hydra-optuna-sweeper, unlike Hydra's basic
sweeper); ``tag(log, ...)`` asks for a log-uniform distribution.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)


class SearchSpaceError(ValueError):
    pass


def parse(params: dict[str, str] | None, arguments: Iterable[str] = ()) -> tuple[dict, list[str]]:
    """(distributions by override key, fixed overrides).

    ``params`` comes from ``hydra.sweeper.params``; ``arguments`` are the command line's
    overrides: a sweep there (``lr=interval(...)``) joins the search space and wins over the
    config, anything else is passed unchanged to every trial.
    """
    parser = OverridesParser.create()
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    items = [f"{k}={v}" for k, v in (params or {}).items()]
    for source, lines in (("hydra.sweeper.params", items), ("the command line", list(arguments))):
        for line in lines:
            try:
                (override,) = parser.parse_overrides([line])
            except Exception as e:
                raise SearchSpaceError(f"{source}: cannot parse {line!r}: {e}") from e
            key = override.get_key_element()
            space.pop(key, None)
            fixed.pop(key, None)
            if override.is_sweep_override():
                space[key] = to_distribution(override, source)
            else:
                fixed[key] = line
    return space, list(fixed.values())


def to_distribution(override: Override, source: str = "params") -> BaseDistribution:
    value = override.value()
    key = override.get_key_element()
    log = "log" in getattr(value, "tags", set())
    if isinstance(value, ChoiceSweep):
        if log:
            raise SearchSpaceError(f"{source}: {key}: tag(log, ...) needs interval() or range()")
        choices = [_primitive(x, key) for x in value.list]
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(x, int) for x in (start, stop, step)):
            return IntDistribution(int(start), int(stop), log=log, step=1 if log else int(step))
        return FloatDistribution(float(start), float(stop), log=log, step=None if log else step)
    if isinstance(value, IntervalSweep):
        start, end = value.start, value.end
        if isinstance(start, int) and isinstance(end, int):
            return IntDistribution(start, end, log=log)
        if log and float(start) <= 0:
            raise SearchSpaceError(f"{source}: {key}: a log interval must start above 0")
        return FloatDistribution(float(start), float(end), log=log)
    raise SearchSpaceError(f"{source}: {key}: unsupported sweep {override.input_line!r}")


def _primitive(x, key: str):
    if x is None or isinstance(x, bool | int | float | str):
        return x
    raise SearchSpaceError(f"{key}: choice values must be numbers, strings, booleans or null")


_PLAIN = re.compile(r"^[\w./:-]+$")
_PLAIN_IN_DICT = re.compile(r"^[\w-]+$")


def to_override(key: str, value) -> str:
    """``key=value`` in the override grammar (strings quoted when they need it)."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value) if math.isfinite(value) else str(value)
    elif isinstance(value, int):
        text = str(value)
    else:
        text = quote(value)
    return f"{key}={text}"


def quote(text: str, in_dict: bool = False) -> str:
    """A string as an override value: bare when the grammar allows, else single-quoted.

    ``in_dict``: a value inside ``{key:value}``, where ':' and '/' need quotes too.
    """
    plain = _PLAIN_IN_DICT if in_dict else _PLAIN
    return text if plain.match(text) else "'" + text.replace("'", "\\'") + "'"


class PendingGrid:
    """``hydra/sweeper/sampler=grid`` without a grid of its own: the sweeper makes the
    GridSampler from the sweep's parameters once it has parsed them (``grid_of``)."""

    def __init__(self, seed: int | None = None):
        self.seed = seed


def grid_sampler(search_space: dict | None = None, seed: int | None = None):
    """The ``grid`` sampler's target: Optuna's GridSampler over ``search_space`` when given
    (hydra-optuna-sweeper's way), else one made from ``hydra.sweeper.params``."""
    import optuna

    if search_space:
        return optuna.samplers.GridSampler({k: list(v) for k, v in search_space.items()}, seed)
    return PendingGrid(seed)


def grid_of(space: dict[str, BaseDistribution]) -> dict[str, list]:
    """The grid of a search space: choice() values and the integers of range()/int(interval());
    a continuous interval has no grid and is named."""
    grid = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise SearchSpaceError(
                f"hydra.sweeper.params: {key}: a grid needs choice(...) or range(...) values, "
                f"not {type(dist).__name__} (hydra/sweeper/sampler=grid)"
            )
    return grid


_PLUGIN_TYPES = {"categorical", "float", "int"}


def from_plugin_search_space(search_space: dict) -> dict[str, str]:
    """hydra-optuna-sweeper's pre-1.2 ``search_space`` entries ({type, low, high, log, step,
    choices}) in the override grammar of ``params``, to say what to write instead."""
    out = {}
    for key, spec in search_space.items():
        kind = str(spec.get("type", ""))
        if kind not in _PLUGIN_TYPES:
            out[key] = f"? (type {kind!r})"
        elif kind == "categorical":
            out[key] = "choice(" + ", ".join(str(c) for c in spec["choices"]) + ")"
        elif spec.get("step") is not None:
            out[key] = f"range({spec['low']}, {spec['high']}, {spec['step']})"
        else:
            inner = f"interval({spec['low']}, {spec['high']})"
            inner = f"int({inner})" if kind == "int" else inner
            out[key] = f"tag(log, {inner})" if spec.get("log") else inner
    return out
