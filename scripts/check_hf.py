"""Load an exported candor folder with HF transformers and compare against the reference dump.

    .venv-bench/bin/python scripts/check_hf.py checkpoints/smollm2-135m-instruct

Prints, per reference prompt, whether the token ids match and the max |logit difference| of the
last-position top-5 and first-8 logits; and whether transformers' chat template renders as ours.
"""
import json, sys, pathlib
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder = sys.argv[1]
ref_path = pathlib.Path(__file__).resolve().parent.parent.parent / "shared/fixtures/smollm2/reference_logits.json"
ref = json.load(open(sys.argv[2] if len(sys.argv) > 2 else ref_path))
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
model.eval()
worst = 0.0
for p in ref["prompts"]:
    ids = tok(p["text"], add_special_tokens=False)["input_ids"]
    assert ids == p["token_ids"], ("token ids differ", p["text"])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    last = logits[-1]
    top5 = torch.topk(last, 5)
    assert top5.indices.tolist() == p["f32"]["top5_ids"], "top5 ids differ"
    d = max(
        max(abs(a - b) for a, b in zip(top5.values.tolist(), p["f32"]["top5_logits"])),
        max(abs(a - b) for a, b in zip(last[:8].tolist(), p["f32"]["last_logits_first8"])),
    )
    assert logits.argmax(-1).tolist() == p["f32"]["argmax_per_position"], "argmax differs"
    worst = max(worst, d)
    print(f"{p['text'][:30]!r}: ids ok, top5 ok, argmax ok, max |dlogit| {d:.2e}")
for c in ref["tokenizer_cases"]:
    assert tok(c["text"], add_special_tokens=False)["input_ids"] == c["ids"], ("tokenizer case", c["text"])
chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of Japan?"}], tokenize=False, add_generation_prompt=True)
assert chat == ref["prompts"][2]["text"], "chat template differs"
print(f"transformers {__import__('transformers').__version__}: loads {folder}; all prompts and tokenizer cases match; max |dlogit| {worst:.2e}")
