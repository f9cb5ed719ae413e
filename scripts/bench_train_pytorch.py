"""PyTorch/transformers side of `bench-train`: one training step (forward, backward, global
grad-norm clip 1.0, AdamW) in f32 on the CPU, the same shapes and workload as the candor side.
Prints one JSON object. Run by `bench-train` itself; by hand:
    .venv-bench/bin/python scripts/bench_train_pytorch.py MODEL_DIR WORKLOAD BATCH SEQ RESPONSE STEPS
WORKLOAD: full-lm | full-sft | lora-lm | lora-sft. The loss is the usual HF one: logits at every
position, labels = -100 outside the response. LoRA: rank 16, alpha 32 on q/k/v/o (written here,
as peft's LoraLayer does it: frozen base, x @ A^T @ B^T * alpha/r).
"""
import json, math, resource, statistics, sys, time
import torch
from torch import nn
from transformers import AutoModelForCausalLM

folder, workload = sys.argv[1], sys.argv[2]
batch, seq, response, steps = (int(x) for x in sys.argv[3:7])
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
model.train()


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, r=16, alpha=32):
        super().__init__()
        self.base = base
        self.a = nn.Parameter(torch.empty(r, base.in_features))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.b = nn.Parameter(torch.zeros(base.out_features, r))
        self.scale = alpha / r

    def forward(self, x):
        return self.base(x) + (x @ self.a.t() @ self.b.t()) * self.scale


if workload.startswith("lora"):
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.model.layers:
        att = layer.self_attn
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(att, name, LoraLinear(getattr(att, name)))
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

vocab = model.config.vocab_size
ids = torch.randint(100, vocab - 100, (batch, seq))
labels = ids.clone()
if workload.endswith("sft"):
    labels[:, : seq - response] = -100


def step():
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.item()


times = []
loss = step()  # warm-up
for _ in range(steps):
    t = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t)
s = statistics.median(times)
print(json.dumps({
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "s_per_step": s,
    "tokens_per_s": batch * seq / s,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "loss": loss,
}))
