//! The `medic` binary: all behaviour lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    medic::cli::main()
}
