//! Numbers out of free text: signs, thousands separators, decimals and `a/b` fractions.

use regex::Regex;
use std::sync::OnceLock;

/// A number found in text: an integer (or a decimal, kept as its exact parts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Num {
    Int(i128),
    /// Had a non-zero fractional part: never equal to an integer answer.
    NonInteger,
    Fraction(i128, i128),
}

fn re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?P<sign>[-+−])?\s?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<dec>\d+))?(?:\s*/\s*(?P<den>\d+))?").unwrap()
    })
}

/// Every number in `text`, in order (after an `A:` when the text contains one).
pub fn numbers(text: &str) -> Vec<Num> {
    let text = match text.find("A:") {
        Some(i) => &text[i + 2..],
        None => text,
    };
    re().captures_iter(text)
        .filter_map(|c| {
            let neg = matches!(c.name("sign").map(|s| s.as_str()), Some("-") | Some("−"));
            let int: i128 = c["int"].replace(',', "").parse().ok()?;
            let int = if neg { -int } else { int };
            if let Some(den) = c.name("den") {
                return Some(Num::Fraction(int, den.as_str().parse().ok()?));
            }
            match c.name("dec") {
                Some(d) if d.as_str().chars().any(|ch| ch != '0') => Some(Num::NonInteger),
                _ => Some(Num::Int(int)),
            }
        })
        .collect()
}

/// The first integer in `text` (a fraction or non-integer there counts as no integer).
pub fn first_int(text: &str) -> Option<i128> {
    match numbers(text).first()? {
        Num::Int(v) => Some(*v),
        _ => None,
    }
}

/// `12345` → `12,345`.
pub fn with_separators(v: i128) -> String {
    let s = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_signs_separators_fractions() {
        assert_eq!(first_int("A: The answer is 10,248."), Some(10248));
        assert_eq!(first_int("-42 apples"), Some(-42));
        assert_eq!(first_int("It is − 7"), Some(-7));
        assert_eq!(first_int("12.0"), Some(12));
        assert_eq!(first_int("12.5"), None);
        assert_eq!(numbers("3 / 4"), vec![Num::Fraction(3, 4)]);
        assert_eq!(numbers("A: 12 and 30"), vec![Num::Int(12), Num::Int(30)]);
        assert_eq!(first_int("no number"), None);
        assert_eq!(with_separators(1234567), "1,234,567");
        assert_eq!(with_separators(-1000), "-1,000");
        assert_eq!(with_separators(999), "999");
    }
}
