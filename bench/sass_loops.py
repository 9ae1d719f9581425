"""Instruction mix of the loops of CUDA kernels, read off the SASS (no GPU
needed): compiles a .cu file for one architecture, disassembles it with
cuobjdump, and for every loop (a backward branch) of the kernels whose
mangled name contains --kernel prints its length and its FFMA, tensor-core
(HMMA), shared-load (LDS*), global-load (LDG*) and local-memory (LDL / STL,
i.e. spill) counts.

The ratio of FFMAs to shared loads in a product loop tells whether shared
memory or the FP32 units bound it (bench/results/kernels.md).

    pip install nvidia-cuda-cuobjdump   # cuobjdump; the CUDA toolkit here has none
    CUDA_HOME=/usr/local/cuda python bench/sass_loops.py csrc/kernels/saliency_cuda.cu \
        --kernel pass2_kernelIfLNS_5ScoreE5 --min-ffma 16
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile


def find_cuobjdump():
    exe = shutil.which("cuobjdump")
    if exe:
        return exe
    try:  # the PyPI package nvidia-cuda-cuobjdump
        import nvidia

        for root in nvidia.__path__:
            for sub in ("cu13/bin", "cuda_cuobjdump/bin"):
                cand = os.path.join(root, sub, "cuobjdump")
                if os.path.exists(cand):
                    return cand
    except ImportError:
        pass
    sys.exit("sass_loops.py: no cuobjdump (pip install nvidia-cuda-cuobjdump)")


def functions(sass):
    for m in re.finditer(r"Function : (\S+)\n(.*?)(?=\n\s*Function :|\Z)", sass, re.S):
        ins = [(int(a, 16), t.strip()) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", m.group(2))]
        yield m.group(1), ins


def opcode(text):
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]


def loops(ins):
    """(start, end, opcode counts) of every backward branch's body."""
    index = {a: i for i, (a, _) in enumerate(ins)}
    for i, (a, text) in enumerate(ins):
        m = re.search(r"BRA .*?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < a and int(m.group(1), 16) in index:
            body = ins[index[int(m.group(1), 16)]:i + 1]
            yield body[0][0], a, collections.Counter(opcode(t) for _, t in body)


def count(ops, prefix):
    return sum(v for k, v in ops.items() if k.startswith(prefix))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cu", help="the .cu file")
    ap.add_argument("--kernel", default="", help="substring of the mangled kernel names to report")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--min-ffma", type=int, default=1, help="only loops with at least this many FFMAs + HMMAs")
    args = ap.parse_args()
    nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    with tempfile.TemporaryDirectory() as tmp:
        obj = os.path.join(tmp, "k.o")
        subprocess.run([nvcc, "-O3", "--expt-relaxed-constexpr", f"-arch={args.arch}", "-c", args.cu, "-o", obj,
                        "-I", os.path.dirname(args.cu)], check=True)
        sass = subprocess.run([find_cuobjdump(), "-sass", obj], check=True, capture_output=True, text=True).stdout
    for name, ins in functions(sass):
        if args.kernel not in name:
            continue
        demangled = subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip() or name
        print(f"{demangled}: {len(ins)} instructions")
        for start, end, ops in loops(ins):
            hmma = count(ops, "HMMA")
            if ops["FFMA"] + hmma < args.min_ffma:
                continue
            total = sum(ops.values())
            print(f"  loop {start:#x}-{end:#x}: {total} instructions, FFMA {ops['FFMA']}, HMMA {hmma}, "
                  f"shared loads {count(ops, 'LDS')} ({ops['LDS.128']} of them 128-bit), global loads "
                  f"{count(ops, 'LDG')}, spill loads/stores {count(ops, 'LDL')}/{count(ops, 'STL')}")


if __name__ == "__main__":
    main()
