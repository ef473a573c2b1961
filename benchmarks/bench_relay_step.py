"""relay_step: fused backends against the copy, randn_like, the released formulation and the best plain one."""

import pytest

from benchmarks.suite import impl_names, run_bench


@pytest.mark.parametrize("impl", impl_names("relay_step"))
def test_relay_step(benchmark, impl, dtype):
    run_bench(benchmark, "relay_step", impl, dtype)
