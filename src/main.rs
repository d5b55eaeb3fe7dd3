//! The `hubsweep` binary: a thin shell over the library. Everything that touches the
//! terminal, the environment or the process exit code lives in `cli/`.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::exit)]

mod cli;

fn main() -> std::process::ExitCode {
    single_threaded_elementwise_ops();
    keep_freed_tensor_memory();
    cli::main()
}

/// Tensor buffers up to this size come from the heap, not from their own `mmap`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory at the top of the heap is returned to the system only beyond this size.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1 << 30;

/// A forward pass allocates and frees a few hundred tensors of 0.1–10 MiB each. glibc's malloc
/// serves many of them with a fresh `mmap` or hands freed heap memory back to the system, so
/// the next pass faults the same pages in again, zeroed: 10–15% of a CPU capture's time went to
/// page faults and page clearing. Keeping such buffers on the heap, and the heap at its size,
/// made a SmolLM2-135M capture ~15% faster for ~5% more peak RSS (docs/run.md). Artifact
/// buffers (up to `limits.artifact_bytes`, usually larger) still get their own mappings and go
/// back to the system when uploaded. Environment tuning (`GLIBC_TUNABLES`) would need the
/// variable set before the process starts; these calls are the same settings from inside.
///
/// glibc also gives threads their own heaps ("arenas", up to 8 per core), and memory freed into
/// one arena serves only the threads of that arena. A run allocates artifacts on the capture
/// thread, frees them on upload threads, and runs forward passes and host work on several more,
/// so each arena kept its own peak: a SmolLM2-135M run on two cores peaked 170–290 MiB above
/// the same run with one arena per core, which was no slower (docs/run.md). Hence one arena
/// per core (at least two).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_tensor_memory() {
    let arenas = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let arenas = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
    // SAFETY: `mallopt` only changes allocator parameters; it is called first thing in `main`,
    // before any other thread exists. A refused value (return 0) leaves glibc's defaults.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

/// Other allocators keep their own defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_tensor_memory() {}

/// candle runs element-wise ops on a thread pool of its own, beside rayon's pool that runs the
/// matrix products, and its callers spin while they wait for that pool. When every core is
/// busy (two cores: the products, uploads, hashing, or anything else on the machine) the
/// spinning takes the cores the work needs: a SmolLM2-135M forward pass used 1.8× the CPU
/// seconds and 1.7× the wall time with the pool as with none (`scripts/bench/capture-smollm2.sh`,
/// docs/models.md). The matrix products, ~75% of the work, stay parallel. A user who sets
/// `CANDLE_NUM_THREADS` keeps their value. candle reads the variable once, when the pool is
/// first used, so it must be set before any model code runs.
#[allow(unsafe_code)]
fn single_threaded_elementwise_ops() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called first thing in `main`, before this process starts any other thread, so
        // nothing can read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}
