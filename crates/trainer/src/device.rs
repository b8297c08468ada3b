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
    /// Whether the training step runs under bf16 autocast.
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

    /// Runs `f` under bf16 autocast on this placement's device when bf16 was asked for,
    /// plainly otherwise.
    pub fn autocast<T>(&self, f: impl FnOnce() -> T) -> T {
        if !self.bf16 {
            return f();
        }
        let device_type = match self.device {
            Device::Cuda(_) => autocast::CUDA,
            _ => autocast::CPU,
        };
        let _scope = autocast::Scope::enter(device_type, autocast::BFLOAT16);
        f()
    }
}

/// libtorch's autocast switches per device type. `tch::autocast` reaches CUDA only and leaves
/// the dtype at libtorch's default (fp16 on CUDA), so the trainer calls libtorch directly. The
/// functions are C++ (`at::autocast::*` in `libtorch_cpu`) and take `c10::DeviceType` and
/// `c10::ScalarType`, both `enum class : int8_t`, and `bool`: plain scalars that are passed as in
/// a C call, so they are declared by their Itanium-mangled names (the C++ ABI of Linux and macOS
/// toolchains). This module is the library's only unsafe code.
#[allow(unsafe_code)]
mod autocast {
    /// `c10::DeviceType::CPU`.
    pub const CPU: i8 = 0;
    /// `c10::DeviceType::CUDA`.
    pub const CUDA: i8 = 1;
    /// `c10::ScalarType::BFloat16`.
    pub const BFLOAT16: i8 = 15;

    unsafe extern "C" {
        #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
        fn is_autocast_enabled(device_type: i8) -> bool;
        #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
        fn set_autocast_enabled(device_type: i8, enabled: bool);
        #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
        fn get_autocast_dtype(device_type: i8) -> i8;
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        fn set_autocast_dtype(device_type: i8, dtype: i8);
        #[link_name = "_ZN2at8autocast17increment_nestingEv"]
        fn increment_nesting() -> i64;
        #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
        fn decrement_nesting() -> i64;
        #[link_name = "_ZN2at8autocast11clear_cacheEv"]
        fn clear_cache();
    }

    /// Autocast on one device type until dropped, which restores the previous state (also when
    /// the step panics). Autocast state is per thread in libtorch, like this scope.
    pub struct Scope {
        device_type: i8,
        was_enabled: bool,
        previous_dtype: i8,
    }

    impl Scope {
        pub fn enter(device_type: i8, dtype: i8) -> Scope {
            // SAFETY: scalar arguments only; these functions read and write libtorch's
            // thread-local autocast state and cannot fail.
            unsafe {
                let scope = Scope {
                    device_type,
                    was_enabled: is_autocast_enabled(device_type),
                    previous_dtype: get_autocast_dtype(device_type),
                };
                set_autocast_dtype(device_type, dtype);
                set_autocast_enabled(device_type, true);
                increment_nesting();
                scope
            }
        }
    }

    impl Drop for Scope {
        fn drop(&mut self) {
            // SAFETY: as in `enter`. The cache of casted weights is dropped when the outermost
            // scope ends, as PyTorch's `torch.autocast` does.
            unsafe {
                if decrement_nesting() == 0 {
                    clear_cache();
                }
                set_autocast_enabled(self.device_type, self.was_enabled);
                set_autocast_dtype(self.device_type, self.previous_dtype);
            }
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
    if matches!(device, Device::Cuda(_)) {
        Cuda::cudnn_set_benchmark(true);
    }
    Ok(Placement {
        device,
        bf16: spec.bf16,
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
    fn bf16_autocast_runs_on_the_cpu_and_ends_with_its_scope() {
        let a = tch::Tensor::randn([4, 8], (tch::Kind::Float, Device::Cpu));
        let b = tch::Tensor::randn([8, 3], (tch::Kind::Float, Device::Cpu));
        let bf16 = Placement {
            device: Device::Cpu,
            bf16: true,
        };
        let plain = Placement {
            bf16: false,
            ..bf16
        };
        assert_eq!(bf16.autocast(|| a.matmul(&b)).kind(), tch::Kind::BFloat16);
        // Nested scopes restore the outer one, and the last one restores full precision.
        let (inner, after_inner) = bf16.autocast(|| {
            let inner = bf16.autocast(|| a.matmul(&b)).kind();
            (inner, a.matmul(&b).kind())
        });
        assert_eq!(inner, tch::Kind::BFloat16);
        assert_eq!(after_inner, tch::Kind::BFloat16);
        assert_eq!(a.matmul(&b).kind(), tch::Kind::Float);
        assert_eq!(plain.autocast(|| a.matmul(&b)).kind(), tch::Kind::Float);
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
