#!/usr/bin/env python3
"""How much ranking the written confidence loses to its value grid.

    scripts/value_grid_cost.py RUN_DIR [SET_SLUG]

Reads RUN_DIR/report/generations-<SET_SLUG>-after.jsonl (and -before for the probe), leaves out
the questions in RUN_DIR/data/dataset.jsonl (as the report does), and prints the AUROC against
the greedy grades of: the written number (`verbalized`), the expected value Σ q(v)·v
(`verbalized_expected`), that expected value rounded to the nearest multiple of 10 (what a
model that writes the value nearest its own mean would write; capped at 90 like the shipped
value sets), and the starting model's probe before and after the same rounding. The gap
between the expected value and its rounding is what a finer grid could give back."""
import json
import sys


def auroc(scores, right):
    pos = [s for s, r in zip(scores, right) if r]
    neg = [s for s, r in zip(scores, right) if not r]
    if not pos or not neg:
        return float("nan")
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


HELD_OUT = "add-subtract--answered-sub-tasks--held-out-"


def take_set(args):
    """`--set SLUG` out of the command line `args` (changed in place); the SmolLM2 recipes'
    held-out set when absent."""
    if "--set" not in args:
        return HELD_OUT
    i = args.index("--set")
    slug = args[i + 1]
    del args[i : i + 2]
    return slug


def grid(x):
    return min(0.9, round(x * 10) / 10)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    run = sys.argv[1]
    slug = sys.argv[2] if len(sys.argv) > 2 else "add-subtract--answered-sub-tasks--held-out-"
    seen = {json.loads(l)["question"] for l in open(f"{run}/data/dataset.jsonl")}

    def rows(model):
        path = f"{run}/report/generations-{slug}-{model}.jsonl"
        return [r for r in map(json.loads, open(path)) if r["question"] not in seen]

    after = [r for r in rows("after") if r["conf"].get("verbalized") is not None]
    right = [r["grade"] == "correct" for r in after]
    written = [r["conf"]["verbalized"] for r in after]
    expected = [r["conf"]["verbalized_expected"] for r in after]
    same = sum(abs(w - grid(e)) < 1e-9 for w, e in zip(written, expected)) / len(after)
    print(f"{run}: {len(after)} parsed answers, {sum(right)} right")
    print(f"  written                 {auroc(written, right):.3f}")
    print(f"  expected                {auroc(expected, right):.3f}")
    print(f"  expected on the grid    {auroc([grid(e) for e in expected], right):.3f}"
          f"  (written = it for {100 * same:.0f}%)")
    before = rows("before")
    if before and "probe" in before[0]["conf"]:
        ok = [r["grade"] == "correct" for r in before]
        p = [r["conf"]["probe"] for r in before]
        print(f"  probe before            {auroc(p, ok):.3f}")
        print(f"  probe before on grid    {auroc([grid(x) for x in p], ok):.3f}")


if __name__ == "__main__":
    main()
