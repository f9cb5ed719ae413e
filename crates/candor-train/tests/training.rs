//! Training mechanics on a tiny random model: gradient accumulation gives the same gradients
//! whatever the split, the loss covers only response tokens (end of turn included), and a LoRA
//! model's forward equals its merged forward.

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use candor_data::config::Style;
use candor_data::{dataset, load_items, DataConfig};
use candor_model::{Llama, ModelConfig, Tokenizer};
use candor_train::trainer::{accumulate, batch_loss, encode, Objective, Seq};

mod common;
use common::{assert_same_gradients, grads_of, A};

fn setup() -> (Llama<A>, Tokenizer, Vec<Seq>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    candor_model::tokenizer::write_byte_tokenizer(dir.path()).unwrap();
    let tok = Tokenizer::load(dir.path()).unwrap();
    let cfg = ModelConfig::preset("tiny", 259).unwrap();
    let model = Llama::<A>::init(&cfg, 11, &Default::default());
    let data = DataConfig {
        subtasks: vec!["+:1:1".into(), "-:3:3".into()],
        per_subtask: 16,
        ..Default::default()
    };
    let items = load_items(&data).unwrap();
    let ex = dataset::gold_examples(&items, &tok, Style::Chat).unwrap();
    let w = vec![1.0; ex.len()];
    let (seqs, _, dropped) =
        encode(&tok, &ex, &w, Style::Chat, 256, &Objective::response()).unwrap();
    assert_eq!((seqs.len(), dropped), (32, 0));
    (model, tok, seqs, dir)
}

#[test]
fn gradient_accumulation_is_split_invariant() {
    let (model, _tok, seqs, _d) = setup();
    let batch: Vec<&Seq> = seqs.iter().collect();
    let dev = Default::default();
    let (g1, l1) = accumulate(&model, &batch, &Objective::response(), 32, 0, 0, &dev);
    let (g4, l4) = accumulate(&model, &batch, &Objective::response(), 8, 0, 0, &dev);
    let (g3, _) = accumulate(&model, &batch, &Objective::response(), 11, 0, 0, &dev); // uneven micro-batches
    assert!((l1 - l4).abs() < 1e-5 * l1.abs(), "{l1} vs {l4}");
    let (a, b, c) = (
        grads_of(&model, &g1),
        grads_of(&model, &g4),
        grads_of(&model, &g3),
    );
    assert_eq!(a.len(), b.len());
    assert!(a.len() > 20);
    let scale = a.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    for ((x, y), z) in a.iter().zip(&b).zip(&c) {
        for ((p, q), r) in x.iter().zip(y).zip(z) {
            assert!(
                (p - q).abs() <= 1e-4 * scale && (p - r).abs() <= 1e-4 * scale,
                "{p} {q} {r}"
            );
        }
    }
    // and the naive mean of per-micro-batch means (what a wrong normaliser gives) differs
    let uneven: Vec<&Seq> = seqs.iter().take(9).collect();
    let (_, l_split) = accumulate(&model, &uneven, &Objective::response(), 3, 0, 0, &dev);
    let per: Vec<f64> = uneven
        .chunks(3)
        .map(|m| {
            let (loss, n) = batch_loss(&model, m, &Objective::response(), &dev);
            loss.into_scalar() as f64 / n as f64
        })
        .collect();
    let naive = per.iter().sum::<f64>() / per.len() as f64;
    let (whole, n) = batch_loss(&model, &uneven, &Objective::response(), &dev);
    let whole = whole.into_scalar() as f64 / n as f64;
    assert!((l_split - whole).abs() < 1e-5, "{l_split} vs {whole}");
    assert!(
        (naive - whole).abs() > 1e-6,
        "the test must be able to fail: {naive} {whole}"
    );
}

/// `Σ weight · −log p(token)` over each row's response tokens, from the full logits of every
/// position (every layer at every position, one row at a time): what `batch_loss` must equal.
fn loss_from_full_logits(model: &Llama<A>, batch: &[&Seq]) -> Tensor<A, 1> {
    let dev = Default::default();
    let mut total = Tensor::<A, 1>::zeros([1], &dev);
    for s in batch {
        let logits = model.forward_logits(std::slice::from_ref(&s.ids), &dev);
        let [_, t, v] = logits.dims();
        let lp = burn::tensor::activation::log_softmax(logits.reshape([t, v]), 1);
        for p in s.start..s.ids.len() {
            let id = s.ids[p] as usize;
            let x = lp.clone().slice([p - 1..p, id..id + 1]).reshape([1]);
            total = total - x * s.weight as f64;
        }
    }
    total
}

#[test]
fn batch_loss_equals_the_loss_from_full_logits() {
    // batch_loss runs the last layer only from the first position that predicts a response
    // token on, and the output layer only where the loss is
    let (model, _tok, seqs, _d) = setup();
    let batch: Vec<&Seq> = seqs.iter().step_by(5).collect();
    let first = batch.iter().map(|s| s.start - 1).min().unwrap();
    assert!(first > 0, "the rows must have a prompt to skip");
    assert!(
        batch.iter().any(|s| s.ids.len() != batch[0].ids.len()),
        "rows of different lengths (padding)"
    );
    let (fast, n) = batch_loss(&model, &batch, &Objective::response(), &Default::default());
    let slow = loss_from_full_logits(&model, &batch);
    let (f, s) = (
        fast.clone().into_scalar() as f64,
        slow.clone().into_scalar() as f64,
    );
    assert!(n > batch.len());
    assert!((f - s).abs() < 1e-5 * s.abs(), "{f} vs {s}");
    assert_same_gradients(&model, fast, slow, 1e-4, "batch_loss vs full logits");
}

#[test]
fn loss_covers_response_and_end_of_turn_only() {
    let (_model, tok, seqs, _d) = setup();
    let s = &seqs[0];
    let resp = tok.decode(&s.ids[s.start..], false).unwrap();
    assert!(resp.ends_with("<|im_end|>"), "{resp:?}");
    let prompt = tok.decode(&s.ids[..s.start], false).unwrap();
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    assert_eq!(resp.trim_end_matches("<|im_end|>"), prompt_answer(&prompt));
}

fn prompt_answer(prompt: &str) -> String {
    // "What is a + b?" → the sum
    let q = prompt
        .split("What is ")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let parts: Vec<&str> = q.split(' ').collect();
    let (a, op, b): (i64, &str, i64) = (
        parts[0].parse().unwrap(),
        parts[1],
        parts[2].parse().unwrap(),
    );
    if op == "+" { a + b } else { a - b }.to_string()
}

#[test]
fn lora_forward_equals_merged_forward_and_only_adapters_train() {
    let (model, _tok, seqs, _d) = setup();
    let dev = Default::default();
    let targets: Vec<String> = ["q_proj", "v_proj", "down_proj"].map(String::from).to_vec();
    let base_model = model.valid();
    let mut m = model.with_lora(&targets, &[], 4, 8.0, 0.0, 12, &dev);
    // make B non-zero so the adapter changes the output
    for (_, lin) in m.linears_mut() {
        if let Some(l) = lin.lora.as_mut() {
            let b = Tensor::<A, 2>::random(
                l.b.dims(),
                burn::tensor::Distribution::Normal(0.0, 0.05),
                &dev,
            );
            l.b = Param::from_tensor(b);
        }
    }
    let rows: Vec<Vec<u32>> = seqs.iter().take(3).map(|s| s.ids.clone()).collect();
    let inner = m.valid();
    let unmerged = inner.forward_logits(&rows, &dev);
    let mut merged = inner.clone();
    merged.merge_lora();
    let base = base_model.forward_logits(&rows, &dev);
    let merged_out = merged.forward_logits(&rows, &dev);
    let diff = (unmerged.clone() - merged_out).abs().max().into_scalar();
    let moved = (unmerged - base).abs().max().into_scalar();
    assert!(diff < 1e-4, "merged vs unmerged {diff}");
    assert!(moved > 1e-3, "the adapter must change the output ({moved})");
    // gradients reach only the adapters
    let batch: Vec<&Seq> = seqs.iter().take(4).collect();
    let (g, _) = accumulate(&m, &batch, &Objective::response(), 4, 0, 0, &dev);
    let n_with_grad = grads_of(&m, &g).len();
    assert_eq!(n_with_grad, 2 * 3 * 4, "A and B of 3 targets × 4 layers");
}

#[test]
fn lora_layers_puts_adapters_on_the_listed_layers_only() {
    let (model, _tok, seqs, _d) = setup();
    let dev = Default::default();
    let targets: Vec<String> = ["q_proj", "down_proj"].map(String::from).to_vec();
    let n_layers = model.layers.len();
    let last = n_layers - 1;
    let m = model.with_lora(&targets, &[last], 4, 8.0, 0.0, 12, &dev);
    for (i, block) in m.layers.iter().enumerate() {
        let has = [&block.self_attn.q_proj, &block.mlp.down_proj].map(|l| l.lora.is_some());
        assert_eq!(has, [i == last; 2], "layer {i} of {n_layers}");
        assert!(
            block.self_attn.k_proj.lora.is_none(),
            "k_proj is not a target"
        );
    }
    let batch: Vec<&Seq> = seqs.iter().take(4).collect();
    let (g, _) = accumulate(&m, &batch, &Objective::response(), 4, 0, 0, &dev);
    assert_eq!(
        grads_of(&m, &g).len(),
        2 * 2,
        "A and B of 2 targets × 1 layer"
    );
}

#[test]
fn train_layers_gives_gradients_to_the_listed_layers_only() {
    let (model, _tok, seqs, _d) = setup();
    let dev = Default::default();
    let batch: Vec<&Seq> = seqs.iter().take(4).collect();
    let last = model.layers.len() - 1;
    let (g_all, _) = accumulate(&model, &batch, &Objective::response(), 4, 0, 0, &dev);
    let frozen = model.clone().train_only_layers(&[last]);
    let (g, _) = accumulate(&frozen, &batch, &Objective::response(), 4, 0, 0, &dev);
    // the last layer's weights (projections and both norms), and nothing else
    let mut ids = common::Ids(vec![]);
    frozen.layers[last].visit(&mut ids);
    assert!(
        ids.0.len() >= 9,
        "7 projections and 2 norms: {}",
        ids.0.len()
    );
    let got = grads_of(&frozen, &g);
    assert_eq!(got.len(), ids.0.len(), "gradients only for layer {last}");
    // the same gradients there as when every weight trains
    for id in ids.0 {
        let (a, b) = (common::grad(&g, id), common::grad(&g_all, id));
        let (a, b) = (a.expect("frozen run"), b.expect("full run"));
        a.assert_approx_eq::<f32>(&b, burn::tensor::Tolerance::rel_abs(1e-4, 1e-7));
    }
}

/// Every parameter of the model, flattened, in visiting order.
fn params_of(model: &Llama<A>) -> Vec<Vec<f32>> {
    struct Values(Vec<Vec<f32>>);
    impl<B: Backend> ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let d = p.val().into_data().convert::<f32>();
            self.0.push(d.into_vec::<f32>().unwrap());
        }
    }
    let mut v = Values(vec![]);
    model.visit(&mut v);
    v.0
}

#[test]
fn fused_adamw_equals_tensor_op_adamw() {
    use candor_train::optim::{AdamW, Moments};
    use candor_train::recipe::OptimSection;
    let (model, _tok, seqs, _d) = setup();
    let batch: Vec<&Seq> = seqs.iter().collect();
    let dev = Default::default();
    let cfg = OptimSection {
        weight_decay: 0.1,
        grad_clip: 0.5, // small enough that the first steps clip
        ..Default::default()
    };
    let mut fused = AdamW::<A>::new(cfg.clone());
    assert!(fused.fused_host, "the CPU backend takes the fused path");
    let mut ops = AdamW::<A>::new(cfg);
    ops.fused_host = false;
    let (mut a, mut b) = (model.clone(), model);
    let mut clipped = false;
    for step in 0..4 {
        let (ga, _) = accumulate(&a, &batch, &Objective::response(), 16, 0, step, &dev);
        let (gb, _) = accumulate(&b, &batch, &Objective::response(), 16, 0, step, &dev);
        let (na, nb);
        (a, na) = fused.step(a, ga, 1e-3);
        (b, nb) = ops.step(b, gb, 1e-3);
        clipped |= na > 0.5;
        assert!((na - nb).abs() <= 1e-6 * na, "grad norm {na} vs {nb}");
    }
    assert!(clipped, "the test must exercise clipping");
    assert!(matches!(fused.moments[0], Some(Moments::Host(..))));
    assert!(matches!(ops.moments[0], Some(Moments::Device(..))));
    let (pa, pb) = (params_of(&a), params_of(&b));
    let mut worst = 0f32;
    for (x, y) in pa.iter().zip(&pb) {
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs() / p.abs().max(1e-3));
        }
    }
    assert!(
        worst <= 1e-5,
        "fused and tensor-op AdamW differ by {worst} (relative)"
    );
    // and the steps moved the weights (the comparison is not between two untouched models)
    let p0 = params_of(&setup().0);
    let moved = p0
        .iter()
        .flatten()
        .zip(pa.iter().flatten())
        .filter(|(x, y)| x != y)
        .count();
    assert!(moved > 1000, "{moved}");
}

/// Mixed precision (`model.dtype = "bf16"`): the forward pass computes in bf16, the gradients
/// reach the f32 weights as f32 (`grads_of` reads them as f32), and the loss and every
/// gradient stay within bf16's precision of the f32 ones, without being equal to them.
#[test]
fn bf16_compute_gives_f32_gradients_close_to_the_f32_ones() {
    use burn::tensor::DType;
    use candor_model::model::{left_pad, tokens_tensor, KvCache, Positions};
    let (model, _tok, seqs, _d) = setup();
    let bf = model.clone().with_compute(DType::BF16);
    let dev = Default::default();
    // the hidden states are bf16, the logits f32
    let (rows, valid) = left_pad(&[seqs[0].ids.clone(), seqs[1].ids.clone()], 0);
    let pos = Positions::new(&bf.config, &valid, valid[0].len(), &dev);
    let mut cache = KvCache::new(bf.config.num_hidden_layers);
    let hidden = bf.forward_hidden(tokens_tensor::<A>(&rows, &dev), &pos, &mut cache);
    assert_eq!(hidden.dtype(), DType::BF16);
    assert_eq!(bf.logits(hidden).dtype(), DType::F32);

    let batch: Vec<&Seq> = seqs.iter().step_by(3).collect();
    let (g32, l32) = accumulate(&model, &batch, &Objective::response(), 4, 0, 0, &dev);
    let (g16, l16) = accumulate(&bf, &batch, &Objective::response(), 4, 0, 0, &dev);
    let (a, b) = (grads_of(&model, &g32), grads_of(&bf, &g16));
    assert_eq!(a.len(), b.len());
    let rel = (l16 - l32).abs() / l32.abs();
    eprintln!("loss f32 {l32:.6} bf16 {l16:.6} (relative difference {rel:.2e})");
    assert!(rel > 0.0 && rel < 1e-2, "bf16 loss {l16} vs f32 {l32}");
    let mut worst = 1f64;
    let mut identical = true;
    for (x, y) in a.iter().zip(&b) {
        let dot: f64 = x
            .iter()
            .zip(y)
            .map(|(p, q)| (*p as f64) * (*q as f64))
            .sum();
        let norm = |v: &[f32]| v.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
        worst = worst.min(dot / (norm(x) * norm(y)).max(1e-30));
        identical &= x == y;
    }
    eprintln!("lowest per-parameter cosine between bf16 and f32 gradients: {worst:.5}");
    assert!(!identical, "bf16 compute must change the gradients");
    assert!(
        worst > 0.99,
        "a bf16 gradient points elsewhere: cosine {worst}"
    );
}
