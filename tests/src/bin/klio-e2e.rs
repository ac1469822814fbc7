//! The `klio` binary, built inside the test package so end-to-end tests can run
//! it as a separate process (SIGKILL, restart) by path.

fn main() -> std::process::ExitCode {
    klio::main()
}
