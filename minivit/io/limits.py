"""Models built from untrusted arguments: a size bound checked before allocation, and one-line errors.

A ``config.json`` or ``--model-args`` may ask for any architecture (``depth=1000000``,
``embed_dim=4096``). Before a model is built for real its parameter count is estimated on the
``meta`` device (shapes only, no memory): the architecture is built at two small depths and the count
extrapolated linearly in each depth argument (``depth``, ``depths``), so even an absurd depth costs
two tiny builds. A model over the bound is refused with one line; the bound is
:data:`DEFAULT_MAX_PARAMS` (2e9 parameters, 8 GB in float32), raised with the environment variable
``MINIVIT_MAX_PARAMS`` or, in Python, ``with parameter_limit(n):``.

:func:`build_named` builds a model by name from user arguments: size check, build, one forward pass
on a zero image. Whatever breaks (``RuntimeError`` of a convolution larger than the image, a negative
dimension, a wrong type) becomes one :class:`~minivit.errors.ConfigError` line naming the option
(``--model-args``, ``--teacher-args``) and, where the error shows it, the offending ``key=value``.

:func:`check_finite` refuses a model with NaN/inf weights (a diverged run evaluates as chance accuracy
without it); :func:`check_materialised` one whose tensors are on the ``meta`` device.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, MinivitError

DEFAULT_MAX_PARAMS = 2_000_000_000
_limit: contextvars.ContextVar[int | None] = contextvars.ContextVar("minivit_max_params", default=None)
_estimating: contextvars.ContextVar[bool] = contextvars.ContextVar("minivit_estimating", default=False)
_DEPTH_PAIRS = ((1, 2), (2, 4), (3, 6), (4, 8), (6, 12), (12, 24))  # small depths a share value divides


def max_parameters() -> int:
    """The bound in force: :func:`parameter_limit`'s, else ``MINIVIT_MAX_PARAMS``, else the default."""
    if _limit.get() is not None:
        return _limit.get()
    text = os.environ.get("MINIVIT_MAX_PARAMS", "").strip()
    if not text:
        return DEFAULT_MAX_PARAMS
    try:
        value = int(float(text))
    except ValueError:
        raise ConfigError(
            f"MINIVIT_MAX_PARAMS={text!r} is not a number", "set it to a parameter count such as 5e9"
        ) from None
    if value < 1:
        raise ConfigError(f"MINIVIT_MAX_PARAMS must be positive, got {text}", "set it to a parameter count such as 5e9")
    return value


@contextlib.contextmanager
def parameter_limit(n: int) -> Iterator[None]:
    """Models of up to ``n`` parameters may be built inside the ``with`` block."""
    token = _limit.set(int(n))
    try:
        yield
    finally:
        _limit.reset(token)


def _meta_count(build: Callable[[dict], nn.Module], args: dict) -> int:
    from ..measure import count_parameters

    with torch.device("meta"):
        return count_parameters(build(args))


def _depth_keys(args: dict) -> list[tuple[str, int | None]]:
    """``(key, stage)`` of every depth argument: ``("depth", None)``, ``("depths", 0)``, ..."""
    out: list[tuple[str, int | None]] = []
    if _is_int(args.get("depth")):
        out.append(("depth", None))
    depths = args.get("depths")
    if isinstance(depths, (list, tuple)) and depths and all(_is_int(d) for d in depths):
        out += [("depths", i) for i in range(len(depths))]
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _with_depth(args: dict, key: str, stage: int | None, value: int, base: int) -> dict:
    if stage is None:
        return {**args, key: value}
    depths = [base] * len(args[key])
    depths[stage] = value
    return {**args, key: tuple(depths)}


def _extrapolate(build, args: dict, keys, low: int, high: int) -> int:
    """The count at ``args``' depths from builds with every depth at ``low`` and one at a time at ``high``."""
    lows = dict(args)
    for key, stage in keys:
        lows = _with_depth(lows, key, stage, low, low)
    base = _meta_count(build, lows)
    total = base
    for key, stage in keys:
        grown = _meta_count(build, _with_depth(lows, key, stage, high, low))
        real = args[key] if stage is None else args[key][stage]
        total += (real - low) * (grown - base) // (high - low)
    return total


def estimate_parameters(build: Callable[[dict], nn.Module], args: dict) -> int:
    """Parameters of ``build(args)`` without allocating them (meta device; linear in depth arguments)."""
    keys = _depth_keys(args)
    if keys and max(args[k] if s is None else args[k][s] for k, s in keys) > 24:
        for low, high in _DEPTH_PAIRS:
            try:
                return _extrapolate(build, args, keys, low, high)
            except Exception:  # noqa: BLE001 - that depth does not fit the other arguments: try the next pair
                continue
    return _meta_count(build, args)


def check_size(build: Callable[[dict], nn.Module], args: dict, what: str, hint: str = "") -> int:
    """Raise one :class:`ConfigError` line when ``build(args)`` would exceed :func:`max_parameters`.

    Returns the estimate. Build errors propagate (the real build would raise them too). Inside an
    estimate (``build`` itself checking sizes) this returns 0 at once.
    """
    if _estimating.get():
        return 0
    token = _estimating.set(True)
    try:
        n = estimate_parameters(build, args)
    finally:
        _estimating.reset(token)
    bound = max_parameters()
    if n > bound:
        raise ConfigError(
            f"{what} asks for a model of {n:,} parameters ({n * 4 / 1e9:,.1f} GB in float32), over the bound "
            f"of {bound:,}",
            hint or "check its size arguments, or raise the bound with MINIVIT_MAX_PARAMS=<count> if it is meant",
        )
    return n


def check_config_size(cfg: dict) -> None:
    """:func:`check_size` for a ``config.json`` dict (called by :func:`~minivit.io.build_from_config`)."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_args"), dict):
        return  # the build itself says what is wrong
    max_parameters()  # a malformed MINIVIT_MAX_PARAMS is said, not ignored
    from .pretrained import build_from_config

    try:
        check_size(lambda a: build_from_config({**cfg, "model_args": a}), cfg["model_args"], "config.json")
    except MinivitError as e:
        if "over the bound" in e.message:
            raise
    except Exception:  # noqa: BLE001 - the real build reports it as one line
        pass


def _suspects(args: dict, message: str) -> list[str]:
    """``key=value`` of the arguments that look guilty: non-positive sizes, else those the message names
    (by key or, for numbers, by value)."""
    shown = {k: f"{k}={_show(v)}" for k, v in args.items()}
    numbers = {k: [x for x in (v if isinstance(v, (list, tuple)) else (v,)) if _is_number(x)] for k, v in args.items()}
    bad = [shown[k] for k, xs in numbers.items() if any(x <= 0 for x in xs) and k != "num_classes"]
    if bad:
        return bad
    named = [shown[k] for k in args if re.search(rf"\b{re.escape(k)}\b", message)]
    if named:
        return named

    def appears(x) -> bool:
        return re.search(rf"(?<![\w.]){re.escape(str(x))}(?![\w.])", message) is not None

    return [shown[k] for k, xs in numbers.items() if any(appears(x) for x in xs)]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def build_error(error: BaseException, name: str, args: dict, option: str) -> ConfigError:
    """One line for a model ``name`` that ``args`` (given as ``option``) fail to build or run."""
    text = error.message if isinstance(error, MinivitError) else f"{type(error).__name__}: {error}"
    text = " ".join(text.split())[:300]
    text = text.removeprefix(f"bad arguments for model {name!r}: ")
    if text.startswith(f"cannot build model {name!r} with "):
        text = text.split("}: ", 1)[-1]
    if not args:
        return ConfigError(f"model {name!r} cannot be built: {text}", "pick another model")
    given = " ".join(f"{k}={_show(v)}" for k, v in args.items())
    suspects = _suspects(args, text)
    hint = f"check {' '.join(suspects)}" if suspects else f"check the names and values of {option}"
    return ConfigError(f"{option} {given} do not make a working {name!r}: {text}", hint)


def build_named(name: str, args: dict, option: str = "--model-args", pretrained: bool = False) -> nn.Module:
    """``create_model(name, **args)`` after a size check, tried on one zero image; one-line errors naming ``option``.

    With ``pretrained=True`` errors other than :class:`MinivitError` raised while creating the model
    (a failed download) propagate unchanged for the caller to report.
    """
    from ..zoo import create_model

    translated = (RuntimeError, ValueError, TypeError, AssertionError, ArithmeticError, IndexError, KeyError)
    try:
        hint = f"lower depth/embed_dim in {option}, or raise MINIVIT_MAX_PARAMS if it is meant"
        check_size(lambda a: create_model(name, **a), args, f"{option} for {name!r}", hint)
        try:
            model = create_model(name, pretrained=pretrained, **args)
        except translated as e:
            if pretrained and not isinstance(e, MinivitError):
                raise _Download(e) from e
            raise
        _probe(model)
    except _Download as d:
        raise d.error from None
    except MinivitError as e:
        if e.message.startswith(("unknown model name", f"{option} for")):
            raise
        raise build_error(e, name, args, option) from None
    except translated as e:
        raise build_error(e, name, args, option) from None
    return model


class _Download(Exception):
    def __init__(self, error: BaseException):
        self.error = error


def _probe(model: nn.Module) -> None:
    """One forward pass on a zero image of the model's input size (eval mode, no gradients)."""
    from ..measure import infer_input_size

    was_training = model.training
    with torch.no_grad():
        model.eval()(torch.zeros(infer_input_size(model)))
    model.train(was_training)


def check_finite(model: nn.Module, source: str = "the model") -> nn.Module:
    """``model``, unless a weight is NaN or infinite: then one :class:`CheckpointError` line naming the tensors."""
    bad = {n: int((~torch.isfinite(t)).sum()) for n, t in model.state_dict().items() if _float_data(t)}
    bad = {n: c for n, c in bad.items() if c}
    if bad:
        raise CheckpointError(
            f"{source} has non-finite weights: {sum(bad.values()):,} NaN/inf values in {len(bad)} tensor(s), "
            f"e.g. {next(iter(bad))}",
            "its training diverged or the file is damaged; use an earlier checkpoint or retrain",
        )
    return model


def check_materialised(model: nn.Module, what: str = "the model") -> nn.Module:
    """``model``, unless some of its tensors are on the ``meta`` device (shapes without data)."""
    meta = [n for n, t in model.state_dict().items() if isinstance(t, torch.Tensor) and t.is_meta]
    if meta:
        raise ConfigError(
            f"{what} has no weights: {len(meta)} tensor(s) are on the meta device, e.g. {meta[0]}",
            "materialise it first: model.to_empty(device='cpu'), then load its weights",
        )
    return model


def _float_data(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and not t.is_meta


__all__ = [
    "DEFAULT_MAX_PARAMS",
    "build_error",
    "build_named",
    "check_finite",
    "check_materialised",
    "check_config_size",
    "check_size",
    "estimate_parameters",
    "max_parameters",
    "parameter_limit",
]
