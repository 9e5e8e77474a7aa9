"""Additive sharing with seed compression: reconstruction and uniformity."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tecc_contract.errors import ShareError
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.sharing import Share, expand_share, reconstruct, split
from tests.contract.helpers import chi_square_bytes, seeded_random_bytes


@given(
    st.lists(st.integers(min_value=0, max_value=2**64 - 1), min_size=1, max_size=64),
    st.integers(min_value=2, max_value=5),
    st.integers(min_value=0, max_value=4),
    st.binary(min_size=1, max_size=8),
)
def test_shares_always_reconstruct(values: list[int], n: int, vp: int, seed: bytes) -> None:
    """Any secret, any N, any vector party: the shares add up to the secret."""
    secret = np.array(values, dtype=np.uint64)
    shares = split(secret, n, vector_party=vp % n, random_bytes=seeded_random_bytes(seed))
    vectors = [expand_share(s, secret.shape) for s in shares]
    assert np.array_equal(reconstruct(vectors), secret)
    assert sum(s.vector is not None for s in shares) == 1


def test_two_dimensional_secret() -> None:
    """Histogram rows (2-D) share and reconstruct like vectors."""
    secret = np.arange(12, dtype=np.uint64).reshape(4, 3)
    shares = split(secret, 3, vector_party=1, random_bytes=seeded_random_bytes(b"2d"))
    assert np.array_equal(reconstruct([expand_share(s, (4, 3)) for s in shares]), secret)


@pytest.mark.parametrize("n", [2, 3])
def test_any_n_minus_one_shares_are_uniform(n: int) -> None:
    """Every N−1 subset of shares of a very non-uniform secret is uniform (1 MiB, chi-square).

    The same statistic on the encoded secret itself must reject uniformity, so
    the test can tell the difference.
    """
    count = (1 << 20) // 8
    secret = FixedPoint().encode(np.full(count, 42.0))
    stat_plain, critical = chi_square_bytes(secret)
    assert stat_plain > critical  # the detector sees structure when it is there
    for vp in range(n):
        shares = split(secret, n, vector_party=vp, random_bytes=seeded_random_bytes(bytes([n, vp])))
        vectors = [expand_share(s, count) for s in shares]
        for subset in itertools.combinations(range(n), n - 1):
            views = [vectors[i] for i in subset]
            if len(views) > 1:
                views.append(reconstruct(views))
            for view in views:
                stat, _ = chi_square_bytes(view)
                assert stat < critical, (vp, subset, stat)


def test_share_needs_exactly_one_payload() -> None:
    """A share is a seed or a vector, never both or neither."""
    with pytest.raises(ShareError):
        Share(party=0)
    with pytest.raises(ShareError):
        Share(party=0, seed=b"x" * 32, vector=np.zeros(1, dtype=np.uint64))
    with pytest.raises(ShareError):
        Share(party=0, seed=b"short")


def test_split_argument_errors() -> None:
    """Fewer than two parties or a bad vector party are refused."""
    secret = np.zeros(3, dtype=np.uint64)
    with pytest.raises(ShareError):
        split(secret, 1, vector_party=0)
    with pytest.raises(ShareError):
        split(secret, 2, vector_party=2)
    with pytest.raises(ShareError):
        reconstruct([secret])
    with pytest.raises(ShareError):
        reconstruct([secret, np.zeros(4, dtype=np.uint64)])


def test_expand_share_checks_the_vector_shape_and_handles_scalars() -> None:
    """A correction of the wrong shape is a ShareError; a seed expands to a 0-d scalar too.

    Kills the mutants that drop the shape check or expand a scalar to two elements.
    """
    shares = split(
        np.arange(6, dtype=np.uint64), 2, vector_party=0, random_bytes=seeded_random_bytes(b"s")
    )
    vector = next(s for s in shares if s.vector is not None)
    seed = next(s for s in shares if s.seed is not None)
    with pytest.raises(ShareError, match=r"shape \(6,\), expected \(7,\)"):
        expand_share(vector, 7)
    assert expand_share(vector, 6).shape == (6,)
    scalar = expand_share(seed, ())
    assert scalar.shape == ()
    assert int(scalar) == int(expand_share(seed, 1)[0])
