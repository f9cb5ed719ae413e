//! GGUF import: a tiny Llama written as GGUF (q/k permuted as llama.cpp does, mixed tensor
//! types) imports back to the original weights; dequantizers agree with the `gguf` Python
//! package on random blocks; malformed files give errors, never panics or huge allocations.

use burn::backend::Flex;
use candor_model::checkpoint::{model_from_tensors, model_to_tensors, HostTensor};
use candor_model::gguf::{dequantize, import_gguf, GgmlType, GgufFile};
use candor_model::{load_model, Llama, ModelConfig, SaveDtype, Tokenizer};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;

type B = Flex;

#[derive(Default)]
struct Writer {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

impl Writer {
    fn key(&mut self, k: &str, ty: u32) {
        put_str(&mut self.kv, k);
        self.kv.extend(ty.to_le_bytes());
        self.n_kv += 1;
    }
    fn u32(&mut self, k: &str, v: u32) {
        self.key(k, 4);
        self.kv.extend(v.to_le_bytes());
    }
    fn f32(&mut self, k: &str, v: f32) {
        self.key(k, 6);
        self.kv.extend(v.to_le_bytes());
    }
    fn bool(&mut self, k: &str, v: bool) {
        self.key(k, 7);
        self.kv.push(v as u8);
    }
    fn str(&mut self, k: &str, v: &str) {
        self.key(k, 8);
        put_str(&mut self.kv, v);
    }
    fn strs(&mut self, k: &str, v: &[String]) {
        self.key(k, 9);
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for s in v {
            put_str(&mut self.kv, s);
        }
    }
    fn i32s(&mut self, k: &str, v: &[i32]) {
        self.key(k, 9);
        self.kv.extend(5u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for x in v {
            self.kv.extend(x.to_le_bytes());
        }
    }
    /// `shape` in PyTorch order; GGUF stores it reversed.
    fn tensor(&mut self, name: &str, shape: &[usize], ty: GgmlType, data: &[f32]) {
        let (id, bytes) = match ty {
            GgmlType::F32 => (0, data.iter().flat_map(|x| x.to_le_bytes()).collect()),
            GgmlType::F16 => (
                1,
                data.iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
            ),
            GgmlType::Bf16 => (
                30,
                data.iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            ),
            GgmlType::Q8_0 => (8, quantize_q8_0(data)),
            _ => unimplemented!(),
        };
        self.tensors.push((
            name.into(),
            shape.iter().rev().map(|&d| d as u64).collect(),
            id,
            bytes,
        ));
    }
    fn finish(self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend(self.n_kv.to_le_bytes());
        b.extend(&self.kv);
        let mut offset = 0u64;
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        for (_, _, _, data) in &self.tensors {
            b.extend(data);
            while !b.len().is_multiple_of(32) {
                b.push(0);
            }
        }
        b
    }
}

fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = vec![];
    for blk in x.chunks(32) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(half::f16::from_f32(d).to_le_bytes());
        out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

/// llama.cpp's permutation of q/k rows for its RoPE layout.
fn permute(data: &[f32], n_head: usize, rows: usize, cols: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for a in 0..2 {
            for i in 0..hd / 2 {
                let src = h * hd + a * (hd / 2) + i;
                let dst = h * hd + 2 * i + a;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// GPT-2's byte → printable-char table.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

fn tiny_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![3, 3, 3];
    for c in byte_chars() {
        tokens.push(c.to_string());
        types.push(1);
    }
    for t in ["he", "Ġt", "Ġthe"] {
        tokens.push(t.into());
        types.push(1);
    }
    (
        tokens,
        types,
        vec!["h e".into(), "Ġ t".into(), "Ġt he".into()],
    )
}

fn random_model(c: &ModelConfig) -> Llama<B> {
    let mut rng = StdRng::seed_from_u64(11);
    let mut t = BTreeMap::new();
    for (name, shape) in candor_model::checkpoint::expected_tensors(c) {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                rng.random::<f32>() * 0.2 - 0.1
                    + if name.ends_with("norm.weight") {
                        1.0
                    } else {
                        0.0
                    }
            })
            .collect();
        t.insert(name, HostTensor { shape, data });
    }
    model_from_tensors(c, t, &Default::default()).unwrap()
}

/// The model as a llama-arch GGUF: token_embd Q8_0, q/k F16 (permuted), v/o BF16, MLP F16, norms F32.
fn write_gguf(m: &Llama<B>, path: &Path) -> Vec<u8> {
    write_gguf_pre(m, path, "smollm")
}

fn write_gguf_pre(m: &Llama<B>, path: &Path, pre: &str) -> Vec<u8> {
    let c = &m.config;
    let t = model_to_tensors(m);
    let (tokens, types, merges) = tiny_vocab();
    assert_eq!(tokens.len(), c.vocab_size);
    let mut w = Writer::default();
    w.str("general.architecture", "llama");
    w.u32("llama.block_count", c.num_hidden_layers as u32);
    w.u32("llama.context_length", c.max_position_embeddings as u32);
    w.u32("llama.embedding_length", c.hidden_size as u32);
    w.u32("llama.feed_forward_length", c.intermediate_size as u32);
    w.u32("llama.attention.head_count", c.num_attention_heads as u32);
    w.u32(
        "llama.attention.head_count_kv",
        c.num_key_value_heads as u32,
    );
    w.f32("llama.rope.freq_base", c.rope_theta as f32);
    w.f32(
        "llama.attention.layer_norm_rms_epsilon",
        c.rms_norm_eps as f32,
    );
    w.str("tokenizer.ggml.model", "gpt2");
    w.str("tokenizer.ggml.pre", pre);
    w.strs("tokenizer.ggml.tokens", &tokens);
    w.i32s("tokenizer.ggml.token_type", &types);
    w.strs("tokenizer.ggml.merges", &merges);
    w.u32("tokenizer.ggml.bos_token_id", 1);
    w.u32("tokenizer.ggml.eos_token_id", 2);
    w.bool("tokenizer.ggml.add_bos_token", false);
    w.str("tokenizer.chat_template", "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}");
    let get = |n: &str| &t[n];
    let e = get("model.embed_tokens.weight");
    w.tensor("token_embd.weight", &e.shape, GgmlType::Q8_0, &e.data);
    w.tensor(
        "output_norm.weight",
        &[c.hidden_size],
        GgmlType::F32,
        &get("model.norm.weight").data,
    );
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let g = |s: &str| get(&format!("{p}.{s}"));
        w.tensor(
            &format!("blk.{i}.attn_norm.weight"),
            &[c.hidden_size],
            GgmlType::F32,
            &g("input_layernorm.weight").data,
        );
        w.tensor(
            &format!("blk.{i}.ffn_norm.weight"),
            &[c.hidden_size],
            GgmlType::F32,
            &g("post_attention_layernorm.weight").data,
        );
        for (gg, hf, heads) in [
            ("attn_q", "q_proj", c.num_attention_heads),
            ("attn_k", "k_proj", c.num_key_value_heads),
        ] {
            let x = g(&format!("self_attn.{hf}.weight"));
            w.tensor(
                &format!("blk.{i}.{gg}.weight"),
                &x.shape,
                GgmlType::F16,
                &permute(&x.data, heads, x.shape[0], x.shape[1]),
            );
        }
        for (gg, hf) in [
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
        ] {
            let x = g(&format!("{hf}.weight"));
            w.tensor(
                &format!("blk.{i}.{gg}.weight"),
                &x.shape,
                GgmlType::Bf16,
                &x.data,
            );
        }
        for (gg, hf) in [
            ("ffn_gate", "gate_proj"),
            ("ffn_up", "up_proj"),
            ("ffn_down", "down_proj"),
        ] {
            let x = g(&format!("mlp.{hf}.weight"));
            w.tensor(
                &format!("blk.{i}.{gg}.weight"),
                &x.shape,
                GgmlType::F16,
                &x.data,
            );
        }
    }
    let bytes = w.finish();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn tiny_config() -> ModelConfig {
    let mut c = ModelConfig::preset("tiny", tiny_vocab().0.len()).unwrap();
    c.num_hidden_layers = 2;
    c.bos_token_id = Some(1);
    c.eos_token_ids = vec![2];
    c
}

#[test]
fn tiny_llama_gguf_imports_to_the_original_weights() {
    let m = random_model(&tiny_config());
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    write_gguf(&m, &gguf);
    let out = dir.path().join("hf");
    let cfg = import_gguf(&gguf, &out, SaveDtype::F32).unwrap();
    assert_eq!(cfg, m.config, "config from GGUF metadata");
    let back = model_to_tensors(&load_model::<B>(&out, &Default::default()).unwrap());
    for (name, orig) in model_to_tensors(&m) {
        let got = &back[&name];
        assert_eq!(got.shape, orig.shape, "{name}");
        // Q8_0 keeps ~1/254 of the block max; F16/BF16 a relative 2^-11 / 2^-8.
        let tol = if name.contains("embed") {
            0.1 / 127.0
        } else if name.contains("v_proj") || name.contains("o_proj") {
            0.1 / 128.0
        } else {
            1e-4
        };
        let worst = orig
            .data
            .iter()
            .zip(&got.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= tol,
            "{name}: max |Δ| {worst} > {tol} (q/k un-permutation or dequantization wrong?)"
        );
    }
    // tokenizer.json built from the GGUF vocabulary and merges
    let tok = Tokenizer::load(&out).unwrap();
    let id = |t: &str| tok.id(t).unwrap();
    assert_eq!(
        tok.encode("the the", false).unwrap(),
        vec![id("t"), id("he"), id("Ġthe")]
    );
    assert_eq!(tok.encode("12", false).unwrap(), vec![id("1"), id("2")]);
    assert_eq!(tok.encode("<|im_start|>user", false).unwrap()[0], 1);
    assert_eq!(
        tok.decode(&tok.encode("the the", false).unwrap(), true)
            .unwrap(),
        "the the"
    );
    assert_eq!(
        tok.prompt("hi", candor_model::PromptStyle::Chat).unwrap(),
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(tok.stop_ids, vec![2]);
}

#[test]
fn malformed_gguf_files_are_errors_not_panics() {
    let m = random_model(&tiny_config());
    let dir = tempfile::tempdir().unwrap();
    let good = write_gguf(&m, &dir.path().join("good.gguf"));
    let bad = dir.path().join("bad.gguf");
    let try_import = |bytes: &[u8]| -> Result<(), String> {
        std::fs::write(&bad, bytes).unwrap();
        let r = std::panic::catch_unwind(|| {
            let f = GgufFile::open(&bad)?;
            let c = f.model_config()?;
            f.hf_tensors(&c).map(|_| ())
        });
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => panic!("panicked on a malformed file"),
        }
    };
    assert!(try_import(&good).is_ok());
    // truncated anywhere
    for cut in (0..good.len()).step_by(good.len() / 97 + 1) {
        assert!(
            try_import(&good[..cut]).is_err(),
            "truncated at {cut} was accepted"
        );
    }
    // a lying array length (the token list claims 2^60 strings)
    let key = b"tokenizer.ggml.tokens";
    let at = good.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 4;
    let mut lie = good.clone();
    lie[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = try_import(&lie).unwrap_err();
    assert!(e.contains("runs past the end"), "{e}");
    // an absurd tensor shape and a lying offset on the last tensor
    let name = b"blk.1.ffn_down.weight";
    let at = good.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let mut absurd = good.clone();
    absurd[at + 4..at + 12].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(try_import(&absurd).is_err());
    let mut offset = good.clone();
    let off_at = at + 4 + 16 + 4;
    offset[off_at..off_at + 8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    let e = try_import(&offset).unwrap_err();
    assert!(e.contains("blk.1.ffn_down.weight"), "{e}");
    // random byte flips in the header: errors or successes, never panics
    let mut rng = StdRng::seed_from_u64(5);
    let header = good.len().min(4096);
    for _ in 0..300 {
        let mut x = good.clone();
        for _ in 0..4 {
            let i = rng.random_range(0..header);
            x[i] = rng.random();
        }
        let _ = try_import(&x);
    }
}

/// Random blocks for every quantized type, dequantized here and by the `gguf` Python package.
#[test]
fn dequantizers_agree_with_gguf_py() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        candor_test_support::skip(
            candor_test_support::Why::Tool,
            "the dequantizer cross-check needs the `gguf` Python package (pip install gguf; .ci/run does)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let types = [
        ("F16", GgmlType::F16),
        ("BF16", GgmlType::Bf16),
        ("Q4_0", GgmlType::Q4_0),
        ("Q4_1", GgmlType::Q4_1),
        ("Q5_0", GgmlType::Q5_0),
        ("Q5_1", GgmlType::Q5_1),
        ("Q8_0", GgmlType::Q8_0),
        ("Q4_K", GgmlType::Q4K),
        ("Q5_K", GgmlType::Q5K),
        ("Q6_K", GgmlType::Q6K),
    ];
    for (name, ty) in types {
        let (blk, bsz) = ty.block();
        let n_blocks = 512 / blk.max(1) + 8;
        let mut bytes: Vec<u8> = (0..n_blocks * bsz).map(|_| rng.random()).collect();
        // Scale fields must be finite f16: overwrite them with random small scales.
        let f16_at: Vec<usize> = match ty {
            GgmlType::F16 => (0..bsz).step_by(2).collect(),
            GgmlType::Bf16 => vec![],
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => vec![0],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => vec![0, 2],
            GgmlType::Q6K => vec![208],
            _ => vec![],
        };
        for b in bytes.chunks_exact_mut(bsz) {
            for &at in &f16_at {
                b[at..at + 2].copy_from_slice(
                    &half::f16::from_f32(rng.random::<f32>() * 0.1 - 0.05).to_le_bytes(),
                );
            }
            if ty == GgmlType::Bf16 {
                b.copy_from_slice(
                    &half::bf16::from_f32(rng.random::<f32>() * 4.0 - 2.0).to_le_bytes(),
                );
            }
        }
        let ours = dequantize(ty, &bytes).unwrap();
        let raw = dir.path().join(format!("{name}.bin"));
        let out = dir.path().join(format!("{name}.f32"));
        std::fs::write(&raw, &bytes).unwrap();
        let script = format!(
            "import numpy as np, gguf\nfrom gguf.quants import dequantize\nq=gguf.GGMLQuantizationType.{name}\nraw=np.fromfile('{}',dtype=np.uint8)\nblk,bsz=gguf.GGML_QUANT_SIZES[q]\nx=dequantize(raw.reshape(-1,bsz) if bsz>2 else raw.reshape(-1,2), q)\nnp.asarray(x,dtype=np.float32).reshape(-1).tofile('{}')",
            raw.display(),
            out.display()
        );
        let st = std::process::Command::new("python3")
            .args(["-c", &script])
            .status()
            .unwrap();
        assert!(st.success(), "gguf-py failed on {name}");
        let theirs: Vec<f32> = std::fs::read(&out)
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(ours.len(), theirs.len(), "{name}: element count");
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{name}: max relative difference {worst}");
        eprintln!(
            "{name}: {} values agree (max rel diff {worst:.1e})",
            ours.len()
        );
    }
}

#[test]
fn every_supported_pre_tokenizer_builds_a_working_tokenizer() {
    let m = random_model(&tiny_config());
    for pre in ["gpt2", "llama-bpe", "qwen2", "smollm"] {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("t.gguf");
        write_gguf_pre(&m, &gguf, pre);
        import_gguf(&gguf, &dir.path().join("hf"), SaveDtype::F32).unwrap();
        let tok = Tokenizer::load(&dir.path().join("hf")).unwrap();
        let ids = tok.encode("the the 2024", false).unwrap();
        assert_eq!(
            ids[..3],
            [
                tok.id("t").unwrap(),
                tok.id("he").unwrap(),
                tok.id("Ġthe").unwrap()
            ],
            "{pre}"
        );
        assert_eq!(tok.decode(&ids, true).unwrap(), "the the 2024", "{pre}");
    }
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("t.gguf");
    write_gguf_pre(&m, &gguf, "falcon");
    let e = format!(
        "{:#}",
        import_gguf(&gguf, &dir.path().join("hf"), SaveDtype::F32).unwrap_err()
    );
    assert!(e.contains("pre-tokenizer `falcon` is not supported"), "{e}");
}
