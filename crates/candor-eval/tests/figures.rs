//! The SVG figures render, are deterministic, and carry one bar per non-empty bin.

use candor_eval::figures::*;
use candor_eval::metrics::equal_width_bins;

fn data() -> (Vec<f64>, Vec<bool>, Vec<f64>) {
    // an overconfident "before" and a better calibrated "after" on the same answers
    let correct: Vec<bool> = (0..200).map(|i| (i * 37 % 100) < 55).collect();
    let before: Vec<f64> = (0..200)
        .map(|i| 0.8 + 0.2 * ((i * 13 % 10) as f64 / 10.0))
        .collect();
    let after: Vec<f64> = correct
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if c {
                0.6 + 0.03 * (i % 10) as f64
            } else {
                0.2 + 0.04 * (i % 10) as f64
            }
        })
        .collect();
    (before, correct, after)
}

#[test]
fn reliability_diagram_has_a_bar_per_non_empty_bin() {
    let (before, correct, after) = data();
    let s = [Series {
        label: "before",
        confidence: &before,
        correct: &correct,
    }];
    let svg = reliability_svg("Multiply-divide: verbalized", &s, 10).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Multiply-divide: verbalized"));
    let filled = equal_width_bins(&before, &correct, 10)
        .iter()
        .filter(|b| b.count > 0)
        .count();
    // each non-empty bin draws its count as text
    for b in equal_width_bins(&before, &correct, 10)
        .iter()
        .filter(|b| b.count > 0)
    {
        // plotters writes text content on its own line
        assert!(
            svg.contains(&format!(">\n{}\n</text>", b.count)),
            "count {} missing",
            b.count
        );
    }
    assert!(filled >= 2);
    assert_eq!(
        svg,
        reliability_svg("Multiply-divide: verbalized", &s, 10).unwrap(),
        "deterministic"
    );
    let both = [
        Series {
            label: "before",
            confidence: &before,
            correct: &correct,
        },
        Series {
            label: "after",
            confidence: &after,
            correct: &correct,
        },
    ];
    let overlay = reliability_svg("before vs after", &both, 10).unwrap();
    assert!(overlay.contains("before (n = 200)") && overlay.contains("after (n = 200)"));
    let h = confidence_histogram_svg("confidence histogram", &both, 20).unwrap();
    let r = risk_coverage_svg("risk–coverage", &both).unwrap();
    assert!(h.contains("<polyline") || h.contains("<path"));
    assert!(r.contains("coverage"));
    if let Ok(dir) = std::env::var("CANDOR_FIGURES_OUT") {
        for (name, svg) in [
            ("reliability.svg", &svg),
            ("overlay.svg", &overlay),
            ("histogram.svg", &h),
            ("risk.svg", &r),
        ] {
            std::fs::write(std::path::Path::new(&dir).join(name), svg).unwrap();
        }
    }
}
