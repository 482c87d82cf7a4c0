"""Unit tests of the job math: exact results, overflow, validation and the storage form."""

from __future__ import annotations

import itertools
import math
import struct
import sys
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jobcore import operations
from jobcore.errors import ComputationError, FieldViolation, InvalidJobError, ResultOverflowError
from jobcore.operations import (
    Operation,
    compute,
    pack_numbers,
    unpack_numbers,
    validate_numbers,
)

POWERS = {Operation.SQUARE_SUM: 2, Operation.CUBE_SUM: 3}

# The machine is shared and Fraction references of extreme numbers are slow: no deadline.
relaxed = settings(deadline=None)

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
# Every binary exponent equally likely, subnormals included, so extremes are common.
wide_floats = st.builds(math.ldexp, st.integers(-(2**53) + 1, 2**53 - 1), st.integers(-1130, 971))
operations_ = st.sampled_from(list(Operation))


def reference(operation: Operation, numbers: Sequence[float]) -> float | None:
    """Return the exact sum rounded once by Fraction, or None if it rounds beyond a double."""
    exact = sum((Fraction(x) ** POWERS[operation] for x in numbers), Fraction(0))
    try:
        return float(exact)
    except OverflowError:
        return None


def assert_matches_reference(operation: Operation, numbers: Sequence[float]) -> None:
    """compute() gives the correctly rounded exact sum, or ResultOverflowError if none exists."""
    expected = reference(operation, numbers)
    array = np.array(numbers, dtype=np.float64)
    if expected is None:
        with pytest.raises(ResultOverflowError):
            compute(operation, array)
    else:
        assert compute(operation, array) == expected


def test_operation_values_are_the_wire_names() -> None:
    assert Operation("square_sum") is Operation.SQUARE_SUM
    assert Operation("cube_sum") is Operation.CUBE_SUM
    assert [str(op) for op in Operation] == ["square_sum", "cube_sum"]


@pytest.mark.parametrize(
    ("operation", "numbers", "expected"),
    [
        (Operation.SQUARE_SUM, [1.0, 2.0, 3.0], 14.0),
        (Operation.CUBE_SUM, [1.0, 2.0, 3.0], 36.0),
        (Operation.CUBE_SUM, [-1.0, -2.0], -9.0),
        (Operation.SQUARE_SUM, [2.0**26, 2.0**26], 2.0**53),
        (Operation.SQUARE_SUM, [94906265.0, 94906265.0, -1.0], 18014398272500451.0),
        # (2**20 + 1)**3 needs 61 bits, so naive float cubes lose the 1 here.
        (Operation.CUBE_SUM, [2.0**20 + 1, -(2.0**20)], 3 * 2**40 + 3 * 2**20 + 1),
        (Operation.CUBE_SUM, [1e6, -1e6, 1.0], 1.0),
        (Operation.CUBE_SUM, [1e6, 1.0, -1e6], 1.0),
        (Operation.CUBE_SUM, [2.0**40, -(2.0**40), 3.0], 27.0),
        (Operation.SQUARE_SUM, [0.1, 0.2, 0.3], 0.13999999999999999),
        (Operation.CUBE_SUM, [0.1, 0.2, 0.3], 0.036),
        (Operation.SQUARE_SUM, [0.1], 0.010000000000000002),
        # Each cube overflows a double but the sum does not.
        (Operation.CUBE_SUM, [1e200, -1e200, 2.0], 8.0),
        (Operation.CUBE_SUM, [1e300, 2.0, -1e300, -1.0], 7.0),
        (Operation.SQUARE_SUM, [0.0, -0.0], 0.0),
        (Operation.CUBE_SUM, [5e-324, 1.0], 1.0),
    ],
)
def test_known_results_are_exact(
    operation: Operation, numbers: list[float], expected: float
) -> None:
    assert compute(operation, np.array(numbers)) == expected


@pytest.mark.parametrize("operation", list(Operation))
def test_cancellation_loses_nothing_in_any_order(operation: Operation) -> None:
    numbers = [2.0**40, -(2.0**40), 3.0, 1e6, -1e6, 1.0]
    expected = {
        Operation.SQUARE_SUM: float(2 * 2**80 + 2 * 10**12 + 9 + 1),
        Operation.CUBE_SUM: 27.0 + 1.0,
    }[operation]
    for order in itertools.permutations(numbers):
        assert compute(operation, np.array(order)) == expected


@pytest.mark.parametrize(
    ("numbers", "expected"),
    [
        # 2**-1076 is a quarter of the smallest subnormal: it rounds away...
        ([2.0**-538], 0.0),
        # ...two of them are exactly half of it, a tie that rounds to even (zero)...
        ([2.0**-538] * 2, 0.0),
        # ...and three are closer to the smallest subnormal than to zero.
        ([2.0**-538] * 3, 5e-324),
        ([2.0**-537] * 3, 3 * 5e-324),
    ],
)
def test_tiny_results_round_like_ieee(numbers: list[float], expected: float) -> None:
    assert compute(Operation.SQUARE_SUM, np.array(numbers)) == expected


@pytest.mark.parametrize(
    ("operation", "numbers"),
    [
        (Operation.CUBE_SUM, [1e103, 1e103]),
        (Operation.SQUARE_SUM, [1.5e154]),
        (Operation.SQUARE_SUM, [1e200, -1e200, 2.0]),
        (Operation.CUBE_SUM, [-1e308, 5e-324]),
        # 2**1024 - 2**970 is the tie between the largest double and 2**1024; ties go to
        # the even neighbour, which is 2**1024: the result overflows.
        (Operation.CUBE_SUM, [2.0**341, 2.0**341, -(2.0**323), -(2.0**323)]),
        (Operation.CUBE_SUM, [2.0**341, 2.0**341, -(2.0**323), -(2.0**323), 1.0]),
    ],
)
def test_results_beyond_a_double_raise_overflow(operation: Operation, numbers: list[float]) -> None:
    with pytest.raises(ResultOverflowError, match=r"largest double \(about 1\.8e308\)"):
        compute(operation, np.array(numbers))


def test_overflow_message_gives_the_magnitude() -> None:
    with pytest.raises(ResultOverflowError) as caught:
        compute(Operation.CUBE_SUM, np.array([-1e103, -1e103]))
    assert str(caught.value) == (
        "the cube_sum result is -2.0e+309, beyond the largest double (about 1.8e308)"
    )


def test_just_below_the_overflow_tie_gives_the_largest_double() -> None:
    numbers = np.array([2.0**341, 2.0**341, -(2.0**323), -(2.0**323), -1.0])
    assert compute(Operation.CUBE_SUM, numbers) == sys.float_info.max


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_a_computation_error(bad: float) -> None:
    with pytest.raises(ComputationError, match=r"data\[1\]"):
        compute(Operation.SQUARE_SUM, np.array([1.0, bad, 2.0]))


def test_empty_input_sums_to_zero() -> None:
    assert compute(Operation.CUBE_SUM, np.array([], dtype=np.float64)) == 0.0


@relaxed
@given(operations_, st.lists(st.integers(-(2**53), 2**53), min_size=1, max_size=20))
def test_integers_are_exact_when_the_result_fits(operation: Operation, numbers: list[int]) -> None:
    exact = sum(n ** POWERS[operation] for n in numbers)
    result = compute(operation, np.array(numbers, dtype=np.float64))
    if abs(exact) <= 2**53:
        assert result == exact
    else:
        assert result == float(exact)


@relaxed
@given(operations_, st.lists(finite_floats, min_size=1, max_size=30))
@example(Operation.CUBE_SUM, [1e200, -1e200, 2.0])
@example(Operation.SQUARE_SUM, [sys.float_info.max])
def test_matches_rounded_fraction_for_any_floats(
    operation: Operation, numbers: list[float]
) -> None:
    assert_matches_reference(operation, numbers)


@relaxed
@given(operations_, st.lists(wide_floats, min_size=1, max_size=30))
def test_matches_rounded_fraction_across_all_magnitudes(
    operation: Operation, numbers: list[float]
) -> None:
    assert_matches_reference(operation, numbers)


@relaxed
@given(operations_, st.lists(wide_floats, min_size=1, max_size=10))
def test_result_is_the_nearest_double(operation: Operation, numbers: list[float]) -> None:
    # Checked without float(Fraction), which rounds with the same CPython routine as compute.
    exact = sum((Fraction(x) ** POWERS[operation] for x in numbers), Fraction(0))
    try:
        result = compute(operation, np.array(numbers))
    except ResultOverflowError:
        assert abs(exact) >= 2**1024 - 2**970
        return
    error = abs(exact - Fraction(result))
    for neighbour in (math.nextafter(result, math.inf), math.nextafter(result, -math.inf)):
        if math.isfinite(neighbour):
            assert error <= abs(exact - Fraction(neighbour))


@st.composite
def cancelling_lists(draw: st.DrawFn) -> list[float]:
    """Numbers that cancel in pairs, plus a few survivors, in a random order."""
    pairs = draw(st.lists(st.one_of(finite_floats, wide_floats), max_size=10))
    survivors = draw(st.lists(st.one_of(finite_floats, wide_floats), min_size=1, max_size=4))
    return draw(st.permutations(pairs + [-x for x in pairs] + survivors))


@relaxed
@given(operations_, cancelling_lists())
def test_cancellation_matches_rounded_fraction(operation: Operation, numbers: list[float]) -> None:
    assert_matches_reference(operation, numbers)


@relaxed
@given(
    operations_,
    st.lists(wide_floats, min_size=2, max_size=20).flatmap(
        lambda xs: st.tuples(st.just(xs), st.permutations(xs))
    ),
)
def test_order_does_not_matter(
    operation: Operation, lists: tuple[list[float], list[float]]
) -> None:
    numbers, shuffled = lists
    try:
        expected = compute(operation, np.array(numbers))
    except ResultOverflowError:
        with pytest.raises(ResultOverflowError):
            compute(operation, np.array(shuffled))
    else:
        assert compute(operation, np.array(shuffled)) == expected


@pytest.mark.parametrize("operation", list(Operation))
def test_large_inputs_across_blocks_are_exact(operation: Operation) -> None:
    # Multiples of 2**-20 keep the exact reference a fast integer sum.
    rng = np.random.default_rng(7)
    units = rng.integers(-(2**40), 2**40, 300_000)
    units[::1000] = rng.integers(-(2**52), 2**52, units[::1000].size)
    power = POWERS[operation]
    exact = Fraction(sum(int(n) ** power for n in units.tolist()), 2 ** (20 * power))
    numbers = np.ldexp(units.astype(np.float64), -20)
    assert compute(operation, numbers) == float(exact)


def test_massive_cancellation_keeps_the_last_bits() -> None:
    # 400,000 cubes of full 53-bit integers cancel to 27: any rounding in the internal
    # accumulation, even far below the size of the cubes, would show up in the answer.
    rng = np.random.default_rng(5)
    big = rng.integers(2**52, 2**53, 200_000).astype(np.float64)
    numbers = np.concatenate((big, -big, [3.0]))
    assert compute(Operation.CUBE_SUM, numbers) == 27.0
    assert compute(Operation.CUBE_SUM, numbers[::-1].copy()) == 27.0


@pytest.mark.parametrize("operation", list(Operation))
def test_small_blocks_and_folds_give_the_same_result(
    operation: Operation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Exercises the block and fold boundaries without needing millions of numbers.
    rng = np.random.default_rng(11)
    numbers = np.ldexp(rng.uniform(-1, 1, 200), rng.integers(-1074, 300, 200))
    expected = reference(operation, numbers.tolist())
    monkeypatch.setattr(operations, "_BLOCK_ELEMENTS", 3)
    monkeypatch.setattr(operations, "_FOLD_ELEMENTS", 7)
    assert compute(operation, numbers) == expected


def test_validate_returns_a_float64_array() -> None:
    values = validate_numbers((1, 2.5, -3), max_count=3)
    assert values.dtype == np.float64
    assert values.tolist() == [1.0, 2.5, -3.0]


def test_validate_rejects_empty_data() -> None:
    with pytest.raises(InvalidJobError) as caught:
        validate_numbers([], max_count=10)
    assert caught.value.violations == [
        FieldViolation(field="data", description="must contain at least one number")
    ]


def test_validate_rejects_too_many_numbers() -> None:
    with pytest.raises(InvalidJobError) as caught:
        validate_numbers([1.0] * 11, max_count=10)
    assert caught.value.violations == [
        FieldViolation(field="data", description="must contain at most 10 numbers, got 11")
    ]


@pytest.mark.parametrize(
    ("bad", "text"), [(math.inf, "inf"), (-math.inf, "-inf"), (math.nan, "nan")]
)
def test_validate_names_the_non_finite_number(bad: float, text: str) -> None:
    with pytest.raises(InvalidJobError) as caught:
        validate_numbers([0.0, 1.0, 2.0, bad, 4.0], max_count=10)
    assert caught.value.violations == [
        FieldViolation(field="data[3]", description=f"must be a finite number, got {text}")
    ]
    assert str(caught.value) == f"data[3]: must be a finite number, got {text}"


def test_validate_lists_only_the_first_few_non_finite_numbers() -> None:
    numbers = np.full(1_000_000, math.nan)
    numbers[:2] = 1.0
    with pytest.raises(InvalidJobError) as caught:
        validate_numbers(numbers.tolist(), max_count=1_000_000)
    violations = caught.value.violations
    assert [v.field for v in violations] == [
        "data[2]",
        "data[3]",
        "data[4]",
        "data[5]",
        "data[6]",
        "data",
    ]
    assert (
        violations[-1].description == "999998 numbers are not finite; only the first 5 are listed"
    )


def test_validate_rejects_things_that_are_not_numbers() -> None:
    with pytest.raises(InvalidJobError) as caught:
        validate_numbers(["one", "two"], max_count=10)  # type: ignore[list-item]
    assert caught.value.violations == [
        FieldViolation(field="data", description="must be a list of numbers")
    ]


def test_pack_is_little_endian_float64() -> None:
    assert pack_numbers([1.0, -2.5]) == struct.pack("<2d", 1.0, -2.5)
    assert pack_numbers(np.array([1.0, -2.5], dtype=">f8")) == struct.pack("<2d", 1.0, -2.5)


def test_pack_shares_the_memory_of_numbers_already_in_storage_form() -> None:
    payload = struct.pack("<3d", 1.0, -2.5, 3.0)
    packed = pack_numbers(unpack_numbers(payload))
    assert packed == payload
    assert np.shares_memory(np.frombuffer(packed, dtype=np.uint8), np.frombuffer(payload, np.uint8))


def test_unpack_rejects_a_truncated_payload() -> None:
    with pytest.raises(ValueError, match="multiple of 8 bytes"):
        unpack_numbers(b"\x00" * 7)


@given(st.lists(st.floats(), max_size=50))
def test_pack_unpack_round_trip_is_bit_exact(numbers: list[float]) -> None:
    payload = pack_numbers(numbers)
    assert len(payload) == 8 * len(numbers)
    unpacked = unpack_numbers(payload)
    assert unpacked.dtype == np.float64
    assert unpacked.tobytes() == np.array(numbers, dtype=np.float64).tobytes()
    assert pack_numbers(unpacked) == payload


@given(operations_, st.lists(st.one_of(finite_floats, wide_floats), min_size=1, max_size=64))
def test_the_small_job_path_and_the_numpy_path_sum_exactly_alike(
    operation: Operation, numbers: list[float]
) -> None:
    power = 2 if operation is Operation.SQUARE_SUM else 3
    small = operations._exact_power_sum_small(numbers, power)
    vectorised = operations._exact_power_sum(np.array(numbers, dtype=np.float64), power)
    assert (
        Fraction(small[0]) * Fraction(2) ** small[1]
        == Fraction(vectorised[0]) * Fraction(2) ** vectorised[1]
    )
