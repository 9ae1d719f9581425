"""Log-log plot of time vs N per implementation from the benchmark JSON:
evict (float32, joint) and saliency (attn, joint). Skipped runs are left out.

    python bench/plot.py [--evict bench/out/evict.json] [--saliency bench/out/saliency.json]
                         [--out bench/results/time_vs_n.png]
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
STYLE = {"obcache": "o-", "kvpress": "s--", "reference": "^:", "reference/head": "v:"}


def series(rows, keep):
    out = {}
    for r in rows:
        if not keep(r):
            continue
        for impl, d in r["impls"].items():
            if d.get("s"):
                out.setdefault(impl, []).append((r["N"], d["s"]))
    return {k: sorted(v) for k, v in out.items()}


def panel(ax, data, title):
    for impl, pts in data.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], STYLE.get(impl, "x-"), label=impl)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("N (cached tokens)")
    ax.set_ylabel("median time (s)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--evict", default=os.path.join(HERE, "out", "evict.json"))
    ap.add_argument("--saliency", default=os.path.join(HERE, "out", "saliency.json"))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "time_vs_n.png"))
    args = ap.parse_args()
    ev = json.load(open(args.evict))
    sa = json.load(open(args.saliency))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panel(axes[0], series(ev["rows"], lambda r: r["dtype"] == "float32"), "evict, joint, budget N/10, float32")
    panel(axes[1], series(sa["rows"], lambda r: r["score"] == "attn"), "saliency attn, float32")
    panel(axes[2], series(sa["rows"], lambda r: r["score"] == "joint"), "saliency joint, float32")
    m = ev.get("machine", {})
    fig.suptitle("CPU, %s, %s threads, B=1 H_kv=8 G=4 W=32 D=128 (load avg during runs: see kernels.md)"
                 % (m.get("cpu_model", "?"), m.get("threads", "?")), fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
