//! candor-data: question sources and grading. So far: the CalibratedMath generator and graders
//! (`../shared/reference/calibratedmath-tasks.md`).

pub mod calibratedmath;
pub mod numbers;
