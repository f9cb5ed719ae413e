"""PyTorch/transformers side of `bench`: the same measurements on the same model folder.
Prints one JSON object. Run by `bench` itself; by hand:
    .venv-bench/bin/python scripts/bench_pytorch.py MODEL_DIR SEQ NEW REPEATS
"""
import json, sys, time
import torch
from peak_rss import peak_rss_mb
from transformers import AutoModelForCausalLM

folder, seq, new, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
model.eval()
vocab = model.config.vocab_size
out = {"torch": torch.__version__, "threads": torch.get_num_threads()}


def best(f):
    f()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


with torch.inference_mode():
    for b in (1, 16):
        ids = torch.randint(100, vocab - 100, (b, seq))
        s = best(lambda: model(ids).logits)
        out[f"forward_b{b}"] = b * seq / s
        prompt = torch.randint(100, vocab - 100, (b, 16))
        s = best(lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                        min_new_tokens=new, do_sample=False, pad_token_id=0))
        out[f"generate_b{b}"] = b * new / s
out["peak_rss_mb"] = peak_rss_mb()
print(json.dumps(out))
