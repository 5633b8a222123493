"""Predictions files and the demo's Fashion-MNIST fetch (offline fallback, checksummed download)."""

from __future__ import annotations

import csv
import functools
import http.server
import threading
import urllib.error
from pathlib import Path

import pytest
import torch
from PIL import Image

from minivit.data import (
    PREDICTION_COLUMNS,
    build_dataset,
    fetch_fashion_mnist,
    prediction_rows,
    write_predictions,
)
from minivit.data import fashion_mnist as fmnist
from minivit.errors import DataError

SHARED_FMNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("MINIVIT_DATA", raising=False)
    monkeypatch.delenv("MINIVIT_OFFLINE", raising=False)
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", tmp_path / "no-system-dir")


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_predictions_for_a_builtin_set(tmp_path):
    val = build_dataset("digits", "val", 8, 1, limit=20)
    logits = torch.zeros(len(val), 10)
    logits[torch.arange(len(val)), torch.tensor(val.targets)] = 5.0
    out = write_predictions(tmp_path / "out" / "pred.csv", prediction_rows(val, logits))
    rows = read_csv(out)
    assert list(rows[0]) == list(PREDICTION_COLUMNS) and len(rows) == 20
    assert rows[3]["path"] == f"val/{int(val.source_index[3])}"
    assert all(r["label"] == r["pred"] and r["pred_name"] == r["label"] for r in rows)
    assert float(rows[0]["prob"]) == pytest.approx(torch.softmax(logits[0], 0).max().item(), abs=1e-6)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pred.csv"]  # no temp file left


def test_predictions_for_a_folder_and_bad_input(tmp_path):
    for split, cls in (("train", "cat"), ("train", "dog"), ("val", "dog")):
        (tmp_path / "set" / split / cls).mkdir(parents=True)
        Image.new("RGB", (5, 5)).save(tmp_path / "set" / split / cls / "x,1.png")
    val = build_dataset(tmp_path / "set", "val", 8, 3)
    rows = prediction_rows(val, torch.tensor([[2.0, 0.0]]))
    write_predictions(tmp_path / "p.csv", rows)
    (row,) = read_csv(tmp_path / "p.csv")
    assert row == {**row, "path": str(tmp_path / "set" / "val" / "dog" / "x,1.png"), "label": "1", "pred": "0"}
    assert row["pred_name"] == "cat"
    with pytest.raises(DataError, match="one row of logits per sample"):
        prediction_rows(val, torch.zeros(2, 2))
    with pytest.raises(DataError, match="is a folder"):
        write_predictions(tmp_path, rows)


def test_demo_falls_back_in_one_line_when_offline(monkeypatch, tmp_path):
    def offline(url, timeout=None):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(fmnist, "urlopen", offline)
    lines: list[str] = []
    assert fetch_fashion_mnist(log=lines.append) is None
    (line,) = lines
    assert "\n" not in line and "network disabled in tests" in line and "digits" in line
    assert "MINIVIT_DATA" in line and "dataset-fashion-mnist" in line
    assert not (tmp_path / "cache" / "fashion-mnist").exists()
    monkeypatch.setenv("MINIVIT_OFFLINE", "1")
    assert fetch_fashion_mnist(log=lines.append) is None and "disabled" in lines[-1]


@pytest.mark.skipif(not SHARED_FMNIST.is_dir(), reason=f"real Fashion-MNIST copy not present at {SHARED_FMNIST}")
def test_demo_downloads_the_real_files_checksummed_into_the_cache(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SHARED_FMNIST))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        lines: list[str] = []
        folder = fetch_fashion_mnist(log=lines.append, base_url=url, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert folder == tmp_path / "cache" / "fashion-mnist" and lines == []
    assert sorted(p.name for p in folder.iterdir()) == sorted(fmnist.FASHION_MNIST_MD5)
    assert len(build_dataset("fashion-mnist", "val", 28, 1, download=False)) == 10000
    assert fetch_fashion_mnist(log=lines.append, base_url="http://127.0.0.1:9/") == folder  # found, no download
