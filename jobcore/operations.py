"""The job math: exact power sums of doubles, plus how numbers are validated and stored.

A result is the exact mathematical sum rounded once to the nearest double (ties to even), so it
does not depend on the order of the numbers, on cancellation between them, or on powers that
overflow or underflow on their own.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Final

import numpy as np
from numpy.typing import NDArray

from jobcore.errors import ComputationError, FieldViolation, InvalidJobError, ResultOverflowError

__all__ = ["Operation", "compute", "pack_numbers", "unpack_numbers", "validate_numbers"]


class Operation(enum.StrEnum):
    """A computation a job can run; the values are the wire names in the database and the API."""

    SQUARE_SUM = "square_sum"
    CUBE_SUM = "cube_sum"


_POWERS: Final[dict[Operation, int]] = {Operation.SQUARE_SUM: 2, Operation.CUBE_SUM: 3}

# Every finite double is sig * 2**(exp - 53) with sig an integer, |sig| < 2**53 (np.frexp
# gives exp, and sig = mantissa * 2**53 exactly, subnormals included).
_SIGNIFICAND_BITS: Final = 53

# sig is cut into limbs of this many bits (the top limb keeps the sign), and sig**power is
# expanded as a polynomial in 2**bits whose coefficients must fit an int64: for squares two
# limbs give at most 2 products of |a| < 2**27 each, so |c| < 2**55; for cubes three limbs
# give at most 7 products (9 in the intermediate convolution) of 2**54, so |c| < 2**58.
_LIMB_BITS: Final[dict[int, int]] = {2: 27, 3: 18}

# Coefficients are split at this bit into a low part in [0, 2**28) and a high part with
# |high| < 2**30, then summed per exponent by np.bincount in float64. Those sums stay exact
# integers while below 2**53, that is for up to 2**23 numbers: every _FOLD_ELEMENTS numbers
# the float sums are folded into one Python integer.
_HALF_BITS: Final = 28
_FOLD_ELEMENTS: Final = 1 << 23

# Numbers handled per numpy pass: small enough for the temporaries to stay in cache.
_BLOCK_ELEMENTS: Final = 1 << 16

# How many non-finite numbers validation names one by one before summarising the rest.
_MAX_LISTED_VIOLATIONS: Final = 5

_LARGEST_DOUBLE_TEXT: Final = "about 1.8e308"


def compute(operation: Operation, numbers: NDArray[np.float64]) -> float:
    """Return sum(x**2) or sum(x**3), the exact value rounded once to the nearest double.

    Raises ResultOverflowError when that rounding goes beyond the largest double, and
    ComputationError for NaN or infinity (validation should have rejected them already).
    An exact result too small for a double rounds to a subnormal or to 0.0, as IEEE 754 does.
    """
    operation = Operation(operation)  # also accepts the wire name as a plain string
    power = _POWERS[operation]
    values = np.asarray(numbers, dtype=np.float64).reshape(-1)
    finite = np.isfinite(values)
    if not finite.all():
        index = int(np.argmin(finite))
        raise ComputationError(f"data[{index}] is {values[index]}, not a finite number")
    numerator, exponent = _exact_power_sum(values, power)
    try:
        return _round_to_double(numerator, exponent)
    except OverflowError:
        raise ResultOverflowError(
            f"the {operation.value} result is {_approximate(numerator, exponent)}, "
            f"beyond the largest double ({_LARGEST_DOUBLE_TEXT})"
        ) from None


def pack_numbers(numbers: Sequence[float] | NDArray[np.float64]) -> bytes:
    """Return the storage form of numbers: little-endian float64, 8 bytes a number.

    A float64 array (or a protobuf repeated double, which exposes a buffer) is copied once.
    """
    return np.asarray(numbers, dtype="<f8").tobytes()


def unpack_numbers(payload: bytes) -> NDArray[np.float64]:
    """Return the numbers stored by pack_numbers, as a read-only view of payload where possible."""
    if len(payload) % 8:
        raise ValueError(f"packed numbers need a multiple of 8 bytes, got {len(payload)}")
    return np.frombuffer(payload, dtype=np.dtype("<f8")).astype(np.float64, copy=False)


def validate_numbers(numbers: Sequence[float], *, max_count: int) -> NDArray[np.float64]:
    """Return numbers as a float64 array, or raise InvalidJobError saying what is wrong.

    The count is checked before any conversion so an oversized request costs nothing; only
    the first few non-finite numbers are named, so a bad request gets a readable error.
    """
    count = len(numbers)
    if count == 0:
        raise InvalidJobError([FieldViolation("data", "must contain at least one number")])
    if count > max_count:
        raise InvalidJobError(
            [FieldViolation("data", f"must contain at most {max_count} numbers, got {count}")]
        )
    try:
        values = np.asarray(numbers, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if values is None or values.ndim != 1:
        raise InvalidJobError([FieldViolation("data", "must be a list of numbers")])
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        violations = [
            FieldViolation(f"data[{index}]", f"must be a finite number, got {values[index]}")
            for index in bad[:_MAX_LISTED_VIOLATIONS].tolist()
        ]
        if bad.size > _MAX_LISTED_VIOLATIONS:
            violations.append(
                FieldViolation(
                    "data",
                    f"{bad.size} numbers are not finite; only the first "
                    f"{_MAX_LISTED_VIOLATIONS} are listed",
                )
            )
        raise InvalidJobError(violations)
    return values


def _exact_power_sum(values: NDArray[np.float64], power: int) -> tuple[int, int]:
    """Return (numerator, exponent) with sum(values**power) == numerator * 2**exponent exactly.

    Vectorised integer arithmetic instead of float tricks: it is exact for every finite
    double, so there is no range in which a slower fallback is needed.
    """
    if values.size == 0:
        return 0, 0
    mantissas, exponents = np.frexp(values)
    significands = (mantissas * float(1 << _SIGNIFICAND_BITS)).astype(np.int64)
    lowest = int(exponents.min())
    # Numbers with equal exponents share a bin, so one bin's sum needs a single shift.
    bins = (exponents - lowest).astype(np.intp)
    bin_count = int(bins.max()) + 1
    limb_bits = _LIMB_BITS[power]
    total = 0
    for fold_start in range(0, values.size, _FOLD_ELEMENTS):
        fold_end = min(values.size, fold_start + _FOLD_ELEMENTS)
        table = np.zeros((power * (_limb_count(limb_bits) - 1) + 1, 2, bin_count))
        for start in range(fold_start, fold_end, _BLOCK_ELEMENTS):
            stop = min(fold_end, start + _BLOCK_ELEMENTS)
            block_bins = bins[start:stop]
            coefficients = _power_coefficients(significands[start:stop], power, limb_bits)
            for index, coefficient in enumerate(coefficients):
                low = coefficient & ((1 << _HALF_BITS) - 1)
                high = coefficient >> _HALF_BITS
                table[index, 0] += np.bincount(block_bins, weights=low, minlength=bin_count)
                table[index, 1] += np.bincount(block_bins, weights=high, minlength=bin_count)
        total += _fold(table, power=power, limb_bits=limb_bits)
    return total, power * (lowest - _SIGNIFICAND_BITS)


def _power_coefficients(
    significands: NDArray[np.int64], power: int, limb_bits: int
) -> list[NDArray[np.int64]]:
    """Return c with sig**power == sum(c[s] * 2**(limb_bits * s)), elementwise and exact."""
    mask = (1 << limb_bits) - 1
    limb_count = _limb_count(limb_bits)
    limbs = [(significands >> (limb_bits * i)) & mask for i in range(limb_count - 1)]
    limbs.append(significands >> (limb_bits * (limb_count - 1)))
    coefficients = limbs
    for _ in range(power - 1):
        coefficients = _convolve(coefficients, limbs)
    return coefficients


def _limb_count(limb_bits: int) -> int:
    """Return how many limbs of limb_bits bits hold a significand."""
    return -(-_SIGNIFICAND_BITS // limb_bits)


def _convolve(
    left: list[NDArray[np.int64]], right: list[NDArray[np.int64]]
) -> list[NDArray[np.int64]]:
    """Multiply two polynomials whose coefficients are arrays (the product of limb sums)."""
    product: list[NDArray[np.int64]] = []
    for degree in range(len(left) + len(right) - 1):
        first = max(0, degree - len(right) + 1)
        last = min(degree, len(left) - 1)
        term = left[first] * right[degree - first]
        for i in range(first + 1, last + 1):
            term += left[i] * right[degree - i]
        product.append(term)
    return product


def _fold(table: NDArray[np.float64], *, power: int, limb_bits: int) -> int:
    """Turn the per-bin float sums (exact integers) into one integer in units of the lowest bin."""
    used = np.flatnonzero(table.any(axis=(0, 1)))
    total = 0
    per_bin = np.moveaxis(table[:, :, used], 2, 0).tolist()
    for bin_index, parts in zip(used.tolist(), per_bin, strict=True):
        value = 0
        for degree, (low, high) in enumerate(parts):
            value += (int(low) + (int(high) << _HALF_BITS)) << (limb_bits * degree)
        # A bin is one binary exponent of the input, so power binary exponents of the sum.
        total += value << (power * bin_index)
    return total


def _round_to_double(numerator: int, exponent: int) -> float:
    """Round numerator * 2**exponent to the nearest double; OverflowError if that is infinite.

    CPython's int-to-float and int true division round correctly (ties to even), subnormal
    results included, which makes this the single rounding of the exact sum.
    """
    if exponent >= 0:
        return float(numerator << exponent)
    return numerator / (1 << -exponent)


def _approximate(numerator: int, exponent: int) -> str:
    """Return numerator * 2**exponent in short scientific notation, for values beyond a double."""
    log10 = math.log10(abs(numerator)) + exponent * math.log10(2.0)
    decade = math.floor(log10)
    lead = round(10.0 ** (log10 - decade), 1)
    if lead >= 10.0:
        lead, decade = lead / 10.0, decade + 1
    sign = "-" if numerator < 0 else ""
    return f"{sign}{lead:.1f}e+{decade}"
