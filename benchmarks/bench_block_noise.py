"""block_noise: fused backends against the copy, randn_like, the released formulation and the best plain one."""

import pytest

from benchmarks.suite import impl_names, run_bench


@pytest.mark.parametrize("impl", impl_names("block_noise"))
def test_block_noise(benchmark, impl, dtype):
    run_bench(benchmark, "block_noise", impl, dtype)
