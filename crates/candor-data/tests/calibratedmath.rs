//! CalibratedMath: 196 sub-tasks (109/71/16), every sub-task's stored answer accepted and a
//! perturbed one rejected, and a fixed seed giving byte-identical JSONL.

use candor_data::calibratedmath::*;

#[test]
fn there_are_196_subtasks_split_109_71_16() {
    let all = subtasks();
    assert_eq!(all.len(), 196);
    let count = |g: Group| all.iter().filter(|s| s.group() == g).count();
    assert_eq!(
        (
            count(Group::AddSubtract),
            count(Group::MultiplyDivide),
            count(Group::MultiAnswer)
        ),
        (109, 71, 16)
    );
    let ids: std::collections::BTreeSet<String> = all.iter().map(|s| s.id()).collect();
    assert_eq!(ids.len(), 196, "sub-task ids are unique");
    assert_eq!(TASKS.len(), 21);
}

fn perturbed(q: &Question) -> String {
    match &q.check {
        Check::Equals { value } => (value + 1).to_string(),
        Check::Fraction { num, den } => format!("{}/{}", num + 1, den),
        Check::LessThan { bound } => bound.to_string(),
        Check::GreaterThan { bound } => bound.to_string(),
        Check::PrimeBelow { bound } => bound.to_string(),
        Check::SquareBelow { bound } => (bound + 1).to_string(),
        Check::TwoSum { total } => format!("1 and {total}"),
        Check::MultipleBetween { of, hi, .. } => (hi + of).to_string(),
    }
}

#[test]
fn every_subtask_grades_its_answer_correct_and_a_perturbed_one_wrong() {
    for st in subtasks() {
        let qs = generate(&st, 30, 7);
        assert_eq!(qs.len(), 30);
        for q in &qs {
            assert!(
                q.question.starts_with("What") || q.question.starts_with("Name"),
                "{}",
                q.question
            );
            assert_eq!(
                grade(&q.check, &q.answer),
                Grade::Correct,
                "{}: {} → {}",
                q.subtask,
                q.question,
                q.answer
            );
            assert_eq!(
                grade(&q.check, &format!("The answer is {}.", q.answer)),
                Grade::Correct,
                "{} in words",
                q.subtask
            );
            let bad = perturbed(q);
            assert_eq!(
                grade(&q.check, &bad),
                Grade::Wrong,
                "{}: {} → {bad} must be wrong",
                q.subtask,
                q.question
            );
            assert_eq!(grade(&q.check, "I don't know"), Grade::Unparseable);
            // the separator variant never prints a run of 4+ digits without separators; the plain one never separates
            let longest_run = q
                .question
                .split(|c: char| !c.is_ascii_digit())
                .map(str::len)
                .max()
                .unwrap_or(0);
            if st.sep {
                assert!(longest_run <= 3, "separator variant: {}", q.question);
            } else {
                assert!(
                    !q.question
                        .chars()
                        .zip(q.question.chars().skip(1))
                        .any(|(a, b)| a == ',' && b.is_ascii_digit()),
                    "{}",
                    q.question
                );
            }
        }
    }
}

#[test]
fn fixed_seed_output_is_byte_identical() {
    let jsonl = |seed: u64| -> String {
        subtasks()
            .iter()
            .flat_map(|st| generate(st, 3, seed))
            .map(|q| serde_json::to_string(&q).unwrap() + "\n")
            .collect()
    };
    let a = jsonl(1);
    assert_eq!(a, jsonl(1));
    assert_ne!(a, jsonl(2));
    assert_eq!(a.lines().count(), 196 * 3);
    // a sub-task's questions do not depend on which other sub-tasks are generated
    let st = &subtasks()[40];
    assert_eq!(
        generate(st, 3, 1),
        subtasks()
            .iter()
            .flat_map(|s| generate(s, 3, 1))
            .filter(|q| q.subtask == st.id())
            .collect::<Vec<_>>()
    );
}

#[test]
fn graders_read_free_text() {
    let q = Check::Equals { value: 10248 };
    assert_eq!(grade(&q, "A: 10,248"), Grade::Correct);
    assert_eq!(grade(&q, "10248.0"), Grade::Correct);
    assert_eq!(
        grade(&Check::Equals { value: -3 }, "It is -3."),
        Grade::Correct
    );
    assert_eq!(
        grade(&Check::Fraction { num: 3, den: 4 }, "3/4"),
        Grade::Correct
    );
    assert_eq!(
        grade(&Check::Fraction { num: 3, den: 4 }, "6/8"),
        Grade::Wrong
    );
    assert_eq!(
        grade(&Check::TwoSum { total: 50 }, "20 and 30"),
        Grade::Correct
    );
    assert_eq!(grade(&Check::PrimeBelow { bound: 20 }, "15"), Grade::Wrong);
    assert_eq!(
        grade(&Check::PrimeBelow { bound: 20 }, "17"),
        Grade::Correct
    );
    assert_eq!(
        grade(&Check::SquareBelow { bound: 50 }, "49"),
        Grade::Correct
    );
    assert_eq!(grade(&Check::SquareBelow { bound: 50 }, "48"), Grade::Wrong);
}

#[test]
fn worked_answers_are_graded_after_the_last_equals_sign() {
    use candor_data::calibratedmath::{grade, Check, Grade};
    let c = Check::Equals { value: 7 };
    assert_eq!(grade(&c, "4 + 3 = 7"), Grade::Correct);
    assert_eq!(grade(&c, "7"), Grade::Correct);
    assert_eq!(grade(&c, "4 + 3 = 8"), Grade::Wrong);
    assert_eq!(grade(&c, "The answer is 7."), Grade::Correct);
    assert_eq!(grade(&c, "x ="), Grade::Unparseable);
}

#[test]
fn per_subtask_overrides_change_only_the_named_counts() {
    use candor_data::{load_items, DataConfig};
    let mut cfg = DataConfig {
        subtasks: vec!["+:1:1".into(), "-:2:2".into()],
        per_subtask: 5,
        ..Default::default()
    };
    cfg.per_subtask_overrides.insert("+:1:1".into(), 40);
    let items = load_items(&cfg).unwrap();
    let count = |st: &str| items.iter().filter(|i| i.subtask == st).count();
    assert_eq!((count("+:1:1"), count("-:2:2")), (40, 5));
    cfg.per_subtask_overrides.insert("*:1:1".into(), 3);
    let err = load_items(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("per_subtask_overrides") && err.contains("*:1:1"),
        "{err}"
    );
}
