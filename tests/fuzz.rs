//! The fuzzing harness: a seeded mutator over every parser of untrusted input — the recipe
//! (TOML), the question file (JSONL), `config.json` (checked against a weights header), the
//! safetensors file and the GGUF file. Each input must give an error or a result: never a
//! panic, and never an allocation beyond a stated bound (a counting allocator refuses one).
//!
//! The test suite runs a quick pass (`CANDOR_FUZZ_ITERS`, default 3,000 inputs per target); a
//! long run is
//!
//! ```text
//! CANDOR_FUZZ_ITERS=300000 CANDOR_FUZZ_SEED=7 cargo test --release -p candor-cli --test fuzz -- --nocapture --test-threads 1
//! ```
//!
//! An input that panics is written to `target/fuzz-failures/` (the panic names the file). An
//! allocation past the bound is refused, which aborts the process ("memory allocation of N
//! bytes failed"); the input in flight is then `target/fuzz-failures/<target>-in-flight.bin`.
//!
//! Why a hand-written mutator rather than cargo-fuzz: cargo-fuzz needs a nightly toolchain
//! (the machines have one stable toolchain), and the quick pass must run inside `cargo test`.

use candor_model::checkpoint::{
    check_shapes, safetensors_from_bytes, write_safetensors, HostTensor, SaveDtype,
};
use candor_model::gguf::GgufFile;
use candor_model::ModelConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

// ---- the allocation bound ------------------------------------------------------------------

/// Live bytes, the peak since the last reset, and whether a bound is enforced.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Counts live bytes; while armed, refuses (returns null for) any allocation that would take
/// the live total past `LIMIT`, so a parser that trusts a size field fails here, loudly,
/// instead of taking the machine's memory.
struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        if now > LIMIT.load(Ordering::Relaxed) {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
            REFUSED.store(true, Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > l.size() {
            let grow = new - l.size();
            let now = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
            if now > LIMIT.load(Ordering::Relaxed) {
                LIVE.fetch_sub(grow, Ordering::Relaxed);
                REFUSED.store(true, Ordering::Relaxed);
                return std::ptr::null_mut();
            }
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
        }
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One target at a time: the counters are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

/// Memory one input may take beyond what was live before it: a fixed 64 MiB plus
/// `per_byte` × its size (a parser may copy and widen its input, never trust a size field).
fn bound(input: usize, per_byte: usize) -> usize {
    (64 << 20) + input * per_byte
}

// ---- the mutator ---------------------------------------------------------------------------

const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "255",
    "65536",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "-1e308",
    "1e-320",
    "nan",
    "inf",
    "0.5",
    "1000000",
    "10000000",
];
const BYTES: &[u8] = b"\x00\xff\"{}[],:=\n\\#.-0123456789eE \t'";
const WORDS: &[u64] = &[
    0,
    1,
    2,
    7,
    255,
    1 << 16,
    1 << 31,
    1 << 32,
    1 << 40,
    1 << 62,
    u64::MAX,
];

/// One to four random edits of `input`, some of them aware of numbers in text and of 8-byte
/// little-endian words in binary headers.
fn mutate(rng: &mut StdRng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let n = v.len();
        match rng.random_range(0..10) {
            0 if n > 0 => {
                let i = rng.random_range(0..n);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if n > 0 => {
                let i = rng.random_range(0..n);
                v[i] = BYTES[rng.random_range(0..BYTES.len())];
            }
            2 if n > 0 => {
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..=64)).min(n);
                v.drain(a..b);
            }
            3 if n > 0 => {
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..=128)).min(n);
                let chunk = v[a..b].to_vec();
                let at = rng.random_range(0..=v.len());
                v.splice(at..at, chunk);
            }
            4 => {
                let at = rng.random_range(0..=n);
                let k = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..k).map(|_| rng.random()).collect();
                v.splice(at..at, bytes);
            }
            5 | 6 => {
                // replace a run of digits (or insert) with an interesting number
                let num = NUMBERS[rng.random_range(0..NUMBERS.len())].as_bytes();
                let digits: Vec<usize> = (0..n).filter(|&i| v[i].is_ascii_digit()).collect();
                if digits.is_empty() {
                    let at = rng.random_range(0..=n);
                    v.splice(at..at, num.iter().copied());
                } else {
                    let a = digits[rng.random_range(0..digits.len())];
                    let mut b = a;
                    while b < n && (v[b].is_ascii_digit() || v[b] == b'.') {
                        b += 1;
                    }
                    v.splice(a..b, num.iter().copied());
                }
            }
            7 if n >= 8 => {
                // an interesting little-endian word at a header position
                let limit = n.min(512) - 7;
                let at = rng.random_range(0..limit);
                let w = WORDS[rng.random_range(0..WORDS.len())].to_le_bytes();
                let k = if rng.random_bool(0.5) { 8 } else { 4 };
                v[at..at + k].copy_from_slice(&w[..k]);
            }
            8 if n > 0 => {
                v.truncate(rng.random_range(0..n));
            }
            _ => {
                // splice in part of another seed
                let s = &seeds[rng.random_range(0..seeds.len())];
                if !s.is_empty() && n > 0 {
                    let a = rng.random_range(0..s.len());
                    let b = (a + rng.random_range(1..=256)).min(s.len());
                    let at = rng.random_range(0..=n);
                    let end = (at + (b - a)).min(n);
                    v.splice(at..end, s[a..b].iter().copied());
                }
            }
        }
    }
    v
}

fn iterations() -> usize {
    std::env::var("CANDOR_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_000)
}

fn failures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("..")
        .join("fuzz-failures")
}

/// Feed `iterations()` mutated inputs to `target`; panic (naming the saved input) on the first
/// panic or refused allocation. Returns (inputs tried, inputs accepted).
fn fuzz(
    name: &str,
    seeds: Vec<Vec<u8>>,
    per_byte: usize,
    target: impl Fn(&[u8]) -> bool,
) -> (usize, usize) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::env::var("CANDOR_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0u64);
    let mut rng = StdRng::seed_from_u64(seed ^ name.len() as u64 ^ 0xF0225);
    let n = iterations();
    let mut accepted = 0;
    let mut corpus = seeds.clone();
    // the seeds themselves must be accepted, or the harness tests nothing
    for s in &seeds {
        assert!(target(s), "{name}: a seed input is rejected");
    }
    let dir = failures_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let current = dir.join(format!("{name}-in-flight.bin"));
    let mut in_flight = std::fs::File::create(&current).unwrap();
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..n {
        let base = &corpus[rng.random_range(0..corpus.len())];
        let input = mutate(&mut rng, base, &seeds);
        // a refused allocation aborts the process (Rust's alloc-error handler cannot be
        // replaced on stable), so the input in flight is on disk before the call
        {
            use std::io::{Seek, Write};
            in_flight.set_len(0).unwrap();
            in_flight.rewind().unwrap();
            in_flight.write_all(&input).unwrap();
        }
        let before = LIVE.load(Ordering::Relaxed);
        REFUSED.store(false, Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        LIMIT.store(before + bound(input.len(), per_byte), Ordering::Relaxed);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| target(&input)));
        LIMIT.store(usize::MAX, Ordering::Relaxed);
        let refused = REFUSED.load(Ordering::Relaxed);
        if r.is_err() || refused {
            std::panic::set_hook(quiet);
            let f = dir.join(format!("{name}-{seed}-{i}.bin"));
            std::fs::write(&f, &input).unwrap();
            panic!(
                "{name}: input {i} {} (saved as {})",
                if refused {
                    "asked for memory past the bound"
                } else {
                    "panicked"
                },
                f.display()
            );
        }
        if r.unwrap() {
            accepted += 1;
            // accepted inputs are kept as bases, so mutations go deeper than one step
            if corpus.len() < 256 {
                corpus.push(input);
            }
        }
    }
    std::panic::set_hook(quiet);
    drop(in_flight);
    let _ = std::fs::remove_file(&current);
    println!("fuzz {name}: {n} inputs, {accepted} accepted, no panic, memory within the bound");
    (n, accepted)
}

fn root() -> PathBuf {
    candor_test_support::repo_root()
}

// ---- the targets ---------------------------------------------------------------------------

#[test]
fn fuzz_the_recipe_parser() {
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(root().join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 3);
    fuzz("recipe", seeds, 64, |b| {
        let Ok(text) = std::str::from_utf8(b) else {
            return false;
        };
        candor_train::Recipe::parse(text).is_ok()
    });
}

#[test]
fn fuzz_the_question_file_reader() {
    let seeds = vec![
        br#"{"id": "q1", "question": "Which city is the capital of Vermont?", "answers": ["Montpelier"]}
{"id": 2, "question": "What is 2 + 2?", "answer": 4}
{"question": "Pick one", "options": {"A": "red", "B": "blue"}, "answer_idx": "B"}
{"id": "q4", "question": "Pick", "options": ["x", "y", "z"], "answer": "y"}

"#
        .to_vec(),
        b"{\"id\": \"a\", \"question\": \"Who wrote Hamlet?\", \"answers\": [\"Shakespeare\", \"William Shakespeare\"]}\r\n".to_vec(),
    ];
    fuzz("questions", seeds, 64, |b| {
        candor_data::qa::read_jsonl(b).is_ok_and(|l| !l.items.is_empty())
    });
}

/// tiny-arith's tensor shapes: what a fuzzed config.json is checked against.
fn tiny_arith_shapes() -> BTreeMap<String, Vec<usize>> {
    let f = root().join("checkpoints/tiny-arith/model.safetensors");
    candor_model::checkpoint::read_safetensors_shapes(&[f]).unwrap()
}

#[test]
fn fuzz_config_json_against_a_weights_header() {
    let shapes = tiny_arith_shapes();
    let seeds = vec![
        std::fs::read(root().join("checkpoints/tiny-arith/config.json")).unwrap(),
        br#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 259,
"hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 6,
"num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true,
"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
"high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#
            .to_vec(),
    ];
    fuzz("config.json", seeds, 64, |b| {
        let Ok(text) = std::str::from_utf8(b) else {
            return false;
        };
        match ModelConfig::from_hf_json(text) {
            Ok(c) => {
                // what loading does next, before any weight is read
                let _ = check_shapes(&c, &shapes);
                let _ = c.rope_inv_freq();
                true
            }
            Err(_) => false,
        }
    });
}

/// A small safetensors file: two tensors in f32, one in bf16.
fn safetensors_seed(dtype: SaveDtype) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("model.safetensors");
    let t = BTreeMap::from([
        (
            "model.embed_tokens.weight".to_string(),
            HostTensor {
                shape: vec![4, 3],
                data: (0..12).map(|i| i as f32 * 0.5).collect(),
            },
        ),
        (
            "model.norm.weight".to_string(),
            HostTensor {
                shape: vec![3],
                data: vec![1.0; 3],
            },
        ),
    ]);
    write_safetensors(&p, &t, dtype).unwrap();
    std::fs::read(p).unwrap()
}

#[test]
fn fuzz_the_safetensors_reader() {
    let seeds = vec![
        safetensors_seed(SaveDtype::F32),
        safetensors_seed(SaveDtype::Bf16),
    ];
    fuzz("safetensors", seeds, 8, |b| {
        let Ok(t) = safetensors_from_bytes(b) else {
            return false;
        };
        let _ = candor_model::checkpoint::check_finite(&t);
        true
    });
}

/// A minimal GGUF v3 file (llama, 1 layer, F32 tensors) written field by field, as
/// llama.cpp's writer lays it out.
fn gguf_seed() -> Vec<u8> {
    fn s(out: &mut Vec<u8>, x: &str) {
        out.extend((x.len() as u64).to_le_bytes());
        out.extend(x.as_bytes());
    }
    let (vocab, d, ff, heads) = (8u64, 4u64, 8u64, 2u64);
    let mut kv: Vec<(&str, u32, Vec<u8>)> = vec![];
    let mut str_val = vec![];
    s(&mut str_val, "llama");
    kv.push(("general.architecture", 8, str_val));
    for (k, v) in [
        ("llama.embedding_length", d),
        ("llama.feed_forward_length", ff),
        ("llama.block_count", 1),
        ("llama.attention.head_count", heads),
        ("llama.attention.head_count_kv", heads),
        ("llama.context_length", 64),
        ("llama.vocab_size", vocab),
    ] {
        kv.push((k, 4, (v as u32).to_le_bytes().to_vec()));
    }
    kv.push((
        "llama.attention.layer_norm_rms_epsilon",
        6,
        1e-5f32.to_le_bytes().to_vec(),
    ));
    let tensors: Vec<(String, Vec<u64>)> = vec![
        ("token_embd.weight".into(), vec![d, vocab]),
        ("output_norm.weight".into(), vec![d]),
        ("blk.0.attn_norm.weight".into(), vec![d]),
        ("blk.0.attn_q.weight".into(), vec![d, d]),
        ("blk.0.attn_k.weight".into(), vec![d, d]),
        ("blk.0.attn_v.weight".into(), vec![d, d]),
        ("blk.0.attn_output.weight".into(), vec![d, d]),
        ("blk.0.ffn_norm.weight".into(), vec![d]),
        ("blk.0.ffn_gate.weight".into(), vec![d, ff]),
        ("blk.0.ffn_up.weight".into(), vec![d, ff]),
        ("blk.0.ffn_down.weight".into(), vec![ff, d]),
    ];
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (k, ty, v) in &kv {
        s(&mut out, k);
        out.extend(ty.to_le_bytes());
        out.extend(v);
    }
    let mut offset = 0u64;
    for (name, dims) in &tensors {
        s(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for x in dims {
            out.extend(x.to_le_bytes());
        }
        out.extend(0u32.to_le_bytes()); // F32
        out.extend(offset.to_le_bytes());
        let n: u64 = dims.iter().product();
        offset += (n * 4).div_ceil(32) * 32;
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    let data_start = out.len();
    out.resize(data_start + offset as usize, 0);
    for (i, b) in out[data_start..].chunks_exact_mut(4).enumerate() {
        b.copy_from_slice(&((i % 7) as f32 * 0.1).to_le_bytes());
    }
    out
}

#[test]
fn fuzz_the_gguf_reader() {
    let seeds = vec![gguf_seed()];
    // dequantizing may widen a 4-bit weight to 4 bytes (8×), and metadata arrays hold one
    // `Value` per byte (32×)
    fuzz("gguf", seeds, 48, |b| {
        let Ok(f) = GgufFile::from_bytes(b.to_vec()) else {
            return false;
        };
        let Ok(c) = f.model_config() else {
            return false;
        };
        match f.hf_tensors(&c) {
            Ok(t) => candor_model::checkpoint::check_tensors(&c, &t).is_ok(),
            Err(_) => false,
        }
    });
}

/// Inputs the long runs found, kept as tests once fixed.
#[test]
fn fuzz_findings_stay_fixed() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // config.json with `head_dim` = 34294967296 (long run, seed 7): the RoPE table alone asked
    // for 68 GB. Sizes are now bounded by `ModelConfig::validate`.
    let text = std::fs::read_to_string(root().join("checkpoints/tiny-arith/config.json"))
        .unwrap()
        .replace("\"head_dim\": 32", "\"head_dim\": 34294967296");
    assert!(text.contains("34294967296"));
    let before = LIVE.load(Ordering::Relaxed);
    LIMIT.store(before + bound(text.len(), 64), Ordering::Relaxed);
    let r = ModelConfig::from_hf_json(&text).map(|c| c.rope_inv_freq().len());
    LIMIT.store(usize::MAX, Ordering::Relaxed);
    let e = r.expect_err("an absurd head_dim is refused").to_string();
    assert!(e.contains("head_dim = 34294967296 is out of range"), "{e}");
}
