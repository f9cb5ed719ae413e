//! Prefix reuse in `generate`: prompts that share a head, repeated prompts (a question's K
//! samples, decoded as one row while their tokens agree) and greedy rows decoded beside sampled
//! ones give what each prompt gives alone — the same tokens, log-probs within 1e-4. On
//! checkpoints/tiny-arith (shipped in the repo), whose plain prompts share `Q: What is `, and on
//! SmolLM2's chat prompts (a long shared system head) when it is fetched.

mod common;

use burn::backend::Flex;
use candor_model::{generate, load_model_and_tokenizer, GenConfig, Generation, PromptStyle};
use candor_model::{Llama, Tokenizer};

type B = Flex;

fn tiny_arith() -> (Llama<B>, Tokenizer) {
    load_model_and_tokenizer::<B>(
        &common::root().join("checkpoints/tiny-arith"),
        &Default::default(),
    )
    .unwrap()
}

fn prompts(tok: &Tokenizer, style: PromptStyle, questions: &[&str]) -> Vec<Vec<u32>> {
    questions
        .iter()
        .map(|q| tok.encode(&tok.prompt(q, style).unwrap(), false).unwrap())
        .collect()
}

fn assert_same(what: &str, got: &Generation, want: &Generation) {
    assert_eq!(
        got.tokens, want.tokens,
        "{what}: {:?} vs {:?}",
        got.text, want.text
    );
    for (a, b) in got.logprobs.iter().zip(&want.logprobs) {
        assert!((a - b).abs() < 1e-4, "{what}: log-prob {a} vs {b}");
    }
    for (a, b) in got.top.iter().zip(&want.top) {
        let ids = |t: &Vec<(u32, f32)>| t.iter().map(|p| p.0).collect::<Vec<_>>();
        // the top-k order may swap only between near-equal log-probs
        if ids(a) != ids(b) {
            for (x, y) in a.iter().zip(b) {
                assert!((x.1 - y.1).abs() < 1e-4, "{what}: top {a:?} vs {b:?}");
            }
        }
    }
    assert_eq!(got.text, want.text, "{what}");
}

/// Every row of one batched call against the same row generated alone (no head to share, no
/// repeat, batch of one: the path before prefix reuse).
fn check_rows_against_single(
    model: &Llama<B>,
    tok: &Tokenizer,
    rows: &[Vec<u32>],
    cfg: &GenConfig,
) {
    let batched = generate(model, tok, rows, cfg, &Default::default()).unwrap();
    for (i, row) in rows.iter().enumerate() {
        let one = GenConfig {
            row_seeds: cfg.row_seeds.get(i).map(|&s| vec![s]).unwrap_or_default(),
            row_temperatures: cfg
                .row_temperatures
                .get(i)
                .map(|&t| vec![t])
                .unwrap_or_default(),
            ..cfg.clone()
        };
        let single = generate(
            model,
            tok,
            std::slice::from_ref(row),
            &one,
            &Default::default(),
        )
        .unwrap()
        .remove(0);
        assert_same(&format!("row {i}"), &batched[i], &single);
    }
}

#[test]
fn prompts_sharing_a_head_and_repeated_prompts_answer_as_alone() {
    let (model, tok) = tiny_arith();
    let qs = [
        "What is 5 + 4?",
        "What is 72 / 9?",
        "What is 5 + 4?",
        "What is 913 - 28?",
        "What is 6 * 7?",
        "What is 72 / 9?",
    ];
    let rows = prompts(&tok, PromptStyle::Plain, &qs);
    let head = rows[0]
        .iter()
        .zip(&rows[3])
        .take_while(|(a, b)| a == b)
        .count();
    assert!(head >= 8, "the prompts share a head of {head} tokens");
    let cfg = GenConfig {
        max_new_tokens: 8,
        stop_ids: tok.stop_ids.clone(),
        top_logprobs: 5,
        ..Default::default()
    };
    check_rows_against_single(&model, &tok, &rows, &cfg);
}

#[test]
fn greedy_and_sampled_rows_from_one_prefill_answer_as_alone() {
    let (model, tok) = tiny_arith();
    let qs = ["What is 5 + 4?", "What is 72 / 9?", "What is 48 - 19?"];
    let p = prompts(&tok, PromptStyle::Plain, &qs);
    // answering's layout: each question's greedy row, then K = 3 samples of each
    let mut rows = p.clone();
    let mut seeds = vec![0; p.len()];
    let mut temps = vec![0.0; p.len()];
    for (i, q) in p.iter().enumerate() {
        for k in 0..3 {
            rows.push(q.clone());
            seeds.push(1000 + 10 * i as u64 + k);
            temps.push(1.0);
        }
    }
    let cfg = GenConfig {
        max_new_tokens: 8,
        stop_ids: tok.stop_ids.clone(),
        top_logprobs: 5,
        row_seeds: seeds,
        row_temperatures: temps,
        ..Default::default()
    };
    check_rows_against_single(&model, &tok, &rows, &cfg);
    // the samples differ from each other (so the test would see a row given another's seed)
    let g = generate(&model, &tok, &rows, &cfg, &Default::default()).unwrap();
    let texts: std::collections::BTreeSet<&str> = g[3..].iter().map(|g| g.text.as_str()).collect();
    assert!(
        texts.len() > 3,
        "samples at temperature 1 all alike: {texts:?}"
    );
}

#[test]
fn chat_prompts_with_a_long_shared_head_answer_as_alone_on_smollm2() {
    let Some(dir) = common::smollm2() else { return };
    let (model, tok) = load_model_and_tokenizer::<B>(&dir, &Default::default()).unwrap();
    let qs = [
        "What is 7 + 5?",
        "Who wrote Hamlet?",
        "What is 7 + 5?",
        "Name the largest planet in the solar system.",
    ];
    let rows = prompts(&tok, PromptStyle::Chat, &qs);
    let cfg = GenConfig {
        max_new_tokens: 6,
        stop_ids: tok.stop_ids.clone(),
        top_logprobs: 5,
        row_seeds: vec![1, 2, 3, 4],
        row_temperatures: vec![0.0, 0.0, 0.7, 0.7],
        ..Default::default()
    };
    check_rows_against_single(&model, &tok, &rows, &cfg);
}
