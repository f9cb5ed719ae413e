#!/usr/bin/env python3
r"""How a trained model's confidence fits its own training labels, by label bin.

Loads an export in transformers (no candor code), reads the run's kept training answers
(`<run>/data/labels.jsonl`, neither below the sub-task floor nor held out), and at the value
token after `prompt + answer + "\nConfidence: "` prints per teacher-label bin (centred on the
deciles: 0-5%, 5-15%, ..., 85-100%): the
answers, their mean label, the mean expected value sum_v q(v) v over the deciles 0-90, the
mean most likely value (what greedy decoding writes), and the share right.

    .venv-bench/bin/python scripts/fit_by_label.py runs/<run> [export folder, default <run>/final]
"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
if len(sys.argv) < 2:
    sys.exit(__doc__)
run = sys.argv[1]
model_dir = sys.argv[2] if len(sys.argv) > 2 else f"{run}/final"
torch.set_num_threads(2)
tok = AutoTokenizer.from_pretrained(model_dir)
m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
lines = [tok.encode(f"\nConfidence: {v}%", add_special_tokens=False) for v in range(0, 100, 10)]
lcp = 0
while all(l[lcp] == lines[0][lcp] for l in lines): lcp += 1
prefix = lines[0][:lcp]; vt = [l[lcp] for l in lines]
ex = [json.loads(l) for l in open(f"{run}/data/labels.jsonl")]
ex = [e for e in ex if not e["below_floor"] and not e["heldout"]]
vals = torch.arange(0, 100, 10).float() / 100
rows = []
B = 32
with torch.no_grad():
    for i in range(0, len(ex), B):
        ch = ex[i:i+B]
        ids = [tok.encode(e["prompt"], add_special_tokens=False) + e["answer_tokens"] + prefix for e in ch]
        T = max(map(len, ids))
        x = torch.zeros(len(ids), T, dtype=torch.long); am = torch.zeros(len(ids), T, dtype=torch.long)
        for j, r in enumerate(ids):  # left pad
            x[j, T-len(r):] = torch.tensor(r); am[j, T-len(r):] = 1
        pos = (am.cumsum(1) - 1).clamp(min=0)
        lg = m(input_ids=x, attention_mask=am, position_ids=pos).logits[:, -1, :]
        q = torch.softmax(lg[:, vt], dim=1)
        for j, e in enumerate(ch):
            rows.append((e["confidence"]/100, e["correct"], float(q[j] @ vals), float(vals[q[j].argmax()])))
edges = [0, 0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 1.01]
print(f"{'bin':>10} {'n':>5} {'label':>6} {'exp':>6} {'mode':>6} {'acc':>6}")
for a, b in zip(edges, edges[1:]):
    r = [t for t in rows if a <= t[0] < b]
    if not r: continue
    n = len(r)
    print(f"{a:.2f}-{b:.2f} {n:5d} {sum(t[0] for t in r)/n:6.3f} {sum(t[2] for t in r)/n:6.3f} {sum(t[3] for t in r)/n:6.3f} {sum(t[1] for t in r)/n:6.3f}")
n = len(rows)
print(f"{'all':>10} {n:5d} {sum(t[0] for t in rows)/n:6.3f} {sum(t[2] for t in rows)/n:6.3f} {sum(t[3] for t in rows)/n:6.3f} {sum(t[1] for t in rows)/n:6.3f}")
