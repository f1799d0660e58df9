#!/usr/bin/env python
"""Evaluate a train_tiny model on a held-out split of the same synthetic data.

    python examples/eval_tiny.py --model artifacts/model.npz

Prints accuracy and loss, writes eval.json to the artifact directory. Exits 2 if the model file is
missing or is not a train_tiny model.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

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
    p.add_argument("--model", required=True, type=Path, help="model.npz written by train_tiny")
    p.add_argument("--seed", type=int, default=None, help="data seed (default: the model's training seed)")
    p.add_argument("--samples", type=int, default=1000, help="held-out examples (default 1000)")
    args = p.parse_args(argv)
    if args.samples < 1:
        p.error("--samples must be >= 1")

    if not args.model.is_file():
        return _fail(f"model file not found: {args.model}")
    if not zipfile.is_zipfile(args.model):
        return _fail(f"{args.model} is not an .npz archive")
    try:
        with np.load(args.model, allow_pickle=False) as z:
            w, b = z["w"], z["b"]
            trained_seed = int(z["seed"]) if "seed" in z.files else 0
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        return _fail(f"{args.model} is not a train_tiny model: {exc}")
    if w.shape != (NUM_FEATURES, NUM_CLASSES) or b.shape != (NUM_CLASSES,):
        return _fail(
            f"{args.model} has weights of shape {w.shape}/{b.shape}, expected "
            f"{(NUM_FEATURES, NUM_CLASSES)}/{(NUM_CLASSES,)}"
        )

    seed = trained_seed if args.seed is None else args.seed
    x, y = make_dataset(seed, args.samples, HELDOUT_SPLIT)
    loss, acc = loss_and_accuracy(w, b, x, y)
    tj.log_metric("eval_loss", loss)
    tj.log_metric("eval_accuracy", acc)
    print(f"accuracy={acc:.4f} loss={loss:.6f} (seed {seed}, {args.samples} held-out samples)", flush=True)

    result = {"accuracy": acc, "loss": loss, "seed": seed, "samples": args.samples, "model": str(args.model)}
    (tj.artifact_dir() / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
