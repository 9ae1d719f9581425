"""No CUDA kernel spills registers to local memory (issue 10's `-Xptxas -v`
target) or keeps anything else there (a stack frame: a register array
indexed at run time, 32 bytes once in pass 2's key norms): on both architectures of the default build (scripts/install.sh:
TORCH_CUDA_ARCH_LIST "8.0;9.0") and on those users build for their own GPU
(A10 / RTX 30, L4 / RTX 40, B200, RTX 50). Needs nvcc, not a GPU: CI compiles
every kernel file with ptxas's report (bench/ptxas_report.py) and reads it.
"""
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import ptxas_report  # noqa: E402

NVCC = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
needs_nvcc = pytest.mark.skipif(not os.path.exists(NVCC), reason=f"no nvcc at {NVCC}")

# What ptxas prints for a kernel that spills (its report's format, shortened).
SPILLING = """\
ptxas info    : Compiling entry function '_ZN3obc4salc12pass2_kernelIfLNS_5ScoreE1ELi1ELi8EEEvv' for 'sm_90'
ptxas info    : Function properties for _ZN3obc4salc12pass2_kernelIfLNS_5ScoreE1ELi1ELi8EEEvv
    8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 56 registers, used 1 barriers
"""


def test_report_parser_reads_spills():
    (row,) = ptxas_report.parse(SPILLING)
    assert (row["spill_st"], row["spill_ld"], row["stack"], row["regs"]) == (8, 4, 8, 56)
    assert row["name"] == "salc::pass2_kernel<float, tova, 1, 8>"


ARCHS = ["sm_80", "sm_90", "sm_86", "sm_89", "sm_100", "sm_120"]


@pytest.fixture(scope="module")
def reports():
    """(file, arch) -> compile_report's (exit code, rows); compiled in parallel, one nvcc per core."""
    jobs = [(cu, arch) for cu in ptxas_report.kernel_files() for arch in ARCHS]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        done = pool.map(lambda job: ptxas_report.compile_report(NVCC, *job), jobs)
        return dict(zip(jobs, done))


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
# ids without "cuda": bench/gpu.sh selects the GPU parity tests with -k cuda.
@pytest.mark.parametrize("cu", ptxas_report.kernel_files(), ids=lambda cu: os.path.basename(cu).split("_cuda")[0])
def test_no_kernel_spills(reports, cu, arch):
    code, rows = reports[(cu, arch)]
    assert code == 0, f"nvcc failed on {cu} for {arch}:\n{rows}"
    assert rows, f"ptxas reported no kernel for {cu}"
    unread = [r["name"] for r in rows if "spill_st" not in r]
    assert not unread, f"no spill line read for {unread}"
    spills = [f"{r['name']}: {r['spill_st']} B stored / {r['spill_ld']} B loaded" for r in rows
              if r["spill_st"] or r["spill_ld"]]
    assert not spills, f"{arch} register spills:\n" + "\n".join(spills)
    stacks = [f"{r['name']}: {r['stack']} B" for r in rows if r["stack"]]
    assert not stacks, f"{arch} stack frames (local memory):\n" + "\n".join(stacks)
