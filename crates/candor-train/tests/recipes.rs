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

/// `text` is rejected with an error that contains every one of `needles`.
fn rejects(text: &str, needles: &[&str]) {
    let e = err(text);
    for n in needles {
        assert!(e.contains(n), "missing {n:?} in: {e}");
    }
}

const MODEL: &str = "[model]\npath = \"checkpoints/x\"\n";

#[test]
fn malformed_recipes_name_key_line_and_allowed_values() {
    // unknown key: named, with its line and the allowed keys
    rejects(
        &format!("{MODEL}[train]\nepochs = 1\nepoch = 3\n"),
        &["line 5", "unknown field `epoch`", "`epochs`"],
    );
    // unknown section
    rejects(
        &format!("{MODEL}[trainer]\nepochs = 1\n"),
        &["unknown field `trainer`", "line 3"],
    );
    // wrong type
    rejects(
        &format!("{MODEL}[optim]\nlr = \"fast\"\n"),
        &["line 4", "lr"],
    );
    // out of range
    rejects(
        &format!("{MODEL}[labels]\ntau_hi = 150\n"),
        &["line 4", "tau_hi", "allowed: 0 to 100"],
    );
    rejects(
        &format!("{MODEL}[train]\nmicro_batch = 0\n"),
        &["micro_batch", "1 or more"],
    );
    rejects(
        &format!("{MODEL}[train]\nvalue_weight = 0\n"),
        &["value_weight", "> 0"],
    );
    rejects(
        &format!("{MODEL}[train]\nconfidence_loss = \"ce\"\nvalue_ce = 1\n"),
        &["train.value_ce", "value_weight"],
    );
    rejects(
        &format!("{MODEL}[train]\nconfidence_loss = \"log\"\nvalue_log = 2\n"),
        &["train.value_log", "allowed with value_log > 0: \"brier\""],
    );
    rejects(
        &format!("{MODEL}[train]\nvalue_ce_decay = 0.5\n"),
        &["train.value_ce_decay", "value_ce, which is 0"],
    );
    rejects(
        &format!("{MODEL}[train]\nvalue_ce = 1\nvalue_ce_decay = 2\n"),
        &["value_ce_decay", "0 to 1"],
    );
    rejects(
        &format!("{MODEL}[train]\nvalue_ce = 1\nvalue_ce_floor = 0.2\n"),
        &["train.value_ce_floor", "set value_ce_decay > 0"],
    );
    rejects(
        &format!("{MODEL}[train]\nvalue_ce = 1\nvalue_ce_decay = 0.5\nvalue_ce_floor = 2\n"),
        &["train.value_ce_floor", "allowed: 0 to value_ce"],
    );
    rejects(
        &format!("{MODEL}[train]\nvalue_ce_target = \"two-hot\"\n"),
        &["train.value_ce_target", "set value_ce > 0"],
    );
    rejects(
        &format!("{MODEL}[train]\nvalue_ce = 1\nvalue_ce_target = \"mode\"\n"),
        &["value_ce_target", "written", "two-hot"],
    );
    rejects(
        &format!("{MODEL}[train]\nconfidence_loss = \"two-hot\"\nvalue_level = 10\n"),
        &["train.value_level", "allowed with value_level > 0"],
    );
    rejects(
        &format!("{MODEL}[train]\nbalance_power = 0.5\n"),
        &["train.balance_power", "set balance = \"label-bin\""],
    );
    rejects(
        &format!("{MODEL}[train]\nbalance = \"label-bin\"\nbalance_power = 1.5\n"),
        &["balance_power", "allowed: 0 to 1"],
    );
    // bad enum value lists the allowed ones
    rejects(
        &format!("{MODEL}[labels]\nteacher = \"oracle\"\n"),
        &["oracle", "empirical-subtask", "sar"],
    );
    rejects(
        &format!("{MODEL}[data]\ngroups = [\"Add\"]\n"),
        &["Add-subtract", "line 4"],
    );
    // cross-field rules
    rejects(
        &format!("{MODEL}[train]\nmicro_batch = 8\nglobal_batch = 20\n"),
        &["global_batch = 20", "multiple"],
    );
    rejects(
        &format!("{MODEL}[train]\nvalues = [0, 50, 150]\n"),
        &["train.values: 150 is out of range"],
    );
    rejects(
        &format!("{MODEL}[train]\nvalues = [0, 50, 50]\n"),
        &["train.values: 50 is listed twice"],
    );
    rejects(
        &format!("{MODEL}[train]\nvalues = [50]\n"),
        &["fewer than two values"],
    );
    rejects(
        &format!("{MODEL}[lora]\ntargets = [\"qkv\"]\n"),
        &["lora.targets", "q_proj"],
    );
    rejects(
        &format!("{MODEL}[train]\nlayers = [3]\n[lora]\nrank = 4\n"),
        &["train.layers", "[lora]"],
    );
    rejects(
        &format!("{MODEL}[labels]\nteacher = \"sar\"\nsamples = 1\n"),
        &["labels.samples"],
    );
    rejects(
        &format!("{MODEL}[labels]\nsubtask_prior = 5\n"),
        &["labels.subtask_prior", "empirical-question"],
    );
    rejects(
        &format!("{MODEL}[labels]\nteacher = \"sar\"\nsamples = 5\nmap = \"none\"\n"),
        &["labels.map", "isotonic"],
    );
    rejects(
        &format!("{MODEL}[labels]\nmap = \"linear\"\n"),
        &["linear", "none"],
    );
    rejects(
        &format!("{MODEL}[labels]\nsubtask_prior = -1\n"),
        &["subtask_prior", ">= 0"],
    );
    rejects(
        "[model]\ndevice = \"tpu\"\npath = \"x\"\n",
        &["model.device", "cuda"],
    );
    rejects("[data]\nper_subtask = 3\n", &["model"]);
    rejects(
        "[model]\npreset = \"huge\"\ntokenizer = \"byte\"\n",
        &["huge", "tiny"],
    );
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
