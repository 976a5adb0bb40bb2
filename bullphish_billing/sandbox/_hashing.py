"""Stateless pseudo-randomness: a value is a hash of what it describes.

Every generated fact (a target's status on a day, an organization's name, ...) is
``splitmix64`` folded over integers naming it: (seed, salt for the fact, partner, record,
period). Nothing is stored, any day can be computed on its own, and the numpy variant computes
a whole partner's targets at once. The scalar and numpy variants agree bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_START = 0x2545F4914F6CDD1D

T = TypeVar("T")


def _mix(x: int) -> int:
    x = (x + _GOLDEN) & MASK
    x = ((x ^ (x >> 30)) * _M1) & MASK
    x = ((x ^ (x >> 27)) * _M2) & MASK
    return x ^ (x >> 31)


def h(*parts: int) -> int:
    """A 64-bit hash of the integers ``parts`` (order matters)."""
    acc = _START
    for part in parts:
        acc = _mix(acc ^ (part & MASK))
    return acc


def unit(*parts: int) -> float:
    """A float in [0, 1) hashed from ``parts``."""
    return (h(*parts) >> 11) * 2.0**-53


def pick(seq: Sequence[T], *parts: int) -> T:
    """An element of ``seq`` chosen by hashing ``parts``."""
    return seq[h(*parts) % len(seq)]


def text_id(text: str) -> int:
    """A stable integer for a string (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


_U = np.uint64


def _mix_np(x: np.ndarray) -> np.ndarray:
    x = x + _U(_GOLDEN)
    x = (x ^ (x >> _U(30))) * _U(_M1)
    x = (x ^ (x >> _U(27))) * _U(_M2)
    return x ^ (x >> _U(31))


def h_np(prefix: tuple[int, ...], *arrays: np.ndarray | int) -> np.ndarray:
    """``h(*prefix, a0, a1, ...)`` element-wise over integer arrays (or scalars) ``arrays``."""
    acc = np.full(1, h(*prefix), dtype=np.uint64)
    for part in arrays:
        part_u = np.asarray(part).astype(np.int64).astype(np.uint64)
        acc = _mix_np(acc ^ part_u)
    return acc


def unit_np(prefix: tuple[int, ...], *arrays: np.ndarray | int) -> np.ndarray:
    """``unit(*prefix, a0, ...)`` element-wise: floats in [0, 1)."""
    return (h_np(prefix, *arrays) >> _U(11)).astype(np.float64) * 2.0**-53
