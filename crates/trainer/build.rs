//! Makes sure the trainer really links libtorch's CUDA library when the installed libtorch has
//! one.
//!
//! The linker drops shared libraries whose symbols are never referenced directly
//! (`--as-needed`), and nothing in the trainer names a symbol of `libtorch_cuda.so`: it is only
//! reached through libtorch's dispatcher, which registers the CUDA kernels when the library is
//! loaded. Without it `tch::Cuda::is_available()` is false even on a GPU machine. When the
//! library exists we therefore link it with `--no-as-needed`; on CPU-only installs this script
//! emits nothing and the build is unchanged.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=PYTHON_SYS_EXECUTABLE");
    let Some(lib_dir) = torch_lib_dir() else {
        return;
    };
    let cuda_lib = lib_dir.join("libtorch_cuda.so");
    if !cuda_lib.exists() {
        return;
    }
    println!("cargo:rerun-if-changed={}", cuda_lib.display());
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state");
}

/// The directory holding libtorch's shared libraries, found the way torch-sys finds it: the
/// `LIBTORCH` directory, or the installed PyTorch package when `LIBTORCH_USE_PYTORCH` is set.
fn torch_lib_dir() -> Option<PathBuf> {
    if let Ok(root) = env::var("LIBTORCH") {
        return Some(PathBuf::from(root).join("lib"));
    }
    env::var_os("LIBTORCH_USE_PYTORCH")?;
    let python = env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let script = "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))";
    let output = Command::new(python).args(["-c", script]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8(output.stdout).ok()?;
    Some(PathBuf::from(dir.trim()))
}
