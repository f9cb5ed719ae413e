//! Every shipped recipe parses; malformed recipes are errors that name the key, the line and
//! what is allowed.

use candor_train::Recipe;
use std::path::PathBuf;

#[test]
fn every_recipe_in_recipes_parses() {
    // the crate folder as cargo reports it when running the test (not when it was built: a test
    // binary reused from another checkout's build must still read this checkout's files)
    let dir = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../../recipes");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) == Some("toml") {
            let r = Recipe::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            // the resolved recipe round-trips
            assert_eq!(Recipe::parse(&r.to_toml()).unwrap(), r, "{}", p.display());
            n += 1;
        }
    }
    assert!(n >= 4, "found {n} recipes");
}

fn err(text: &str) -> String {
    Recipe::parse(text).unwrap_err().to_string()
}

const MODEL: &str = "[model]\npath = \"checkpoints/x\"\n";

#[test]
fn malformed_recipes_name_key_line_and_allowed_values() {
    // unknown key: named, with its line and the allowed keys
    let e = err(&format!("{MODEL}[train]\nepochs = 1\nepoch = 3\n"));
    assert!(
        e.contains("line 5") && e.contains("unknown field `epoch`") && e.contains("`epochs`"),
        "{e}"
    );
    // unknown section
    let e = err(&format!("{MODEL}[trainer]\nepochs = 1\n"));
    assert!(
        e.contains("unknown field `trainer`") && e.contains("line 3"),
        "{e}"
    );
    // wrong type
    let e = err(&format!("{MODEL}[optim]\nlr = \"fast\"\n"));
    assert!(e.contains("line 4") && e.contains("lr"), "{e}");
    // out of range
    let e = err(&format!("{MODEL}[labels]\ntau_hi = 150\n"));
    assert!(
        e.contains("line 4") && e.contains("tau_hi") && e.contains("allowed: 0 to 100"),
        "{e}"
    );
    let e = err(&format!("{MODEL}[train]\nmicro_batch = 0\n"));
    assert!(e.contains("micro_batch") && e.contains("1 or more"), "{e}");
    let e = err(&format!("{MODEL}[train]\nvalue_weight = 0\n"));
    assert!(e.contains("value_weight") && e.contains("> 0"), "{e}");
    let e = err(&format!(
        "{MODEL}[train]\nconfidence_loss = \"ce\"\nvalue_ce = 1\n"
    ));
    assert!(
        e.contains("train.value_ce") && e.contains("value_weight"),
        "{e}"
    );
    let e = err(&format!(
        "{MODEL}[train]\nconfidence_loss = \"log\"\nvalue_log = 2\n"
    ));
    assert!(
        e.contains("train.value_log") && e.contains("allowed with value_log > 0: \"brier\""),
        "{e}"
    );
    let e = err(&format!("{MODEL}[train]\nvalue_ce_decay = 0.5\n"));
    assert!(
        e.contains("train.value_ce_decay") && e.contains("value_ce, which is 0"),
        "{e}"
    );
    let e = err(&format!(
        "{MODEL}[train]\nvalue_ce = 1\nvalue_ce_decay = 2\n"
    ));
    assert!(e.contains("value_ce_decay") && e.contains("0 to 1"), "{e}");
    let e = err(&format!(
        "{MODEL}[train]\nvalue_ce = 1\nvalue_ce_floor = 0.2\n"
    ));
    assert!(
        e.contains("train.value_ce_floor") && e.contains("set value_ce_decay > 0"),
        "{e}"
    );
    let e = err(&format!(
        "{MODEL}[train]\nvalue_ce = 1\nvalue_ce_decay = 0.5\nvalue_ce_floor = 2\n"
    ));
    assert!(
        e.contains("train.value_ce_floor") && e.contains("allowed: 0 to value_ce"),
        "{e}"
    );
    let e = err(&format!("{MODEL}[train]\nvalue_ce_target = \"two-hot\"\n"));
    assert!(
        e.contains("train.value_ce_target") && e.contains("set value_ce > 0"),
        "{e}"
    );
    let e = err(&format!(
        "{MODEL}[train]\nvalue_ce = 1\nvalue_ce_target = \"mode\"\n"
    ));
    assert!(
        e.contains("value_ce_target") && e.contains("written") && e.contains("two-hot"),
        "{e}"
    );
    let e = err(&format!(
        "{MODEL}[train]\nconfidence_loss = \"two-hot\"\nvalue_level = 10\n"
    ));
    assert!(
        e.contains("train.value_level") && e.contains("allowed with value_level > 0"),
        "{e}"
    );
    let e = err(&format!("{MODEL}[train]\nbalance_power = 0.5\n"));
    assert!(
        e.contains("train.balance_power") && e.contains("set balance = \"label-bin\""),
        "{e}"
    );
    let e = err(&format!(
        "{MODEL}[train]\nbalance = \"label-bin\"\nbalance_power = 1.5\n"
    ));
    assert!(
        e.contains("balance_power") && e.contains("allowed: 0 to 1"),
        "{e}"
    );
    // bad enum value lists the allowed ones
    let e = err(&format!("{MODEL}[labels]\nteacher = \"oracle\"\n"));
    assert!(
        e.contains("oracle") && e.contains("empirical-subtask") && e.contains("sar"),
        "{e}"
    );
    let e = err(&format!("{MODEL}[data]\ngroups = [\"Add\"]\n"));
    assert!(e.contains("Add-subtract") && e.contains("line 4"), "{e}");
    // cross-field rules
    let e = err(&format!(
        "{MODEL}[train]\nmicro_batch = 8\nglobal_batch = 20\n"
    ));
    assert!(
        e.contains("global_batch = 20") && e.contains("multiple"),
        "{e}"
    );
    let e = err(&format!("{MODEL}[train]\nvalues = [0, 50, 150]\n"));
    assert!(e.contains("train.values: 150 is out of range"), "{e}");
    let e = err(&format!("{MODEL}[train]\nvalues = [0, 50, 50]\n"));
    assert!(e.contains("train.values: 50 is listed twice"), "{e}");
    let e = err(&format!("{MODEL}[train]\nvalues = [50]\n"));
    assert!(e.contains("fewer than two values"), "{e}");
    let e = err(&format!("{MODEL}[lora]\ntargets = [\"qkv\"]\n"));
    assert!(e.contains("lora.targets") && e.contains("q_proj"), "{e}");
    let e = err(&format!("{MODEL}[train]\nlayers = [3]\n[lora]\nrank = 4\n"));
    assert!(e.contains("train.layers") && e.contains("[lora]"), "{e}");
    let e = err(&format!(
        "{MODEL}[labels]\nteacher = \"sar\"\nsamples = 1\n"
    ));
    assert!(e.contains("labels.samples"), "{e}");
    let e = err(&format!("{MODEL}[labels]\nsubtask_prior = 5\n"));
    assert!(
        e.contains("labels.subtask_prior") && e.contains("empirical-question"),
        "{e}"
    );
    let e = err(&format!(
        "{MODEL}[labels]\nteacher = \"sar\"\nsamples = 5\nmap = \"none\"\n"
    ));
    assert!(e.contains("labels.map") && e.contains("isotonic"), "{e}");
    let e = err(&format!("{MODEL}[labels]\nmap = \"linear\"\n"));
    assert!(e.contains("linear") && e.contains("none"), "{e}");
    let e = err(&format!("{MODEL}[labels]\nsubtask_prior = -1\n"));
    assert!(e.contains("subtask_prior") && e.contains(">= 0"), "{e}");
    let e = err("[model]\ndevice = \"tpu\"\npath = \"x\"\n");
    assert!(e.contains("model.device") && e.contains("cuda"), "{e}");
    let e = err("[data]\nper_subtask = 3\n");
    assert!(e.contains("model"), "{e}");
    let e = err("[model]\npreset = \"huge\"\ntokenizer = \"byte\"\n");
    assert!(e.contains("huge") && e.contains("tiny"), "{e}");
}

#[test]
fn defaults_are_filled_in() {
    let r = Recipe::parse(MODEL).unwrap();
    let t = r.to_toml();
    for key in [
        "micro_batch = 8",
        "global_batch = 32",
        "teacher = \"empirical-subtask\"",
        "lr = 0.0001",
        "tensorboard = true",
    ] {
        assert!(t.contains(key), "{key} missing from\n{t}");
    }
    assert_eq!(r.train.accumulation(), 4);
}
