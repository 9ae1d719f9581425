"""Markdown tables (for bench/results/kernels.md) from the benchmark JSON of
bench_evict.py and bench_saliency.py: every number is read from the JSON.

    python bench/report.py [--evict bench/results/evict.json] [--saliency bench/results/saliency.json]
"""
import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def ms(d):
    return "%.1f" % (1e3 * d["s"]) if d and d.get("s") else ("skipped" if d and d.get("error") else "-")


def mib(d):
    return "%.1f" % d["extra_MiB"] if d and d.get("extra_MiB") is not None else "-"


def load(d):
    lb, la = (d or {}).get("load_before"), (d or {}).get("load_after")
    return "%.1f / %.1f" % (lb[0], la[0]) if lb and la else "-"


def x(v):
    return "%.2fx" % v if v else "-"


def il(d):
    return "%.2fx (%.2f-%.2f)" % (d["ratio_median"], d["ratio_min"], d["ratio_max"]) if d else "-"


def evict_tables(ev):
    p = ev["peak"]
    out = [f"Peak measured in the same run (bench/peak.py, best of {p['repeats']}): {p['gemm']} "
           f"**{p['gemm_best_GFLOPs']:.1f} GFLOP/s** (median {p['gemm_GFLOPs']:.1f}), {p['memcpy']} "
           f"**{p['memcpy_best_GBs']:.1f} GB/s** (median {p['memcpy_GBs']:.1f}), FP32 FMA loop ({p.get('fma')}) "
           f"**{p.get('fma_GFLOPs') or 0:.1f} GFLOP/s**.", "",
           "| N | dtype | obcache ms | kvpress ms | reference ms | reference/head ms | vs kvpress | vs kvpress, "
           "interleaved (min-max) | vs reference | vs reference/head |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in ev["rows"]:
        im = r["impls"]
        out.append(f"| {r['N']} | {r['dtype']} | {ms(im.get('obcache'))} | {ms(im.get('kvpress'))} | "
                   f"{ms(im.get('reference'))} | {ms(im.get('reference/head'))} | {x(r.get('speedup_vs_kvpress'))} | "
                   f"{il(r.get('interleaved'))} | {x(r.get('speedup_vs_reference'))} | {x(r.get('speedup_vs_reference/head'))} |")
    out += ["", "Peak extra memory of one call (MiB, RSS high-water over the RSS before the call) and the 1-minute "
            "load average before / after each measurement:", "",
            "| N | dtype | K+V MiB | one head N·D MiB | obcache | kvpress | reference | reference/head | load obcache "
            "| load kvpress | load ref(/head) |", "|---:|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in ev["rows"]:
        im = r["impls"]
        ref = im.get("reference") if im.get("reference", {}).get("s") else im.get("reference/head")
        out.append(f"| {r['N']} | {r['dtype']} | {r['kv_input_MiB']:.0f} | {r.get('one_head_ND_MiB', 0):.0f} | "
                   f"{mib(im.get('obcache'))} | {mib(im.get('kvpress'))} | {mib(im.get('reference'))} | "
                   f"{mib(im.get('reference/head'))} | {load(im.get('obcache'))} | {load(im.get('kvpress'))} | "
                   f"{load(ref)} |")
    out += ["", "obcache's achieved rate for the necessary work (Q K^T, A V, O V^T once each; K and V read once, "
            "kept rows written once) against the measured peaks:", "",
            "| N | dtype | GFLOP | GB | GFLOP/s | of FMA peak | of torch.mm | GB/s | of memcpy peak | roofline floor ms "
            "| floor / time |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in ev["rows"]:
        f = r.get("obcache_roofline")
        if f:
            out.append(f"| {r['N']} | {r['dtype']} | {f['GFLOP']:.1f} | {f['GB']:.3f} | {f['achieved_GFLOPs']:.1f} | "
                       f"{100 * f['frac_peak_flops']:.0f}% | {100 * f.get('frac_gemm', 0):.0f}% | {f['achieved_GBs']:.2f} | {100 * f['frac_peak_bw']:.1f}% | "
                       f"{1e3 * f['floor_s']:.1f} | {100 * f['frac_roofline']:.0f}% |")
    return "\n".join(out)


def saliency_tables(sa):
    p = sa["peak"]
    out = [f"Peak in this run: GEMM **{p['gemm_best_GFLOPs']:.1f} GFLOP/s**, memcpy **{p['memcpy_best_GBs']:.1f} "
           f"GB/s** (best of {p['repeats']}), FP32 FMA loop **{p.get('fma_GFLOPs') or 0:.1f} GFLOP/s**.", "",
           "| N | score | obcache ms | kvpress ms | reference ms | vs kvpress | vs reference | obcache MiB | "
           "kvpress MiB | reference MiB | GFLOP/s | of FMA peak | load obcache |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in sa["rows"]:
        im = r["impls"]
        ref = im.get(r["reference_impl"])
        tag = " (per head)" if r["reference_impl"] == "reference/head" and ref.get("s") else ""
        f = r.get("obcache_roofline") or {}
        out.append(f"| {r['N']} | {r['score']} | {ms(im['obcache'])} | {ms(im.get('kvpress'))} | {ms(ref)}{tag} | "
                   f"{x(r.get('speedup_vs_kvpress'))} | {x(r.get('speedup_vs_reference'))} | {mib(im['obcache'])} | "
                   f"{mib(im.get('kvpress'))} | {mib(ref)} | "
                   f"{'%.1f' % f['achieved_GFLOPs'] if f else '-'} | "
                   f"{'%.0f%%' % (100 * f['frac_peak_flops']) if f else '-'} | {load(im['obcache'])} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--evict", default=os.path.join(HERE, "results", "evict.json"))
    ap.add_argument("--saliency", default=os.path.join(HERE, "results", "saliency.json"))
    args = ap.parse_args()
    for path, fn in ((args.evict, evict_tables), (args.saliency, saliency_tables)):
        if os.path.exists(path):
            d = json.load(open(path))
            m = d["machine"]
            print(f"### {d['bench']} ({os.path.relpath(path, os.path.dirname(HERE))})\n")
            print(f"{d['config']}; commit {m.get('commit', '?')[:10]}, extension built "
                  f"{m.get('extension_built_at', '?')}, load average at start {d['load_start'][0]:.1f} / "
                  f"{d['load_start'][1]:.1f} / {d['load_start'][2]:.1f}, at end {d['load_end'][0]:.1f} / "
                  f"{d['load_end'][1]:.1f} / {d['load_end'][2]:.1f}.\n")
            print(fn(d))
            print()


if __name__ == "__main__":
    main()
