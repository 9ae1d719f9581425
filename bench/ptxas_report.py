"""Registers, spills, stack and static shared memory of every CUDA kernel:
compiles each csrc/kernels/*.cu with

    nvcc -Xptxas -v --expt-relaxed-constexpr -arch=<arch> -c <file>.cu -o <tmp>.o -I csrc/kernels

(CUDA_HOME, default /usr/local/cuda; no GPU needed), saves the raw ptxas
output to --raw-dir and prints a markdown table (kernel names demangled with
c++filt). ptxas reports static shared memory only; dynamic shared memory
(the saliency kernels') is set at launch and is listed in kernels.md.

    python bench/ptxas_report.py [--arch sm_90] [--raw-dir bench/results/ptxas]
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return out.stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


SCORE_NAMES = ("attn", "tova", "vatp", "value", "key", "joint", "loo")  # obc::Score, score_math.h


def short(name):
    """void obc::salc::pass2_kernel<obc::bf16_t, (obc::Score)5>(...) -> salc::pass2_kernel<bf16_t, joint>"""
    name = name.replace("(anonymous namespace)::", "").replace("obc::", "")
    if name.startswith("void "):
        name = name[5:]
    depth = 0
    for i, c in enumerate(name):  # cut the argument list: the first "(" outside template brackets
        depth += c == "<"
        depth -= c == ">"
        if c == "(" and depth == 0:
            name = name[:i]
            break
    return re.sub(r"\(Score\)(\d)", lambda m: SCORE_NAMES[int(m.group(1))], name)


def parse(text):
    rows, cur = [], None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(\S+)'", line)
        if m:
            cur = {"mangled": m.group(1), "arch": m.group(2)}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["spill_st"], cur["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur["smem"] = int(s.group(1)) if s else 0
            b = re.search(r"used (\d+) barriers", line)
            cur["barriers"] = int(b.group(1)) if b else 0
    names = demangle([r["mangled"] for r in rows])
    for r, n in zip(rows, names):
        r["name"] = short(n)
    return rows


def compile_report(nvcc, cu, arch, raw_dir=None):
    """Compiles one .cu file with ptxas's report; returns (exit code, rows of parse())."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-Xptxas", "-v", "--expt-relaxed-constexpr", f"-arch={arch}", "-c", cu, "-o",
               os.path.join(tmp, "x.o"), "-I", os.path.join(ROOT, "csrc", "kernels")]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    text = out.stdout + out.stderr
    if raw_dir:
        os.makedirs(raw_dir, exist_ok=True)
        with open(os.path.join(raw_dir, os.path.basename(cu).replace(".cu", ".txt")), "w") as f:
            f.write("$ " + " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd) + "\n")
            f.write(text)
    return out.returncode, (parse(text) if out.returncode == 0 else text)


def kernel_files():
    return sorted(glob.glob(os.path.join(ROOT, "csrc", "kernels", "*.cu")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--raw-dir", default=None, help="write each file's raw ptxas output here")
    args = ap.parse_args()
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    nvcc = os.path.join(cuda, "bin", "nvcc")
    if not os.path.exists(nvcc):
        sys.exit(f"ptxas_report.py: no nvcc at {nvcc} (set CUDA_HOME)")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    print(f"nvcc: {version}; -arch={args.arch}\n")
    print("| file | kernel | regs | spill stores / loads (B) | stack (B) | static smem (B) | barriers |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for cu in kernel_files():
        base = os.path.basename(cu)
        code, rows = compile_report(nvcc, cu, args.arch, args.raw_dir)
        if code != 0:
            print(f"| {base} | compile failed (exit {code}) | | | | | |")
            continue
        for r in rows:
            print(f"| {base} | `{r['name']}` | {r.get('regs', '?')} | {r.get('spill_st', '?')} / "
                  f"{r.get('spill_ld', '?')} | {r.get('stack', '?')} | {r.get('smem', '?')} | "
                  f"{r.get('barriers', '?')} |")


if __name__ == "__main__":
    main()
