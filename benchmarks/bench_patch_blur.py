"""patch_blur: fused backends against the copy, randn_like, the released formulation and the best plain one."""

import pytest

from benchmarks.suite import impl_names, run_bench


@pytest.mark.parametrize("impl", impl_names("patch_blur"))
def test_patch_blur(benchmark, impl, dtype):
    run_bench(benchmark, "patch_blur", impl, dtype)
