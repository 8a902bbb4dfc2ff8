//! The `pushgate` binary: a thin shell over [`pushgate::cli`].

/// mimalloc rather than the system allocator: the gateway allocates and frees small buffers on
/// every request (TLS records, the body, the answer), where glibc's malloc spent about 8 % of
/// the CPU in the keep-alive benchmark (README, "Benchmarks").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pushgate::cli::main()
}
