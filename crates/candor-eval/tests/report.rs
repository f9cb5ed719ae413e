//! The report is deterministic (same inputs → byte-identical report.json) and marks the best
//! readout per column.

use candor_eval::report::{figures, set_result, ParseStats, Report, Scored};
use std::collections::BTreeMap;

fn scored(seed: u64) -> Vec<Scored> {
    (0..200)
        .map(|i| {
            let x = ((i as u64 * 2654435761 + seed) % 1000) as f64 / 1000.0;
            let correct = x > 0.4;
            let mut conf = BTreeMap::new();
            conf.insert("verbalized".to_string(), (x * 0.8 + 0.1).min(1.0));
            conf.insert("constant".to_string(), 0.6);
            if i % 10 != 0 {
                conf.insert("p_true".to_string(), 1.0 - x);
            }
            Scored {
                id: format!("q{i}"),
                group: if i % 2 == 0 { "A".into() } else { "B".into() },
                task: format!("T{}", i % 3),
                correct,
                conf,
            }
        })
        .collect()
}

fn report() -> (String, String) {
    let s = scored(7);
    let parse = || ParseStats {
        parsed: 190,
        failures: BTreeMap::from([("missing".to_string(), 10)]),
        examples: vec!["no confidence here".into()],
    };
    let r = Report {
        accuracy_changes: vec![],
        models: BTreeMap::from([("before".to_string(), "m0".to_string())]),
        recipe_hash: Some("abc".into()),
        seed: 3,
        bootstrap: 200,
        results: vec![set_result("Set one", "before", &s, parse(), 200, 3)],
    };
    let figs: Vec<String> = figures("Set one", &[("before", &s)])
        .into_iter()
        .map(|f| f.0)
        .collect();
    (serde_json::to_string_pretty(&r).unwrap(), r.markdown(&figs))
}

#[test]
fn report_is_deterministic_and_marks_the_best() {
    let (j1, m1) = report();
    let (j2, m2) = report();
    assert_eq!(j1, j2, "report.json must be byte-identical");
    assert_eq!(m1, m2);
    let r: Report = serde_json::from_str(&j1).unwrap();
    let res = &r.results[0];
    assert_eq!(
        res.readouts["p_true"].n, 180,
        "missing readouts are left out, not zero"
    );
    assert!(res.readouts["verbalized"].metrics.auroc.unwrap() > 0.99);
    assert!(res.readouts["p_true"].metrics.auroc.unwrap() < 0.01);
    assert!(res.readouts["verbalized"].auroc_ci.is_some());
    assert_eq!(res.readouts["constant"].metrics.auroc, Some(0.5));
    // per-task metrics partition the set
    assert_eq!(res.by_task.len(), 3);
    assert_eq!(res.by_task.values().map(|t| t.n).sum::<usize>(), res.n);
    let t0 = &res.by_task["T0"];
    let acc0 = s_acc(&scored(7), "T0");
    assert!((t0.accuracy - acc0).abs() < 1e-12);
    assert!(m1.contains("| before | T1 |"), "per-task table: {m1}");
    // verbalized has the best AUROC: bold in its row
    let row = m1
        .lines()
        .find(|l| l.starts_with("| before | verbalized |"))
        .unwrap();
    assert!(row.matches("**").count() >= 2, "{row}");
    assert!(
        m1.contains("Decision table")
            && m1.contains("missing 10")
            && m1.contains("reliability-set-one")
    );
}

fn s_acc(s: &[Scored], task: &str) -> f64 {
    let v: Vec<&Scored> = s.iter().filter(|x| x.task == task).collect();
    v.iter().filter(|x| x.correct).count() as f64 / v.len() as f64
}
