//! TensorBoard scalars in `<run>/tb/` via `tensorboard-rs` (its histogram/text calls are
//! unimplemented, so only scalars are written).

use anyhow::Result;
use std::path::Path;
use std::sync::Mutex;
use tensorboard_rs::summary_writer::SummaryWriter;

pub struct Scalars(Mutex<SummaryWriter>);

impl Scalars {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self(Mutex::new(SummaryWriter::new(dir))))
    }

    pub fn add(&self, step: usize, values: &[(&str, f64)]) -> Result<()> {
        let mut w = self.0.lock().expect("not poisoned");
        for (k, v) in values {
            w.add_scalar(k, *v as f32, step);
        }
        w.flush();
        Ok(())
    }
}
