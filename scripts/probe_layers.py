#!/usr/bin/env python3
"""Where in the starting model a linear probe reads correctness best: for every layer, a
logistic-regression probe (L2 = 1 on standardised features, as candor's `probe` readout) fitted
on a run's training answers and their greedy grades, scored by AUROC and ECE-10 (the report's
bins: equal width, (lo, hi], 0 in the first) on a held-out set's before-model answers
(questions also in the training data left out). Two places per layer: the answer's last token
(the `probe` readout's place) and the end of `\\nConfidence: ` after it (where the value token
is predicted; `labels.probe_at = "confidence"`). Layer L is HF's
`hidden_states[L]` (`labels.probe_layer`); the last row is after the final norm.

    .venv-bench/bin/python scripts/probe_layers.py MODEL_DIR RUN_DIR [--set SLUG]

RUN_DIR needs data/dataset.jsonl and report/generations-SLUG-before.jsonl (SLUG defaults to the
SmolLM2 recipes' held-out set). Needs torch and transformers (scripts/setup-bench-venv.sh).
"""
import json
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from value_grid_cost import auroc, take_set  # noqa: E402


def fit(x, y, l2=1.0):
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = torch.tensor((x - mu) / sd, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        z = xs @ w + b
        v = torch.nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="sum")
        v = v + 0.5 * l2 * (w * w).sum()
        v.backward()
        return v

    opt.step(loss)
    return lambda z: (torch.tensor((z - mu) / sd, dtype=torch.float64) @ w + b).detach().numpy()


def ece10(p, right):
    """ECE over 10 equal-width bins (lo, hi], 0 in the first, as candor's report."""
    bins = np.clip(np.ceil(p * 10) - 1, 0, 9)
    return sum(
        (bins == b).mean() * abs(p[bins == b].mean() - right[bins == b].mean())
        for b in range(10)
        if (bins == b).any()
    )


def main():
    args = sys.argv[1:]
    slug = take_set(args)
    model_dir, run = args
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    train = [json.loads(l) for l in open(f"{run}/data/dataset.jsonl")]
    train = [e for e in train if not e.get("below_floor") and not e.get("too_long")]
    seen = {e["question"] for e in train}
    held = [json.loads(l) for l in open(f"{run}/report/generations-{slug}-before.jsonl")]
    held = [g for g in held if g["question"] not in seen and g["grade"] in ("correct", "wrong")]

    def states(rows):
        at_answer, at_value = [], []
        for question, answer in rows:
            text = f"Q: {question}\nA: {answer}"
            n = len(tok(text, add_special_tokens=False)["input_ids"])
            ids = tok(text + "\nConfidence: ", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            at_answer.append(np.stack([h[0, n - 1].numpy() for h in hs]))
            at_value.append(np.stack([h[0, -1].numpy() for h in hs]))
        return np.stack(at_answer), np.stack(at_value)

    a_tr, v_tr = states([(e["question"], e["answer"]) for e in train])
    y_tr = np.array([e["correct"] for e in train], dtype=np.float64)
    a_ho, v_ho = states([(g["question"], g["answer"]) for g in held])
    y_ho = np.array([g["grade"] == "correct" for g in held])
    print(f"fitted on {len(train)} training answers ({int(y_tr.sum())} right), "
          f"scored on {len(held)} held-out ({int(y_ho.sum())} right)")
    print("layer  after the answer: AUROC  ECE-10  mean  before the value: AUROC  ECE-10  mean")
    print(f"(held-out accuracy {y_ho.mean():.3f})")
    for layer in range(1, a_tr.shape[1]):
        cols = []
        for tr, ho in ((a_tr, a_ho), (v_tr, v_ho)):
            p = 1.0 / (1.0 + np.exp(-fit(tr[:, layer], y_tr)(ho[:, layer])))
            e = ece10(p, y_ho.astype(float))
            cols.append(f"{auroc(p, y_ho):5.3f}  {e:6.3f}  {p.mean():4.3f}")
        print(f"{layer:5d}  {cols[0]:>30}  {cols[1]:>30}", flush=True)


if __name__ == "__main__":
    main()
