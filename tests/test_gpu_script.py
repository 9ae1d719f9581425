"""bench/gpu.sh on a machine without a GPU: it must stop before building,
with exit status 2 and a message naming what is missing (the day a GPU is
lent, its first call has to work; CI checks the parts that run without one)."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: bench/gpu.sh would build and run")
def test_gpu_sh_without_a_device_exits_2_naming_it_and_builds_nothing():
    env = dict(os.environ, PYTHON=sys.executable)
    build_dir = os.path.join(ROOT, "build-gpu")
    had_build_dir = os.path.exists(build_dir)
    run = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu.sh")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "torch sees no CUDA device" in run.stderr
    assert os.path.exists(build_dir) == had_build_dir  # the GoogleTest build did not start


@pytest.mark.parametrize("script", ["gpu.sh", "gpu_prepare.sh"])
def test_gpu_scripts_parse(script):
    run = subprocess.run(["bash", "-n", os.path.join(ROOT, "bench", script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
