//! Every metric against scikit-learn's values in `../shared/fixtures/metrics/cases.json`, to 1e-9.

use candor_eval::metrics::*;
use serde_json::Value;

#[test]
fn metrics_match_the_scikit_learn_fixture() {
    // the crate folder as cargo reports it when running the test (not when it was built: a test
    // binary reused from another checkout's build must still read this checkout's files)
    let dir: String =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let path = format!("{dir}/../../../shared/fixtures/metrics/cases.json");
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("reading cases.json")).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let conf: Vec<f64> = case["confidence"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let correct: Vec<bool> = case["correct"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() == 1)
            .collect();
        let m = Metrics::compute(&conf, &correct);
        let check = |metric: &str, got: Option<f64>| {
            let want = case[metric].as_f64();
            match (got, want) {
                (Some(g), Some(w)) => assert!(
                    (g - w).abs() <= 1e-9,
                    "{name}: {metric} = {g}, scikit-learn {w}"
                ),
                (None, None) => {}
                _ => panic!("{name}: {metric} = {got:?}, fixture {want:?}"),
            }
        };
        check("accuracy", Some(m.accuracy));
        check("brier", Some(m.brier));
        check("ece_10", Some(m.ece_10));
        check("ece_15", Some(m.ece_15));
        check("auroc", m.auroc);
        check("aupr_correct", m.auprc);
        check("mad_20_equal_mass", Some(m.mad_20));
        check("aurc_stable_desc", Some(m.aurc));
    }
}

#[test]
fn coverage_and_bootstrap_behave() {
    let conf = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2];
    let correct = [true, true, true, false, true, false, false, false];
    assert_eq!(accuracy_at_coverage(&conf, &correct, 0.25), 1.0);
    assert_eq!(accuracy_at_coverage(&conf, &correct, 0.5), 0.75);
    assert_eq!(accuracy_at_coverage(&conf, &correct, 1.0), 0.5);
    // ties at the cut are taken in proportion: a constant readout scores the overall accuracy
    let flat = [0.3; 8];
    for c in [0.25, 0.5, 0.75] {
        assert!((accuracy_at_coverage(&flat, &correct, c) - 0.5).abs() < 1e-12);
    }
    let tied = [0.9, 0.5, 0.5, 0.5];
    let y = [true, true, false, false];
    assert!((accuracy_at_coverage(&tied, &y, 0.5) - (1.0 + 1.0 / 3.0) / 2.0).abs() < 1e-12);
    let a = bootstrap_ci(&conf, &correct, 500, 1, auroc).unwrap();
    let b = bootstrap_ci(&conf, &correct, 500, 1, auroc).unwrap();
    assert_eq!(a, b, "seeded bootstrap is deterministic");
    let point = auroc(&conf, &correct).unwrap();
    assert!(
        a.0 <= point && point <= a.1 && a.0 < a.1,
        "{a:?} around {point}"
    );
}
