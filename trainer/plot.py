"""Loss and accuracy curves of a run as a PNG: `python -m trainer.plot RUN_DIR` (also called by the trainer).

Left: train loss per logging step and per epoch, val loss per epoch. Right: train/val top-1 and top-5.
"""

from __future__ import annotations

import os
import sys

from trainer.metrics import METRICS_NAME, read_metrics

__all__ = ["plot_run", "PLOT_NAME"]

PLOT_NAME = "curves.png"
LABELS = {"top1": "train top-1 (epoch)", "val_top1": "val top-1", "val_top5": "val top-5"}


def plot_run(run_dir: str, out: str | None = None) -> str:
    """Reads RUN_DIR/metrics.jsonl and writes the curves (default RUN_DIR/curves.png); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    rows = read_metrics(os.path.join(run_dir, METRICS_NAME))
    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    if steps:
        ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], alpha=0.4, label="train loss (interval)")
        ax_acc.plot([r["step"] for r in steps], [r["top1"] for r in steps], alpha=0.4, label="train top-1 (interval)")
    if epochs:
        x = [r["step"] for r in epochs]
        ax_loss.plot(x, [r["loss"] for r in epochs], "o-", label="train loss (epoch)")
        ax_loss.plot(x, [r["val_loss"] for r in epochs], "s-", label="val loss")
        for key, style in (("top1", "o-"), ("val_top1", "s-"), ("val_top5", "^--")):
            ax_acc.plot(x, [r[key] for r in epochs], style, label=LABELS[key])
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(os.path.basename(os.path.abspath(run_dir)))
    fig.tight_layout()
    path = out or os.path.join(run_dir, PLOT_NAME)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Plot a run's loss and accuracy curves from its metrics.jsonl.")
    parser.add_argument("run_dir", help="run dir written by trainer/main.py (holds metrics.jsonl)")
    parser.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/curves.png)")
    args = parser.parse_args(argv)
    print(plot_run(args.run_dir, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
