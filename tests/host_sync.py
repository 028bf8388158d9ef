"""Finds, on CPU tensors, the torch calls that would make the CPU wait for a CUDA GPU.

On CUDA a host sync comes from a few kinds of call: reading a device value on the host (`.item()`, `.tolist()`,
`bool(t)`), ops whose output size depends on the data (`nonzero`, boolean-mask indexing, `unique`, `bincount`, which
reads min/max back), a tensor built from Python data (`torch.tensor(n, device=cuda)` copies from pageable host
memory) and any copy between host and device memory. `torch.cuda.set_sync_debug_mode` reports them on a GPU; this
dispatch mode records the same calls on any device, so CPU tests can hold the per-batch and per-step code to "no host
sync". Use the "meta" device as the stand-in for CUDA to see host<->device copies.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
READS_BACK = {
    aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default, aten.bincount.default,
    aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default, aten.is_nonzero.default,
    aten.equal.default, aten.repeat_interleave.Tensor, aten.lift_fresh.default, aten.histc.default,
}  # fmt: skip
COPIES = {aten._to_copy.default, aten.copy_.default}


def _devices(args, kwargs) -> set[str]:
    found = {a.device.type for a in args if isinstance(a, torch.Tensor)}
    if isinstance(args[0] if args else None, torch.Tensor) and kwargs.get("device") is not None:
        found.add(torch.device(kwargs["device"]).type)
    return found


def _masks(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


class HostSyncRecorder(TorchDispatchMode):
    """`with HostSyncRecorder() as r: ...` then `r.calls`: the names of the calls that would sync on CUDA."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in READS_BACK:
            self.calls.append(str(func))
        elif func in COPIES and len(_devices(args, kwargs)) > 1 and "cpu" in _devices(args, kwargs):
            self.calls.append(f"{func} between {sorted(_devices(args, kwargs))}")
        elif func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default) and _masks(args):
            self.calls.append(f"{func} with a boolean mask")
        return func(*args, **kwargs)


def recorded_after_first(batches, recorder: HostSyncRecorder):
    """Yields `batches`, recording from the second one to the end of the iteration: the first step may set up state
    (momentum buffers, cached tensors) once."""
    it = iter(batches)
    first = next(it, None)
    if first is None:
        return
    yield first
    with recorder:
        yield from it
