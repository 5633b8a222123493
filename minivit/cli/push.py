"""``minivit push``: upload a saved model folder to the Hugging Face Hub as a timm model."""

from __future__ import annotations


def run_push(model: str, repo: str, private: bool = False, revision: str | None = None) -> str:
    """Push the folder ``model`` to ``repo`` (``USER/NAME``); returns the line to print."""
    from ..io.hub import push_to_hub

    url = push_to_hub(model, repo, private=private, revision=revision)
    return f"pushed {model} to {repo}: {url}\nload it with timm.create_model(\"hf-hub:{repo}\", pretrained=True)"


def add_push_arguments(p) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="model folder written by train/compress")
    p.add_argument("--repo", required=True, metavar="USER/NAME", help="Hugging Face Hub repository (created if new)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", help="branch to push to (default: the main branch)")
