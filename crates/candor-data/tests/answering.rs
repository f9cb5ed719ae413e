//! Answering runs on a tiny random model: greedy + K samples with log-probs; a run killed
//! mid-way (torn last line) resumes to exactly the uninterrupted result; changed settings are
//! refused. Then labelling: empirical and SAR teachers, held-out map, distillation counts.

use burn::backend::Flex;
use candor_confidence::Lexical;
use candor_data::answering::{read_answers, run_answers, AnswerSettings, Answered};
use candor_data::config::{DataConfig, LabelsConfig, MapKind, Teacher};
use candor_data::{dataset, load_items};
use candor_model::{Llama, ModelConfig, Tokenizer};
use std::io::Write;

fn setup() -> (Llama<Flex>, Tokenizer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    candor_model::tokenizer::write_byte_tokenizer(dir.path()).unwrap();
    let tok = Tokenizer::load(dir.path()).unwrap();
    let cfg = ModelConfig::preset("tiny", tok.inner.get_vocab_size(true)).unwrap();
    (Llama::init(&cfg, 3, &Default::default()), tok, dir)
}

fn data() -> DataConfig {
    DataConfig {
        subtasks: vec!["+:1:1".into(), "-:2:2".into()],
        per_subtask: 3,
        ..Default::default()
    }
}

fn labels() -> LabelsConfig {
    LabelsConfig {
        samples: 2,
        max_new_tokens: 6,
        batch_size: 4,
        ..Default::default()
    }
}

#[test]
fn progress_counts_only_this_runs_questions_when_the_answers_file_holds_others() {
    // answers copied from a run over other sub-tasks and fewer questions per sub-task (as
    // docs/smollm2.md does to reuse answers): progress counts this run's questions only
    let (model, tok, dir) = setup();
    let dev = Default::default();
    let path = dir.path().join("answers.jsonl");
    let s = AnswerSettings::new("test model", &data(), &labels());
    let earlier = load_items(&data()).unwrap();
    run_answers(&model, &tok, &earlier, &s, &path, &dev, &mut |_| {}).unwrap();
    let more = DataConfig {
        subtasks: vec!["+:1:1".into()],
        per_subtask: 9,
        ..Default::default()
    };
    let items = load_items(&more).unwrap();
    let mut seen = vec![];
    let out = run_answers(&model, &tok, &items, &s, &path, &dev, &mut |p| {
        assert_eq!(p.total, 9);
        seen.push(p.done)
    })
    .unwrap();
    assert_eq!(out.len(), 9);
    // 3 reused, then batches of 4 questions: items 0-3, 4-7, 8
    assert_eq!(seen, vec![3, 4, 8, 9]);
}

#[test]
fn answering_resumes_after_a_kill_to_the_same_result() {
    let (model, tok, dir) = setup();
    let items = load_items(&data()).unwrap();
    assert_eq!(items.len(), 6);
    let s = AnswerSettings::new("test model", &data(), &labels());
    let dev = Default::default();
    let full_path = dir.path().join("full/answers.jsonl");
    let full = run_answers(&model, &tok, &items, &s, &full_path, &dev, &mut |_| {}).unwrap();
    assert_eq!(full.len(), 6);
    for a in &full {
        assert_eq!(a.samples.len(), 2);
        assert!(!a.greedy.tokens.is_empty() && a.greedy.tokens.len() <= 6);
        assert_eq!(a.greedy.logprobs.len(), a.greedy.tokens.len());
        assert_eq!(a.greedy.top[0].len(), 20);
        // the greedy token is the top-1 token
        assert_eq!(a.greedy.top[0][0].0, a.greedy.tokens[0]);
    }

    // a killed run: two records written, the third torn mid-line
    let path = dir.path().join("killed/answers.jsonl");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text = std::fs::read_to_string(&full_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut f = std::fs::File::create(&path).unwrap();
    write!(
        f,
        "{}\n{}\n{}",
        lines[0],
        lines[1],
        &lines[2][..lines[2].len() / 2]
    )
    .unwrap();
    drop(f);
    let mut seen = vec![];
    let resumed = run_answers(&model, &tok, &items, &s, &path, &dev, &mut |p| {
        seen.push(p.done)
    })
    .unwrap();
    assert_eq!(seen[0], 2, "resumed with 2 questions done");
    for (a, b) in full.iter().zip(&resumed) {
        assert_eq!(a.item.id, b.item.id);
        assert_eq!(a.greedy.tokens, b.greedy.tokens);
        for (x, y) in a.samples.iter().zip(&b.samples) {
            assert_eq!(x.tokens, y.tokens, "sample seeds do not depend on batching");
        }
    }
    assert_eq!(read_answers(&path).unwrap().len(), 6, "each question once");

    // another batch size resumes (it does not change answers); other settings are refused
    let mut bigger = s.clone();
    bigger.batch_size = 5;
    run_answers(&model, &tok, &items, &bigger, &path, &dev, &mut |_| {}).unwrap();
    let mut other = s.clone();
    other.temperature = 0.9;
    let e = run_answers(&model, &tok, &items, &other, &path, &dev, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("other answering settings"), "{e}");

    // labelling: empirical-subtask gives one label per sub-task
    let (ex, sum) = dataset::label(&full, &data(), &labels(), &tok, None, &mut |_, _| {}).unwrap();
    assert_eq!(ex.len(), 6);
    for e in &ex {
        let acc = sum.by_subtask[&e.subtask].accuracy();
        assert_eq!(e.confidence, (100.0 * acc).floor());
        assert!(e
            .target
            .ends_with(&format!("Confidence: {}%", e.confidence)));
        assert!(e.signals.deepconf.is_some());
    }
    assert_eq!(sum.kept_correct + sum.kept_wrong, 6);

    // SAR teacher with the lexical similarity: every question gets SAR signals, a share is held
    // out to fit the map, and the filter counts add up
    let sar = LabelsConfig {
        teacher: Teacher::Sar,
        heldout: 0.5,
        map: MapKind::Bins,
        map_bins: 2,
        tau_hi: 50.0,
        tau_lo: 50.0,
        ..labels()
    };
    let (ex, sum) = dataset::label(
        &full,
        &data(),
        &sar,
        &tok,
        Some(&mut Lexical),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(ex
        .iter()
        .all(|e| e.signals.sar.is_some() && e.signals.token_sar.is_some()));
    assert!(sum.heldout > 0 && sum.heldout < 6, "{}", sum.heldout);
    let m = sum.map.as_ref().unwrap();
    assert!(m.points.windows(2).all(|w| w[0].1 >= w[1].1));
    assert_eq!(
        sum.kept_correct
            + sum.kept_wrong
            + sum.dropped_unsure_correct
            + sum.dropped_confident_wrong
            + sum.heldout,
        6
    );
    for e in &ex {
        assert_eq!(
            e.confidence,
            (100.0 * m.apply(e.signals.sar.unwrap())).round()
        );
    }
    let out = dir.path().join("data");
    dataset::write(&out, &ex, &sum).unwrap();
    let kept = dataset::read(&out.join("dataset.jsonl")).unwrap();
    assert_eq!(kept.len(), sum.kept_correct + sum.kept_wrong);
    assert!(out.join("confidence_map.json").exists());
    assert!(sum.render().contains("AUROC"));

    // SAR's scores cached from this labelling give the very same labels without a similarity;
    // a changed answer is not covered, and a forced lookup names the question
    let rows = dataset::sar_cache_rows(&full, &ex);
    assert_eq!(rows.len(), 6);
    let cache: std::collections::BTreeMap<_, _> =
        rows.into_iter().map(|c| (c.id.clone(), c)).collect();
    assert!(dataset::sar_cache_covers(&cache, &full));
    let from_cache = |answers| {
        let sar_src = dataset::SarSource::Cached(&cache);
        dataset::label_with(answers, &data(), &sar, &tok, sar_src, None, &mut |_, _| {})
    };
    let (again, sum2) = from_cache(&full).unwrap();
    assert_eq!(again, ex);
    assert_eq!(sum2.kept_correct, sum.kept_correct);
    let mut changed = full.clone();
    changed[3].samples[1].logprobs[0] -= 0.5;
    assert!(!dataset::sar_cache_covers(&cache, &changed));
    let e = from_cache(&changed).unwrap_err();
    assert!(e.to_string().contains(&changed[3].item.id), "{e}");
}

#[test]
fn gold_teacher_summary_says_there_are_no_labels() {
    let s = candor_data::dataset::Summary {
        set: "CalibratedMath".into(),
        teacher: "gold".into(),
        questions: 3,
        ..Default::default()
    };
    let text = s.render();
    assert!(text.contains("labels: none"), "{text}");
    assert!(
        !text.contains("AUROC") && !text.contains("histogram") && !text.contains("accuracy"),
        "{text}"
    );
}

/// Greedy-only answers of the tiny random model to `per_subtask` questions of each sub-task,
/// with the data and labelling settings they were made under.
fn greedy_answers(
    per_subtask: usize,
) -> (
    Vec<Answered>,
    Tokenizer,
    tempfile::TempDir,
    DataConfig,
    LabelsConfig,
) {
    let (model, tok, dir) = setup();
    let data = DataConfig {
        per_subtask,
        ..data()
    };
    let items = load_items(&data).unwrap();
    let greedy_only = LabelsConfig {
        samples: 0,
        ..labels()
    };
    let s = AnswerSettings::new("test model", &data, &greedy_only);
    let path = dir.path().join("answers.jsonl");
    let answers = run_answers(
        &model,
        &tok,
        &items,
        &s,
        &path,
        &Default::default(),
        &mut |_| {},
    )
    .unwrap();
    (answers, tok, dir, data, greedy_only)
}

/// The random model answers nothing right: make right the half of the answers `which` picks
/// that the model is surest of (summed log-prob), so a map has both kinds to fit.
fn right_where_surest(answers: &mut [Answered], which: impl Fn(&Answered) -> bool) {
    let lp = |a: &Answered| -> f64 {
        let n = a.greedy.answer_len();
        a.greedy.logprobs[..n].iter().map(|&l| l as f64).sum()
    };
    let mut order: Vec<usize> = (0..answers.len()).filter(|&i| which(&answers[i])).collect();
    order.sort_by(|&i, &j| lp(&answers[j]).total_cmp(&lp(&answers[i])));
    for &i in &order[..order.len() / 2] {
        answers[i].greedy.text = answers[i].item.gold_answer();
    }
}

#[test]
fn answer_logit_teacher_maps_the_answer_probability_monotonely() {
    let (mut answers, tok, _dir, data, greedy_only) = greedy_answers(8);
    right_where_surest(&mut answers, |_| true);
    let cfg = LabelsConfig {
        teacher: Teacher::AnswerLogit,
        heldout: 0.5,
        ..greedy_only
    };
    let (ex, sum) = dataset::label(&answers, &data, &cfg, &tok, None, &mut |_, _| {}).unwrap();
    assert_eq!(sum.teacher, "answer-logit");
    assert!(sum.heldout > 0 && sum.heldout < ex.len(), "{}", sum.heldout);
    let m = sum.map.as_ref().unwrap();
    for e in &ex {
        assert_eq!(
            e.confidence,
            (100.0 * m.apply(-e.signals.answer_logprob)).round()
        );
    }
    // labels rise with the answer's probability, and are not all one number
    for a in &ex {
        for b in &ex {
            if a.signals.answer_logprob > b.signals.answer_logprob {
                assert!(
                    a.confidence >= b.confidence,
                    "{} < {}",
                    a.confidence,
                    b.confidence
                );
            }
        }
    }
    let first = ex[0].confidence;
    assert!(
        ex.iter().any(|e| e.confidence != first),
        "one label for all"
    );

    // map = "none": the probability the model gave its answer, no question held out
    let raw = LabelsConfig {
        map: MapKind::None,
        ..cfg
    };
    let (ex, sum) = dataset::label(&answers, &data, &raw, &tok, None, &mut |_, _| {}).unwrap();
    assert_eq!(sum.heldout, 0);
    assert!(sum.map.is_none());
    for e in &ex {
        assert!(!e.heldout);
        assert_eq!(
            e.confidence,
            (100.0 * e.signals.answer_logprob.exp()).round()
        );
    }
}

#[test]
fn the_accuracy_floor_drops_sub_tasks_before_the_map_is_fitted() {
    let (mut answers, tok, _dir, data, greedy_only) = greedy_answers(10);
    // "+:1:1" answered right where the model is surest of itself, "-:2:2" never right
    right_where_surest(&mut answers, |a| a.item.subtask == "+:1:1");
    let cfg = LabelsConfig {
        teacher: Teacher::AnswerLogit,
        heldout: 0.5,
        min_subtask_accuracy: 1.0,
        ..greedy_only
    };
    let (ex, sum) = dataset::label(&answers, &data, &cfg, &tok, None, &mut |_, _| {}).unwrap();
    assert_eq!(sum.by_subtask["-:2:2"].correct, 0);
    let kept_heldout = ex
        .iter()
        .filter(|e| e.heldout && e.subtask == "+:1:1")
        .count();
    assert!(
        kept_heldout > 0,
        "no held-out question of the kept sub-task"
    );
    for e in &ex {
        assert_eq!(e.below_floor, e.subtask == "-:2:2", "{}", e.subtask);
        assert!(!e.kept() || e.subtask == "+:1:1");
    }
    // the labels are those of a run that never saw the dropped sub-task
    let only: Vec<_> = answers
        .iter()
        .filter(|a| a.item.subtask == "+:1:1")
        .cloned()
        .collect();
    let alone = LabelsConfig {
        min_subtask_accuracy: 0.0,
        ..cfg.clone()
    };
    let (ex_alone, sum_alone) =
        dataset::label(&only, &data, &alone, &tok, None, &mut |_, _| {}).unwrap();
    assert_eq!(sum.map, sum_alone.map, "the map saw the dropped sub-task");
    // the summary counts the map's slice among the kept sub-tasks, each question once
    assert_eq!(sum.heldout, kept_heldout);
    assert_eq!(sum.dropped_below_floor, 10);
    assert_eq!(
        sum.heldout + sum.dropped_below_floor + sum.kept_correct + sum.kept_wrong,
        ex.len()
    );
    for b in &ex_alone {
        let a = ex.iter().find(|e| e.id == b.id).unwrap();
        assert_eq!(a.confidence, b.confidence, "{}", a.id);
    }
}
