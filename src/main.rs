//! The `scribed` binary: thin subcommands over the library.
fn main() {}
