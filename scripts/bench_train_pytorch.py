"""PyTorch/transformers side of `bench-train`: one training step (forward, backward, global
grad-norm clip 1.0, AdamW), the same shapes, workload, device and precision as the candor side.
Prints one JSON object. Run by `bench-train` itself; by hand:
    .venv-bench/bin/python scripts/bench_train_pytorch.py MODEL_DIR WORKLOAD BATCH SEQ RESPONSE STEPS \
        [DEVICE [DTYPE [INIT]]]
WORKLOAD: full-lm | full-sft | lora-lm | lora-sft. DEVICE: cpu (default) | cuda[:N].
DTYPE: f32 (default) | bf16 (torch.autocast to bf16; weights and AdamW stay f32).
INIT: weights (default: load MODEL_DIR's weights) | random (from its config.json alone).
The loss is the usual HF one: logits at every
position, labels = -100 outside the response. LoRA: rank 16, alpha 32 on q/k/v/o (written here,
as peft's LoraLayer does it: frozen base, x @ A^T @ B^T * alpha/r).
"""
import contextlib, json, math, statistics, subprocess, sys, time
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from peak_rss import peak_rss_mb

folder, workload = sys.argv[1], sys.argv[2]
batch, seq, response, steps = (int(x) for x in sys.argv[3:7])
device, dtype, init = (sys.argv[7:] + ["cpu", "f32", "weights"][len(sys.argv[7:]):])[:3]
assert dtype in ("f32", "bf16"), f"DTYPE must be f32 or bf16, not {dtype!r}"
torch.manual_seed(0)
if init == "random":
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
else:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
model.to(device)
model.train()


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, r=16, alpha=32):
        super().__init__()
        self.base = base
        # on the base layer's device: the model was moved before the adapters were added
        dev = base.weight.device
        self.a = nn.Parameter(torch.empty(r, base.in_features, device=dev))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.b = nn.Parameter(torch.zeros(base.out_features, r, device=dev))
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
ids = torch.randint(100, vocab - 100, (batch, seq), device=device)
labels = ids.clone()
if workload.endswith("sft"):
    labels[:, : seq - response] = -100
autocast = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
            if dtype == "bf16" else contextlib.nullcontext())


def step():
    opt.zero_grad(set_to_none=True)
    with autocast:
        loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.item()  # waits for the step's queued GPU work too


times = []
loss = step()  # warm-up
for _ in range(steps):
    t = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t)
s = statistics.median(times)
gpu_mb = None
if device.startswith("cuda"):
    # what the process holds on the device, CUDA context and caching allocator included: the
    # same reading as the candor side's
    index = torch.device(device).index or 0
    q = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                        f"--id={index}"], capture_output=True, text=True)
    gpu_mb = float(q.stdout.strip()) if q.returncode == 0 else None
print(json.dumps({
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "s_per_step": s,
    "tokens_per_s": batch * seq / s,
    "peak_rss_mb": peak_rss_mb(),
    "gpu_mb": gpu_mb,
    "loss": loss,
}))
