#!/usr/bin/env python3
"""Compare runs' written confidence on the same held-out questions.

    scripts/compare_runs.py RUN_DIR... [--set SET_SLUG]

Each run's report leaves out the questions it trained on, so runs with other training data
report on different subsets of an eval set. This reads every run's
RUN_DIR/report/generations-<SET_SLUG>-after.jsonl, leaves out the questions in *any* listed
run's RUN_DIR/data/dataset.jsonl, and prints per run, on the questions left (those every run
has): the count, the right answers, accuracy, the mean written number, the AUROC of the written
number (`verbalized`) and of the expected value (`verbalized_expected`) against the greedy grades,
and what it writes with how many right. Then the means over the runs, and the AUROC of the
runs' averaged expected value (an output ensemble: what averaging the runs' value distributions
would rank at, an upper bound for averaging their weights). Unparsed confidences count as
missing (left out of that run's AUROC)."""
import json
import sys
from collections import defaultdict

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from value_grid_cost import auroc, grid, take_set  # noqa: E402


def main():
    args = sys.argv[1:]
    slug = take_set(args)
    if not args:
        sys.exit(__doc__)
    seen = set()
    for run in args:
        seen |= {json.loads(l)["question"] for l in open(f"{run}/data/dataset.jsonl")}
    runs = {}
    for run in args:
        path = f"{run}/report/generations-{slug}-after.jsonl"
        runs[run] = {
            r["id"]: r for r in map(json.loads, open(path)) if r["question"] not in seen
        }
    ids = sorted(set.intersection(*(set(r) for r in runs.values())))
    print(f"{len(ids)} questions in every run's set and in no run's training data")
    written, expected = [], []
    for run, rows in runs.items():
        rs = [rows[i] for i in ids]
        right = [r["grade"] == "correct" for r in rs]
        parsed = [(r["conf"]["verbalized"], ok) for r, ok in zip(rs, right) if r["conf"].get("verbalized") is not None]
        w = auroc([v for v, _ in parsed], [ok for _, ok in parsed])
        e = auroc([r["conf"]["verbalized_expected"] for r in rs], right)
        written.append(w)
        expected.append(e)
        bins = defaultdict(lambda: [0, 0])
        for v, ok in parsed:
            bins[v][0] += 1
            bins[v][1] += ok
        mean = sum(v for v, _ in parsed) / max(1, len(parsed))
        print(
            f"{run}: {sum(right)} right, accuracy {sum(right) / len(rs):.3f}, mean written {mean:.3f}; "
            f"AUROC written {w:.3f}, expected {e:.3f}; writes "
            + " ".join(f"{round(100 * v)}%:{n}({k})" for v, (n, k) in sorted(bins.items()))
        )
    k = len(runs)
    print(f"mean over {k} runs: written {sum(written) / k:.3f}, expected {sum(expected) / k:.3f}")
    if k > 1:
        first = runs[args[0]]
        right = [first[i]["grade"] == "correct" for i in ids]
        avg = [sum(r[i]["conf"]["verbalized_expected"] for r in runs.values()) / k for i in ids]
        print(
            f"output ensemble (averaged expected value, grades of {args[0]}): "
            f"AUROC {auroc(avg, right):.3f}, on the 10-point grid {auroc([grid(x) for x in avg], right):.3f}"
        )


if __name__ == "__main__":
    main()
