//! SmolLM2-135M-Instruct imported from its GGUF against HF transformers' reference dump
//! (`../shared/fixtures/smollm2/reference_logits.json`), export round trip, and batched
//! generation against one-at-a-time generation.

mod common;

use burn::backend::Flex;
use candor_model::checkpoint::model_to_tensors;
use candor_model::{export_model, generate, load_model, GenConfig, SaveDtype, Tokenizer};
use serde_json::Value;

type B = Flex;

/// SmolLM2 and its tokenizer, or None when the registry cannot be reached.
fn smollm2() -> Option<(candor_model::Llama<B>, Tokenizer)> {
    let dir = common::smollm2()?;
    Some((
        load_model::<B>(&dir, &Default::default()).unwrap(),
        Tokenizer::load(&dir).unwrap(),
    ))
}

fn reference() -> Value {
    let p = common::shared().join("fixtures/smollm2/reference_logits.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("reading reference_logits.json"))
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}
fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn tokenizer_matches_reference() {
    let Some(dir) = common::smollm2() else { return };
    let tok = Tokenizer::load(&dir).unwrap();
    let r = reference();
    let mut n = 0;
    for case in r["tokenizer_cases"]
        .as_array()
        .unwrap()
        .iter()
        .chain(r["prompts"].as_array().unwrap())
    {
        let text = case["text"].as_str().unwrap();
        let want = ids(if case.get("ids").is_some() {
            &case["ids"]
        } else {
            &case["token_ids"]
        });
        assert_eq!(
            tok.encode(text, false).unwrap(),
            want,
            "token ids of {text:?}"
        );
        n += 1;
    }
    assert!(n >= 10);
}

#[test]
fn chat_template_renders_like_hf() {
    let Some(dir) = common::smollm2() else { return };
    let tok = Tokenizer::load(&dir).unwrap();
    let r = reference();
    // The third reference prompt is HF's apply_chat_template output for one user turn.
    let want = r["prompts"][2]["text"].as_str().unwrap();
    let got = tok
        .prompt(
            "What is the capital of Japan?",
            candor_model::PromptStyle::Chat,
        )
        .unwrap();
    assert_eq!(got, want);
}

/// Logits at every position of one unpadded row: positions, vocabulary, values.
fn logits_of(model: &candor_model::Llama<B>, toks: &[u32]) -> (usize, usize, Vec<f32>) {
    let logits = model.forward_logits(&[toks.to_vec()], &Default::default());
    let [_, n, v] = logits.dims();
    (n, v, logits.into_data().iter::<f32>().collect())
}

#[test]
fn logits_match_reference() {
    let Some(dir) = common::smollm2() else { return };
    let device = Default::default();
    let model = load_model::<B>(&dir, &device).unwrap();
    for p in reference()["prompts"].as_array().unwrap() {
        let toks = ids(&p["token_ids"]);
        let f = &p["f32"];
        let (n, v, all) = logits_of(&model, &toks);
        // greedy argmax at every position
        let argmax: Vec<u32> = all
            .chunks(v)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold(0, |b, (i, &x)| if x > row[b] { i } else { b }) as u32
            })
            .collect();
        assert_eq!(
            argmax,
            ids(&f["argmax_per_position"]),
            "argmax per position for {:?}",
            p["text"]
        );
        // top-5 at the last position: ids identical, logits within 1e-3
        let last = &all[(n - 1) * v..n * v];
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        let top5: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
        assert_eq!(top5, ids(&f["top5_ids"]));
        let mut worst = 0f64;
        for (i, want) in order[..5].iter().zip(floats(&f["top5_logits"])) {
            worst = worst.max((last[*i] as f64 - want).abs());
        }
        for (got, want) in last[..8].iter().zip(floats(&f["last_logits_first8"])) {
            worst = worst.max((*got as f64 - want).abs());
        }
        assert!(worst < 1e-3, "max |logit − reference| = {worst}");
        let mean = all.iter().map(|&x| x as f64).sum::<f64>() / all.len() as f64;
        let std =
            (all.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / all.len() as f64).sqrt();
        assert!(
            (mean - f["logits_mean"].as_f64().unwrap()).abs() < 1e-3,
            "logits mean {mean}"
        );
        assert!(
            (std - f["logits_std"].as_f64().unwrap()).abs() < 1e-3,
            "logits std {std}"
        );
        eprintln!(
            "{:?}: max |Δlogit| {worst:.2e}",
            p["text"]
                .as_str()
                .unwrap()
                .chars()
                .take(30)
                .collect::<String>()
        );
    }
}

/// Mixed precision (`with_compute(BF16)`: bf16 activations and products, f32 weights, f32
/// logits) keeps SmolLM2's next token and stays near HF's f32 logits: further from them than
/// f32 compute (which is within 1e-3, above), as bf16's 8-bit mantissa must be.
#[test]
fn bf16_compute_keeps_the_reference_next_token() {
    let Some(dir) = common::smollm2() else { return };
    let device = Default::default();
    let model = load_model::<B>(&dir, &device)
        .unwrap()
        .with_compute(burn::tensor::DType::BF16);
    let mut worst = 0f64;
    for p in reference()["prompts"].as_array().unwrap() {
        let toks = ids(&p["token_ids"]);
        let f = &p["f32"];
        let (n, v, all) = logits_of(&model, &toks);
        let last = &all[(n - 1) * v..n * v];
        let top1 = (0..v).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        assert_eq!(
            top1 as u32,
            ids(&f["top5_ids"])[0],
            "next token of {:?}",
            p["text"]
        );
        for (i, want) in ids(&f["top5_ids"]).iter().zip(floats(&f["top5_logits"])) {
            worst = worst.max((last[*i as usize] as f64 - want).abs());
        }
    }
    eprintln!("bf16 compute: top-5 max |Δlogit| vs HF f32 = {worst:.3}");
    assert!(
        worst > 1e-3,
        "bf16 compute gave f32's logits ({worst}): was it bf16?"
    );
    assert!(
        worst < 0.5,
        "bf16 compute drifts {worst} from the f32 reference"
    );
}

#[test]
fn export_reloads_bit_identically() {
    let Some(dir) = common::smollm2() else { return };
    let device = Default::default();
    let model = load_model::<B>(&dir, &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    export_model(&model, out.path(), SaveDtype::F32, Some(&dir)).unwrap();
    let st = std::fs::read(out.path().join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&st).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
    let names: Vec<String> = meta.tensors().keys().cloned().collect();
    assert!(
        !names.contains(&"lm_head.weight".to_string()),
        "tied head must not be exported"
    );
    let again = load_model::<B>(out.path(), &device).unwrap();
    let (a, b) = (model_to_tensors(&model), model_to_tensors(&again));
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let u = &b[name];
        assert_eq!(t.shape, u.shape, "{name}");
        assert!(
            t.data
                .iter()
                .zip(&u.data)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name} differs after round trip"
        );
    }
    // and the exported tokenizer still works
    let tok = Tokenizer::load(out.path()).unwrap();
    assert_eq!(
        tok.encode("What is 23 + 45?", false).unwrap(),
        vec![1780, 314, 216, 34, 35, 1232, 216, 36, 37, 47]
    );
}

#[test]
fn batched_left_padded_generation_equals_one_at_a_time() {
    let Some((model, tok)) = smollm2() else {
        return;
    };
    let device = Default::default();
    let questions = [
        "What is 7 + 5?",
        "Name the largest planet in the solar system.",
        "Who wrote Hamlet?",
        "hi",
    ];
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| tok.prompt_ids(q, candor_model::PromptStyle::Chat).unwrap())
        .collect();
    assert!(
        prompts.iter().map(|p| p.len()).min() != prompts.iter().map(|p| p.len()).max(),
        "prompts must differ in length"
    );
    let cfg = GenConfig {
        max_new_tokens: 16,
        stop_ids: tok.stop_ids.clone(),
        top_logprobs: 5,
        ..Default::default()
    };
    let batched = generate(&model, &tok, &prompts, &cfg, &device).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let single = generate(&model, &tok, std::slice::from_ref(p), &cfg, &device)
            .unwrap()
            .remove(0);
        assert_eq!(
            batched[i].tokens, single.tokens,
            "row {i}: {:?} vs {:?}",
            batched[i].text, single.text
        );
        for (a, b) in batched[i].logprobs.iter().zip(&single.logprobs) {
            assert!((a - b).abs() < 1e-3, "row {i}: log-prob {a} vs {b}");
        }
        assert_eq!(batched[i].top[0].len(), 5);
        eprintln!("{:?} → {:?}", questions[i], single.text);
    }
}

#[test]
fn scoring_a_continuation_gives_the_generation_log_probs() {
    let Some((model, tok)) = smollm2() else {
        return;
    };
    let device = Default::default();
    let prompts: Vec<Vec<u32>> = ["What is 2 + 2?", "Who painted the Mona Lisa?"]
        .iter()
        .map(|q| tok.prompt_ids(q, candor_model::PromptStyle::Chat).unwrap())
        .collect();
    let cfg = GenConfig {
        max_new_tokens: 10,
        stop_ids: tok.stop_ids.clone(),
        ..Default::default()
    };
    let gens = generate(&model, &tok, &prompts, &cfg, &device).unwrap();
    let conts: Vec<Vec<u32>> = gens.iter().map(|g| g.tokens.clone()).collect();
    let scored = candor_model::score(&model, &prompts, &conts, tok.pad_id, &device);
    for (g, s) in gens.iter().zip(&scored) {
        assert_eq!(g.logprobs.len(), s.len());
        for (a, b) in g.logprobs.iter().zip(s) {
            assert!(
                (a - b).abs() < 1e-3,
                "generation log-prob {a} vs scored {b}"
            );
        }
        // greedy tokens are the argmax: their log-prob is the top-1 of the top-k list
        for (lp, top) in g.logprobs.iter().zip(&g.top) {
            assert!((lp - top[0].1).abs() < 1e-6);
        }
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_differs_across_seeds() {
    let Some((model, tok)) = smollm2() else {
        return;
    };
    let device = Default::default();
    let p = vec![
        tok.prompt_ids("Tell me a fruit.", candor_model::PromptStyle::Chat)
            .unwrap();
        4
    ];
    let cfg = GenConfig {
        max_new_tokens: 12,
        temperature: 1.0,
        top_p: 0.95,
        seed: 3,
        ..Default::default()
    };
    let a = generate(&model, &tok, &p, &cfg, &device).unwrap();
    let b = generate(&model, &tok, &p, &cfg, &device).unwrap();
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.tokens == y.tokens),
        "same seed, same samples"
    );
    // the four rows use different RNG streams, so identical prompts give different samples
    let distinct: std::collections::BTreeSet<_> = a.iter().map(|g| g.tokens.clone()).collect();
    assert!(distinct.len() > 1, "rows of one batch sampled identically");
    let c = generate(
        &model,
        &tok,
        &p,
        &GenConfig {
            seed: 4,
            ..cfg.clone()
        },
        &device,
    )
    .unwrap();
    assert!(
        a.iter().zip(&c).any(|(x, y)| x.tokens != y.tokens),
        "a different seed changes the samples"
    );
}

#[test]
fn stop_strings_cut_the_text_and_end_the_row() {
    let Some((model, tok)) = smollm2() else {
        return;
    };
    let device = Default::default();
    let p = vec![tok
        .prompt_ids(
            "What is the capital of France?",
            candor_model::PromptStyle::Chat,
        )
        .unwrap()];
    let free = GenConfig {
        max_new_tokens: 12,
        stop_ids: tok.stop_ids.clone(),
        ..Default::default()
    };
    let full = generate(&model, &tok, &p, &free, &device)
        .unwrap()
        .remove(0);
    assert!(full.text.contains(" of "), "{:?}", full.text);
    let cut = GenConfig {
        stop_strings: vec![" of ".into()],
        ..free
    };
    let g = generate(&model, &tok, &p, &cut, &device).unwrap().remove(0);
    assert_eq!(g.finish, candor_model::generate::Finish::StopString);
    assert!(
        !g.text.contains(" of ") && full.text.starts_with(&g.text),
        "{:?} vs {:?}",
        g.text,
        full.text
    );
    assert!(g.tokens.len() < full.tokens.len());
}
