"""PyTorch/transformers side of `bench --minilm`: embed the same texts as candor's `MiniLm::embed`
(tokenized, sorted by token length, batches of 64 padded to their longest, mean pooling over
the attention mask, L2 norm — sentence-transformers' computation). Prints one JSON object with
the best of REPEATS timings after a warm-up. Run by `bench` itself; by hand:
    .venv-bench/bin/python scripts/bench_minilm_pytorch.py MINILM_DIR TEXTS.json REPEATS
"""
import json, sys, time
import torch
from transformers import AutoModel, AutoTokenizer

folder, texts_file, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = json.load(open(texts_file))
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModel.from_pretrained(folder, dtype=torch.float32)
model.eval()


def embed():
    ids = [tok(t, truncation=True, max_length=256)["input_ids"] for t in sorted(set(texts))]
    ids.sort(key=len)
    out = []
    with torch.inference_mode():
        for i in range(0, len(ids), 64):
            chunk = ids[i:i + 64]
            n = max(len(r) for r in chunk)
            x = torch.tensor([r + [0] * (n - len(r)) for r in chunk])
            m = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in chunk])
            h = model(input_ids=x, attention_mask=m).last_hidden_state
            mf = m.unsqueeze(-1).float()
            e = (h * mf).sum(1) / mf.sum(1)
            out.append(torch.nn.functional.normalize(e, dim=1))
    return torch.cat(out)


embed()
best = float("inf")
for _ in range(repeats):
    t = time.perf_counter()
    embed()
    best = min(best, time.perf_counter() - t)
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "seconds": best}))
