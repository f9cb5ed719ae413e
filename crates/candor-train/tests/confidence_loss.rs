//! The calibration objective on a tiny random model: under `loss_on = "confidence"` the
//! answer tokens carry no loss (only the confidence line and the end of turn do); the
//! proper-scoring loss at the value token and its gradient equal a direct computation from the
//! full logits; the answer-keeping soft targets are where they belong; label balancing gives
//! every bin the same weight; the expected-confidence readout equals a hand computation.

use burn::backend::Flex;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use candor_confidence::{values, ValueSet};
use candor_data::config::Style;
use candor_data::{dataset, load_items, DataConfig, Example};
use candor_model::{Llama, ModelConfig, Tokenizer};
use candor_train::recipe::{AnswerSource, ConfidenceLoss, ConfidenceTarget, LossOn, ValueCeTarget};
use candor_train::trainer::{batch_loss, encode, Objective, Seq};
use candor_train::weighting::balance_by_label_bin;

mod common;
use common::{assert_same_gradients, grads_of, A};

fn tokenizer() -> (Tokenizer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    candor_model::tokenizer::write_byte_tokenizer(dir.path()).unwrap();
    (Tokenizer::load(dir.path()).unwrap(), dir)
}

/// Labelled examples as an answering run leaves them: the model's own answer tokens (here a
/// wrong answer for every third question), its top-k there, a teacher confidence.
fn labelled(tok: &Tokenizer) -> Vec<Example> {
    let data = DataConfig {
        subtasks: vec!["+:1:1".into(), "-:2:2".into()],
        per_subtask: 6,
        style: Style::Plain,
        ..Default::default()
    };
    let items = load_items(&data).unwrap();
    let mut ex = dataset::gold_examples(&items, tok, Style::Plain).unwrap();
    for (i, e) in ex.iter_mut().enumerate() {
        let wrong = i % 3 == 0;
        let answer = if wrong {
            "77".to_string()
        } else {
            e.gold.clone()
        };
        e.answer = answer.clone();
        e.answer_tokens = tok.encode(&format!(" {answer}"), false).unwrap();
        e.answer_top = e
            .answer_tokens
            .iter()
            .map(|&t| vec![(t, -0.2f32), ((t + 1) % 256, -1.8), ((t + 2) % 256, -9.0)])
            .collect();
        e.correct = !wrong;
        e.confidence = [0.0, 13.0, 47.0, 66.0, 91.0, 100.0][i % 6];
        e.teacher = "empirical-subtask".into();
    }
    ex
}

fn objective(tok: &Tokenizer, loss: ConfidenceLoss, kl: f64) -> Objective {
    Objective {
        loss_on: LossOn::Confidence,
        answer: AnswerSource::Own,
        confidence_loss: loss,
        confidence_target: ConfidenceTarget::Teacher,
        answer_kl: kl,
        answer_target: candor_train::recipe::AnswerTarget::Distribution,
        value_weight: 1.0,
        value_ce: 0.0,
        value_ce_decay: 0.0,
        value_ce_floor: 0.0,
        value_ce_target: ValueCeTarget::Written,
        value_log: 0.0,
        value_level: 0.0,
        detach_context: false,
        values: Some(ValueSet::new(tok).unwrap()),
        value_digits: 1,
    }
}

#[test]
fn the_byte_tokenizer_gets_the_extreme_deciles() {
    let (tok, _d) = tokenizer();
    let vs = ValueSet::new(&tok).unwrap();
    // digits are single bytes: `1` starts both 10% and 100%, and 100% is kept
    assert_eq!(vs.values, vec![0, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
    assert_eq!(
        tok.decode(&vs.prefix, false).unwrap(),
        "\nConfidence: ",
        "the shared part of every line"
    );
    for (i, v) in vs.values.iter().enumerate() {
        let line = tok.decode(vs.line(i), false).unwrap();
        assert_eq!(line, format!("\nConfidence: {v}%"));
        assert_eq!(vs.line(i)[vs.prefix.len()], vs.tokens[i]);
    }
    assert_eq!(vs.values[vs.nearest(13.0)], 20);
    assert_eq!(vs.values[vs.nearest(4.0)], 0);
    assert_eq!(vs.values[vs.nearest(96.0)], 100);
}

#[test]
fn confidence_only_sequences_keep_the_own_answer_as_context() {
    let (tok, _d) = tokenizer();
    let ex = labelled(&tok);
    let w = vec![1.0; ex.len()];
    let obj = objective(&tok, ConfidenceLoss::Brier, 1.0);
    let (seqs, kept, dropped) = encode(&tok, &ex, &w, Style::Plain, 256, &obj).unwrap();
    assert_eq!((seqs.len(), dropped), (ex.len(), 0));
    let vs = obj.values.as_ref().unwrap();
    for (s, &i) in seqs.iter().zip(&kept) {
        let e = &ex[i];
        // the model's own answer tokens, wrong ones included, sit between prompt and line
        assert_eq!(&s.ids[s.start..s.ce_from], e.answer_tokens.as_slice());
        let line = tok.decode(&s.ids[s.ce_from..], false).unwrap();
        let v = vs.values[vs.nearest(e.confidence)];
        assert_eq!(line, format!("\nConfidence: {v}%<|im_end|>"));
        // soft targets at every answer token, from the top-k (the 1e-4 one left out)
        assert_eq!(s.soft.len(), e.answer_tokens.len());
        for soft in &s.soft {
            assert_eq!(soft.len(), 2);
            let z: f32 = soft.iter().map(|p| p.1).sum();
            assert!((z - 1.0).abs() < 1e-5);
        }
        let (vp, y) = s.value.unwrap();
        assert_eq!(vp, s.ce_from + vs.prefix.len());
        assert_eq!(y, (e.confidence / 100.0) as f32);
    }
}

/// The loss from the full logits of every position, written out directly: cross-entropy on
/// each confidence-line token but the value token; at the value token, with q the softmax over
/// the value tokens' logits and m = log Σ_v p(v): Σ_v q(v)(v − y)² − m (brier),
/// −[y ln ē + (1 − y) ln(1 − ē)] − m with ē = Σ q(v)·v (log), or its cross-entropy (ce);
/// the value token's term × `value_weight`, plus `value_ce` × its cross-entropy beside a
/// scoring rule, plus `value_log` × the log score of ē beside it; `answer_kl` × the soft
/// cross-entropy at each answer token; `with_answer_ce`
/// adds (wrongly) the cross-entropy of the answer tokens, to show that the test can tell.
fn direct_loss(
    model: &Llama<A>,
    seqs: &[&Seq],
    obj: &Objective,
    with_answer_ce: bool,
) -> Tensor<A, 1> {
    let vs = obj.values.as_ref().unwrap();
    let (kind, kl) = (obj.confidence_loss, obj.answer_kl);
    let (vw, vce, vlog) = (obj.value_weight, obj.value_ce, obj.value_log);
    let dev = Default::default();
    let mut total = Tensor::<A, 1>::zeros([1], &dev);
    // value_level: Σ w·(ē − y) and Σ w over the first digits of the batch
    let (mut gap, mut wsum) = (Tensor::<A, 1>::zeros([1], &dev), 0.0);
    for s in seqs {
        let logits = model.forward_logits(std::slice::from_ref(&s.ids), &dev);
        let [_, t, v] = logits.dims();
        let lp = burn::tensor::activation::log_softmax(logits.reshape([t, v]), 1);
        let at = |p: usize, id: u32| {
            let id = id as usize;
            lp.clone().slice([p - 1..p, id..id + 1]).reshape([1])
        };
        let w = s.weight as f64;
        for (j, soft) in s.soft.iter().enumerate() {
            for &(tk, p) in soft {
                total = total - at(s.start + j, tk) * (w * kl * p as f64);
            }
        }
        if with_answer_ce {
            for p in s.start..s.ce_from {
                total = total - at(p, s.ids[p]);
            }
        }
        for p in s.ce_from..s.ids.len() {
            let scored = [s.value, s.unit].into_iter().flatten().find(|v| v.0 == p);
            match scored {
                Some((_, y)) if kind != ConfidenceLoss::Ce => {
                    let lps: Vec<Tensor<A, 1>> = vs.tokens.iter().map(|&t| at(p, t)).collect();
                    let mass = lps
                        .iter()
                        .map(|l| l.clone().exp())
                        .reduce(|a, b| a + b)
                        .unwrap();
                    let q: Vec<Tensor<A, 1>> =
                        lps.iter().map(|l| l.clone().exp() / mass.clone()).collect();
                    let y = y as f64;
                    let e = q
                        .iter()
                        .zip(&vs.values)
                        .map(|(q, &val)| q.clone() * (val as f64 / 100.0))
                        .reduce(|a, b| a + b)
                        .unwrap();
                    let log_e =
                        (e.clone().log() * y + (e.clone().neg() + 1.0).log() * (1.0 - y)).neg();
                    let score = match kind {
                        ConfidenceLoss::Brier => q
                            .iter()
                            .zip(&vs.values)
                            .map(|(q, &val)| q.clone() * (val as f64 / 100.0 - y).powi(2))
                            .reduce(|a, b| a + b)
                            .unwrap(),
                        ConfidenceLoss::Log => log_e.clone(),
                        ConfidenceLoss::TwoHot => q
                            .iter()
                            .zip(vs.two_hot(y * 100.0))
                            .map(|(q, t)| q.clone().log() * -t)
                            .reduce(|a, b| a + b)
                            .unwrap(),
                        ConfidenceLoss::Ce => unreachable!(),
                    };
                    // value_ce: the written token, or the two values around the label
                    let ce = match obj.value_ce_target {
                        ValueCeTarget::Written => at(p, s.ids[p]).neg(),
                        ValueCeTarget::TwoHot => vs
                            .tokens
                            .iter()
                            .zip(vs.two_hot(y * 100.0))
                            .map(|(&t, h)| at(p, t) * -h)
                            .reduce(|a, b| a + b)
                            .unwrap(),
                    };
                    if s.value.is_some_and(|v| v.0 == p) {
                        gap = gap + (e.clone() - y) * w;
                        wsum += w;
                    }
                    total = total
                        + (score - mass.log()) * (w * vw)
                        + ce * (w * vce)
                        + log_e * (w * vlog);
                }
                Some(_) => total = total - at(p, s.ids[p]) * (w * vw),
                _ => total = total - at(p, s.ids[p]) * w,
            }
        }
    }
    if obj.value_level > 0.0 && wsum > 0.0 {
        total = total + gap.powi_scalar(2) * (obj.value_level / wsum);
    }
    total
}

/// batch_loss against direct_loss: value and every parameter's gradient; and the direct loss
/// with the answers' cross-entropy added must differ (the answers carry no loss).
fn check_against_direct(kind: ConfidenceLoss, kl: f64, vw: f64, vce: f64) {
    check_against_direct_with(kind, kl, vw, vce, 0.0, 1, |_| {});
}

/// The deciles 0–90, the value set two-digit lines need.
fn deciles(tok: &Tokenizer) -> ValueSet {
    ValueSet::exact(tok, &[0, 10, 20, 30, 40, 50, 60, 70, 80, 90]).unwrap()
}

/// [`check_against_direct`] with `value_log`, one- or two-digit values and the objective's
/// other settings changed by `tweak` (`value_ce_target`, `value_level`); returns the loss.
fn check_against_direct_with(
    kind: ConfidenceLoss,
    kl: f64,
    vw: f64,
    vce: f64,
    vlog: f64,
    digits: u8,
    tweak: impl FnOnce(&mut Objective),
) -> f64 {
    let (tok, _d) = tokenizer();
    let ex = labelled(&tok);
    let w: Vec<f64> = (0..ex.len()).map(|i| 0.5 + (i % 4) as f64 * 0.5).collect();
    let base = objective(&tok, kind, kl);
    let mut obj = Objective {
        value_weight: vw,
        value_ce: vce,
        value_log: vlog,
        value_digits: digits,
        values: if digits == 2 {
            Some(deciles(&tok))
        } else {
            base.values.clone()
        },
        ..base
    };
    tweak(&mut obj);
    let (seqs, _, _) = encode(&tok, &ex, &w, Style::Plain, 256, &obj).unwrap();
    let cfg = ModelConfig::preset("tiny", 259).unwrap();
    let model = Llama::<A>::init(&cfg, 5, &Default::default());
    let batch: Vec<&Seq> = seqs.iter().step_by(2).collect();
    assert!(batch
        .iter()
        .all(|s| s.ce_from > s.start && s.value.is_some()));
    assert!(batch.iter().all(|s| s.soft.is_empty() == (kl == 0.0)));
    let (fast, n) = batch_loss(&model, &batch, &obj, &Default::default());
    let slow = direct_loss(&model, &batch, &obj, false);
    let wrong = direct_loss(&model, &batch, &obj, true);
    let (f, s, x) = (
        fast.clone().into_scalar() as f64,
        slow.clone().into_scalar() as f64,
        wrong.into_scalar() as f64,
    );
    assert_eq!(
        n,
        batch.iter().map(|s| s.ids.len() - s.ce_from).sum::<usize>()
    );
    assert!((f - s).abs() < 1e-4 * s.abs(), "{kind:?}: {f} vs {s}");
    assert!(
        (f - x).abs() > 1e-2 * s.abs(),
        "{kind:?}: answer CE must change the loss: {f} vs {x}"
    );
    assert_same_gradients(&model, fast, slow, 2e-4, &format!("{kind:?}"));
    f
}

#[test]
fn brier_loss_and_gradient_match_a_direct_computation_with_the_answer_keeping_term() {
    check_against_direct(ConfidenceLoss::Brier, 0.7, 1.0, 0.0);
}

#[test]
fn answer_tokens_carry_no_loss_under_each_confidence_loss() {
    // answer_kl = 0: the loss and its gradient are those of the confidence line alone
    for kind in [
        ConfidenceLoss::Brier,
        ConfidenceLoss::Log,
        ConfidenceLoss::TwoHot,
        ConfidenceLoss::Ce,
    ] {
        check_against_direct(kind, 0.0, 1.0, 0.0);
    }
}

#[test]
fn value_weight_scales_the_deciding_token_under_each_confidence_loss() {
    for kind in [
        ConfidenceLoss::Brier,
        ConfidenceLoss::Log,
        ConfidenceLoss::TwoHot,
        ConfidenceLoss::Ce,
    ] {
        check_against_direct(kind, 0.5, 7.0, 0.0);
    }
}

#[test]
fn value_ce_adds_the_written_labels_cross_entropy_beside_the_scoring_rule() {
    for kind in [
        ConfidenceLoss::Brier,
        ConfidenceLoss::Log,
        ConfidenceLoss::TwoHot,
    ] {
        check_against_direct(kind, 0.5, 7.0, 0.3);
    }
}

#[test]
fn value_ce_aimed_two_hot_spreads_the_label_over_the_two_values_around_it() {
    for digits in [1, 2] {
        let check = |target| {
            check_against_direct_with(ConfidenceLoss::Brier, 0.5, 7.0, 20.0, 0.4, digits, |o| {
                o.value_ce_target = target
            })
        };
        let (two_hot, written) = (check(ValueCeTarget::TwoHot), check(ValueCeTarget::Written));
        assert!(
            (two_hot - written).abs() > 1e-3 * written.abs(),
            "{digits} digits: the two-hot target must change the loss: {two_hot} vs {written}"
        );
    }
}

#[test]
fn value_level_adds_the_squared_gap_of_the_batchs_mean_expected_value() {
    for kind in [ConfidenceLoss::Brier, ConfidenceLoss::Log] {
        for digits in [1, 2] {
            let check = |level| {
                check_against_direct_with(kind, 0.5, 7.0, 0.3, 0.0, digits, |o| {
                    o.value_level = level
                })
            };
            let (with, without) = (check(2000.0), check(0.0));
            assert!(
                with > without + 1e-3 * without.abs(),
                "{kind:?}, {digits} digits: the level term must add to the loss: {with} vs {without}"
            );
        }
    }
}

#[test]
fn value_log_adds_the_expected_values_log_score_beside_brier() {
    check_against_direct_with(ConfidenceLoss::Brier, 0.5, 7.0, 0.3, 0.4, 1, |_| {});
    check_against_direct_with(ConfidenceLoss::Brier, 0.0, 2.0, 0.0, 1.5, 2, |_| {});
    // the term changes the loss: without it the two computations must differ
    let (tok, _d) = tokenizer();
    let ex = labelled(&tok);
    let w = vec![1.0; ex.len()];
    let obj = Objective {
        value_log: 0.4,
        ..objective(&tok, ConfidenceLoss::Brier, 0.0)
    };
    let (seqs, _, _) = encode(&tok, &ex, &w, Style::Plain, 256, &obj).unwrap();
    let model = Llama::<A>::init(
        &ModelConfig::preset("tiny", 259).unwrap(),
        5,
        &Default::default(),
    );
    let batch: Vec<&Seq> = seqs.iter().collect();
    let with = batch_loss(&model, &batch, &obj, &Default::default())
        .0
        .into_scalar();
    let off = Objective {
        value_log: 0.0,
        ..obj
    };
    let without = batch_loss(&model, &batch, &off, &Default::default())
        .0
        .into_scalar();
    assert!(with - without > 1e-3, "{with} vs {without}");
}

#[test]
fn two_digit_values_write_the_rounded_label_and_score_its_units_digit() {
    let (tok, _d) = tokenizer();
    let ex = labelled(&tok);
    let w = vec![1.0; ex.len()];
    let obj = Objective {
        value_digits: 2,
        values: Some(deciles(&tok)),
        ..objective(&tok, ConfidenceLoss::Brier, 0.0)
    };
    let (seqs, kept, _) = encode(&tok, &ex, &w, Style::Plain, 256, &obj).unwrap();
    let vs = obj.values.as_ref().unwrap();
    for (s, &i) in seqs.iter().zip(&kept) {
        let c = ex[i].confidence;
        // labels 0, 13, 47, 66, 91, 100: one digit only for 0; 100 is capped at 99
        let (text, unit) = match c as u32 {
            0 => ("0", None),
            13 => ("13", Some(0.3)),
            47 => ("47", Some(0.7)),
            66 => ("66", Some(0.6)),
            91 => ("91", Some(0.1)),
            100 => ("99", Some(0.9)),
            other => panic!("unexpected label {other}"),
        };
        let line = tok.decode(&s.ids[s.ce_from..], false).unwrap();
        assert_eq!(line, format!("\nConfidence: {text}%<|im_end|>"));
        let (vp, y) = s.value.unwrap();
        assert_eq!(vp, s.ce_from + vs.prefix.len());
        assert_eq!(
            y,
            (c / 100.0) as f32,
            "the first digit scores against the label"
        );
        match (s.unit, unit) {
            (Some((up, y)), Some(want)) => {
                assert_eq!(up, vp + 1, "the units digit follows the value token");
                assert!((y - want).abs() < 1e-6, "{text}: {y}");
            }
            (None, None) => {}
            (got, want) => panic!("{text}: unit {got:?}, expected {want:?}"),
        }
    }
    // the units digit's loss and gradient match the direct computation, for each loss
    for kind in [
        ConfidenceLoss::Brier,
        ConfidenceLoss::Log,
        ConfidenceLoss::TwoHot,
        ConfidenceLoss::Ce,
    ] {
        check_against_direct_with(
            kind,
            0.5,
            7.0,
            if kind == ConfidenceLoss::Ce { 0.0 } else { 0.3 },
            0.0,
            2,
            |_| {},
        );
    }
    // a label under 10 goes to the nearer of 0% and 10%
    let l = |p: f64| {
        tok.decode(&vs.two_digit_line(&tok, p).unwrap().0, false)
            .unwrap()
    };
    assert_eq!(l(4.4), "\nConfidence: 0%");
    assert_eq!(l(5.0), "\nConfidence: 10%");
    // a value set other than the deciles 0–90 is refused by name
    let err = ValueSet::new(&tok)
        .unwrap()
        .two_digit_line(&tok, 42.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("train.values"), "{err}");
}

#[test]
fn label_balancing_gives_every_bin_the_same_weight() {
    let labels = [
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 9.0, 33.0, 35.0, 100.0, 95.0,
    ];
    let w = balance_by_label_bin(&labels, 1.0);
    let mean = w.iter().sum::<f64>() / w.len() as f64;
    assert!((mean - 1.0).abs() < 1e-12);
    let mut per_bin = std::collections::BTreeMap::new();
    for (l, w) in labels.iter().zip(&w) {
        *per_bin
            .entry(((l / 10.0).floor() as usize).min(9))
            .or_insert(0.0) += w;
    }
    let v: Vec<f64> = per_bin.values().cloned().collect();
    assert_eq!(v.len(), 3, "bins 0, 3 and 9");
    for x in &v {
        assert!((x - v[0]).abs() < 1e-12, "{per_bin:?}");
    }
}

#[test]
fn partial_label_balancing_grows_a_bins_weight_as_a_power_of_its_count() {
    // 16 answers at 0-9%, 4 at 30-39%, 1 at 90-100%.
    let mut labels = vec![2.0; 16];
    labels.extend([31.0, 33.0, 35.0, 38.0, 95.0]);
    let per_bin = |w: &[f64]| {
        let mut t = [0.0; 3];
        for (l, w) in labels.iter().zip(w) {
            t[if *l < 10.0 {
                0
            } else if *l < 90.0 {
                1
            } else {
                2
            }] += w;
        }
        t
    };
    for power in [0.0, 0.5, 0.75, 1.0] {
        let w = balance_by_label_bin(&labels, power);
        let mean = w.iter().sum::<f64>() / w.len() as f64;
        assert!((mean - 1.0).abs() < 1e-12, "{power}: mean {mean}");
        let t = per_bin(&w);
        // A bin's total is count^(1 - power), up to the common scale.
        for (i, n) in [16.0f64, 4.0, 1.0].iter().enumerate() {
            let want = n.powf(1.0 - power);
            assert!(
                (t[i] / t[2] - want).abs() < 1e-9,
                "power {power}, bin {i}: {} against {want}",
                t[i] / t[2]
            );
        }
    }
    assert!(balance_by_label_bin(&labels, 0.0)
        .iter()
        .all(|w| (w - 1.0).abs() < 1e-12));
}

#[test]
fn two_hot_targets_keep_the_teachers_mean_on_at_most_two_neighbouring_values() {
    let (tok, _d) = tokenizer();
    let vs = ValueSet::new(&tok).unwrap();
    let (lo, hi) = (vs.values[0] as f64, *vs.values.last().unwrap() as f64);
    for pct in [-5.0, 0.0, 3.0, 10.0, 17.5, 45.0, 60.0, 99.0, 100.0, 120.0] {
        let w = vs.two_hot(pct);
        let nz: Vec<usize> = (0..w.len()).filter(|&i| w[i] > 0.0).collect();
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{pct}: {w:?}");
        assert!(w.iter().all(|&x| x >= 0.0), "{pct}: {w:?}");
        assert!(
            nz.len() <= 2 && nz.windows(2).all(|p| p[1] == p[0] + 1),
            "{pct}: {w:?}"
        );
        let mean: f64 = w.iter().zip(&vs.values).map(|(w, &v)| w * v as f64).sum();
        assert!(
            (mean - pct.clamp(lo, hi)).abs() < 1e-9,
            "{pct}: mean {mean}"
        );
    }
    // a value of the set is its own target
    let i = vs.values.len() / 2;
    let w = vs.two_hot(vs.values[i] as f64);
    assert_eq!(w[i], 1.0, "{w:?}");
}

#[test]
fn an_explicit_value_set_keeps_ten_percent_and_refuses_a_shared_first_token() {
    let (tok, _d) = tokenizer();
    let tens: Vec<u32> = (0..10).map(|i| i * 10).collect();
    let vs = ValueSet::exact(&tok, &tens).unwrap();
    assert_eq!(vs.values, tens);
    let line = tok.decode(vs.line(vs.nearest(12.0)), false).unwrap();
    assert_eq!(line, "\nConfidence: 10%");
    // with every digit its own token, 10% and 100% both start with `1`
    let default = ValueSet::new(&tok).unwrap();
    assert!(!default.values.contains(&10), "{:?}", default.values);
    let all: Vec<u32> = (0..=10).map(|i| i * 10).collect();
    let e = ValueSet::exact(&tok, &all).unwrap_err().to_string();
    assert!(e.contains("100% and 10%"), "{e}");
}

#[test]
fn the_expected_readout_equals_a_hand_computation() {
    let (tok, _d) = tokenizer();
    let vs = ValueSet::new(&tok).unwrap();
    let cfg = ModelConfig::preset("tiny", 259).unwrap();
    let model = Llama::<Flex>::init(&cfg, 3, &Default::default());
    let prompt = tok.encode("Q: What is 2 + 2?\nA:", false).unwrap();
    let answer = tok.encode(" 4", false).unwrap();
    let row = candor_train::evaluate::answer_context(&prompt, &answer, &vs);
    let (states, lps) = candor_model::generate::tail_states(
        &model,
        std::slice::from_ref(&row),
        vs.prefix.len() + 1,
        tok.pad_id,
        &Default::default(),
    );
    // by hand: the full logits of the row, softmax at the last position, restricted to the
    // value tokens and renormalised, then Σ q·v
    let logits = model.forward_logits(std::slice::from_ref(&row), &Default::default());
    let [_, t, v] = logits.dims();
    let all: Vec<f32> = logits.into_data().into_vec::<f32>().unwrap();
    let last = &all[(t - 1) * v..t * v];
    let e: Vec<f64> = vs
        .tokens
        .iter()
        .map(|&k| (last[k as usize] as f64).exp())
        .collect();
    let z: f64 = e.iter().sum();
    let hand: f64 = e
        .iter()
        .zip(&vs.values)
        .map(|(e, &v)| e / z * v as f64 / 100.0)
        .sum();
    let got = values::expected(&vs, &lps[0]);
    assert!((got - hand).abs() < 1e-5, "{got} vs {hand}");
    // the probe's feature: the hidden state at the answer's last token, k positions back
    assert_eq!(states[0].len(), vs.prefix.len() + 1);
    assert_eq!(states[0][0].len(), cfg.hidden_size);
    let (st2, _) = candor_model::generate::tail_states(
        &model,
        &[[prompt.as_slice(), answer.as_slice()].concat()],
        1,
        tok.pad_id,
        &Default::default(),
    );
    for (a, b) in states[0][0].iter().zip(&st2[0][0]) {
        assert!((a - b).abs() < 1e-4);
    }
}

#[test]
fn a_detached_context_gives_the_same_loss_and_other_gradients() {
    // the two-pass forward (context, then the line attending to the context's detached keys
    // and values) computes the same loss as one pass: same positions, masks and padding;
    // only the gradient differs, since none flows back into the context through attention
    let (tok, _d) = tokenizer();
    let ex = labelled(&tok);
    let w: Vec<f64> = (0..ex.len()).map(|i| 1.0 + (i % 3) as f64).collect();
    let cfg = ModelConfig::preset("tiny", 259).unwrap();
    let model = Llama::<A>::init(&cfg, 21, &Default::default());
    for (kind, kl) in [(ConfidenceLoss::Brier, 0.5), (ConfidenceLoss::Ce, 0.0)] {
        let mut obj = objective(&tok, kind, kl);
        let (seqs, _, _) = encode(&tok, &ex, &w, Style::Plain, 256, &obj).unwrap();
        let batch: Vec<&Seq> = seqs.iter().skip(1).step_by(2).collect();
        assert!(
            batch.iter().any(|s| s.ce_from != batch[0].ce_from),
            "ragged contexts"
        );
        let (one, n1) = batch_loss(&model, &batch, &obj, &Default::default());
        obj.detach_context = true;
        let (two, n2) = batch_loss(&model, &batch, &obj, &Default::default());
        let (a, b) = (
            one.clone().into_scalar() as f64,
            two.clone().into_scalar() as f64,
        );
        assert_eq!(n1, n2);
        assert!((a - b).abs() < 1e-4 * a.abs(), "{kind:?}: {a} vs {b}");
        let g1 = grads_of(&model, &GradientsParams::from_grads(one.backward(), &model));
        let g2 = grads_of(&model, &GradientsParams::from_grads(two.backward(), &model));
        let differ = g1
            .iter()
            .flatten()
            .zip(g2.iter().flatten())
            .filter(|(x, y)| (*x - *y).abs() > 1e-6)
            .count();
        assert!(
            differ > 100,
            "{kind:?}: the detached gradient must differ ({differ})"
        );
    }
}

#[test]
fn the_answer_keeping_term_is_the_starting_models_entropy_on_its_own_answers() {
    // on the model that wrote the answers, the soft cross-entropy to its own top-k equals the
    // entropy of that top-k (KL = 0): the rows line up with the positions that generated them
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../checkpoints/tiny-arith");
    let dev = Default::default();
    let (model, tok) = candor_model::load_model_and_tokenizer::<A>(&dir, &dev).unwrap();
    let prompts: Vec<Vec<u32>> = ["What is 8 + 3?", "What is 52 + 47?", "What is 7 * 6?"]
        .iter()
        .map(|q| tok.prompt_ids(q, candor_model::PromptStyle::Plain).unwrap())
        .collect();
    let cfg = candor_model::GenConfig {
        max_new_tokens: 8,
        stop_ids: tok.stop_ids.clone(),
        stop_strings: vec!["\n".into()],
        ..Default::default()
    };
    use burn::module::AutodiffModule;
    let gens = candor_model::generate(&model.valid(), &tok, &prompts, &cfg, &dev).unwrap();
    let mut entropy = 0f64;
    let seqs: Vec<Seq> = prompts
        .iter()
        .zip(&gens)
        .map(|(p, g)| {
            let n = g.tokens.len() - 1;
            let s = candor_train::trainer::rehearsal_seq(
                p.clone(),
                &g.tokens[..n],
                &g.top[..n],
                candor_train::recipe::AnswerTarget::Distribution,
                &[],
            );
            for soft in &s.soft {
                entropy -= soft
                    .iter()
                    .map(|&(_, q)| q as f64 * (q as f64).ln())
                    .sum::<f64>();
            }
            s
        })
        .collect();
    let batch: Vec<&Seq> = seqs.iter().collect();
    for detach in [false, true] {
        let mut obj = objective(&tok, ConfidenceLoss::Brier, 1.0);
        obj.detach_context = detach;
        let (loss, n) = batch_loss(&model, &batch, &obj, &dev);
        assert_eq!(n, 0, "rehearsal rows carry no trained tokens");
        let l = loss.into_scalar() as f64;
        // cross-entropy = entropy + KL; the KL is that of the renormalised top-k (≥ 0.001),
        // small; a row off by one position would cost nats per token
        assert!(
            l >= entropy - 1e-3 && l - entropy < 0.05,
            "detach {detach}: {l} vs entropy {entropy}"
        );
    }
    // `answer_target = "greedy"`: one target per answer token, the token written, so the term
    // is the model's negative log-likelihood of its own greedy answers (its generation's
    // log-probs)
    let mut nll = 0f64;
    let greedy: Vec<Seq> = prompts
        .iter()
        .zip(&gens)
        .map(|(p, g)| {
            let n = g.tokens.len() - 1;
            nll -= g.logprobs[..n].iter().map(|&x| x as f64).sum::<f64>();
            let s = candor_train::trainer::rehearsal_seq(
                p.clone(),
                &g.tokens[..n],
                &g.top[..n],
                candor_train::recipe::AnswerTarget::Greedy,
                &[],
            );
            assert!(s
                .soft
                .iter()
                .zip(&g.tokens)
                .all(|(t, &id)| t == &[(id, 1.0)]));
            s
        })
        .collect();
    let batch: Vec<&Seq> = greedy.iter().collect();
    let obj = objective(&tok, ConfidenceLoss::Brier, 1.0);
    let l = batch_loss(&model, &batch, &obj, &dev).0.into_scalar() as f64;
    assert!(
        (l - nll).abs() < 1e-3 * nll.max(1.0),
        "greedy target: {l} vs the generation's NLL {nll}"
    );
}

#[test]
fn a_rehearsal_row_trains_the_confidence_lines_opening_after_the_answer() {
    // prompt 1 2 3, answer 4 5 (answer-keeping term only), then the line's opening 10 11 12
    // with cross-entropy: the model learns where an answer ends on every kind of question
    let top = vec![vec![(4, -0.1), (6, -2.4)], vec![(5, -0.2)]];
    let s = candor_train::trainer::rehearsal_seq(
        vec![1, 2, 3],
        &[4, 5],
        &top,
        candor_train::recipe::AnswerTarget::Greedy,
        &[10, 11, 12],
    );
    assert_eq!(s.ids, vec![1, 2, 3, 4, 5, 10, 11, 12]);
    assert_eq!((s.start, s.ce_from), (3, 5));
    assert_eq!(s.loss_tokens(), 3, "the line's opening, not the answer");
    assert_eq!(s.soft, vec![vec![(4, 1.0)], vec![(5, 1.0)]]);
    assert!(s.value.is_none(), "no confidence value on a rehearsal row");
    // without a line opening (labels not in percent) the row is the answer alone
    let bare = candor_train::trainer::rehearsal_seq(
        vec![1, 2, 3],
        &[4, 5],
        &top,
        candor_train::recipe::AnswerTarget::Greedy,
        &[],
    );
    assert_eq!((bare.ids.len(), bare.loss_tokens()), (5, 0));
}

#[test]
fn the_training_fit_line_reports_the_expected_value_of_right_and_wrong_answers() {
    let (tok, _d) = tokenizer();
    let vs = ValueSet::new(&tok).unwrap();
    let cfg = ModelConfig::preset("tiny", 259).unwrap();
    let model = Llama::<Flex>::init(&cfg, 3, &Default::default());
    let ex = labelled(&tok);
    let line = candor_train::evaluate::training_fit(
        &model,
        &tok,
        &ValueSet::new(&tok).unwrap(),
        &ex,
        5,
        &Default::default(),
    )
    .unwrap();
    // by hand, one answer at a time
    let mut right = vec![];
    let mut wrong = vec![];
    let mut modes = vec![0usize; vs.values.len()];
    for e in &ex {
        let prompt = tok.encode(&e.prompt, false).unwrap();
        let row = candor_train::evaluate::answer_context(&prompt, &e.answer_tokens, &vs);
        let (_, lps) = candor_model::generate::tail_states(
            &model,
            std::slice::from_ref(&row),
            1,
            tok.pad_id,
            &Default::default(),
        );
        let x = values::expected(&vs, &lps[0]);
        if e.correct {
            right.push(x)
        } else {
            wrong.push(x)
        }
        let (q, _) = values::distribution(&vs, &lps[0]);
        modes[(0..q.len()).fold(0, |b, i| if q[i] > q[b] { i } else { b })] += 1;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        line.starts_with(&format!("training-set fit ({} answers)", ex.len())),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "expected confidence right {:.3} / wrong {:.3}",
            mean(&right),
            mean(&wrong)
        )),
        "{line}"
    );
    let teacher: Vec<f64> = ex.iter().map(|e| e.confidence).collect();
    let correct: Vec<bool> = ex.iter().map(|e| e.correct).collect();
    let a = candor_eval::metrics::auroc(&teacher, &correct).unwrap();
    assert!(line.contains(&format!("(teacher {a:.3})")), "{line}");
    // each count list opens with its first value that has a count
    let opens_with = |name: &str, counts: &[usize]| {
        let i = counts.iter().position(|&n| n > 0).unwrap();
        let want = format!("{name} {}%: {}", vs.values[i], counts[i]);
        assert!(line.contains(&want), "{want}: {line}");
    };
    opens_with("most likely value", &modes);
    // labels' nearest values, and a warning for each value many labels need and none gets
    let mut nearest = vec![0usize; vs.values.len()];
    for e in &ex {
        nearest[vs.nearest(e.confidence)] += 1;
    }
    opens_with("labels nearest", &nearest);
    for i in 0..vs.values.len() {
        let lost = modes[i] == 0 && nearest[i] * 20 >= ex.len();
        assert_eq!(
            line.contains(&format!("no answer writes {}%,", vs.values[i])),
            lost,
            "{}% most likely for {}, nearest for {}: {line}",
            vs.values[i],
            modes[i],
            nearest[i]
        );
    }
    assert!(
        line.contains("no answer writes"),
        "an untrained model writes one value for every answer and the labels need others: {line}"
    );
}

#[test]
fn value_ce_falls_linearly_to_zero_over_its_share_of_the_steps() {
    let (tok, _d) = tokenizer();
    let mut o = objective(&tok, ConfidenceLoss::Brier, 0.0);
    o.value_ce = 2.0;
    assert_eq!(o.at_step(37, 40).value_ce, 2.0, "held without a decay");
    o.value_ce_decay = 0.5;
    let at = |s| o.at_step(s, 40).value_ce;
    assert_eq!(at(0), 2.0);
    assert!((at(10) - 1.0).abs() < 1e-12, "{}", at(10));
    assert_eq!(at(20), 0.0);
    assert_eq!(at(39), 0.0);
    // the rest of the objective is the same
    let later = o.at_step(30, 40);
    assert_eq!(later.value_weight, o.value_weight);
    assert_eq!(later.confidence_loss, o.confidence_loss);
    // with a floor it falls to the floor and holds there
    o.value_ce_floor = 0.5;
    let at = |s| o.at_step(s, 40).value_ce;
    assert_eq!(at(0), 2.0);
    assert!((at(10) - 1.25).abs() < 1e-12, "{}", at(10));
    assert_eq!(at(20), 0.5);
    assert_eq!(at(39), 0.5);
}
