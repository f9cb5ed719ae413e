//! Tiny random models of each architecture variant: load → forward → export → load round trip,
//! left-padded batches against single rows, and checkpoint errors that name the tensor.

use burn::backend::Flex;
use burn::tensor::Tensor;
use candor_model::checkpoint::{model_from_tensors, model_to_tensors, HostTensor};
use candor_model::config::RopeScaling;
use candor_model::{export_model, load_model, Llama, ModelConfig, SaveDtype};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;

type B = Flex;

fn variants() -> Vec<(&'static str, ModelConfig)> {
    let base = ModelConfig::preset("tiny", 300).unwrap();
    let mut llama3 = base.clone();
    llama3.rope_theta = 500_000.0;
    llama3.rope_scaling = Some(RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64,
    });
    let mut qwen2 = base.clone();
    qwen2.model_type = "qwen2".into();
    qwen2.qkv_bias = true;
    let mut untied = base.clone();
    untied.tie_word_embeddings = false;
    let mut mistral = base.clone();
    mistral.model_type = "mistral".into();
    mistral.num_key_value_heads = 1;
    vec![
        ("llama3-rope-scaling", llama3),
        ("qwen2-biases", qwen2),
        ("untied-head", untied),
        ("mistral-mqa", mistral),
    ]
}

/// A model with every tensor random (biases and norms included, so that a dropped or swapped
/// tensor changes the output).
fn random_model(c: &ModelConfig, seed: u64) -> Llama<B> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = BTreeMap::new();
    for (name, shape) in candor_model::checkpoint::expected_tensors(c) {
        let n: usize = shape.iter().product();
        let scale = if name.ends_with("norm.weight") {
            0.5
        } else {
            0.08
        };
        let offset = if name.ends_with("norm.weight") {
            1.0
        } else {
            0.0
        };
        let data = (0..n)
            .map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0))
            .collect();
        t.insert(name, HostTensor { shape, data });
    }
    model_from_tensors(c, t, &Default::default()).unwrap()
}

fn logits(m: &Llama<B>, rows: &[Vec<u32>]) -> Vec<f32> {
    m.forward_logits(rows, &Default::default())
        .into_data()
        .iter::<f32>()
        .collect()
}

#[test]
fn every_variant_round_trips_through_an_hf_folder() {
    for (name, c) in variants() {
        let m = random_model(&c, 7);
        let rows = vec![vec![5, 17, 42, 99, 3, 250, 12]];
        let before = logits(&m, &rows);
        assert!(
            before.iter().all(|x| x.is_finite()),
            "{name}: non-finite logits"
        );
        let dir = tempfile::tempdir().unwrap();
        export_model(&m, dir.path(), SaveDtype::F32, None).unwrap();
        let cfg_back = ModelConfig::from_hf_file(&dir.path().join("config.json")).unwrap();
        assert_eq!(cfg_back, c, "{name}: config.json round trip");
        let again = load_model::<B>(dir.path(), &Default::default()).unwrap();
        let (a, b) = (model_to_tensors(&m), model_to_tensors(&again));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{name}"
        );
        for (k, t) in &a {
            assert!(
                t.data
                    .iter()
                    .zip(&b[k].data)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: {k} changed"
            );
        }
        let after = logits(&again, &rows);
        assert!(
            before
                .iter()
                .zip(&after)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}: logits changed after reload"
        );
        // bf16 export loads and stays close
        let dir16 = tempfile::tempdir().unwrap();
        export_model(&m, dir16.path(), SaveDtype::Bf16, None).unwrap();
        let m16 = load_model::<B>(dir16.path(), &Default::default()).unwrap();
        let l16 = logits(&m16, &rows);
        let worst = before
            .iter()
            .zip(&l16)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 0.05, "{name}: bf16 export drifts by {worst}");
        let has_lm_head = a.contains_key("lm_head.weight");
        assert_eq!(
            has_lm_head, !c.tie_word_embeddings,
            "{name}: lm_head.weight presence"
        );
        if c.qkv_bias {
            assert!(
                a.contains_key("model.layers.0.self_attn.q_proj.bias"),
                "{name}: q bias"
            );
        }
    }
}

#[test]
fn variants_differ_where_they_should() {
    // The rope scaling and the biases must change the output; otherwise the tests above would
    // pass with a decoder that ignores them.
    let vs = variants();
    let rows = vec![(0..80u32).map(|i| (i * 7) % 300).collect::<Vec<u32>>()];
    let (_, llama3) = &vs[0];
    let m = random_model(llama3, 1);
    let mut plain_cfg = llama3.clone();
    plain_cfg.rope_scaling = None;
    let mut plain = random_model(&plain_cfg, 1);
    plain.config = plain_cfg;
    let (a, b) = (logits(&m, &rows), logits(&plain, &rows));
    assert!(
        a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-4),
        "llama3 rope scaling had no effect"
    );
    let inv_plain = ModelConfig {
        rope_scaling: None,
        ..llama3.clone()
    }
    .rope_inv_freq();
    let inv = llama3.rope_inv_freq();
    assert_eq!(inv[0], inv_plain[0], "highest frequency is not scaled");
    let last = inv.len() - 1;
    assert!(
        (inv[last] * 8.0 - inv_plain[last]).abs() < 1e-9 * inv_plain[last].max(1e-30) + 1e-12,
        "lowest frequency divided by factor"
    );
}

#[test]
fn left_padded_batch_equals_rows_alone() {
    for (name, c) in variants() {
        let m = random_model(&c, 3);
        let rows = vec![
            vec![1, 2, 3, 4, 5, 6, 7, 8],
            vec![9, 10, 11],
            vec![200, 201, 202, 203, 204],
        ];
        let batch = m.forward_logits(&rows, &Default::default());
        let [_, t, v] = batch.dims();
        for (i, r) in rows.iter().enumerate() {
            let alone = logits(&m, std::slice::from_ref(r));
            let b: Tensor<B, 3> = batch
                .clone()
                .narrow(0, i, 1)
                .narrow(1, t - r.len(), r.len());
            let b: Vec<f32> = b.into_data().iter::<f32>().collect();
            assert_eq!(b.len(), r.len() * v);
            let worst = b
                .iter()
                .zip(&alone)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-4,
                "{name}: row {i} differs by {worst} when left-padded"
            );
        }
    }
}

#[test]
fn checkpoint_errors_name_the_tensor_and_both_shapes() {
    let c = ModelConfig::preset("tiny", 300).unwrap();
    let m = random_model(&c, 1);
    let mut t = model_to_tensors(&m);
    t.remove("model.layers.1.mlp.up_proj.weight");
    let k = t.get_mut("model.layers.0.self_attn.k_proj.weight").unwrap();
    k.shape = vec![32, 384];
    t.insert(
        "model.extra.weight".into(),
        HostTensor {
            shape: vec![2],
            data: vec![0.0, 0.0],
        },
    );
    let err = format!(
        "{:#}",
        model_from_tensors::<B>(&c, t, &Default::default()).unwrap_err()
    );
    assert!(
        err.contains(
            "missing tensor `model.layers.1.mlp.up_proj.weight` (expected shape [512, 192])"
        ),
        "{err}"
    );
    assert!(err.contains("tensor `model.layers.0.self_attn.k_proj.weight` has shape [32, 384], expected [64, 192]"), "{err}");
    assert!(
        err.contains("unexpected tensor `model.extra.weight`"),
        "{err}"
    );
}

#[test]
fn a_seeded_init_depends_on_the_seed_alone() {
    // whatever else drew from the backend's generator before (another test's thread, say):
    // `noise` values from a generator seeded with `noise`
    let c = variants()[0].1.clone();
    let dev = Default::default();
    let init = |seed, noise: usize| {
        <B as burn::tensor::backend::Backend>::seed(&dev, noise as u64);
        let _: Tensor<B, 1> = Tensor::random([noise], burn::tensor::Distribution::Default, &dev);
        let targets = ["v_proj".to_string()];
        let m = Llama::<B>::init(&c, seed, &dev).with_lora(&targets, &[], 2, 4.0, 0.0, seed, &dev);
        let a: Vec<f32> = m.layers[0]
            .self_attn
            .v_proj
            .lora
            .as_ref()
            .unwrap()
            .a
            .val()
            .into_data()
            .to_vec()
            .unwrap();
        let w: Vec<Vec<f32>> = model_to_tensors(&m).into_values().map(|t| t.data).collect();
        (w, a)
    };
    let (w1, a1) = init(1, 5);
    let (w1b, a1b) = init(1, 6);
    let (w2, a2) = init(2, 5);
    assert!(
        w1 == w1b && a1 == a1b,
        "the same seed gives the same weights"
    );
    assert!(w1 != w2 && a1 != a2, "another seed gives other weights");
    // the init's scale: normal std 0.02 for the embeddings, uniform ±1/√in for LoRA's A
    let embed = &w1[0];
    let std = (embed.iter().map(|x| x * x).sum::<f32>() / embed.len() as f32).sqrt();
    assert!((std - 0.02).abs() < 0.001, "embedding std {std}");
    let bound = 1.0 / (c.hidden_size as f32).sqrt();
    assert!(a1.iter().all(|x| x.abs() <= bound));
    assert!(a1.iter().any(|x| x.abs() > 0.9 * bound));
}

#[test]
fn bad_configs_are_clear_errors() {
    let e = ModelConfig::from_hf_json(r#"{"model_type":"gpt_neox","vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2}"#).unwrap_err();
    assert!(
        format!("{e:#}").contains("model_type `gpt_neox` is not supported"),
        "{e:#}"
    );
    let e = ModelConfig::from_hf_json(r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,"rope_scaling":{"rope_type":"yarn","factor":4.0}}"#).unwrap_err();
    assert!(
        format!("{e:#}").contains("allowed rope_type: default, linear, llama3"),
        "{e:#}"
    );
    let e = ModelConfig::from_hf_json(r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2}"#).unwrap_err();
    assert!(
        format!("{e:#}").contains("multiple of num_key_value_heads"),
        "{e:#}"
    );
}

#[test]
fn sharded_checkpoints_with_an_index_load() {
    let c = variants().remove(2).1; // untied head: the most tensors
    let m = random_model(&c, 4);
    let dir = tempfile::tempdir().unwrap();
    export_model(&m, dir.path(), SaveDtype::F32, None).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let all = model_to_tensors(&m);
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    let mut map = serde_json::Map::new();
    for (i, (name, t)) in all.into_iter().enumerate() {
        let shard = if i % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        map.insert(name.clone(), shard.into());
        if i % 2 == 0 {
            a.insert(name, t)
        } else {
            b.insert(name, t)
        };
    }
    let ckpt = candor_model::checkpoint::write_safetensors;
    ckpt(
        &dir.path().join("model-00001-of-00002.safetensors"),
        &a,
        SaveDtype::F32,
    )
    .unwrap();
    ckpt(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &b,
        SaveDtype::Bf16,
    )
    .unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let again = load_model::<B>(dir.path(), &Default::default()).unwrap();
    let (x, y) = (
        logits(&m, &[vec![1, 2, 3]]),
        logits(&again, &[vec![1, 2, 3]]),
    );
    let worst = x
        .iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(worst < 0.05, "sharded (half bf16) load drifts by {worst}");
}

/// A preset model has no special-token ids of its own: its export takes them from the
/// tokenizer (end of turn as `eos_token_id`, the pad id), so that `transformers`' `generate`
/// stops where candor's does.
#[test]
fn an_export_names_the_tokenizers_end_of_turn_and_pad_ids() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tok_dir = root.join("checkpoints/tiny-arith");
    let tok = candor_model::Tokenizer::load(&tok_dir).unwrap();
    let c = ModelConfig::preset("tiny", tok.id_bound()).unwrap();
    assert!(c.eos_token_ids.is_empty() && c.bos_token_id.is_none());
    let dir = tempfile::tempdir().unwrap();
    export_model(
        &random_model(&c, 3),
        dir.path(),
        SaveDtype::F32,
        Some(&tok_dir),
    )
    .unwrap();
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(f)).unwrap()).unwrap()
    };
    let (cfg, gen) = (read("config.json"), read("generation_config.json"));
    let im_end = tok.inner.token_to_id("<|im_end|>").unwrap();
    let endoftext = tok.inner.token_to_id("<|endoftext|>").unwrap();
    assert_eq!(tok.stop_ids, vec![im_end]);
    assert_eq!(cfg["eos_token_id"], serde_json::json!(im_end), "{cfg}");
    assert_eq!(gen["eos_token_id"], serde_json::json!([im_end]), "{gen}");
    assert_eq!(cfg["pad_token_id"], serde_json::json!(endoftext), "{cfg}");
    assert_eq!(gen["pad_token_id"], serde_json::json!(endoftext), "{gen}");
    assert!(cfg["bos_token_id"].is_null() && gen.get("bos_token_id").is_none());
    // loading the export keeps the ids
    let back = load_model::<B>(dir.path(), &Default::default()).unwrap();
    assert_eq!(back.config.eos_token_ids, vec![im_end]);
}
