"""DALI outputs to torch tensors: one copy into a tensor that the caller owns (DALI reuses its buffers)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_torch", "parse_class_labels"]


def to_torch(batch, device: torch.device) -> torch.Tensor:
    """A DALI TensorList (uniform shape, CPU or GPU) -> a new torch tensor on `device`."""
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    tensor = batch.as_tensor()
    out = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(tensor, out, cuda_stream=stream)
    return out


def parse_class_labels(batch, where: str) -> torch.Tensor:
    """Foreign shards' ASCII `.cls` members (one TensorList of uint8 bytes) -> int64 [B]."""
    labels = []
    for i in range(len(batch)):
        text = np.asarray(batch[i]).tobytes().decode("ascii", errors="replace").strip()
        try:
            labels.append(int(text))
        except ValueError as e:
            raise ValueError(f"{where}: a .cls member holds {text!r}, not an integer class index") from e
    return torch.tensor(labels, dtype=torch.int64)
