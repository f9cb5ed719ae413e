//! QA JSONL loading (open and multiple choice, malformed lines reported with line numbers) and
//! grading (normalised exact/alias, contains, ROUGE-L).

use candor_data::qa::{is_correct, load_jsonl, normalize, Match};
use std::io::Write;

#[test]
fn loads_open_and_multiple_choice_and_reports_bad_lines() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let lines = [
        r#"{"id": "q1", "question": "Capital of Vermont?", "answers": ["Montpelier", "Montpelier, VT"]}"#,
        r#"{"id": "q2", "question": "no answers here", "answers": []}"#,
        r#"not json at all"#,
        "",
        r#"{"question": "Which is a mammal?", "options": {"A": "Shark", "B": "Dolphin"}, "answer_idx": "B", "answer": "Dolphin"}"#,
        r#"{"id": 7, "question": "Pick the prime", "options": ["4", "6", "7"], "answer": "7"}"#,
        r#"{"id": "q5", "question": "bad key", "options": {"A": "x"}, "answer": "Z"}"#,
        r#"{"id": "q6", "answers": ["no question"]}"#,
        r#"{"id": "q7", "question": "SciQ shape", "answer": "photosynthesis"}"#,
    ];
    writeln!(f, "{}", lines.join("\n")).unwrap();
    let l = load_jsonl(f.path()).unwrap();
    assert_eq!(l.items.len(), 4, "{:?}", l.malformed);
    let bad: Vec<usize> = l.malformed.iter().map(|m| m.0).collect();
    assert_eq!(bad, vec![2, 3, 7, 8]);
    assert!(l.malformed[0].1.contains("no answers"));
    assert!(l.summary().contains("4 malformed lines"));
    let mc = &l.items[1];
    assert_eq!(mc.id, "line-5");
    assert_eq!(mc.answer_key.as_deref(), Some("B"));
    assert_eq!(mc.prompt_text(), "Which is a mammal?\nA. Shark\nB. Dolphin");
    let listed = &l.items[2];
    assert_eq!(
        (listed.id.as_str(), listed.answer_key.as_deref()),
        ("7", Some("C"))
    );
    assert_eq!(l.items[3].answers, vec!["photosynthesis"]);
}

#[test]
fn a_large_file_with_bad_lines_loads() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for i in 0..20_000 {
        if i % 1000 == 999 {
            writeln!(f, "{{\"id\": \"{i}\", \"question\": ").unwrap(); // truncated line
        } else {
            writeln!(
                f,
                "{{\"id\": \"{i}\", \"question\": \"q{i}\", \"answers\": [\"a{i}\"]}}"
            )
            .unwrap();
        }
    }
    let l = load_jsonl(f.path()).unwrap();
    assert_eq!((l.items.len(), l.malformed.len()), (19_980, 20));
    assert_eq!(l.malformed[0].0, 1000);
}

#[test]
fn grading_rules() {
    let item = candor_data::qa::QaItem {
        id: "x".into(),
        question: "Who?".into(),
        answers: vec!["Dave Lamb".into(), "The Beatles".into()],
        options: Default::default(),
        answer_key: None,
    };
    assert_eq!(normalize("  The  Beatles!! "), "beatles");
    assert!(is_correct(&item, "dave lamb.", Match::Exact));
    assert!(is_correct(&item, "Beatles", Match::Exact));
    assert!(!is_correct(&item, "It is Dave Lamb", Match::Exact));
    assert!(is_correct(&item, "It is Dave Lamb.", Match::Contains));
    assert!(
        !is_correct(&item, "Dave Lambert", Match::Contains),
        "whole words only"
    );
    // ROUGE-L: "it is dave lamb" vs "dave lamb" = 2/3
    assert!(is_correct(
        &item,
        "It is Dave Lamb",
        Match::RougeL { threshold: 0.5 }
    ));
    assert!(!is_correct(
        &item,
        "It is Dave Lamb",
        Match::RougeL { threshold: 0.7 }
    ));
    assert!(!is_correct(&item, "", Match::Contains));

    let mut options = std::collections::BTreeMap::new();
    options.insert("A".to_string(), "Shark".to_string());
    options.insert("B".to_string(), "Dolphin".to_string());
    let mc = candor_data::qa::QaItem {
        id: "m".into(),
        question: "?".into(),
        answers: vec!["Dolphin".into()],
        options,
        answer_key: Some("B".into()),
    };
    for good in ["B", "(B) Dolphin", "B. Dolphin", "dolphin"] {
        assert!(is_correct(&mc, good, Match::Exact), "{good}");
    }
    for bad in ["A", "Shark", "Both", ""] {
        assert!(!is_correct(&mc, bad, Match::Exact), "{bad}");
    }
}

#[test]
fn repeated_ids_are_made_unique() {
    let mut f = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .unwrap();
    for _ in 0..3 {
        writeln!(
            f,
            r#"{{"id": "bt_239", "question": "q", "answers": ["a"]}}"#
        )
        .unwrap();
    }
    let cfg = candor_data::DataConfig {
        source: candor_data::config::Source::Jsonl,
        path: Some(f.path().to_path_buf()),
        ..Default::default()
    };
    let ids: Vec<String> = candor_data::load_items(&cfg)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, vec!["bt_239", "bt_239#2", "bt_239#3"]);
}
