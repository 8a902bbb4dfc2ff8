//! The `pushgate` binary: a thin shell over [`pushgate::cli`].

fn main() -> std::process::ExitCode {
    pushgate::cli::main()
}
