//! The byte-level tokenizer written for models trained from scratch round-trips any text and
//! renders ChatML prompts.

use candor_model::tokenizer::write_byte_tokenizer;
use candor_model::{PromptStyle, Tokenizer};

#[test]
fn byte_tokenizer_round_trips_and_chats() {
    let dir = tempfile::tempdir().unwrap();
    write_byte_tokenizer(dir.path()).unwrap();
    let tok = Tokenizer::load(dir.path()).unwrap();
    assert_eq!(tok.inner.get_vocab_size(true), 259);
    for text in [
        "What is 952 - 55?",
        " 897\nConfidence: 61%",
        "naïve – ü 😀",
        "",
    ] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(ids.len(), text.len(), "one token per byte: {text:?}");
        assert_eq!(tok.decode(&ids, true).unwrap(), text);
    }
    let p = tok.prompt("What is 1 + 1?", PromptStyle::Chat).unwrap();
    assert_eq!(
        p,
        "<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&p, false).unwrap();
    assert_eq!(ids[0], tok.id("<|im_start|>").unwrap());
    assert_eq!(tok.stop_ids, vec![tok.id("<|im_end|>").unwrap()]);
    assert_eq!(tok.pad_id, tok.id("<|endoftext|>").unwrap());
}

#[test]
fn a_tokenizer_with_more_ids_than_the_model_has_rows_is_an_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    write_byte_tokenizer(dir.path()).unwrap();
    let tok = Tokenizer::load(dir.path()).unwrap();
    assert_eq!(tok.id_bound(), 259);
    tok.check_fits(259).unwrap();
    tok.check_fits(49152).unwrap();
    let e = tok.check_fits(256).unwrap_err().to_string();
    assert!(
        e.contains("go up to 258") && e.contains("vocab_size = 256"),
        "{e}"
    );
}
