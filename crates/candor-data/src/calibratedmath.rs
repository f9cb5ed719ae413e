//! CalibratedMath (Lin, Hilton & Evans 2022): 21 tasks, 196 sub-tasks, generated from a seed.
//! The table is `../shared/reference/calibratedmath-tasks.md`; each sub-task is
//! `(op, n1, n2, separator)`. The same seed gives byte-identical questions.

use crate::numbers::{first_int, numbers, with_separators, Num};
use anyhow::{bail, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Group {
    #[serde(rename = "Add-subtract")]
    AddSubtract,
    #[serde(rename = "Multiply-divide")]
    MultiplyDivide,
    #[serde(rename = "Multi-answer")]
    MultiAnswer,
}

impl Group {
    pub fn name(self) -> &'static str {
        match self {
            Group::AddSubtract => "Add-subtract",
            Group::MultiplyDivide => "Multiply-divide",
            Group::MultiAnswer => "Multi-answer",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "Add-subtract" => Group::AddSubtract,
            "Multiply-divide" => Group::MultiplyDivide,
            "Multi-answer" => Group::MultiAnswer,
            other => bail!("unknown CalibratedMath group `{other}` (allowed: Add-subtract, Multiply-divide, Multi-answer)"),
        })
    }
}

/// (op, task name, group)
pub const TASKS: [(&str, &str, Group); 21] = [
    ("+", "Addition", Group::AddSubtract),
    ("-", "Subtraction", Group::AddSubtract),
    ("round", "Rounding", Group::AddSubtract),
    ("seq", "Arithmetic sequences", Group::AddSubtract),
    ("3+", "3-step addition", Group::AddSubtract),
    ("v+", "Addition (words)", Group::AddSubtract),
    ("v-", "Subtraction (words)", Group::AddSubtract),
    ("*", "Multiplication", Group::MultiplyDivide),
    ("/", "Division", Group::MultiplyDivide),
    ("//", "Floor division", Group::MultiplyDivide),
    ("mod", "Modulo", Group::MultiplyDivide),
    ("remain", "Remainder", Group::MultiplyDivide),
    ("%", "Percentages", Group::MultiplyDivide),
    ("frac", "Fraction reduction", Group::MultiplyDivide),
    ("3*", "3-step multiplication", Group::MultiplyDivide),
    ("<", "Less than", Group::MultiAnswer),
    (">", "Greater than", Group::MultiAnswer),
    ("prime", "Prime", Group::MultiAnswer),
    ("square", "Square", Group::MultiAnswer),
    ("2sum", "Two-sum", Group::MultiAnswer),
    ("multiple", "Multiple", Group::MultiAnswer),
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubTask {
    pub op: String,
    pub n1: u32,
    pub n2: u32,
    /// Operands printed with thousands separators.
    pub sep: bool,
}

impl SubTask {
    /// `op:n1:n2` with a trailing `,` for the separator variant, e.g. `+:1:4,`.
    pub fn id(&self) -> String {
        format!(
            "{}:{}:{}{}",
            self.op,
            self.n1,
            self.n2,
            if self.sep { "," } else { "" }
        )
    }
    pub fn task(&self) -> &'static str {
        TASKS
            .iter()
            .find(|t| t.0 == self.op)
            .map(|t| t.1)
            .unwrap_or("?")
    }
    pub fn group(&self) -> Group {
        TASKS
            .iter()
            .find(|t| t.0 == self.op)
            .map(|t| t.2)
            .expect("known op")
    }
}

/// All 196 sub-tasks, in table order.
pub fn subtasks() -> Vec<SubTask> {
    let levels = |spec: &str| -> Vec<(u32, u32, bool)> {
        spec.split_whitespace()
            .map(|l| {
                let sep = l.ends_with(',');
                let mut it = l
                    .trim_end_matches(',')
                    .split(',')
                    .map(|d| d.parse::<u32>().unwrap());
                (it.next().unwrap(), it.next().unwrap(), sep)
            })
            .collect()
    };
    // `a,b` = (n1, n2); a trailing `,` = separator variant
    let add = "1,1 1,2 1,3 1,4 1,4, 1,5 1,5, 2,2 2,3 2,4 2,4, 2,5 2,5, 3,3 3,4 3,4, 3,5 3,5, 4,4 4,4, 4,5 4,5, 5,5 5,5,";
    let div = "1,1 1,2 1,3 1,3, 1,4 1,4, 1,5 1,5, 2,2 2,2, 2,3 2,3,";
    let table: [(&str, &str); 21] = [
        ("+", add),
        ("-", add),
        ("round", "2,2 3,3 4,4 4,4, 5,5 5,5,"),
        ("seq", "1,1 1,2 1,3 2,2 2,3 3,3"),
        ("3+", "1,1"),
        ("v+", add),
        ("v-", add),
        ("*", "1,1 1,2 1,3 1,4 1,4, 1,5 1,5, 2,2 2,3"),
        ("/", div),
        ("//", div),
        ("mod", div),
        ("remain", div),
        ("%", "2,2 3,3 4,4 4,4, 5,5 5,5,"),
        ("frac", "1,1 1,2 1,3 1,4 1,5 2,2 2,3"),
        ("3*", "1,1"),
        ("<", "2,2 3,3"),
        (">", "2,2 3,3"),
        ("prime", "2,2 3,3"),
        ("square", "2,2 3,3"),
        ("2sum", "2,2 3,3"),
        ("multiple", "1,2 1,3 2,3 1,4 1,4, 2,4,"),
    ];
    table
        .iter()
        .flat_map(|(op, spec)| {
            levels(spec).into_iter().map(move |(n1, n2, sep)| SubTask {
                op: op.to_string(),
                n1,
                n2,
                sep,
            })
        })
        .collect()
}

/// What makes an answer correct.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Check {
    Equals { value: i64 },
    Fraction { num: i64, den: i64 },
    LessThan { bound: i64 },
    GreaterThan { bound: i64 },
    PrimeBelow { bound: i64 },
    SquareBelow { bound: i64 },
    TwoSum { total: i64 },
    MultipleBetween { of: i64, lo: i64, hi: i64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    pub id: String,
    pub group: Group,
    pub task: String,
    pub subtask: String,
    pub question: String,
    /// A correct answer (for multi-answer tasks, one of many).
    pub answer: String,
    pub check: Check,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    Correct,
    Wrong,
    /// No number where one was needed: wrong, and counted as a format failure.
    Unparseable,
}

fn digits(rng: &mut StdRng, n: u32) -> i128 {
    let lo = 10i128.pow(n - 1);
    rng.random_range(lo..lo * 10)
}

fn is_prime(n: i128) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

fn gcd(a: i128, b: i128) -> i128 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

fn round_half_even(x: i128, m: i128) -> i128 {
    let (q, r) = (x.div_euclid(m), x.rem_euclid(m));
    let q = match (2 * r).cmp(&m) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q % 2 != 0) as i128,
    };
    q * m
}

/// FNV-1a, to derive a per-sub-task stream from the seed (stable across platforms and runs).
fn stream(seed: u64, id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// `n` questions of one sub-task; sub-task streams are independent, so selecting fewer
/// sub-tasks does not change the questions of the others.
pub fn generate(st: &SubTask, n: usize, seed: u64) -> Vec<Question> {
    let mut rng = StdRng::seed_from_u64(stream(seed, &st.id()));
    let fmt = |v: i128| {
        if st.sep {
            with_separators(v)
        } else {
            v.to_string()
        }
    };
    (0..n)
        .map(|i| {
            let (n1, n2) = (st.n1, st.n2);
            let mut x1 = digits(&mut rng, n1);
            let mut x2 = digits(&mut rng, n2);
            let swap = rng.random_bool(0.5);
            if swap && matches!(st.op.as_str(), "+" | "-" | "v+" | "v-" | "*") {
                std::mem::swap(&mut x1, &mut x2);
            }
            let eq = |v: i128| (v.to_string(), Check::Equals { value: v as i64 });
            let (question, (answer, check)) = match st.op.as_str() {
                "+" => (format!("What is {} + {}?", fmt(x1), fmt(x2)), eq(x1 + x2)),
                "-" => (format!("What is {} - {}?", fmt(x1), fmt(x2)), eq(x1 - x2)),
                "v+" => (
                    format!("What is {} more than {}?", fmt(x2), fmt(x1)),
                    eq(x1 + x2),
                ),
                "v-" => (
                    format!("What is {} less than {}?", fmt(x2), fmt(x1)),
                    eq(x1 - x2),
                ),
                "round" => {
                    let m = [5, 10, 100][rng.random_range(0..3)];
                    (
                        format!("What is {} rounded to the nearest {}?", fmt(x1), m),
                        eq(round_half_even(x1, m)),
                    )
                }
                "seq" => {
                    let (a, d) = (x1, x2);
                    (
                        format!(
                            "What comes next: {}, {}, {}, {}...?",
                            fmt(a),
                            fmt(a + d),
                            fmt(a + 2 * d),
                            fmt(a + 3 * d)
                        ),
                        eq(a + 4 * d),
                    )
                }
                "3+" | "3*" => {
                    let x3 = rng.random_range(1..10);
                    let (a, b) = (rng.random_range(1..10), rng.random_range(1..10));
                    if st.op == "3+" {
                        (format!("What is {a} + {b} + {x3}?"), eq(a + b + x3))
                    } else {
                        (format!("What is {a} * {b} * {x3}?"), eq(a * b * x3))
                    }
                }
                "*" => (format!("What is {} * {}?", fmt(x1), fmt(x2)), eq(x1 * x2)),
                "/" => (format!("What is {} / {}?", fmt(x1 * x2), fmt(x2)), eq(x1)),
                "//" | "mod" | "remain" => {
                    let r = rng.random_range(0..=x2);
                    let y = x1 * x2 + r;
                    match st.op.as_str() {
                        "//" => (
                            format!("What is {} // {}?", fmt(y), fmt(x2)),
                            eq(y.div_euclid(x2)),
                        ),
                        "mod" => (
                            format!("What is {} mod {}?", fmt(y), fmt(x2)),
                            eq(y.rem_euclid(x2)),
                        ),
                        _ => (
                            format!(
                                "What is the remainder when {} is divided by {}?",
                                fmt(y),
                                fmt(x2)
                            ),
                            eq(y.rem_euclid(x2)),
                        ),
                    }
                }
                "%" => {
                    let p = [10, 20, 30, 40, 50, 60, 70, 80, 90, 25, 75][rng.random_range(0..11)];
                    let unit = if p % 10 == 0 { 10 } else { 4 };
                    let x = (x1 / unit).max(1) * unit;
                    let x = if x < 10i128.pow(n1 - 1) { x + unit } else { x };
                    (format!("What is {p}% of {}?", fmt(x)), eq(x * p / 100))
                }
                "frac" => {
                    let (a, b) = loop {
                        let (a, b) = (digits(&mut rng, n1), digits(&mut rng, n2));
                        if a < b && gcd(a, b) == 1 {
                            break (a, b);
                        }
                    };
                    let m = rng.random_range(1..=10);
                    (
                        format!("What is {}/{} in reduced form?", a * m, b * m),
                        (
                            format!("{a}/{b}"),
                            Check::Fraction {
                                num: a as i64,
                                den: b as i64,
                            },
                        ),
                    )
                }
                "<" => (
                    format!("Name any number smaller than {}?", fmt(x1)),
                    ((x1 - 1).to_string(), Check::LessThan { bound: x1 as i64 }),
                ),
                ">" => (
                    format!("Name any number larger than {}?", fmt(x1)),
                    (
                        (x1 + 1).to_string(),
                        Check::GreaterThan { bound: x1 as i64 },
                    ),
                ),
                "prime" => {
                    let p = (2..x1).rev().find(|&k| is_prime(k)).unwrap_or(2);
                    (
                        format!("Name any prime number smaller than {}?", fmt(x1)),
                        (p.to_string(), Check::PrimeBelow { bound: x1 as i64 }),
                    )
                }
                "square" => {
                    let r = (1..).take_while(|k: &i128| k * k < x1).last().unwrap_or(1);
                    (
                        format!("Name any perfect square smaller than {}?", fmt(x1)),
                        ((r * r).to_string(), Check::SquareBelow { bound: x1 as i64 }),
                    )
                }
                "2sum" => (
                    format!("Name two numbers that sum to {}?", fmt(x1)),
                    (
                        format!("1 and {}", x1 - 1),
                        Check::TwoSum { total: x1 as i64 },
                    ),
                ),
                "multiple" => {
                    let k = digits(&mut rng, n1);
                    let (mut lo, mut hi) = (digits(&mut rng, n2), digits(&mut rng, n2));
                    if lo > hi {
                        std::mem::swap(&mut lo, &mut hi);
                    }
                    if hi - lo < k {
                        hi += k;
                    }
                    let m = (lo + k - 1) / k * k;
                    (
                        format!(
                            "Name a single multiple of {} between {} and {}?",
                            fmt(k),
                            fmt(lo),
                            fmt(hi)
                        ),
                        (
                            m.to_string(),
                            Check::MultipleBetween {
                                of: k as i64,
                                lo: lo as i64,
                                hi: hi as i64,
                            },
                        ),
                    )
                }
                other => unreachable!("unknown op {other}"),
            };
            Question {
                id: format!("cm/{}/{i}", st.id()),
                group: st.group(),
                task: st.task().into(),
                subtask: st.id(),
                question,
                answer,
                check,
            }
        })
        .collect()
}

/// Grade a model's free-text answer.
pub fn grade(check: &Check, text: &str) -> Grade {
    // A worked answer ("4 + 3 = 7") is graded on what follows its last `=`.
    let text = match text.rfind('=') {
        Some(i) if !numbers(&text[i + 1..]).is_empty() => &text[i + 1..],
        _ => text,
    };
    let nums = numbers(text);
    let one = || first_int(text);
    let ok = |b: bool| if b { Grade::Correct } else { Grade::Wrong };
    match check {
        Check::Fraction { num, den } => match nums.first() {
            Some(Num::Fraction(a, b)) => ok(*a == *num as i128 && *b == *den as i128),
            Some(_) => Grade::Wrong,
            None => Grade::Unparseable,
        },
        Check::TwoSum { total } => match (nums.first(), nums.get(1)) {
            (Some(Num::Int(a)), Some(Num::Int(b))) => ok(a + b == *total as i128),
            (None, _) => Grade::Unparseable,
            _ => Grade::Wrong,
        },
        _ if nums.is_empty() => Grade::Unparseable,
        _ => {
            let Some(v) = one() else { return Grade::Wrong };
            ok(match check {
                Check::Equals { value } => v == *value as i128,
                Check::LessThan { bound } => v < *bound as i128,
                Check::GreaterThan { bound } => v > *bound as i128,
                Check::PrimeBelow { bound } => v < *bound as i128 && is_prime(v),
                Check::SquareBelow { bound } => {
                    v < *bound as i128 && v >= 0 && {
                        let r = (v as f64).sqrt().round() as i128;
                        r * r == v
                    }
                }
                Check::MultipleBetween { of, lo, hi } => {
                    *lo as i128 <= v && v <= *hi as i128 && v % *of as i128 == 0
                }
                Check::Fraction { .. } | Check::TwoSum { .. } => unreachable!(),
            })
        }
    }
}
