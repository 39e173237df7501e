"""Counter-based random numbers for masking (SPEC §2, "RNG").

Every block gets its own stream, keyed by (seed, mask epoch, global block index): the stream's
state starts at ``stream_key(seed, epoch, block)`` and each draw adds the SplitMix64 increment
``GAMMA`` and returns ``mix64(state)``. A block's mask is therefore a pure function of those three
numbers: it cannot depend on batch composition, worker count, shards or ranks.

All arithmetic is on uint64 and wraps modulo 2**64, exactly as the pure-Python twin in
``tests/naive_masking.py`` does with ``& (2**64 - 1)``.

This is the project's one SplitMix64: `mix64` also hashes whole uint64 arrays (the vocabulary sample's unit
order, vocab.py), and `splitmix64` draws the held-out documents (build.py).
"""

import numpy as np
from numba import njit

# SplitMix64 (Steele, Lea & Flood 2014): the golden-ratio increment and the finaliser's constants.
GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
# Distinct odd salts per key component, so that no component value (e.g. all zeros) is a fixed point.
_SALT_SEED = np.uint64(0x243F6A8885A308D3)
_SALT_EPOCH = np.uint64(0x13198A2E03707345)
_SALT_BLOCK = np.uint64(0xA4093822299F31D1)
# 2**-53: maps the top 53 bits of a draw to a float64 in [0, 1) exactly.
_INV_2_53 = 1.0 / 9007199254740992.0


@njit(cache=True)
def mix64(z):
    """SplitMix64 finaliser: a bijection of uint64 with full avalanche (a uint64 scalar, or elementwise on a uint64
    array)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True)
def stream_key(seed, epoch, block):
    """The initial state of the stream of block ``block`` in mask epoch ``epoch`` (all uint64)."""
    # Explicit casts: uint64 mixed with int64 would silently promote to float64 in Numba.
    h = mix64(np.uint64(seed) + _SALT_SEED)
    h = mix64(h ^ (np.uint64(epoch) + _SALT_EPOCH))
    return mix64(h ^ (np.uint64(block) + _SALT_BLOCK))


@njit(cache=True)
def next_uniform(state):
    """Advance the stream; returns (new state, u) with u a float64 uniform on [0, 1) (53 random bits)."""
    state = np.uint64(state) + GAMMA
    # via int64: the 53-bit value fits, and signed int -> float is one instruction on x86-64 (unsigned is not)
    return state, float(np.int64(mix64(state) >> _S11)) * _INV_2_53


def splitmix64(x) -> np.ndarray:
    """One SplitMix64 output per uint64 state in `x` (a scalar or an array): `mix64(x + GAMMA)`, wrapping."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrapping is the point: overflow is not an error
        return mix64(x.reshape(-1) + GAMMA).reshape(x.shape)
