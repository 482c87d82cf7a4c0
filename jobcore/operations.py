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

# Up to this many numbers, the exact sum is taken with Python integers instead of numpy.
_SMALL_JOB_NUMBERS: Final = 64

# Numbers handled per numpy pass, from the finiteness check to the bincounts: the temporaries
# (frexp's parts, limbs, coefficients) then stay a few MB whatever the job size, instead of
# several full-size arrays at once.
_BLOCK_ELEMENTS: Final = 1 << 14

# np.frexp exponents of finite doubles: -1073 for the smallest subnormal, 1024 for the
# largest double (0.0 gives 0). Bins are indexed from the lowest, so blocks can be summed into
# one table without a first pass over the data for the exponent range.
_LOWEST_EXPONENT: Final = -1073
_EXPONENT_BINS: Final = 1024 - _LOWEST_EXPONENT + 1

# How many non-finite numbers validation names one by one before summarising the rest.
_MAX_LISTED_VIOLATIONS: Final = 5

_LARGEST_DOUBLE_TEXT: Final = "about 1.8e308"

# The storage form: little-endian float64, whatever the machine's byte order.
_STORAGE_DTYPE: Final = np.dtype("<f8")


def compute(operation: Operation, numbers: NDArray[np.float64]) -> float:
    """Return sum(x**2) or sum(x**3), the exact value rounded once to the nearest double.

    Raises ResultOverflowError when that rounding goes beyond the largest double, and
    ComputationError for NaN or infinity (validation should have rejected them already).
    An exact result too small for a double rounds to a subnormal or to 0.0, as IEEE 754 does.
    """
    operation = Operation(operation)  # also accepts the wire name as a plain string
    power = _POWERS[operation]
    values = np.asarray(numbers, dtype=np.float64).reshape(-1)
    _, bad = _non_finite(values, limit=1)
    if bad:
        raise ComputationError(f"data[{bad[0]}] is {values[bad[0]]}, not a finite number")
    if 0 < len(values) <= _SMALL_JOB_NUMBERS:
        numerator, exponent = _exact_power_sum_small(values.tolist(), power)
    else:
        numerator, exponent = _exact_power_sum(values, power)
    try:
        return _round_to_double(numerator, exponent)
    except OverflowError:
        raise ResultOverflowError(
            f"the {operation.value} result is {_approximate(numerator, exponent)}, "
            f"beyond the largest double ({_LARGEST_DOUBLE_TEXT})"
        ) from None


def pack_numbers(numbers: Sequence[float] | NDArray[np.float64]) -> bytes | memoryview:
    """Return the storage form of numbers: little-endian float64, 8 bytes a number.

    An array already in that form (a view of received or stored bytes, or validate_numbers'
    result) is returned as a byte view of its memory, without a copy; anything else is copied.
    """
    if (
        isinstance(numbers, np.ndarray)
        and numbers.dtype == _STORAGE_DTYPE
        and numbers.ndim == 1
        and numbers.flags.c_contiguous
    ):
        return numbers.data.cast("B")
    return np.asarray(numbers, dtype=_STORAGE_DTYPE).tobytes()


def unpack_numbers(payload: bytes | memoryview) -> NDArray[np.float64]:
    """Return the numbers stored by pack_numbers, as a read-only view of payload where possible."""
    if len(payload) % 8:
        raise ValueError(f"packed numbers need a multiple of 8 bytes, got {len(payload)}")
    return np.frombuffer(payload, dtype=_STORAGE_DTYPE).astype(np.float64, copy=False)


def validate_numbers(
    numbers: Sequence[float] | NDArray[np.float64], *, max_count: int
) -> NDArray[np.float64]:
    """Return numbers as a float64 array, or raise InvalidJobError saying what is wrong.

    The count is checked before any conversion so an oversized request costs nothing; only
    the first few non-finite numbers are named, so a bad request gets a readable error.
    An array of float64 (such as a view of the received request) is checked in place.
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
    bad_count, bad = _non_finite(values, limit=_MAX_LISTED_VIOLATIONS)
    if bad_count:
        violations = [
            FieldViolation(f"data[{index}]", f"must be a finite number, got {values[index]}")
            for index in bad
        ]
        if bad_count > _MAX_LISTED_VIOLATIONS:
            violations.append(
                FieldViolation(
                    "data",
                    f"{bad_count} numbers are not finite; only the first "
                    f"{_MAX_LISTED_VIOLATIONS} are listed",
                )
            )
        raise InvalidJobError(violations)
    return values


def _non_finite(values: NDArray[np.float64], *, limit: int) -> tuple[int, list[int]]:
    """Return how many numbers are NaN or infinite and the indices of the first `limit`.

    Checked block by block, so no mask as large as the job is allocated.
    """
    count = 0
    first: list[int] = []
    for start in range(0, values.size, _BLOCK_ELEMENTS):
        finite = np.isfinite(values[start : start + _BLOCK_ELEMENTS])
        if finite.all():
            continue
        bad = np.flatnonzero(~finite)
        count += bad.size
        first += (bad[: limit - len(first)] + start).tolist()
    return count, first


def _exact_power_sum(values: NDArray[np.float64], power: int) -> tuple[int, int]:
    """Return (numerator, exponent) with sum(values**power) == numerator * 2**exponent exactly.

    Vectorised integer arithmetic instead of float tricks: it is exact for every finite
    double, so there is no range in which a slower fallback is needed.
    """
    limb_bits = _LIMB_BITS[power]
    total = 0
    for fold_start in range(0, values.size, _FOLD_ELEMENTS):
        fold_end = min(values.size, fold_start + _FOLD_ELEMENTS)
        table = np.zeros((power * (_limb_count(limb_bits) - 1) + 1, 2, _EXPONENT_BINS))
        for start in range(fold_start, fold_end, _BLOCK_ELEMENTS):
            mantissas, exponents = np.frexp(values[start : min(fold_end, start + _BLOCK_ELEMENTS)])
            significands = (mantissas * float(1 << _SIGNIFICAND_BITS)).astype(np.int64)
            # Numbers with equal exponents share a bin, so one bin's sum needs a single shift;
            # bincount only spans this block's exponents, added at their place in the table.
            lowest = int(exponents.min())
            bins = (exponents - lowest).astype(np.intp)
            width = int(bins.max()) + 1
            place = slice(lowest - _LOWEST_EXPONENT, lowest - _LOWEST_EXPONENT + width)
            coefficients = _power_coefficients(significands, power, limb_bits)
            for index, coefficient in enumerate(coefficients):
                low = coefficient & ((1 << _HALF_BITS) - 1)
                high = coefficient >> _HALF_BITS
                table[index, 0, place] += np.bincount(bins, weights=low, minlength=width)
                table[index, 1, place] += np.bincount(bins, weights=high, minlength=width)
        total += _fold(table, power=power, limb_bits=limb_bits)
    return total, power * (_LOWEST_EXPONENT - _SIGNIFICAND_BITS)


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


def _exact_power_sum_small(values: list[float], power: int) -> tuple[int, int]:
    """_exact_power_sum with Python integers: far quicker than numpy's fixed costs for a few numbers.

    Each x is sig * 2**(exp - 53) with sig an integer (math.frexp), so x**power is
    sig**power * 2**(power * (exp - 53)); the terms are summed exactly over the smallest exponent.
    """
    terms = []
    for value in values:
        mantissa, exp = math.frexp(value)
        terms.append((int(mantissa * (1 << _SIGNIFICAND_BITS)) ** power, power * (exp - 53)))
    lowest = min(exponent for _, exponent in terms)
    return sum(term << (exponent - lowest) for term, exponent in terms), lowest


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
