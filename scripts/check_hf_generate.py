"""Greedy generation of an exported candor folder in HF transformers against candor's own
`generate`: the same tokens, and both stop at the end of turn.

    python3 scripts/check_hf_generate.py [--style chat|plain] runs/quickstart/final "What is 3 + 4?" …

`--style` is the prompt style of `generate` (the quickstart's is `plain`: `Q: …\nA:`; `chat`,
the default, is the model's chat template).

Needs torch and transformers (scripts/setup-bench-venv.sh installs both) and target/release/generate.
Prints one line per prompt; exits 1 when any differs.
"""
import json, pathlib, subprocess, sys, tempfile
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

args = sys.argv[1:]
style = "chat"
if args[:1] == ["--style"]:
    style, args = args[1], args[2:]
folder, prompts = args[0], args[1:] or ["What is 3 + 4?", "What is 27 - 9?", "What is 6 * 7?"]
max_new = 64
root = pathlib.Path(__file__).resolve().parent.parent
with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write("\n".join(prompts) + "\n")
out = subprocess.run(
    [str(root / "target/release/generate"), "--model", folder, "--prompts", f.name, "--json",
     "--max-new-tokens", str(max_new), "--style", style],
    check=True, capture_output=True, text=True).stdout
ours = [json.loads(l)["generation"] for l in out.splitlines() if l.strip()]

tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
model.eval()
eos = model.generation_config.eos_token_id
eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
print(f"generation_config eos_token_id {sorted(eos)}, pad_token_id {model.generation_config.pad_token_id}")
bad = 0
for p, g in zip(prompts, ours):
    if style == "plain":
        text = f"Q: {p}\nA:"
    else:
        text = tok.apply_chat_template([{"role": "user", "content": p}],
                                       add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new)[0, ids.shape[1]:].tolist()
    hf_stopped = bool(gen) and gen[-1] in eos
    hf = gen[:-1] if hf_stopped else gen
    cand = [t for t in g["tokens"] if t not in eos]
    same = hf == cand and hf_stopped
    bad += not same
    print(f"{'same' if same else 'DIFFERENT'}: {p!r} → transformers {tok.decode(hf)!r} "
          f"({len(gen)} tokens, stopped at end of turn: {hf_stopped}); candor {g['text']!r}")
sys.exit(1 if bad else 0)
