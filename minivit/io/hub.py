"""Share a saved model on the Hugging Face Hub, as every timm model is shared.

:func:`push_to_hub` loads a folder written by :func:`~minivit.io.save_pretrained` and uploads it with timm's
``push_to_hf_hub``: ``config.json`` in timm's layout (plus minivit's fields), ``model.safetensors`` and a model
card (with the run's figures when the folder holds ``report.json``). Anyone can then load it with::

    import minivit, timm
    model = timm.create_model("hf-hub:USER/NAME", pretrained=True)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from torch import nn

from ..errors import CheckpointError, ConfigError, MinivitError
from .pretrained import check_float_model, from_pretrained, model_config

REPO_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
PAPER = "https://arxiv.org/abs/2204.07154"
TIMM_FIELDS = ("architecture", "num_classes", "num_features", "global_pool", "model_args", "pretrained_cfg")
"""The fields of ``config.json`` that timm's ``save_for_hf`` writes itself; the others are minivit's."""


def _report(directory: Path) -> dict:
    path = directory / "report.json"
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})", "fix or remove report.json") from None
    return report if isinstance(report, dict) else {}


def model_card(model: nn.Module, cfg: dict, report: dict, repo_id: str) -> dict:
    """timm's ``model_card`` dict (``generate_readme``) for a saved minivit model and its run report."""
    size = cfg["pretrained_cfg"].get("input_size", [3, 224, 224])
    stats = {"Params (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}
    stats["Image size"] = f"{size[1]} x {size[2]}"
    details = {"Model Type": "Image classification / feature backbone", "Model Stats": stats}
    details["Architecture"] = cfg["architecture"]
    if "multiplex" in cfg:
        details["Weight multiplexing"] = {k: v for k, v in cfg["multiplex"].items() if v is not None}
    if report.get("data"):
        details["Dataset"] = str(report["data"])
    if isinstance(report.get("val"), dict) and "top1" in report["val"]:
        stats["Val top-1 (%)"] = report["val"]["top1"]
    details["Papers"] = {"MiniViT: Compressing Vision Transformers with Weight Multiplexing": PAPER}
    usage = (
        "```python\nimport minivit  # registers the architecture with timm\nimport timm\n\n"
        f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()\n'
        "config = timm.data.resolve_model_data_config(model)\n"
        "transform = timm.data.create_transform(**config, is_training=False)\n```\n"
    )
    card = {"description": "A vision transformer compressed by weight multiplexing (minivit).", "details": details}
    card.update(usage=usage, tags=["image-classification", "timm", "minivit"])
    license_ = cfg["pretrained_cfg"].get("license")
    if license_:
        card["license"] = license_
    return card


def push_to_hub(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Add model",
) -> str:
    """Upload the model saved in ``directory`` to the Hub repository ``repo_id`` (``USER/NAME``, created if
    missing) with timm's ``push_to_hf_hub``; returns what the upload answers (the commit URL)."""
    if not isinstance(repo_id, str) or not REPO_PATTERN.match(repo_id):
        raise ConfigError(f"repository {repo_id!r} is not of the form USER/NAME", "e.g. --repo alice/mini-deit-share2")
    try:
        from timm.models import push_to_hf_hub
    except ImportError:
        raise ConfigError("pushing needs huggingface_hub", "pip install huggingface_hub") from None
    directory = Path(directory)
    model = check_float_model(from_pretrained(directory), directory, "pushed (timm's Hub format is fp32)")
    cfg = model_config(model)
    model.pretrained_cfg = model.default_cfg = dict(cfg["pretrained_cfg"])  # what timm writes to config.json
    own = {k: v for k, v in cfg.items() if k not in TIMM_FIELDS}
    card = model_card(model, cfg, _report(directory), repo_id)
    try:
        result = push_to_hf_hub(
            model, repo_id, commit_message=commit_message, token=token, revision=revision, private=private,
            model_config=own, model_card=card, model_args=cfg["model_args"], safe_serialization=True,
        )  # fmt: skip
    except MinivitError:
        raise
    except Exception as e:  # the Hub: no network, no token, no permission
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise MinivitError(
            f"cannot push to {repo_id}: {type(e).__name__}: {why}", "check the network and `huggingface-cli login`"
        ) from None
    return str(result)
