//! Run-time choice of backend and device: `cpu` (Flex, always built), `wgpu[:N]` and
//! `cuda[:N]` (only with the cargo features of the same name).

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// `wgpu` = the best available adapter (a software Vulkan such as lavapipe included);
    /// `wgpu:N` = discrete GPU N.
    Wgpu(Option<usize>),
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (name, idx) = match s.split_once(':') {
            Some((n, i)) => {
                let i = i
                    .parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("device index in `{s}` is not a number"))?;
                (n, Some(i))
            }
            None => (s, None),
        };
        Ok(match name {
            "cpu" if idx.is_none() => DeviceSpec::Cpu,
            "wgpu" => DeviceSpec::Wgpu(idx),
            "cuda" => DeviceSpec::Cuda(idx.unwrap_or(0)),
            _ => bail!("unknown device `{s}` (allowed: cpu, wgpu[:N], cuda[:N])"),
        })
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Wgpu(None) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Work that is generic over the backend; [`run_on`] picks the backend at run time.
pub trait BackendTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Result<Self::Output>;
}

pub fn run_on<T: BackendTask>(spec: DeviceSpec, task: T) -> Result<T::Output> {
    match spec {
        DeviceSpec::Cpu => {
            keep_freed_memory();
            task.run::<burn::backend::Flex>(Default::default())
        }
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu(i) => {
            use burn::backend::wgpu::WgpuDevice;
            let device = i
                .map(WgpuDevice::DiscreteGpu)
                .unwrap_or(WgpuDevice::DefaultDevice);
            start::<burn::backend::Wgpu>(
                spec,
                &device,
                "it needs a Vulkan driver (a GPU's, or mesa-vulkan-drivers for lavapipe on the CPU), \
                 and `wgpu:N` needs a discrete GPU N",
            )?;
            task.run::<burn::backend::Wgpu>(device)
        }
        #[cfg(not(feature = "wgpu"))]
        DeviceSpec::Wgpu(_) => {
            bail!("this binary was built without the WGPU backend: rebuild with `--features wgpu`")
        }
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(i) => {
            let device = burn::backend::cuda::CudaDevice::new(i);
            start::<burn::backend::Cuda>(
                spec,
                &device,
                "it needs the NVIDIA driver (libcuda.so on the library path) and a GPU at that index",
            )?;
            task.run::<burn::backend::Cuda>(device)
        }
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => {
            bail!("this binary was built without the CUDA backend: rebuild with `--features cuda`")
        }
    }
}

/// Start a GPU device with one tiny round trip, so that a device that cannot start (no driver,
/// no adapter, no GPU at that index) is an error naming the device, not a panic.
///
/// Why `catch_unwind`: Burn 0.21's GPU runtimes start a device lazily on a service thread and
/// panic there when they cannot (cubecl-wgpu: "No possible adapter available for backend";
/// cudarc: "Unable to dynamically load the \"cuda\" shared library"), and the calling thread
/// then panics on the closed channel. No API returns that as a `Result`, so the probe runs under
/// a hook that keeps the first panic message instead of printing it, and the message goes into
/// the error. The hook is process-wide, so this runs once, before any other work.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn start<B: Backend>(spec: DeviceSpec, device: &B::Device, needs: &str) -> Result<()> {
    use std::sync::Mutex;
    static FIRST: Mutex<Option<String>> = Mutex::new(None);
    let first = || FIRST.lock().unwrap_or_else(|e| e.into_inner());
    *first() = None;
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload_as_str().unwrap_or("(no message)").to_string();
        first().get_or_insert(msg);
    }));
    let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burn::tensor::Tensor::<B, 1>::zeros([1], device).into_data()
    }));
    std::panic::set_hook(previous);
    match probe {
        Ok(_) => Ok(()),
        Err(_) => {
            let why = first().take().unwrap_or_default();
            bail!(
                "device `{spec}` could not be started: {why}\n\
                 ({needs}; or use device = \"cpu\")"
            )
        }
    }
}

/// Make the C allocator keep freed memory for reuse instead of returning it to the kernel (glibc
/// on Linux; a no-op elsewhere). Call it before heavy work on the CPU backend.
///
/// Why: every activation and gradient of a CPU training step is a fresh multi-megabyte buffer.
/// By default glibc serves those with `mmap` and unmaps them on `free`, so the next step's
/// buffers page-fault all over again: ≈ 140K page faults (≈ 0.35 s of kernel time) per SmolLM2
/// step at batch 8×64. With `mmap` off and trimming raised, freed buffers stay mapped and are
/// reused. The cost is that the process keeps its peak footprint until it exits.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; it is thread-safe and takes effect
    // for later allocations (memory already handed out is unaffected).
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// `f` run on a rayon worker thread when `B` is the CPU backend (elsewhere on this thread):
/// for work that runs many parallel ops one after another (decoding, an encoder's layers).
/// A parallel op started from outside rayon's pool hands its work to the pool and puts the
/// calling thread to sleep until it is done, two thread switches per op, and a decoding step
/// runs a few hundred ops; started on a worker, an op works on its first part at once and a
/// small one wakes nobody. The greedy slice of `bench-data` answered in 17.1 s on a worker
/// against 18.7 s from the main thread (one pair of runs, 2-core AMD VM, 2026-12-05).
pub fn on_cpu_pool<B: Backend, T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if std::any::TypeId::of::<B>() == std::any::TypeId::of::<burn::backend::Flex>() {
        rayon::scope(|_| f())
    } else {
        f()
    }
}
