//! Where the trainer computes: device selection, CPU threads and mixed precision.
//!
//! A spec names `cpu`, `cuda`, `cuda:N` or `auto` (the first GPU when libtorch sees one, the
//! CPU otherwise). Asking for a GPU that is not there is an input error, never a silent fallback
//! to the CPU. The build script links libtorch's CUDA library when it is installed, so
//! `tch::Cuda::is_available()` reflects the machine and not the linker's choices.

use anyhow::{Result, bail};
use mpl_protocol::spec::DeviceSpec;
use tch::{Cuda, Device};

/// The compute placement resolved from a [`DeviceSpec`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// The libtorch device every tensor and network lives on.
    pub device: Device,
    /// Whether forward passes run under bf16 autocast (CUDA only).
    pub bf16: bool,
}

impl Placement {
    /// The device's name as it appears in events: `cpu` or `cuda:N`.
    pub fn name(&self) -> String {
        match self.device {
            Device::Cuda(i) => format!("cuda:{i}"),
            Device::Mps => "mps".into(),
            Device::Vulkan => "vulkan".into(),
            Device::Cpu => "cpu".into(),
        }
    }

    /// Runs `f` under autocast when bf16 was asked for on a GPU, plainly otherwise.
    pub fn autocast<T>(&self, f: impl FnOnce() -> T) -> T {
        if self.bf16 {
            tch::autocast(true, f)
        } else {
            f()
        }
    }
}

/// Resolves the spec's device and applies its thread count to libtorch.
pub fn resolve(spec: &DeviceSpec) -> Result<Placement> {
    if let Some(threads) = spec.threads {
        let threads = i32::try_from(threads).unwrap_or(i32::MAX);
        tch::set_num_threads(threads);
    }
    let device = parse_device(&spec.device, Cuda::device_count())?;
    let on_gpu = matches!(device, Device::Cuda(_));
    if on_gpu {
        Cuda::cudnn_set_benchmark(true);
    }
    Ok(Placement {
        device,
        bf16: spec.bf16 && on_gpu,
    })
}

/// Maps a device name to a libtorch device given how many GPUs libtorch can see.
pub fn parse_device(name: &str, gpu_count: i64) -> Result<Device> {
    let index = match name {
        "cpu" => return Ok(Device::Cpu),
        "auto" if gpu_count > 0 => 0,
        "auto" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => bail!("device.device: `{name}` is not one of cpu, auto, cuda, cuda:N"),
        },
    };
    if gpu_count == 0 {
        bail!(
            "device.device: `{name}` asks for a GPU but libtorch sees none (no CUDA device, or \
             a CPU-only libtorch)"
        );
    }
    if index as i64 >= gpu_count {
        bail!("device.device: `{name}` asks for GPU {index} but libtorch sees {gpu_count}");
    }
    Ok(Device::Cuda(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_to_the_cpu_only_without_gpus() {
        assert_eq!(parse_device("auto", 0).unwrap(), Device::Cpu);
        assert_eq!(parse_device("auto", 2).unwrap(), Device::Cuda(0));
    }

    #[test]
    fn an_explicit_gpu_that_is_missing_is_an_error() {
        let err = parse_device("cuda", 0).unwrap_err().to_string();
        assert!(err.contains("device.device"), "{err}");
        assert!(parse_device("cuda:3", 2).is_err());
        assert_eq!(parse_device("cuda:1", 2).unwrap(), Device::Cuda(1));
        assert!(parse_device("tpu", 1).is_err());
    }
}
