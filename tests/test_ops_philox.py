"""The in-kernel counter-based generator: known-answer words, statistics, independence, reproducibility."""
import pytest
import torch

from mcfast import ops

pytestmark = pytest.mark.skipif(not ops.available(), reason="mcfast._C is not built")


def _bits(groups, seed, offset=0, stream=0, start=0):
    out = torch.empty(groups, 4, dtype=torch.int32)
    torch.ops.mcfast.philox_bits_(out, seed, offset, stream, start)
    return [[v & 0xFFFFFFFF for v in row] for row in out.tolist()]


def _normal(n, seed, offset=0, stream=0, start=0):
    out = torch.empty(n)
    torch.ops.mcfast.philox_normal_(out, seed, offset, stream, start)
    return out


def test_philox4x32_10_known_answers():
    # Random123 known-answer vectors: counter 0, key 0 and counter/key all ones.
    assert _bits(1, 0)[0] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    # counter = (lo32(group), hi32(group), offset, stream), key = (lo32(seed), hi32(seed)); int64 wraps mod 2^64.
    assert _bits(1, seed=-1, offset=0xFFFFFFFF, stream=0xFFFFFFFF, start=-1)[0] == \
        [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert _bits(1, seed=0x299F31D0A4093822, offset=0x13198A2E, stream=0x03707344,
                 start=0x85A308D3243F6A88 - 2 ** 64)[0] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_moments_and_tails():
    x = _normal(1 << 20, seed=1234).double()
    assert abs(x.mean()) < 5e-3
    assert abs(x.var() - 1.0) < 5e-3
    assert abs((x ** 3).mean()) < 2e-2          # skewness
    assert abs((x ** 4).mean() - 3.0) < 3e-2    # kurtosis
    assert abs((x.abs() > 2).double().mean() - 0.0455) < 2e-3
    assert torch.isfinite(x).all()


def test_no_correlation_between_neighbours_offsets_and_streams():
    n = 1 << 18
    a = _normal(n, seed=7, offset=10)
    for other in (a.roll(1), a.roll(2), a.roll(4), _normal(n, seed=7, offset=11), _normal(n, seed=7, offset=10, stream=1),
                  _normal(n, seed=8, offset=10)):
        r = torch.corrcoef(torch.stack([a, other]))[0, 1]
        assert abs(r) < 1e-2


def test_block_fill_equals_pointwise_definition():
    # Any start (aligned or not) draws the same numbers as the full stream at those indices.
    full = _normal(1000, seed=3, offset=2, stream=5)
    for start, length in ((0, 1000), (1, 17), (3, 400), (998, 2)):
        torch.testing.assert_close(_normal(length, 3, 2, 5, start), full[start:start + length], rtol=0, atol=0)


def test_reproducible_and_seed_sensitive():
    assert torch.equal(_normal(4096, 99), _normal(4096, 99))
    assert not torch.equal(_normal(4096, 99), _normal(4096, 100))


def test_bad_arguments():
    with pytest.raises(RuntimeError, match="out must be float32"):
        torch.ops.mcfast.philox_normal_(torch.empty(4, dtype=torch.float64), 0, 0, 0, 0)
    with pytest.raises(RuntimeError, match=r"shape \(G, 4\)"):
        torch.ops.mcfast.philox_bits_(torch.empty(4, 3, dtype=torch.int32), 0, 0, 0, 0)


def test_vector_path_carries_into_the_high_counter_word():
    # Groups 2^32 − 20 … 2^32 + 30: the vectorised words must carry from the low into the high word exactly as
    # the scalar path (a fill of one element) does.
    start = 4 * (2 ** 32 - 20)
    block = _normal(200, seed=5, offset=1, stream=2, start=start)
    single = torch.stack([_normal(1, 5, 1, 2, start + k)[0] for k in range(200)])
    assert torch.equal(block, single)
