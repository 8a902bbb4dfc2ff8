//! The last test binary `cargo test` runs (cargo runs integration tests in name order): counts
//! the tests of this run that said `SKIPPED` (see `tests/skip/mod.rs`) and lists them, so a skip
//! shows in the summary instead of hiding among the `ok`s. Not a test itself (`harness = false`).

mod skip;

fn main() {
    // `--list` (nextest, IDEs) asks for test names: this binary has none.
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let (lines, path) = skip::recorded();
    if lines.is_empty() {
        println!("skip summary: no test SKIPPED in this cargo test run");
    } else {
        let count = match lines.len() {
            1 => "1 test".to_string(),
            n => format!("{n} tests"),
        };
        println!(
            "skip summary: {count} SKIPPED in this cargo test run ({}=1 makes them fail):",
            skip::REQUIRE_ALL
        );
        // Each line: `<test binary>: <test>: <why>`.
        for line in &lines {
            println!("  {line}");
        }
        println!("(from {})", path.display());
    }
    let _ = std::fs::remove_file(&path);
    skip::remove_stale_logs();
}
