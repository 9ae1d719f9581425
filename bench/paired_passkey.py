"""The paired passkey table (obcache.eval.report.paired_rows: each OBC row
against its attention-only base on the same prompts, exact McNemar p) of a
recorded `obcache eval` results.json, including runs made before the eval
printed it.

    python bench/paired_passkey.py bench/eval_full20/results.json
"""
import json
import sys

from obcache.eval import report


def main(path):
    with open(path) as f:
        results = json.load(f)
    print(report.format_table(report.paired_rows(results)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
