"""Helpers shared by the CPU benchmarks: inputs, peak-memory measurement in a
fresh subprocess, load averages, machine description, table formatting.

Peak extra memory: a child process creates its inputs, warms the code path up
on a small slice, resets its RSS high-water mark (/proc/self/clear_refs, Linux
>= 4.0), runs the measured call once and reports ru_maxrss minus the RSS just
before the call. Pages an allocation never touches are not counted, and
anything below a page-table granule (a few hundred KiB) is noise.
"""
import glob
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

# The benchmark shape of issues 2, 3 and 10.
B, HKV, G, W, D = 1, 8, 4, 32, 128
HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "out")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def inputs(N, seed=0, dtype=torch.float32, device="cpu", b=B, hkv=HKV, g=G, w=W, d=D):
    """k, v [b, hkv, N, d] and q_window [b, hkv*g, w, d], standard normal."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(b, hkv, N, d, generator=gen).to(dtype=dtype, device=device)
    v = torch.randn(b, hkv, N, d, generator=gen).to(dtype=dtype, device=device)
    q = torch.randn(b, hkv * g, w, d, generator=gen).to(dtype=dtype, device=device)
    return k, v, q


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss():
    """Resets the high-water RSS that ru_maxrss reports (Linux >= 4.0), so the
    peak is that of the measured call, not of the input creation."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_call(fn, make_args, repeats):
    """In the current (fresh) process: peak extra bytes of one call of
    fn(*make_args()) and the median of `repeats` timed calls. make_args runs
    outside the measurement (e.g. fresh clones for an in-place op)."""
    args = make_args()
    base = rss_bytes()
    reset_peak_rss()
    t = time.perf_counter()
    fn(*args)
    first = time.perf_counter() - t
    peak = peak_rss_bytes()
    del args
    times = []
    for _ in range(repeats):
        args = make_args()
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
        del args
    times = times or [first]
    return {"extra_bytes": max(0, peak - base), "median_s": statistics.median(times), "times_s": times,
            "first_s": first}


def run_child(script, argv, timeout=None):
    """Runs `python script argv...` and parses the JSON on its last stdout
    line; on failure returns {"error": last stderr line}."""
    try:
        out = subprocess.run([sys.executable, script] + [str(a) for a in argv], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after %s s" % timeout}
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or ["exit %d" % out.returncode]
        return {"error": lines[-1] + (" (exit %d: killed, out of memory?)" % out.returncode
                                      if out.returncode < 0 else "")}
    return json.loads(out.stdout.strip().splitlines()[-1])


def loadavg():
    """(1, 5, 15)-minute load averages."""
    return list(os.getloadavg())


def ci_finished(path="/work/ci/log"):
    try:
        with open(path) as f:
            return any(line.startswith("CI_RC=") for line in f)
    except OSError:
        return None


# The vector extensions that decide which CPU kernels run and how fast.
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_identity():
    """Model name, vendor, family, model and the kernels' ISA flags from
    /proc/cpuinfo: a guest's model name ("AMD EPYC", "Intel(R) Xeon(R)
    Processor") alone does not tell one machine generation from the next."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name":
                    info["cpu_model"] = value
                elif key == "vendor_id":
                    info["cpu_vendor"] = value
                elif key == "cpu family":
                    info["cpu_family"] = int(value)
                elif key == "model":
                    info["cpu_model_number"] = int(value)
                elif key == "flags":
                    flags = set(value.split())
                    info["cpu_isa"] = [f for f in _ISA_FLAGS if f in flags]
                    break  # the first processor's entry is enough
    except (OSError, ValueError):
        pass
    return info


def machine():
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            # the CPU kernels' variant where the run picked one (csrc/kernels/cpu_tiles.h)
            "cpu_variant_env": os.environ.get("OBCACHE_CPU_VARIANT")}
    info.update(cpu_identity())
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_GiB"] = int(f.readline().split()[1]) / 2**20
    except OSError:
        pass
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                        cwd=HERE).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=HERE).stdout
        info["worktree_modified"] = [line[3:] for line in dirty.splitlines()]
    except OSError:
        pass
    so = sorted(glob.glob(os.path.join(os.path.dirname(HERE), "obcache", "_C*.so")))
    if so:
        info["extension_built_at"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(os.path.getmtime(so[0])))
    return info


def print_peak(peak):
    """One line with the machine peaks bench/peak.py measured in this run."""
    bf16 = f", {peak['gemm_bf16']} {peak['gemm_bf16_best_GFLOPs']:.1f} GFLOP/s" if "gemm_bf16" in peak else ""
    print("peak (best of %s): GEMM %s %.1f GFLOP/s%s, FMA loop %s GFLOP/s, memcpy %.1f GB/s (%s)" % (
        peak.get("repeats"), peak.get("gemm"), peak.get("gemm_best_GFLOPs", 0), bf16, fmt(peak.get("fma_GFLOPs"), ".1f"),
        peak.get("memcpy_best_GBs", 0), peak.get("error", "ok")))


def print_errors(impls, indent):
    """A line for each implementation of a table row that failed, under it."""
    for name, d in impls.items():
        if d.get("error"):
            print(f"{'':>{indent}}{name}: {d['error']}")


def write_run(out, bench, config, mach, peak, load_start, rows):
    """The CPU benches' JSON: what ran, with which arguments, where, the
    machine's load before and after (and whether a CI run had just ended),
    and the rows."""
    payload = {"bench": bench, "config": config, "argv": sys.argv, "machine": mach, "peak": peak,
               "load_start": load_start, "load_end": loadavg(), "ci_finished_at_start": ci_finished(), "rows": rows}
    print("wrote", write_json(out, payload))


def fmt(x, spec, none="-"):
    return format(x, spec) if x is not None else none


def write_json(name, payload):
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, name)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    return path
