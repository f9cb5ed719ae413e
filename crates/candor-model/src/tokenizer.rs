//! Tokenizer (`tokenizer.json` via the `tokenizers` crate) and chat template
//! (`tokenizer_config.json` or `chat_template.jinja`, rendered with minijinja the way HF does),
//! plus building `tokenizer.json` from a GGUF vocabulary.

use crate::gguf::{GgufFile, Value};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;

/// How a question becomes a prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptStyle {
    /// The model's chat template with one user turn and the generation prompt.
    Chat,
    /// `Q: …\nA:` for base models.
    Plain,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Ids that end a turn: `eos_token` and, when present, `<|im_end|>` / `<|eot_id|>` / `<|end|>`.
    pub stop_ids: Vec<u32>,
    pub pad_id: u32,
}

fn token_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl Tokenizer {
    pub fn load(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&tj)
            .map_err(|e| anyhow!("loading {}: {e}", tj.display()))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.exists() {
            serde_json::from_str(&std::fs::read_to_string(&cfg_path)?)
                .with_context(|| format!("parsing {}", cfg_path.display()))?
        } else {
            json!({})
        };
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.exists() {
            Some(std::fs::read_to_string(&jinja)?)
        } else {
            match cfg.get("chat_template") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: take `default`.
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(String::from),
                _ => None,
            }
        };
        let bos_token = token_str(cfg.get("bos_token"));
        let eos_token = token_str(cfg.get("eos_token"));
        let mut stop_ids = vec![];
        for t in eos_token.iter().map(String::as_str).chain([
            "<|im_end|>",
            "<|eot_id|>",
            "<|end|>",
            "<|endoftext|>",
        ]) {
            if let Some(id) = inner.token_to_id(t) {
                if !stop_ids.contains(&id)
                    && (Some(t) == eos_token.as_deref()
                        || t != "<|endoftext|>"
                        || chat_template.is_none())
                {
                    stop_ids.push(id);
                }
            }
        }
        let pad_id = token_str(cfg.get("pad_token"))
            .and_then(|t| inner.token_to_id(&t))
            .or(stop_ids.first().copied())
            .unwrap_or(0);
        Ok(Self {
            inner,
            chat_template,
            bos_token,
            eos_token,
            stop_ids,
            pad_id,
        })
    }

    /// One more than the largest token id, added tokens included: how many embedding rows a
    /// model needs to take every token this tokenizer can produce.
    pub fn id_bound(&self) -> usize {
        self.inner
            .get_vocab(true)
            .into_values()
            .max()
            .map_or(0, |m| m as usize + 1)
    }

    /// An error, naming both sizes, when this tokenizer can produce ids past a model's
    /// `vocab_size` rows (a `tokenizer.json` from another model), instead of a panic deep in the
    /// embedding lookup or the loss. A model with more rows than the tokenizer needs is fine.
    pub fn check_fits(&self, vocab_size: usize) -> Result<()> {
        let need = self.id_bound();
        if need > vocab_size {
            bail!(
                "the tokenizer's ids go up to {} but the model has vocab_size = {vocab_size} \
                 embedding rows (config.json); tokenizer.json and the weights come from \
                 different models",
                need - 1
            );
        }
        Ok(())
    }

    /// Token ids of `text`; `add_special` adds what the tokenizer's post-processor adds (BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, add_special)
            .map_err(|e| anyhow!("tokenizing: {e}"))?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| anyhow!("decoding: {e}"))
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Render the chat template like `transformers`' `apply_chat_template(tokenize=False)`.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tpl = self.chat_template.as_deref().ok_or_else(|| {
            anyhow!("this tokenizer has no chat template; use the plain prompt style")
        })?;
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", tpl)
            .context("chat template does not parse")?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        env.get_template("chat")?
            .render(ctx)
            .context("rendering the chat template")
    }

    /// Token ids of the prompt for one question (the rendered text already holds any special
    /// tokens, so none are added).
    pub fn prompt_ids(&self, question: &str, style: PromptStyle) -> Result<Vec<u32>> {
        self.encode(&self.prompt(question, style)?, false)
    }

    /// The prompt text for one question in the given style.
    pub fn prompt(&self, question: &str, style: PromptStyle) -> Result<String> {
        match style {
            PromptStyle::Chat => self.apply_chat_template(
                &[Message {
                    role: "user".into(),
                    content: question.into(),
                }],
                true,
            ),
            PromptStyle::Plain => Ok(format!("Q: {question}\nA:")),
        }
    }
}

/// GPT-2's pre-tokenizer regex split, as used by Llama 3 (`\p{N}{1,3}`) and Qwen2 (`\p{N}`).
fn split_regex(numbers: &str) -> String {
    format!(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|{numbers}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
}

fn pre_tokenizer(pre: &str) -> Result<serde_json::Value> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |re: String| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    Ok(match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "gpt2" | "default" => byte_level(true),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [split(split_regex(r"\p{N}{1,3}")), byte_level(false)]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(split_regex(r"\p{N}")), byte_level(false)]}),
        other => bail!("GGUF pre-tokenizer `{other}` is not supported (allowed: smollm, gpt2, llama-bpe, qwen2)"),
    })
}

/// Build `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` from a GGUF's
/// `tokenizer.ggml.*` metadata (byte-level BPE models only).
pub fn write_tokenizer_from_gguf(f: &GgufFile, out: &Path) -> Result<()> {
    let model = f
        .get("tokenizer.ggml.model")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if model != "gpt2" {
        bail!(
            "GGUF tokenizer model `{model}` is not supported (allowed: gpt2, i.e. byte-level BPE)"
        );
    }
    let strings = |key: &str| -> Result<Vec<String>> {
        match f.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .ok_or_else(|| anyhow!("`{key}` holds a non-string"))
                })
                .collect(),
            _ => bail!("GGUF metadata `{key}` is missing"),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match f.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::I64(i) => *i,
                Value::U64(u) => *u as i64,
                _ => 1,
            })
            .collect(),
        _ => vec![1; tokens.len()],
    };
    let pre = f
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), json!(i));
    }
    let merges: Vec<serde_json::Value> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| json!([a, b]))
                .ok_or_else(|| anyhow!("malformed merge `{m}`"))
        })
        .collect::<Result<_>>()?;
    // token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": types[i] == 3}))
        .collect();
    let id = |key: &str| {
        f.get(key)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .filter(|&i| i < tokens.len())
    };
    let tok = |key: &str| id(key).map(|i| tokens[i].clone());
    let add_bos = f
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let post = match (add_bos, tok("tokenizer.ggml.bos_token_id")) {
        (true, Some(bos)) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [id("tokenizer.ggml.bos_token_id")], "tokens": [bos]}}
        }),
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        }
    };
    let tj = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre)?,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": pre == "llama-bpe",
            "vocab": vocab, "merges": merges
        }
    });
    crate::checkpoint::write_atomic(
        &out.join("tokenizer.json"),
        serde_json::to_string(&tj)?.as_bytes(),
    )?;
    let mut decoder = serde_json::Map::new();
    for a in tj["added_tokens"].as_array().unwrap() {
        decoder.insert(a["id"].to_string(), json!({
            "content": a["content"], "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": a["special"]
        }));
    }
    let mut cfg = json!({
        "add_bos_token": add_bos,
        "add_eos_token": false,
        "added_tokens_decoder": decoder,
        "clean_up_tokenization_spaces": false,
        "model_max_length": f.get(&format!("{}.context_length", f.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("llama"))).and_then(|v| v.as_u64()).unwrap_or(2048),
        // PreTrainedTokenizerFast keeps tokenizer.json's pre-tokenizer as is (GPT2Tokenizer in
        // transformers ≥ 5 would rebuild it and drop SmolLM's digit splitting).
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let mut special = json!({});
    for (name, key) in [
        ("bos_token", "bos"),
        ("eos_token", "eos"),
        ("unk_token", "unknown"),
        ("pad_token", "padding"),
    ] {
        if let Some(t) = tok(&format!("tokenizer.ggml.{key}_token_id")) {
            cfg[name] = json!(t);
            special[name] = json!(t);
        }
    }
    if let Some(t) = f.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
        cfg["chat_template"] = json!(t);
    }
    crate::checkpoint::write_atomic(
        &out.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
    crate::checkpoint::write_atomic(
        &out.join("special_tokens_map.json"),
        serde_json::to_string_pretty(&special)?.as_bytes(),
    )?;
    Ok(())
}

/// GPT-2's byte → printable character map used by byte-level BPE.
fn bytes_to_unicode() -> Vec<char> {
    let printable = |b: u32| {
        (b'!' as u32..=b'~' as u32).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("latin-1")
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("valid code point")
            }
        })
        .collect()
}

/// Write a byte-level tokenizer with no merges (256 byte tokens + `<|endoftext|>`,
/// `<|im_start|>`, `<|im_end|>`) and a ChatML template without a system prompt: the tokenizer
/// of models trained from scratch here (checkpoints/tiny-arith) and of the tests' tiny models.
pub fn write_byte_tokenizer(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut vocab = serde_json::Map::new();
    for (i, c) in bytes_to_unicode().into_iter().enumerate() {
        vocab.insert(c.to_string(), json!(i));
    }
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": 256 + i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tj = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    let template = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    let cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": null,
        "chat_template": template,
        "model_max_length": 2048
    });
    crate::checkpoint::write_atomic(
        &out.join("tokenizer.json"),
        serde_json::to_string(&tj)?.as_bytes(),
    )?;
    crate::checkpoint::write_atomic(
        &out.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
    Ok(())
}
