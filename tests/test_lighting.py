"""PCA lighting's one shift function, evaluated by each of its callers (NumPy, numba, torch, DALI) on the same alphas:
the CPU kernel, the torch finisher and the random-resized path must add the same shift, to the bit."""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from pipeline.lighting import lighting_basis, lighting_shift

EIGVAL = (0.2175, 0.0188, 0.0045)


def case(count: int = 64):
    rng = np.random.default_rng(3)
    eigvec = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    alphas = rng.normal(0, 0.1, (count, 3)).astype(np.float32)
    return alphas, eigvec, lighting_basis(EIGVAL, eigvec)


def test_the_basis_rows_are_the_principal_components_scaled_to_pixel_units():
    alphas, eigvec, basis = case()
    assert basis.dtype == np.float32 and basis.shape == (3, 3)
    expected = (alphas.astype(np.float64) * np.asarray(EIGVAL)) @ eigvec.T * 255  # sum_j alpha_j eigval_j eigvec_j
    np.testing.assert_allclose(lighting_shift(alphas, basis), expected, rtol=1e-5, atol=1e-5)


def test_numba_torch_and_dali_compute_the_same_bits():
    from nvidia.dali import fn, pipeline_def, types

    alphas, _, basis = case()
    reference = lighting_shift(alphas, basis)
    by_numba = njit(lighting_shift)(alphas, basis)
    by_torch = lighting_shift(torch.from_numpy(alphas), torch.from_numpy(basis)).numpy()

    @pipeline_def(batch_size=len(alphas), num_threads=1, device_id=None)
    def shifts():
        given = fn.external_source(source=lambda: [a[None, :] for a in alphas], batch=True)  # float [1, 3] each
        return lighting_shift(given, [types.Constant(row) for row in basis])

    pipe = shifts()
    pipe.build()
    (by_dali,) = pipe.run()
    by_dali = np.concatenate([np.asarray(by_dali[i]) for i in range(len(alphas))])
    for other in (by_numba, by_torch, by_dali):
        assert other.shape == reference.shape and other.dtype == np.float32
        np.testing.assert_array_equal(other.view(np.uint32), reference.view(np.uint32))
