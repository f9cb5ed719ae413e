//! `last_residuals` (what the `probe` teacher reads at `labels.probe_layer`): the residual
//! stream after the first L decoder layers equals what a copy of the model cut to L layers
//! computes before its final norm; rows of different lengths, left-padded into one batch, read
//! what each row reads alone; asking for more layers than the model has reads them all.

use burn::backend::Flex;
use burn::tensor::Tensor;
use candor_model::generate::last_residuals;
use candor_model::model::{tokens_tensor, KvCache, Positions};
use candor_model::{Llama, ModelConfig};

type B = Flex;

fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "{what}: feature {i}: {a} vs {b}"
        );
    }
}

/// The final hidden state (after the norm) at the last token of `row`, one row alone.
fn final_state(model: &Llama<B>, row: &[u32]) -> Vec<f32> {
    let dev = Default::default();
    let valid = vec![vec![true; row.len()]];
    let pos = Positions::new(&model.config, &valid, row.len(), &dev);
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    let h: Tensor<B, 3> =
        model.forward_hidden(tokens_tensor::<B>(&[row.to_vec()], &dev), &pos, &mut cache);
    h.narrow(1, row.len() - 1, 1)
        .into_data()
        .iter::<f32>()
        .collect()
}

fn rms_norm(model: &Llama<B>, x: &[f32]) -> Vec<f32> {
    let t = Tensor::<B, 1>::from_floats(x, &Default::default()).reshape([1, 1, x.len()]);
    model.norm.forward(t).into_data().iter::<f32>().collect()
}

#[test]
fn residuals_after_l_layers_are_what_the_model_cut_to_l_layers_computes() {
    let config = ModelConfig::preset("tiny", 300).unwrap();
    let n = config.num_hidden_layers;
    let model = Llama::<B>::init(&config, 7, &Default::default());
    let rows: Vec<Vec<u32>> = vec![
        vec![5, 17, 230, 41, 8, 99, 12],
        vec![3, 250, 7],
        vec![60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70],
    ];
    let dev = Default::default();
    for l in 1..=n {
        let mut cut = model.clone();
        cut.layers.truncate(l);
        cut.config.num_hidden_layers = l;
        let batch = last_residuals(&model, &rows, l, 0, &dev);
        assert_eq!(batch.len(), rows.len());
        for (i, row) in rows.iter().enumerate() {
            let alone = last_residuals(&model, std::slice::from_ref(row), l, 0, &dev);
            close(
                &format!("layer {l}, row {i}: batch vs alone"),
                &batch[i],
                &alone[0],
            );
            close(
                &format!("layer {l}, row {i}: normed vs the cut model"),
                &rms_norm(&model, &batch[i]),
                &final_state(&cut, row),
            );
        }
    }
    let all = last_residuals(&model, &rows, n, 0, &dev);
    let more = last_residuals(&model, &rows, n + 5, 0, &dev);
    assert_eq!(all, more, "more layers than the model has reads them all");
    // the layer matters: the first layer's residual is not the last one's
    let first = last_residuals(&model, &rows, 1, 0, &dev);
    assert!(first[0]
        .iter()
        .zip(&all[0])
        .any(|(a, b)| (a - b).abs() > 1e-3));
}
