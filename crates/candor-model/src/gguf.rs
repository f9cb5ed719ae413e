//! GGUF (llama.cpp / Ollama) → HF folder import.
//!
//! The reader is hand-written rather than taken from a crate: the maintained GGUF readers live
//! inside large inference crates (candle-core, llama-cpp bindings) that would pull a second tensor
//! library into the build, and we need every length, count and offset checked against the file
//! size before anything is allocated, because the file is untrusted input.

use crate::checkpoint::{write_config_files, write_safetensors, HostTensor, SaveDtype};
use crate::config::{ModelConfig, RopeScaling};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::U64(v) => Some(*v),
            Value::I64(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F64(v) => Some(*v),
            Value::U64(v) => Some(*v as f64),
            Value::I64(v) => Some(*v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

/// ggml tensor types we can dequantize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Result<Self> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::Bf16,
            other => bail!(
                "ggml tensor type {other} is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)"
            ),
        })
    }
    /// (elements per block, bytes per block)
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
        }
    }
}

/// One tensor's header: name, shape in PyTorch order (outermost first), type, byte range.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: GgmlType,
    pub offset: usize,
    pub n_bytes: usize,
}

/// A parsed GGUF file held in memory (memory-mapped, or bytes already read).
pub struct GgufFile {
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data: Bytes,
    data_start: usize,
}

/// A GGUF file's bytes: mapped from disk, or owned (tests and the fuzzing harness).
enum Bytes {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                anyhow!(
                    "GGUF truncated: need {n} bytes at offset {}, file has {}",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        ensure!(
            n as usize as u64 == n && (n as usize) <= self.remaining(),
            "GGUF string length {n} runs past the end of the file"
        );
        Ok(String::from_utf8_lossy(self.take(n as usize)?).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U64(self.take(1)?[0] as u64),
            1 => Value::I64(self.take(1)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as u64),
            3 => Value::I64(i16::from_le_bytes(self.take(2)?.try_into().unwrap()) as i64),
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(self.u32()? as i32 as i64),
            // f32 values are widened through their shortest decimal form, so that 1e-5 stays 1e-5
            // in config.json rather than becoming 9.999999747378752e-6.
            6 => {
                let f = f32::from_le_bytes(self.take(4)?.try_into().unwrap());
                Value::F64(f.to_string().parse().unwrap_or(f as f64))
            }
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                ensure!(depth < 4, "GGUF arrays nested too deeply");
                let inner = self.u32()?;
                let n = self.u64()?;
                // Every element takes at least one byte: a count larger than the rest of the
                // file is a lie, and is refused before anything is allocated.
                ensure!(
                    n <= self.remaining() as u64,
                    "GGUF array of {n} elements runs past the end of the file"
                );
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(inner, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            other => bail!("GGUF metadata value type {other} is unknown"),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: read-only map of a file we do not modify.
        let data = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("mapping {}", path.display()))?;
        Self::parse(Bytes::Map(data)).with_context(|| format!("reading GGUF {}", path.display()))
    }

    /// Parse a GGUF file already in memory.
    pub fn from_bytes(data: Vec<u8>) -> Result<Self> {
        Self::parse(Bytes::Owned(data))
    }

    fn parse(data: Bytes) -> Result<Self> {
        let mut c = Cursor { buf: &data, pos: 0 };
        ensure!(c.take(4)? == b"GGUF", "not a GGUF file (bad magic)");
        let version = c.u32()?;
        ensure!(
            version == 2 || version == 3,
            "GGUF version {version} is not supported (allowed: 2, 3)"
        );
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        ensure!(
            n_kv <= c.remaining() as u64 / 12,
            "GGUF claims {n_kv} metadata entries, more than the file can hold"
        );
        ensure!(
            n_tensors <= c.remaining() as u64 / 24,
            "GGUF claims {n_tensors} tensors, more than the file can hold"
        );
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c
                .value(ty, 0)
                .with_context(|| format!("metadata key `{key}`"))?;
            metadata.insert(key, v);
        }
        let mut raw = vec![];
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()?;
            ensure!(
                (1..=4).contains(&n_dims),
                "tensor `{name}` has {n_dims} dimensions (allowed 1..=4)"
            );
            let mut dims = vec![];
            for _ in 0..n_dims {
                dims.push(c.u64()?);
            }
            let kind = GgmlType::from_id(c.u32()?).with_context(|| format!("tensor `{name}`"))?;
            let offset = c.u64()?;
            raw.push((name, dims, kind, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(|v| v.as_u64())
            .unwrap_or(32) as usize;
        ensure!(
            alignment.is_power_of_two() && alignment <= 1 << 16,
            "GGUF alignment {alignment} is invalid"
        );
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let data_len = data.len().saturating_sub(data_start);
        let mut tensors = vec![];
        for (name, dims, kind, offset) in raw {
            let mut n: u64 = 1;
            for &d in &dims {
                n = n
                    .checked_mul(d)
                    .filter(|&n| n < 1 << 40)
                    .ok_or_else(|| anyhow!("tensor `{name}` has absurd shape {dims:?}"))?;
            }
            let (blk, bytes) = kind.block();
            ensure!(
                dims[0] % blk as u64 == 0,
                "tensor `{name}`: row length {} is not a multiple of the {kind:?} block size {blk}",
                dims[0]
            );
            let n_bytes = n / blk as u64 * bytes as u64;
            let end = offset
                .checked_add(n_bytes)
                .ok_or_else(|| anyhow!("tensor `{name}`: offset overflows"))?;
            ensure!(end <= data_len as u64, "tensor `{name}` ({n_bytes} bytes at offset {offset}) runs past the end of the file");
            let shape: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
            tensors.push(TensorInfo {
                name,
                shape,
                kind,
                offset: offset as usize,
                n_bytes: n_bytes as usize,
            });
        }
        Ok(Self {
            metadata,
            tensors,
            data,
            data_start,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.data[self.data_start + t.offset..self.data_start + t.offset + t.n_bytes]
    }

    /// The tensor as f32, PyTorch layout.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        dequantize(t.kind, self.bytes(t))
    }
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Dequantize a whole buffer of `kind` blocks into f32.
pub fn dequantize(kind: GgmlType, bytes: &[u8]) -> Result<Vec<f32>> {
    let (blk, bsz) = kind.block();
    ensure!(
        bytes.len().is_multiple_of(bsz),
        "{kind:?} data of {} bytes is not a whole number of blocks",
        bytes.len()
    );
    let mut out = Vec::with_capacity(bytes.len() / bsz * blk);
    for b in bytes.chunks_exact(bsz) {
        match kind {
            GgmlType::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            GgmlType::F16 => out.push(f16(b)),
            GgmlType::Bf16 => out.push(half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            GgmlType::Q4_0 => {
                let d = f16(b);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0xF) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
            GgmlType::Q4_1 => {
                let (d, m) = (f16(b), f16(&b[2..]));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let d = f16(b);
                let (m, rest) = if kind == GgmlType::Q5_1 {
                    (f16(&b[2..]), &b[4..])
                } else {
                    (0.0, &b[2..])
                };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..20];
                let off = if kind == GgmlType::Q5_0 { 16 } else { 0 };
                let lo: Vec<f32> = (0..16)
                    .map(|j| {
                        let h = ((qh >> j) << 4) & 0x10;
                        (((qs[j] & 0xF) as u32 | h) as i32 - off) as f32 * d + m
                    })
                    .collect();
                let hi: Vec<f32> = (0..16)
                    .map(|j| {
                        let h = (qh >> (j + 12)) & 0x10;
                        (((qs[j] >> 4) as u32 | h) as i32 - off) as f32 * d + m
                    })
                    .collect();
                out.extend(lo);
                out.extend(hi);
            }
            GgmlType::Q8_0 => {
                let d = f16(b);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                let (d, dmin) = (f16(b), f16(&b[2..]));
                let scales = &b[4..16];
                let (qh, qs) = if kind == GgmlType::Q5K {
                    (&b[16..48], &b[48..176])
                } else {
                    (&b[0..0], &b[16..144])
                };
                let (mut u1, mut u2) = (1u8, 2u8);
                for (chunk, j) in (0..4).zip((0..8).step_by(2)) {
                    let (sc1, m1) = scale_min_k4(j, scales);
                    let (sc2, m2) = scale_min_k4(j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    let q = &qs[chunk * 32..chunk * 32 + 32];
                    for l in 0..32 {
                        let h = if kind == GgmlType::Q5K && qh[l] & u1 != 0 {
                            16
                        } else {
                            0
                        };
                        out.push(d1 * ((q[l] & 0xF) + h) as f32 - m1);
                    }
                    for l in 0..32 {
                        let h = if kind == GgmlType::Q5K && qh[l] & u2 != 0 {
                            16
                        } else {
                            0
                        };
                        out.push(d2 * ((q[l] >> 4) + h) as f32 - m2);
                    }
                    u1 <<= 2;
                    u2 <<= 2;
                }
            }
            GgmlType::Q6K => {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16(&b[208..]);
                for half in 0..2 {
                    let (ql, qh, sc) = (&ql[half * 64..], &qh[half * 32..], &sc[half * 8..]);
                    let mut y = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                    out.extend_from_slice(&y);
                }
            }
        }
    }
    Ok(out)
}

fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Undo llama.cpp's q/k row permutation: GGUF row `h*hd + 2i + a` holds HF row `h*hd + a*hd/2 + i`.
pub fn unpermute_rows(data: &[f32], n_head: usize, rows: usize, cols: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for a in 0..2 {
                let src = h * hd + 2 * i + a;
                let dst = h * hd + a * (hd / 2) + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// HF name of a GGUF tensor, or None for tensors that carry no weights we keep.
fn hf_name(gguf: &str) -> Option<String> {
    let map = |s: &str| -> Option<&'static str> {
        Some(match s {
            "attn_norm.weight" => "input_layernorm.weight",
            "ffn_norm.weight" => "post_attention_layernorm.weight",
            "attn_q.weight" => "self_attn.q_proj.weight",
            "attn_k.weight" => "self_attn.k_proj.weight",
            "attn_v.weight" => "self_attn.v_proj.weight",
            "attn_output.weight" => "self_attn.o_proj.weight",
            "attn_q.bias" => "self_attn.q_proj.bias",
            "attn_k.bias" => "self_attn.k_proj.bias",
            "attn_v.bias" => "self_attn.v_proj.bias",
            "attn_output.bias" => "self_attn.o_proj.bias",
            "ffn_gate.weight" => "mlp.gate_proj.weight",
            "ffn_up.weight" => "mlp.up_proj.weight",
            "ffn_down.weight" => "mlp.down_proj.weight",
            _ => return None,
        })
    };
    match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => Some("model.norm.weight".into()),
        "output.weight" => Some("lm_head.weight".into()),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (n, tail) = rest.split_once('.')?;
            let n: usize = n.parse().ok()?;
            Some(format!("model.layers.{n}.{}", map(tail)?))
        }
    }
}

impl GgufFile {
    fn req_u64(&self, key: &str) -> Result<usize> {
        self.get(key)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| anyhow!("GGUF metadata `{key}` is missing"))
    }

    /// The HF runtime config described by this file's metadata.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let arch = self
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("llama")
            .to_string();
        let model_type = match arch.as_str() {
            "llama" | "mistral" => "llama",
            "qwen2" => "qwen2",
            other => bail!(
                "GGUF architecture `{other}` is not supported (allowed: llama, mistral, qwen2)"
            ),
        };
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = self.req_u64(&k("embedding_length"))?;
        let heads = self.req_u64(&k("attention.head_count"))?;
        ensure!(
            hidden > 0 && heads > 0,
            "GGUF metadata: embedding_length ({hidden}) and attention.head_count ({heads}) must be positive"
        );
        let kv = self
            .get(&k("attention.head_count_kv"))
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .unwrap_or(heads);
        let head_dim = self
            .get(&k("attention.key_length"))
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .unwrap_or(hidden / heads); // both checked positive above
        let vocab = match self.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            _ => self.req_u64(&k("vocab_size"))?,
        };
        let has = |n: &str| self.tensors.iter().any(|t| t.name == n);
        let rope_scaling = if has("rope_freqs.weight") {
            Some(self.llama3_scaling(head_dim)?)
        } else {
            None
        };
        let eos = self
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.as_u64())
            .map(|v| v as u32);
        let mut eos_ids: Vec<u32> = eos.into_iter().collect();
        if let Some(e) = self
            .get("tokenizer.ggml.eot_token_id")
            .and_then(|v| v.as_u64())
        {
            if !eos_ids.contains(&(e as u32)) {
                eos_ids.push(e as u32);
            }
        }
        let c = ModelConfig {
            model_type: model_type.into(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.req_u64(&k("feed_forward_length"))?,
            num_hidden_layers: self.req_u64(&k("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            rms_norm_eps: self
                .get(&k("attention.layer_norm_rms_epsilon"))
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5),
            rope_theta: self
                .get(&k("rope.freq_base"))
                .and_then(|v| v.as_f64())
                .unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: self
                .get(&k("context_length"))
                .and_then(|v| v.as_u64())
                .unwrap_or(2048) as usize,
            tie_word_embeddings: !has("output.weight"),
            qkv_bias: has("blk.0.attn_q.bias"),
            o_bias: has("blk.0.attn_output.bias"),
            mlp_bias: false,
            bos_token_id: self
                .get("tokenizer.ggml.bos_token_id")
                .and_then(|v| v.as_u64())
                .map(|v| v as u32),
            eos_token_ids: eos_ids,
        };
        c.validate().context("GGUF metadata")?;
        Ok(c)
    }

    /// llama.cpp stores Llama 3.1's RoPE scaling as per-frequency divisors (`rope_freqs.weight`).
    /// Recover HF's `llama3` parameters (Meta's published values) and check they reproduce it.
    fn llama3_scaling(&self, head_dim: usize) -> Result<RopeScaling> {
        let t = self
            .tensors
            .iter()
            .find(|t| t.name == "rope_freqs.weight")
            .unwrap();
        let factors = self.dequantize(t)?;
        let arch = self
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("llama");
        let factor = self
            .get(&format!("{arch}.rope.scaling.factor"))
            .and_then(|v| v.as_f64())
            .unwrap_or(8.0);
        let orig = self
            .get(&format!("{arch}.rope.scaling.original_context_length"))
            .and_then(|v| v.as_u64())
            .unwrap_or(8192) as usize;
        let s = RopeScaling::Llama3 {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: orig,
        };
        let mut probe = ModelConfig::preset("tiny", 1)?;
        probe.head_dim = head_dim;
        probe.rope_theta = self
            .get(&format!("{arch}.rope.freq_base"))
            .and_then(|v| v.as_f64())
            .unwrap_or(10_000.0);
        let plain = probe.rope_inv_freq();
        probe.rope_scaling = Some(s.clone());
        let scaled = probe.rope_inv_freq();
        for (i, f) in factors.iter().enumerate().take(plain.len()) {
            let want = plain[i] / scaled[i];
            ensure!((want - f).abs() <= 1e-3 * want.abs().max(1.0), "rope_freqs.weight[{i}] = {f} does not match llama3 scaling (expected {want}); this RoPE variant is not supported");
        }
        Ok(s)
    }

    /// All weights under HF names, dequantized to f32, q/k un-permuted for llama-arch files.
    pub fn hf_tensors(&self, config: &ModelConfig) -> Result<BTreeMap<String, HostTensor>> {
        let permuted = matches!(
            self.get("general.architecture").and_then(|v| v.as_str()),
            Some("llama") | Some("mistral") | None
        );
        let mut out = BTreeMap::new();
        for t in &self.tensors {
            let Some(name) = hf_name(&t.name) else {
                ensure!(
                    t.name == "rope_freqs.weight",
                    "GGUF tensor `{}` has no HF counterpart",
                    t.name
                );
                continue;
            };
            let mut data = self
                .dequantize(t)
                .with_context(|| format!("tensor `{}`", t.name))?;
            if permuted
                && (t.name.ends_with("attn_q.weight")
                    || t.name.ends_with("attn_k.weight")
                    || t.name.ends_with("attn_q.bias")
                    || t.name.ends_with("attn_k.bias"))
            {
                let heads = if t.name.contains("attn_q") {
                    config.num_attention_heads
                } else {
                    config.num_key_value_heads
                };
                let cols = if t.shape.len() == 2 { t.shape[1] } else { 1 };
                data = unpermute_rows(&data, heads, t.shape[0], cols);
            }
            out.insert(
                name,
                HostTensor {
                    shape: t.shape.clone(),
                    data,
                },
            );
        }
        Ok(out)
    }
}

/// Import a llama-architecture GGUF into an HF folder (`config.json`, `model.safetensors`,
/// `generation_config.json`, `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`).
pub fn import_gguf(gguf: &Path, out: &Path, dtype: SaveDtype) -> Result<ModelConfig> {
    let f = GgufFile::open(gguf)?;
    let config = f.model_config()?;
    let tensors = f.hf_tensors(&config)?;
    crate::checkpoint::check_tensors(&config, &tensors)
        .context("GGUF tensors do not match its metadata")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    crate::tokenizer::write_tokenizer_from_gguf(&f, out)?;
    write_safetensors(&out.join("model.safetensors"), &tensors, dtype)?;
    let tok = crate::tokenizer::Tokenizer::load(out)?;
    write_config_files(&config, out, dtype, Some(&tok))?;
    Ok(config)
}
