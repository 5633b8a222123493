"""``minivit demo``: train a small ViT teacher, compress it twice, compare. A few minutes on 2 CPU cores.

1. ``teacher/``: a 4-block ViT trained from scratch on Fashion-MNIST (found locally, or downloaded once,
   checksummed, into the cache) or, offline, scikit-learn's digits;
2. ``share2/``: the teacher compressed to the bytes of share 2 (about half the block weights) by the ``compress``
   default recipe (relaxed sharing, :func:`minivit.budget.recipe`), distilled from it;
3. ``single/``: the bytes of one shared block for all layers, the same way;
4. ``demo.md`` / ``demo.json``: parameters, MB, top-1 and single-image latency of the three.

Each stage is an ordinary ``minivit train`` / ``minivit compress`` run folder.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..errors import ConfigError
from ..io import locks_output
from ..spec import MultiplexSpec
from ..train.engine import TrainConfig, say
from .commands import RUN_MARKERS, run_compress, run_eval, run_train, write_json

# Sizes chosen so that the whole demo takes a few minutes on 2 CPU cores (see README.md).
SETTINGS = {
    "fashion-mnist": dict(
        model_args=dict(img_size=28, patch_size=7, depth=4, embed_dim=64, num_heads=4, mlp_ratio=2.0),
        train_limit=30000,
        val_limit=None,
        teacher=dict(epochs=5, lr=2e-3, warmup_epochs=0.5),
        student=dict(epochs=3, lr=2e-3, warmup_epochs=0.2),
        batch_size=128,
    ),
    "digits": dict(
        model_args=dict(img_size=16, patch_size=4, depth=4, embed_dim=64, num_heads=4, mlp_ratio=2.0),
        train_limit=None,
        val_limit=None,
        teacher=dict(epochs=30, lr=2e-3, warmup_epochs=2),
        student=dict(epochs=10, lr=2e-3, warmup_epochs=1),
        batch_size=64,
    ),
}
STAGES = ("teacher", "share2", "single")


def _clear(out: Path) -> None:
    """Remove the demo's own earlier results (only folders that look like minivit runs)."""
    for name in STAGES:
        stage = out / name
        if stage.exists():
            if not any((stage / m).exists() for m in RUN_MARKERS):
                raise ConfigError(f"{stage} exists and is not a minivit run", "choose another --output")
            shutil.rmtree(stage)
    for name in ("demo.md", "demo.json"):
        (out / name).unlink(missing_ok=True)


def table(rows: list[dict]) -> str:
    head = (
        "| model | params | MB | top-1 (%) | top-5 (%) | latency (ms/img) | vs teacher |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
    )
    t = rows[0]
    lines = [
        f"| {r['name']} | {r['params']:,} | {r['size_mb']:.2f} | {r['top1']:.2f} | {r['top5']:.2f} | "
        f"{r['latency_ms']:.2f} | {t['params'] / r['params']:.2f}x smaller, {r['top1'] - t['top1']:+.2f} top-1 |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def demo_data(data: str | None = None, log=say) -> str:
    """The demo's dataset: ``data`` if given, else Fashion-MNIST (downloaded when missing); offline, digits,
    after one line saying so and how to get the real data."""
    from ..data import fetch_fashion_mnist

    return data or ("fashion-mnist" if fetch_fashion_mnist(log=log) else "digits")


@locks_output("minivit demo")
def run_demo(output="runs/demo", data: str | None = None, resume: bool = False, progress: bool = True, log=say):
    start = time.perf_counter()
    data = demo_data(data, log)
    key = "fashion-mnist" if "fashion" in str(data).lower() or "fmnist" in str(data).lower() else "digits"
    s = SETTINGS[key] if str(data) in ("fashion-mnist", "digits") else SETTINGS["fashion-mnist"]
    out = Path(output).expanduser()
    if not resume:
        _clear(out)
    limits = dict(train_limit=s["train_limit"], val_limit=s["val_limit"])

    def config(stage: dict) -> TrainConfig:
        return TrainConfig(batch_size=s["batch_size"], weight_decay=0.05, progress=progress, **stage)

    log(f"== minivit demo on {data}: output {out}")
    log("== 1/3 teacher: a small ViT trained from scratch")
    run_train(
        "vit_small_patch16_224", data, out / "teacher", config(s["teacher"]), dict(s["model_args"]),
        resume=resume, log=log, **limits,
    )  # fmt: skip
    depth = s["model_args"]["depth"]
    for name, share in (("share2", 2), ("single", "all")):
        log(f"== {2 if name == 'share2' else 3}/3 {name}: the bytes of share {depth if share == 'all' else share}, "
            "distilled from the teacher")  # fmt: skip
        spec = MultiplexSpec(share=share)
        run_compress(str(out / "teacher"), data, out / name, config(s["student"]), spec=spec, resume=resume, log=log,
                     **limits)  # fmt: skip
    rows = []
    for name in STAGES:
        r = run_eval(str(out / name), data, val_limit=s["val_limit"])
        rows.append({"name": name, **{k: r[k] for k in ("params", "size_mb", "top1", "top5", "latency_ms")}})
    text = table(rows)
    elapsed = time.perf_counter() - start
    md = f"# minivit demo ({data}, {rows[0]['top1']:.2f}% teacher top-1)\n\n{text}\nTotal time: {elapsed:.0f} s\n"
    (out / "demo.md").write_text(md)
    write_json(out / "demo.json", {"data": str(data), "rows": rows, "time_s": round(elapsed, 1)})
    log("\n" + text)
    log(f"saved {out / 'demo.md'} and {out / 'demo.json'} ({elapsed:.0f} s)")
    return {"rows": rows, "time_s": elapsed, "data": str(data)}


__all__ = ["SETTINGS", "demo_data", "run_demo", "table"]
