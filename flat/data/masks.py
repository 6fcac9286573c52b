"""fastMRI's k-space subsampling masks, reproduced exactly.

The three mask types of fastMRI (``fastmri.data.subsample``) -- ``random``, ``equispaced`` and
``equispaced_fraction`` -- draw the same columns as fastMRI for the same seed, including the
position of the fully sampled centre block (``pad = (num_cols - num_low + 1) // 2``), the
acceleration adjustment of ``equispaced_fraction`` and the per-volume seeding
``seed = tuple(map(ord, fname))`` applied to a private ``numpy.random.RandomState``, whose state is
restored afterwards (so seeded calls do not disturb the unseeded stream).

A mask function is called with the k-space shape in fastMRI's real layout, e.g.
``(C, H, W, 2)``; the subsampled axis is ``shape[-2]`` (W). It returns ``(mask, num_low)`` with
``mask`` a float32 tensor of shape ``(1, ..., 1, W, 1)``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from flat.config import MASK_TYPES  # one list of the mask types, in the config schema

Seed = Optional[Union[int, Tuple[int, ...]]]


def volume_seed(fname: str) -> Tuple[int, ...]:
    """fastMRI's per-volume seed: the code points of the file name (base name, with suffix)."""
    return tuple(map(ord, fname))


@contextlib.contextmanager
def _temp_seed(rng: np.random.RandomState, seed: Seed) -> Iterator[None]:
    # Seed the private generator for one call and restore its state afterwards, as fastMRI does.
    if seed is None:
        yield
        return
    state = rng.get_state()
    rng.seed(seed)
    try:
        yield
    finally:
        rng.set_state(state)


class MaskFunc:
    """Base class: a fully sampled centre block plus an acceleration pattern (fastMRI semantics).

    Args:
        center_fractions: fraction(s) of columns in the fully sampled centre.
        accelerations: acceleration factor(s); same length as ``center_fractions`` unless
            ``allow_any_combination``. One pair is drawn uniformly per call.
        allow_any_combination: draw fraction and acceleration independently.
        seed: seed of the private RandomState used when a call passes no seed.
    """

    def __init__(
        self,
        center_fractions: Sequence[float],
        accelerations: Sequence[int],
        allow_any_combination: bool = False,
        seed: Optional[int] = None,
    ):
        center_fractions = list(center_fractions)
        accelerations = list(accelerations)
        if len(center_fractions) != len(accelerations) and not allow_any_combination:
            raise ValueError(
                f"center_fractions ({len(center_fractions)} values) and accelerations "
                f"({len(accelerations)} values) must have the same length"
            )
        if not center_fractions or not accelerations:
            raise ValueError("center_fractions and accelerations must not be empty")
        for a in accelerations:
            if not a > 1:
                raise ValueError(f"accelerations must be > 1, got {a}")
        for c in center_fractions:
            if not 0 < c < 1:
                raise ValueError(f"center_fractions must lie in (0, 1), got {c}")
        self.center_fractions = center_fractions
        self.accelerations = accelerations
        self.allow_any_combination = allow_any_combination
        self.rng = np.random.RandomState(seed)

    def __call__(
        self, shape: Sequence[int], offset: Optional[int] = None, seed: Seed = None
    ) -> Tuple[torch.Tensor, int]:
        """Sample a mask for k-space of ``shape`` (real layout; columns are ``shape[-2]``)."""
        if len(shape) < 3:
            raise ValueError(f"shape should have 3 or more dimensions, got {tuple(shape)}")
        with _temp_seed(self.rng, seed):
            center_mask, accel_mask, num_low = self.sample_mask(shape, offset)
        return torch.max(center_mask, accel_mask), num_low

    def sample_mask(self, shape: Sequence[int], offset: Optional[int]):
        num_cols = shape[-2]
        center_fraction, acceleration = self.choose_acceleration()
        num_low = round(num_cols * center_fraction)
        center_mask = self.reshape_mask(self.calculate_center_mask(shape, num_low), shape)
        accel_mask = self.reshape_mask(
            self.calculate_acceleration_mask(num_cols, acceleration, offset, num_low), shape
        )
        return center_mask, accel_mask, num_low

    def reshape_mask(self, mask: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
        mask_shape = [1 for _ in shape]
        mask_shape[-2] = shape[-2]
        return torch.from_numpy(mask.reshape(*mask_shape).astype(np.float32))

    def calculate_center_mask(self, shape: Sequence[int], num_low_freqs: int) -> np.ndarray:
        num_cols = shape[-2]
        mask = np.zeros(num_cols, dtype=np.float32)
        # fastMRI's centre position: for even num_cols and odd num_low the block sits one
        # column right of symmetric; keep it identical rather than "fixing" it.
        pad = (num_cols - num_low_freqs + 1) // 2
        mask[pad : pad + num_low_freqs] = 1
        return mask

    def calculate_acceleration_mask(self, num_cols, acceleration, offset, num_low_frequencies):
        raise NotImplementedError

    def choose_acceleration(self):
        # The same RandomState calls as fastMRI, in the same order, so the streams agree.
        if self.allow_any_combination:
            return self.rng.choice(self.center_fractions), self.rng.choice(self.accelerations)
        choice = self.rng.randint(len(self.center_fractions))
        return self.center_fractions[choice], self.accelerations[choice]


class RandomMaskFunc(MaskFunc):
    """Centre block plus columns drawn i.i.d. with probability
    ``(N / acc - N_low) / (N - N_low)`` so the expected count is ``N / acc``."""

    def calculate_acceleration_mask(self, num_cols, acceleration, offset, num_low_frequencies):
        prob = (num_cols / acceleration - num_low_frequencies) / (num_cols - num_low_frequencies)
        return self.rng.uniform(size=num_cols) < prob


class EquiSpacedMaskFunc(MaskFunc):
    """Centre block plus every ``acceleration``-th column from a random (or given) offset."""

    def calculate_acceleration_mask(self, num_cols, acceleration, offset, num_low_frequencies):
        if offset is None:
            offset = self.rng.randint(0, high=round(acceleration))
        mask = np.zeros(num_cols, dtype=np.float32)
        mask[offset::acceleration] = 1
        return mask


class EquispacedMaskFractionFunc(MaskFunc):
    """Equispaced columns with the spacing adjusted for the centre block so that the total
    matches ``N / acceleration`` (fastMRI's multicoil test-set masks; not exactly equispaced
    after rounding: fastMRI's own behaviour, kept identical on purpose)."""

    def calculate_acceleration_mask(self, num_cols, acceleration, offset, num_low_frequencies):
        adjusted_accel = (acceleration * (num_low_frequencies - num_cols)) / (
            num_low_frequencies * acceleration - num_cols
        )
        if offset is None:
            offset = self.rng.randint(0, high=round(adjusted_accel))
        mask = np.zeros(num_cols)
        accel_samples = np.arange(offset, num_cols - 1, adjusted_accel)
        accel_samples = np.around(accel_samples).astype(np.uint)
        mask[accel_samples] = 1.0
        return mask


def create_mask_for_mask_type(
    mask_type: str, center_fractions: Sequence[float], accelerations: Sequence[int]
) -> MaskFunc:
    """fastMRI's factory: ``"random"``, ``"equispaced"`` or ``"equispaced_fraction"``."""
    classes = {
        "random": RandomMaskFunc,
        "equispaced": EquiSpacedMaskFunc,
        "equispaced_fraction": EquispacedMaskFractionFunc,
    }
    if mask_type not in classes:
        raise ValueError(f"mask type {mask_type!r} not supported; choose from {', '.join(MASK_TYPES)}")
    return classes[mask_type](center_fractions, accelerations)


def apply_mask(
    data: torch.Tensor,
    mask_func: MaskFunc,
    seed: Seed = None,
    padding: Optional[Sequence[int]] = None,
    *,
    offset: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Subsample k-space as fastMRI's ``transforms.apply_mask``.

    (fastMRI's positional order is ``(data, mask_func, offset, seed, padding)``; here ``offset`` is
    keyword-only so that ``apply_mask(k, f, seed)`` cannot silently pass the seed as an offset.)

    ``data`` is either fastMRI's real layout ``(..., H, W, 2)`` -- then the mask has shape
    ``(1, ..., 1, W, 1)`` exactly as in fastMRI -- or a complex tensor ``(..., H, W)``, for which the
    mask has shape ``(1, ..., 1, W)``. ``padding = (left, right)`` forces the columns outside
    ``[left, right)`` (header padding) out of the mask. Masked zeros are ``+0.0``.

    Returns ``(masked_data, mask (float32), num_low_frequencies)``.
    """
    if torch.is_complex(data):
        if data.ndim < 2:
            raise ValueError(f"kspace: need at least 2 dims (H, W), got shape {tuple(data.shape)}")
        real_shape = (1,) * (data.ndim - 2) + tuple(data.shape[-2:]) + (2,)
        mask, num_low = mask_func(real_shape, offset, seed)
        mask = mask[..., 0]
    else:
        if data.ndim < 3 or data.shape[-1] != 2:
            raise ValueError(
                f"kspace: expected a complex tensor or real layout (..., H, W, 2), got shape "
                f"{tuple(data.shape)} dtype {data.dtype}"
            )
        shape = (1,) * len(data.shape[:-3]) + tuple(data.shape[-3:])
        mask, num_low = mask_func(shape, offset, seed)
    if padding is not None:
        cols = mask.shape[-1] if torch.is_complex(data) else mask.shape[-2]
        col_keep = torch.zeros(cols, dtype=mask.dtype)
        col_keep[padding[0] : padding[1]] = 1  # right padding index is exclusive
        if torch.is_complex(data):
            mask = mask * col_keep
        else:
            mask = mask * col_keep[:, None]
    masked = data * mask + 0.0  # + 0.0 turns -0.0 into +0.0
    return masked, mask, num_low


def num_low_frequencies_from_mask(mask: torch.Tensor | np.ndarray) -> int:
    """Width of the fully sampled centre of a column mask ``(W,)``, as fastMRI's VarNet infers it
    from a test-set mask: twice the shorter contiguous sampled run on either side of ``W // 2``
    (at least 1)."""
    m = np.asarray(mask).reshape(-1).astype(bool)
    cent = m.shape[0] // 2
    left_run = np.argmin(m[:cent][::-1]) if cent > 0 and not m[:cent].all() else cent
    right_run = np.argmin(m[cent:]) if not m[cent:].all() else m.shape[0] - cent
    return int(max(2 * min(left_run, right_run), 1))
