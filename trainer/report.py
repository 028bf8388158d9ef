"""The per-class report: sklearn's classification_report from the (all-rank) val confusion matrix.

The confusion matrix is summed over ranks by `evaluate`, so the report covers every val sample exactly once
without gathering per-sample predictions.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

__all__ = ["classification_report_from_confusion", "write_report", "REPORT_NAME", "REPORT_JSON_NAME"]

REPORT_NAME = "report.txt"
REPORT_JSON_NAME = "report.json"


def _expand(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) with one entry per counted sample, from a [true, pred] count matrix."""
    true_idx, pred_idx = np.nonzero(confusion)
    counts = confusion[true_idx, pred_idx]
    return np.repeat(true_idx, counts), np.repeat(pred_idx, counts)


def classification_report_from_confusion(confusion: torch.Tensor | np.ndarray, names: list[str]) -> tuple[str, dict]:
    from sklearn.metrics import classification_report

    matrix = np.asarray(confusion, dtype=np.int64)
    y_true, y_pred = _expand(matrix)
    labels = list(range(len(names)))
    kwargs: dict[str, Any] = dict(labels=labels, target_names=names, zero_division=0, digits=4)
    return (classification_report(y_true, y_pred, **kwargs),
            classification_report(y_true, y_pred, output_dict=True, **kwargs))


def write_report(run_dir: str, confusion: torch.Tensor, classes: list[dict[str, Any]], header: str = "") -> str:
    """Writes report.txt (human) and report.json (per-class precision/recall/f1/support); returns the txt path."""
    names = [f"{c.get('index', i)} {c.get('wnid', '')} {c.get('name', '')}".strip() for i, c in enumerate(classes)]
    text, doc = classification_report_from_confusion(confusion, names)
    path = os.path.join(run_dir, REPORT_NAME)
    with open(path, "w") as f:
        f.write((header + "\n\n" if header else "") + text)
    with open(os.path.join(run_dir, REPORT_JSON_NAME), "w") as f:
        json.dump(doc, f, indent=1)
    return path
