#!/usr/bin/env python3
"""Average the weights of several exported model folders (a "model soup").

    .venv-bench/bin/python scripts/average_weights.py OUT_DIR MODEL_DIR...

Each MODEL_DIR is a run's `final/` export (HF layout, one model.safetensors). Writes
OUT_DIR/model.safetensors with every tensor the mean over the folders (same names and shapes
required) and copies the first folder's config and tokenizer files beside it, so that
`target/release/eval RECIPE --after OUT_DIR` evaluates the average. Needs numpy and
safetensors (`.venv-bench`, scripts/setup-bench-venv.sh). docs/smollm2.md, "Session of
2026-12-05", measures it on three LoRA seeds: the average ranks below each of them."""
import os
import shutil
import sys


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    from safetensors.numpy import load_file, save_file

    out, dirs = sys.argv[1], sys.argv[2:]
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(dirs[0]):
        if f != "model.safetensors":
            shutil.copy(os.path.join(dirs[0], f), out)
    models = [load_file(os.path.join(d, "model.safetensors")) for d in dirs]
    for d, m in zip(dirs[1:], models[1:]):
        if m.keys() != models[0].keys():
            sys.exit(f"{d}: other tensor names than {dirs[0]}")
        for k, v in m.items():
            if v.shape != models[0][k].shape:
                sys.exit(f"{d}: {k} has shape {v.shape}, {dirs[0]} {models[0][k].shape}")
    avg = {
        k: (sum(m[k].astype("float64") for m in models) / len(models)).astype(t.dtype)
        for k, t in models[0].items()
    }
    save_file(avg, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    print(f"{out}: the mean of {len(avg)} tensors over {len(models)} models")


if __name__ == "__main__":
    main()
