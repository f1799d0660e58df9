#!/usr/bin/env python
"""A small but real training job: softmax regression on synthetic 3-class Gaussian blobs.

Numpy only. Checkpoints every epoch through ``trainyard.job`` and resumes from the newest one, so
an interrupted run that is resumed produces a ``model.npz`` byte-identical to an uninterrupted run
with the same arguments. On SIGTERM it checkpoints and exits 143.

    python examples/train_tiny.py --epochs 3          # standalone: ./checkpoints, ./artifacts
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

try:
    import trainyard.job as tj
except ImportError:  # a job environment without trainyard installed: use this checkout's copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import trainyard.job as tj

import numpy as np

NUM_CLASSES = 3
NUM_FEATURES = 2
BLOB_RADIUS = 2.0  # centers' distance from the origin, against noise std 1: about 93% separable
BATCH_SIZE = 32
TRAIN_SPLIT, HELDOUT_SPLIT = 0, 1
EXIT_PREEMPTED = 143  # 128 + SIGTERM: what the platform expects from a job told to stop


def make_dataset(seed: int, samples: int, split: int = TRAIN_SPLIT) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` points of the blobs for ``seed``; each split draws its own points, same centers."""
    offset = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi)
    angles = offset + 2.0 * np.pi * np.arange(NUM_CLASSES) / NUM_CLASSES
    centers = BLOB_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    rng = np.random.default_rng([seed, split])
    y = rng.integers(0, NUM_CLASSES, size=samples)
    x = centers[y] + rng.normal(size=(samples, NUM_FEATURES))
    return x, y


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def loss_and_accuracy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    probs = softmax(x @ w + b)
    loss = -np.mean(np.log(probs[np.arange(len(y)), y] + 1e-12))
    acc = np.mean(np.argmax(probs, axis=1) == y)
    return float(loss), float(acc)


def sgd_epoch(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, lr: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(len(y))
    onehot = np.eye(NUM_CLASSES)[y]
    for start in range(0, len(y), BATCH_SIZE):
        idx = order[start : start + BATCH_SIZE]
        grad_logits = (softmax(x[idx] @ w + b) - onehot[idx]) / len(idx)
        w = w - lr * (x[idx].T @ grad_logits)
        b = b - lr * grad_logits.sum(axis=0)
    return w, b


def npz_bytes(arrays: dict[str, Any]) -> bytes:
    """An .npz that ``np.load`` reads, with fixed zip timestamps so equal arrays give equal bytes.

    ``np.savez`` stamps each member with the current time, which would make two identical models
    differ on disk.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def _config(args: argparse.Namespace) -> dict[str, Any]:
    # What must match for a checkpoint to continue this run; --epochs may grow between runs.
    return {"seed": args.seed, "lr": args.lr, "samples": args.samples, "batch_size": BATCH_SIZE}


def _save(epoch: int, w: np.ndarray, b: np.ndarray, rng: np.random.Generator, config: dict[str, Any]) -> Path:
    state = {
        "w": w,
        "b": b,
        "epoch": np.int64(epoch),
        "rng_state": np.str_(json.dumps(rng.bit_generator.state)),
        "config": np.str_(json.dumps(config, sort_keys=True)),
    }
    return tj.save_checkpoint(npz_bytes(state), step=epoch)


def _load(path: Path, rng: np.random.Generator, config: dict[str, Any]) -> tuple[int, np.ndarray, np.ndarray]:
    data = tj.load_checkpoint(path)
    if not isinstance(data, bytes):
        raise SystemExit(f"train_tiny: error: {path} is not a train_tiny checkpoint")
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        saved = json.loads(str(z["config"]))
        if saved != json.loads(json.dumps(config, sort_keys=True)):
            raise SystemExit(
                f"train_tiny: error: checkpoint {path} was written with {saved}, this run uses {config}; "
                "delete it or point TRAINYARD_CHECKPOINT_DIR elsewhere"
            )
        rng.bit_generator.state = json.loads(str(z["rng_state"]))
        return int(z["epoch"]), z["w"].copy(), z["b"].copy()


def _sleep(seconds: float) -> None:
    # In slices, so a SIGTERM during the pause is acted on promptly (time.sleep resumes after it).
    deadline = time.monotonic() + seconds
    while not tj.preempted():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(0.05, remaining))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5, help="total epochs, counting resumed ones (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, init and shuffling (default 0)")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    p.add_argument("--samples", type=int, default=2000, help="training examples (default 2000)")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to pause after each epoch (default 0)")
    args = p.parse_args(argv)
    if args.epochs < 0 or args.samples < 1 or args.sleep < 0 or not args.lr > 0:
        p.error("need --epochs >= 0, --samples >= 1, --sleep >= 0, --lr > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    tj.install_preemption_handler()
    args = parse_args(argv)
    started = time.monotonic()
    config = _config(args)

    x, y = make_dataset(args.seed, args.samples, TRAIN_SPLIT)
    rng = np.random.default_rng([args.seed, 2])
    w = rng.normal(0.0, 0.01, size=(NUM_FEATURES, NUM_CLASSES))
    b = np.zeros(NUM_CLASSES)
    epoch = 0
    resumed_from: int | None = None

    ckpt = tj.latest_checkpoint()
    if ckpt is not None:
        epoch, w, b = _load(ckpt, rng, config)
        resumed_from = epoch
        print(f"resumed from epoch {epoch} ({ckpt})", flush=True)
    saved_epoch = epoch if ckpt is not None else -1

    loss, acc = loss_and_accuracy(w, b, x, y)
    while epoch < args.epochs and not tj.preempted():
        w, b = sgd_epoch(w, b, x, y, args.lr, rng)
        epoch += 1
        loss, acc = loss_and_accuracy(w, b, x, y)
        _save(epoch, w, b, rng, config)
        saved_epoch = epoch
        tj.log_metric("loss", loss, step=epoch)
        tj.log_metric("accuracy", acc, step=epoch)
        print(f"epoch {epoch}/{args.epochs} loss={loss:.6f} acc={acc:.4f}", flush=True)
        if epoch < args.epochs:
            _sleep(args.sleep)

    if epoch < args.epochs:  # stopped early: preempted
        if saved_epoch != epoch:
            _save(epoch, w, b, rng, config)
        print(f"preempted at epoch {epoch}/{args.epochs}; checkpoint saved, exiting", flush=True)
        return EXIT_PREEMPTED

    out = tj.artifact_dir()
    (out / "model.npz").write_bytes(
        npz_bytes({"w": w, "b": b, "seed": np.int64(args.seed), "epochs": np.int64(epoch)})
    )
    metrics = {
        "final_loss": loss,
        "accuracy": acc,
        "epochs": epoch,
        "seed": args.seed,
        "lr": args.lr,
        "samples": args.samples,
        "resumed_from": resumed_from,
        "duration_s": round(time.monotonic() - started, 3),
        "job_id": tj.job_id(),
        "attempt": tj.attempt(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    # Every epoch is done: a SIGTERM that arrives now must not make the platform run it again.
    tj.mark_complete()
    print(f"done: loss={loss:.6f} acc={acc:.4f}; wrote {out / 'model.npz'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
