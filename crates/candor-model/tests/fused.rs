//! The fused CPU ops (`candor_model::fused`) against the same ops written as tensor ops
//! (`fused::reference`): forward values on the plain CPU backend and on autodiff, and the
//! gradients of every input, at shapes that are not multiples of the kernels' chunk sizes.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use candor_model::fused::{self, reference};

type Ad = Autodiff<Flex>;

fn rand<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Flex, D> {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

fn close<const D: usize>(what: &str, a: Tensor<Flex, D>, b: Tensor<Flex, D>, tol: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (a, b) = (
        a.into_data().to_vec::<f32>().unwrap(),
        b.into_data().to_vec::<f32>().unwrap(),
    );
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= tol * scale,
        "{what}: largest difference {worst} (scale {scale})"
    );
    assert!(
        b.iter().any(|v| *v != 0.0),
        "{what}: reference is all zeros"
    );
}

/// `sum(out · probe)` for a fixed random probe, so each output element gets its own gradient.
fn probe_loss<const D: usize>(out: Tensor<Ad, D>, seed: u64) -> Tensor<Ad, 1> {
    let p = Tensor::<Ad, D>::from_inner(rand(out.dims(), seed));
    (out * p).sum()
}

fn leaf<const D: usize>(t: &Tensor<Flex, D>) -> Tensor<Ad, D> {
    Tensor::from_inner(t.clone()).require_grad()
}

#[test]
fn rms_norm_matches_tensor_ops() {
    let x = rand([3, 37, 200], 1);
    let w = rand([200], 2);
    close(
        "forward",
        fused::rms_norm(x.clone(), w.clone(), 1e-5),
        reference::rms_norm(x.clone(), w.clone(), 1e-5),
        1e-5,
    );
    let grads = |fused: bool| {
        let (xa, wa) = (leaf(&x), leaf(&w));
        let y = if fused {
            fused::rms_norm(xa.clone(), wa.clone(), 1e-5)
        } else {
            reference::rms_norm(xa.clone(), wa.clone(), 1e-5)
        };
        let g = probe_loss(y, 3).backward();
        (xa.grad(&g).unwrap(), wa.grad(&g).unwrap())
    };
    let ((fx, fw), (rx, rw)) = (grads(true), grads(false));
    close("d x", fx, rx, 1e-4);
    close("d weight", fw, rw, 1e-4);
}

#[test]
fn gelu_and_layer_norm_match_tensor_ops() {
    // values past ±4 as well, where erf saturates
    let x = rand([2, 41, 700], 7) * 3.0;
    close(
        "gelu",
        fused::gelu(x.clone()),
        reference::gelu(x.clone()),
        1e-6,
    );
    let (w, b) = (rand([700], 8), rand([700], 9));
    let shifted = x + 5.0; // a mean far from 0 (the variance is taken around it)
    close(
        "layer_norm",
        fused::layer_norm(shifted.clone(), w.clone(), b.clone(), 1e-12),
        reference::layer_norm(shifted, w, b, 1e-12),
        1e-5,
    );
}

#[test]
fn swiglu_matches_tensor_ops() {
    let g = rand([2, 41, 700], 4);
    let u = rand([2, 41, 700], 5);
    close(
        "forward",
        fused::swiglu(g.clone(), u.clone()),
        reference::swiglu(g.clone(), u.clone()),
        1e-5,
    );
    let grads = |fused: bool| {
        let (ga, ua) = (leaf(&g), leaf(&u));
        let y = if fused {
            fused::swiglu(ga.clone(), ua.clone())
        } else {
            reference::swiglu(ga.clone(), ua.clone())
        };
        let gr = probe_loss(y, 6).backward();
        (ga.grad(&gr).unwrap(), ua.grad(&gr).unwrap())
    };
    let ((fg, fu), (rg, ru)) = (grads(true), grads(false));
    close("d gate", fg, rg, 1e-5);
    close("d up", fu, ru, 1e-5);
}

#[test]
fn rope_matches_tensor_ops() {
    let [b, t, h, d] = [2, 13, 3, 16];
    let x = rand([b, t, h, d], 7);
    let (cos, sin) = (rand([b * t, d], 8), rand([b * t, d], 9));
    let out = fused::rope(x.clone(), &cos, &sin);
    assert_eq!(out.dims(), [b, h, t, d]);
    close("forward", out, reference::rope(x.clone(), &cos, &sin), 1e-5);
    let grads = |fused: bool| {
        let xa = leaf(&x);
        let [c, s] = [&cos, &sin].map(|t| Tensor::<Ad, 2>::from_inner(t.clone()));
        let y = if fused {
            fused::rope(xa.clone(), &c, &s)
        } else {
            reference::rope(xa.clone(), &c, &s)
        };
        xa.grad(&probe_loss(y, 10).backward()).unwrap()
    };
    close("d x", grads(true), grads(false), 1e-5);
}

/// A strided (transposed) input takes the same values through the fused path.
#[test]
fn fused_ops_accept_strided_inputs() {
    let x = rand([3, 200, 37], 11).swap_dims(1, 2);
    let w = rand([200], 12);
    close(
        "rms_norm of a transposed input",
        fused::rms_norm(x.clone(), w.clone(), 1e-6),
        reference::rms_norm(x, w, 1e-6),
        1e-5,
    );
}

#[test]
fn attention_matches_tensor_ops() {
    // 6 query heads over 3 KV heads, 5 new queries after 5 cached keys (t = 10 keys); and 7
    // after 30 (t = 37: the softmax's 16-lane max over two whole chunks and a remainder)
    attention_case([2, 6, 3, 5, 10, 8]);
    attention_case([2, 6, 3, 7, 37, 8]);
}

/// Fused attention against the tensor ops at `[b, h, kv, tq, t, d]`; `v` a strided view, as
/// the model's cache concatenation can leave it.
fn attention_case([b, h, kv, tq, t, d]: [usize; 6]) {
    use burn::tensor::Bool;
    let nq = h / kv * tq;
    let (q, k, v) = (
        rand([b, h, tq, d], 13),
        rand([b, kv, t, d], 14),
        rand([b, kv, t, d], 15).swap_dims(1, 2),
    );
    // causal over the keys of each query (queries repeat per head of a group), plus one
    // left-padded key in batch row 1
    let m: Vec<bool> = (0..b * nq * t)
        .map(|i| {
            let (row, qi, j) = (i / (nq * t), (i / t) % nq, i % t);
            let at = t - tq + qi % tq; // the query's own position among the keys
            j > at || (row == 1 && j == 0)
        })
        .collect();
    let mask = |dev: &_| {
        Tensor::<Flex, 4, Bool>::from_data(TensorData::new(m.clone(), [b, 1, nq, t]), dev)
    };
    let dev = Default::default();
    close(
        "forward",
        fused::attention(q.clone(), k.clone(), v.clone(), &mask(&dev)),
        reference::attention(q.clone(), k.clone(), v.clone(), &mask(&dev)),
        1e-5,
    );
    // queries and keys as head-first views of `[b, seq, heads, d]` projections (MiniLM's), made
    // contiguous by a row copy rather than Flex's strided copy: same values
    let (qs, ks) = (
        q.clone().swap_dims(1, 2).into_data(),
        k.clone().swap_dims(1, 2).into_data(),
    );
    let (qs, ks) = (
        Tensor::<Flex, 4>::from_data(qs, &dev).swap_dims(1, 2),
        Tensor::<Flex, 4>::from_data(ks, &dev).swap_dims(1, 2),
    );
    close(
        "forward, head-first views",
        fused::attention(qs, ks, v.clone(), &mask(&dev)),
        reference::attention(q.clone(), k.clone(), v.clone(), &mask(&dev)),
        1e-5,
    );
    let grads = |fused: bool| {
        let (qa, ka, va) = (leaf(&q), leaf(&k), leaf(&v));
        let ma = Tensor::<Ad, 4, Bool>::from_inner(mask(&dev));
        let y = if fused {
            fused::attention(qa.clone(), ka.clone(), va.clone(), &ma)
        } else {
            reference::attention(qa.clone(), ka.clone(), va.clone(), &ma)
        };
        let g = probe_loss(y, 16).backward();
        [
            qa.grad(&g).unwrap(),
            ka.grad(&g).unwrap(),
            va.grad(&g).unwrap(),
        ]
    };
    let (f, r) = (grads(true), grads(false));
    for ((name, f), r) in ["d q", "d k", "d v"].into_iter().zip(f).zip(r) {
        close(name, f, r, 1e-4);
    }
}

#[test]
fn embedding_gradient_matches_tensor_ops_alone_and_tied() {
    let (v, d) = (53, 24);
    let table = rand([v, d], 30);
    let ids = |t: &Tensor<Flex, 2>| {
        // token 7 three times, token 0 and the last token once each
        let rows = [7i64, 3, 7, 0, 52, 11, 7, 29, 3, 44];
        Tensor::<Ad, 2, burn::tensor::Int>::from_data(
            TensorData::new(rows.to_vec(), [2, 5]),
            &t.device(),
        )
    };
    // 0: the lookup alone; 1: its output through the tied output layer; 2: the table also used
    // on its own, apart from the lookup
    for case in 0..3 {
        let grad = |fused: bool| {
            let ta = leaf(&table);
            let x = if fused {
                fused::embedding(ta.clone(), ids(&table))
            } else {
                burn::tensor::module::embedding(ta.clone(), ids(&table))
            };
            let mut loss = probe_loss(x.clone(), 31);
            if case == 1 {
                let logits = fused::matmul(x.reshape([10, d]), ta.clone().transpose());
                loss = loss + probe_loss(logits, 32);
            }
            if case == 2 {
                loss = loss + probe_loss(ta.clone() * 2.0, 33);
            }
            ta.grad(&loss.backward()).unwrap()
        };
        close(
            &format!("case {case}: d table"),
            grad(true),
            grad(false),
            1e-5,
        );
    }
}

#[test]
fn nll_matches_tensor_ops_in_both_head_layouts() {
    use candor_model::fused::HeadLayout;
    let (n, d, v) = (7, 24, 301);
    let h = rand([n, d], 17);
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 97 + 5) % v as u32).collect();
    let weights: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 / 4.0).collect();
    for (layout, shape) in [
        (HeadLayout::VocabFirst, [v, d]),
        (HeadLayout::VocabLast, [d, v]),
    ] {
        let w = rand(shape, 18);
        close(
            &format!("{layout:?} forward"),
            fused::nll(h.clone(), w.clone(), layout, &targets, &weights),
            reference::nll(h.clone(), w.clone(), layout, &targets, &weights),
            1e-5,
        );
        let grads = |fused: bool| {
            let (ha, wa) = (leaf(&h), leaf(&w));
            let loss = if fused {
                fused::nll(ha.clone(), wa.clone(), layout, &targets, &weights)
            } else {
                reference::nll(ha.clone(), wa.clone(), layout, &targets, &weights)
            };
            let g = (loss * 3.0).backward();
            (ha.grad(&g).unwrap(), wa.grad(&g).unwrap())
        };
        let ((fh, fw), (rh, rw)) = (grads(true), grads(false));
        close(&format!("{layout:?} d hidden"), fh, rh, 1e-4);
        close(&format!("{layout:?} d weight"), fw, rw, 1e-4);
    }
}

#[test]
fn matmul_matches_tensor_ops_for_strided_operands() {
    let a = rand([300, 70], 19);
    let b = rand([90, 70], 20).transpose(); // [70, 90], a transposed view
    close(
        "forward",
        fused::matmul(a.clone(), b.clone()),
        a.clone().matmul(b.clone()),
        1e-5,
    );
    let grads = |fused: bool| {
        let (aa, ba) = (leaf(&a), leaf(&b));
        let y = if fused {
            fused::matmul(aa.clone(), ba.clone())
        } else {
            aa.clone().matmul(ba.clone())
        };
        let g = probe_loss(y, 21).backward();
        (aa.grad(&g).unwrap(), ba.grad(&g).unwrap())
    };
    let ((fa, fb), (ra, rb)) = (grads(true), grads(false));
    close("d a", fa, ra, 1e-5);
    close("d b", fb, rb, 1e-5);
}

/// A long inner dimension with a small output is split across threads and the partial products
/// summed (`fused/gemm.rs`, `split_k`): the same values as Flex's own matmul.
#[test]
fn matmul_with_a_long_inner_dimension_matches_tensor_ops() {
    let a = rand([9, 60_000], 22);
    let b = rand([20, 60_000], 23).transpose(); // [60000, 20], read through its strides
                                                // sums of 60,000 products: the summation order differs between the two; a dropped or
                                                // doubled partial would be off by a large share of the largest value
    close(
        "forward",
        fused::matmul(a.clone(), b.clone()),
        a.matmul(b),
        1e-4,
    );
}

/// Decode-shaped products (a few rows against a row-major weight) take the unpacked path
/// (`fused/decode.rs` on AVX-512 machines): every row count of its 8-row tiles, the columns
/// past its last 32-column strip, and operands read through row strides (slices of wider
/// tensors) give Flex's values. Where the path does not apply the same checks cover gemm's.
#[test]
fn matmul_with_few_rows_matches_tensor_ops() {
    let mut seed = 30;
    for m in [1, 3, 7, 8, 9, 17, 32, 33] {
        for (k, n) in [(1, 40), (64, 32), (300, 100), (576, 577), (20, 31)] {
            seed += 2;
            let a = rand([m, k], seed);
            let b = rand([k, n], seed + 1);
            close(
                &format!("{m}×{k}·{k}×{n}"),
                fused::matmul(a.clone(), b.clone()),
                a.matmul(b),
                1e-5,
            );
        }
    }
    // views: the rows of `a` and `b` are longer than the slices multiplied
    let a = rand([6, 90], 90).narrow(1, 10, 70);
    let b = rand([70, 200], 91).narrow(1, 37, 130);
    close(
        "strided rows",
        fused::matmul(a.clone(), b.clone()),
        a.matmul(b),
        1e-5,
    );
}

/// A weight multiplied at decode shapes a second time is packed once and read packed from then
/// on (`fused/decode.rs`): the first, second and third products give the same values, bit for
/// bit (same summation order), and Flex's within rounding; for a row-major weight, a tied
/// output layer's transposed view, panels that do not split evenly (3 tiles of 32), columns
/// past the last 32, and 100 rows (packed products take up to 128). A weight changed in place afterwards is not served from its stale packing.
#[test]
fn decode_products_with_a_packed_weight_match_tensor_ops() {
    let mut seed = 60;
    for (m, k, n, transposed) in [
        (5, 64, 96, false),
        (16, 300, 577, false),
        (32, 576, 192, false),
        (9, 70, 130, true),
        (24, 576, 1024, true),
        (100, 96, 160, false),
    ] {
        seed += 2;
        let b = if transposed {
            rand([n, k], seed).transpose()
        } else {
            rand([k, n], seed)
        };
        let a = rand([m, k], seed + 1);
        let want = a.clone().matmul(b.clone());
        let runs: Vec<_> = (0..3)
            .map(|_| fused::matmul(a.clone(), b.clone()))
            .collect();
        for (i, got) in runs.iter().enumerate() {
            close(
                &format!(
                    "{m}×{k}·{k}×{n} (transposed {transposed}) product {}",
                    i + 1
                ),
                got.clone(),
                want.clone(),
                1e-5,
            );
        }
        if !transposed && m <= 32 {
            // the first product streams the weight unpacked, the later ones read it packed
            // (past 32 rows the first one is gemm's, in another summation order)
            assert_eq!(runs[0].to_data(), runs[1].to_data(), "unpacked vs packed");
        }
        assert_eq!(runs[1].to_data(), runs[2].to_data(), "packed twice");
    }
    // a weight used (and packed), then changed in place: the product sees the new values
    let w = rand([64, 160], 80);
    let a = rand([8, 64], 81);
    for _ in 0..3 {
        fused::matmul(a.clone(), w.clone());
    }
    let delta = rand([64, 160], 82);
    let w2 = fused::add(w, delta.clone()); // `w` is unshared: updated in place where it can be
    let want = a.clone().matmul(w2.clone());
    for i in 0..3 {
        close(
            &format!("changed weight, product {}", i + 1),
            fused::matmul(a.clone(), w2.clone()),
            want.clone(),
            1e-5,
        );
    }
}

#[test]
fn weights_packed_from_many_decoding_jobs_at_once_do_not_deadlock() {
    // Decoding runs on a rayon worker (`device::on_cpu_pool`), and a worker waiting inside a
    // parallel op (the packing) may pick up another thread's whole decoding job, which then
    // asks for a packed weight on the same thread. With the registry locked across the packing
    // that request waited for itself (CI hung in tests/answering.rs). Here 8 threads each start
    // jobs that use fresh weights twice (the second product packs them); all must finish.
    let (tx, rx) = std::sync::mpsc::channel();
    for t in 0..8u64 {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for round in 0..6u64 {
                let seed = 1000 + t * 100 + round * 2;
                let (w, a) = (rand([576, 1536], seed), rand([8, 576], seed + 1));
                let want = a.clone().matmul(w.clone());
                let got = rayon::scope(|_| {
                    fused::matmul(a.clone(), w.clone());
                    fused::matmul(a.clone(), w.clone())
                });
                close(&format!("thread {t} round {round}"), got, want, 1e-4);
            }
            tx.send(t).unwrap();
        });
    }
    drop(tx);
    let wait = std::time::Duration::from_secs(120);
    for done in 0..8 {
        match rx.recv_timeout(wait) {
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("{done} of 8 threads finished within {wait:?}: the packing deadlocked")
            }
            Err(e) => panic!("a thread failed (its message is above): {e}"),
        }
    }
}

#[test]
fn add_matches_tensor_ops_for_a_residual_and_a_bias() {
    let y = rand([3, 41, 700], 21);
    let r = rand([3, 41, 700], 22);
    let b = rand([1, 1, 700], 23);
    let want = (y.clone() + r.clone(), y.clone() + b.clone());
    // `y` is held here too: the in-place pass must copy it rather than change this holder
    let before = y.clone().into_data();
    close("residual", fused::add(y.clone(), r.clone()), want.0, 0.0);
    close("bias", fused::add(y.clone(), b.clone()), want.1, 0.0);
    assert_eq!(y.into_data(), before, "the shared input changed");
    // a fresh, unshared tensor updated in place: a residual, positions `[1, seq, d]` repeated
    // over the batch; anything else (a broadcast over a middle axis) takes the tensor op
    for (what, other) in [
        ("unshared", r),
        ("positions", rand([1, 41, 700], 25)),
        ("middle broadcast", rand([3, 1, 700], 24)),
    ] {
        close(
            what,
            fused::add(rand([3, 41, 700], 21), other.clone()),
            rand([3, 41, 700], 21) + other,
            0.0,
        );
    }
}

#[test]
fn append_matches_select_and_cat() {
    // keys `[b, kv, T, d]` extended along axis 2, values `[b, T, kv, d]` along axis 1; rows
    // dropped, repeated and reordered, as decoding's slots do
    for (cache, new, axis) in [
        (rand([4, 3, 7, 8], 31), rand([5, 3, 1, 8], 32), 2),
        (rand([4, 7, 3, 8], 33), rand([5, 1, 3, 8], 34), 1),
    ] {
        let rows = [2, 0, 0, 3, 1];
        close(
            "rows",
            fused::append(cache.clone(), Some(&rows), new.clone(), axis, 0),
            reference::append(cache.clone(), Some(&rows), new.clone(), axis),
            0.0,
        );
        let same = new.clone().narrow(0, 0, 4);
        close(
            "every row",
            fused::append(cache.clone(), None, same.clone(), axis, 0),
            Tensor::cat(vec![cache.clone(), same], axis),
            0.0,
        );
    }
}

/// A decoding run's cache, appended step by step with room reserved: the steps that continue
/// the same rows write into the same buffer (no copy), a step that drops or forks rows copies
/// it, the room runs out and is renewed, and every step's view equals select-and-cat.
#[test]
fn append_with_room_writes_in_place_and_matches_select_and_cat() {
    let storage = |t: &Tensor<Flex, 4>| {
        let p = t.clone().into_primitive().tensor();
        std::sync::Arc::as_ptr(&p.data_arc()) as usize
    };
    for axis in [2, 1] {
        let shape = |b: usize, t: usize| {
            if axis == 2 {
                [b, 3, t, 8]
            } else {
                [b, t, 3, 8]
            }
        };
        let mut fast = rand(shape(4, 5), 50);
        let mut want = fast.clone();
        // (rows the step continues, whether it must copy); reserve 3 after each copy
        let steps: [(Option<Vec<usize>>, bool); 10] = [
            (None, true), // a contiguous cache has no room: copied with room for 3
            (None, false),
            (Some(vec![0, 1, 2, 3]), false), // the same rows, spelt out
            (Some(vec![0, 2, 3]), true),     // a row finished
            (None, false),
            (Some(vec![0, 0, 1, 2]), true), // a fork
            (None, false),
            (None, false),
            (None, false),
            (None, true), // the room is used up
        ];
        for (i, (rows, copies)) in steps.into_iter().enumerate() {
            let b = rows.as_ref().map_or(fast.dims()[0], |r| r.len());
            let new = rand(shape(b, 1), 60 + i as u64);
            let before = storage(&fast);
            fast = fused::append(fast, rows.as_deref(), new.clone(), axis, 3);
            want = reference::append(want, rows.as_deref(), new, axis);
            assert_eq!(fast.dims(), want.dims(), "step {i}: shape");
            assert_eq!(
                fast.clone().into_data().to_vec::<f32>().unwrap(),
                want.clone().into_data().to_vec::<f32>().unwrap(),
                "step {i}: values"
            );
            assert_eq!(storage(&fast) != before, copies, "step {i}: copied?");
        }
        // a shared cache is never written in place
        let kept = fast.clone();
        let snapshot = kept.clone().into_data();
        let b = fast.dims()[0];
        let _ = fused::append(fast, None, rand(shape(b, 1), 99), axis, 3);
        assert_eq!(kept.into_data(), snapshot, "a clone of the cache changed");
    }
}

/// The tiled feed-forward (`fused::feed_forward`) gives the op-by-op path's values bit for
/// bit (gemm computes a row from its own input whatever the tile), over tiles with a ragged
/// last one, with and without biases; at a decoding step's rows and under autodiff it hands
/// the input back.
#[test]
fn tiled_feed_forward_matches_the_ops_one_by_one() {
    use candor_model::fused::Activation;
    let (d, f, rows) = (48, 200, 3 * 256 + 37);
    let x = rand([rows, d], 40);
    let (w1, b1, w2, b2) = (
        rand([d, f], 41),
        rand([f], 42),
        rand([f, d], 43),
        rand([d], 44),
    );
    let wu = rand([d, f], 45);
    let bits = |t: Tensor<Flex, 2>| t.into_data().to_vec::<f32>().unwrap();
    let gelu = fused::feed_forward(
        x.clone(),
        &[(w1.clone(), Some(b1.clone()))],
        &(w2.clone(), Some(b2.clone())),
        Activation::Gelu,
    )
    .unwrap_or_else(|_| panic!("{rows} rows take the tiled path"));
    let h = fused::add(fused::matmul(x.clone(), w1.clone()), b1.unsqueeze_dim(0));
    let h = fused::gelu(h.unsqueeze_dim::<3>(0)).squeeze_dim::<2>(0);
    let want = fused::add(fused::matmul(h, w2.clone()), b2.unsqueeze_dim(0));
    assert_eq!(bits(gelu), bits(want), "GELU block");

    let swiglu = fused::feed_forward(
        x.clone(),
        &[(w1.clone(), None), (wu.clone(), None)],
        &(w2.clone(), None),
        Activation::SwiGlu,
    )
    .unwrap_or_else(|_| panic!("{rows} rows take the tiled path"));
    let g = fused::swiglu(
        fused::matmul(x.clone(), w1.clone()).unsqueeze_dim::<3>(0),
        fused::matmul(x.clone(), wu.clone()).unsqueeze_dim::<3>(0),
    );
    let want = fused::matmul(g.squeeze_dim::<2>(0), w2.clone());
    assert_eq!(bits(swiglu.clone()), bits(want.clone()), "SwiGLU block");
    // and against the tensor ops, to a tolerance (exp and erf are approximations)
    let g = reference::swiglu(
        x.clone().matmul(w1.clone()).unsqueeze_dim::<3>(0),
        x.clone().matmul(wu.clone()).unsqueeze_dim::<3>(0),
    );
    close(
        "SwiGLU block vs tensor ops",
        swiglu,
        g.squeeze_dim::<2>(0).matmul(w2.clone()),
        1e-5,
    );

    let few = rand([16, d], 46);
    assert!(fused::feed_forward(
        few,
        &[(w1.clone(), None)],
        &(w2.clone(), None),
        Activation::Gelu
    )
    .is_err());
    let on_ad = Tensor::<Ad, 2>::from_inner(x);
    let leaf = |t: &Tensor<Flex, 2>| Tensor::<Ad, 2>::from_inner(t.clone());
    assert!(
        fused::feed_forward(
            on_ad,
            &[(leaf(&w1), None)],
            &(leaf(&w2), None),
            Activation::Gelu
        )
        .is_err(),
        "autodiff runs the ops (with their backward)"
    );
}
