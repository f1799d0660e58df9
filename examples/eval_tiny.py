#!/usr/bin/env python
"""Evaluate a train_tiny model on a held-out split of the same synthetic data.

    python examples/eval_tiny.py --model artifacts/model.npz

Prints accuracy and loss, writes eval.json to the artifact directory. Exits 2 if the model file is
missing or is not a train_tiny model.

Without ``--model``, as the second step of a pipeline (``yard submit --after-ok TRAIN_ID -- python
examples/eval_tiny.py``), it evaluates every ``model.npz`` the jobs it depends on left (a sweep: each
task's), fetched with ``trainyard.job.dependency_artifacts()``, and names the best.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script, this file's directory is on sys.path, so train_tiny (and through it
# trainyard.job, with its fallback to this checkout's src/) imports as a module.
from train_tiny import HELDOUT_SPLIT, NUM_CLASSES, NUM_FEATURES, loss_and_accuracy, make_dataset, tj

EXIT_BAD_INPUT = 2


def _fail(message: str) -> int:
    print(f"eval_tiny: error: {message}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        type=Path,
        help="model.npz written by train_tiny (default: every model.npz of the jobs this one depends on)",
    )
    p.add_argument("--seed", type=int, default=None, help="data seed (default: the model's training seed)")
    p.add_argument("--samples", type=int, default=1000, help="held-out examples (default 1000)")
    args = p.parse_args(argv)
    if args.samples < 1:
        p.error("--samples must be >= 1")
    if args.model is None:
        return _evaluate_dependencies(args.seed, args.samples)

    result = _evaluate(args.model, args.seed, args.samples)
    if isinstance(result, str):
        return _fail(result)
    tj.log_metric("eval_loss", result["loss"])
    tj.log_metric("eval_accuracy", result["accuracy"])
    print(
        f"accuracy={result['accuracy']:.4f} loss={result['loss']:.6f} "
        f"(seed {result['seed']}, {args.samples} held-out samples)",
        flush=True,
    )
    (tj.artifact_dir() / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _evaluate_dependencies(seed: int | None, samples: int) -> int:
    """Every model.npz this job's dependencies left, evaluated; the best (highest accuracy) named."""
    models = [p for p in tj.dependency_artifacts() if p.name == "model.npz"]
    if not models:
        return _fail("no --model, and no model.npz from the jobs this one depends on")
    results = []
    for path in models:
        result = _evaluate(path, seed, samples)
        if isinstance(result, str):
            return _fail(result)
        result["job"] = path.parent.name  # the dependency (a sweep: the task) that trained it
        print(f"{result['job']}: accuracy={result['accuracy']:.4f} loss={result['loss']:.6f}", flush=True)
        results.append(result)
    best = max(results, key=lambda r: (r["accuracy"], -r["loss"]))
    tj.log_metric("eval_accuracy", best["accuracy"])
    print(f"best: {best['job']} accuracy={best['accuracy']:.4f}", flush=True)
    summary = {"models": results, "best": best}
    (tj.artifact_dir() / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _evaluate(model: Path, seed_override: int | None, samples: int) -> dict[str, Any] | str:
    """Accuracy and loss of a model on the held-out split, or why the file is no model."""
    if not model.is_file():
        return f"model file not found: {model}"
    if not zipfile.is_zipfile(model):
        return f"{model} is not an .npz archive"
    try:
        with np.load(model, allow_pickle=False) as z:
            w, b = z["w"], z["b"]
            trained_seed = int(z["seed"]) if "seed" in z.files else 0
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        return f"{model} is not a train_tiny model: {exc}"
    if w.shape != (NUM_FEATURES, NUM_CLASSES) or b.shape != (NUM_CLASSES,):
        return (
            f"{model} has weights of shape {w.shape}/{b.shape}, expected "
            f"{(NUM_FEATURES, NUM_CLASSES)}/{(NUM_CLASSES,)}"
        )
    seed = trained_seed if seed_override is None else seed_override
    x, y = make_dataset(seed, samples, HELDOUT_SPLIT)
    loss, acc = loss_and_accuracy(w, b, x, y)
    return {"accuracy": acc, "loss": loss, "seed": seed, "samples": samples, "model": str(model)}


if __name__ == "__main__":
    sys.exit(main())
