//! The in-process criterion microbench (`cargo bench -p host --bench
//! per_request`: instantiate + handle, no sockets) and the estimates read
//! from its output.

use std::process::Command;

use ::tests::workspace_root;
use anyhow::Result;

use crate::tools::run;

/// One estimate: the bench's name (`fresh_instance`), the middle value of
/// criterion's interval as printed, and its unit.
#[derive(Debug, PartialEq)]
pub struct Estimate {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// Run the microbench (it builds the host's bench profile) and read its
/// estimates.
pub fn run_bench() -> Result<Vec<Estimate>> {
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(workspace_root())
        .args(["bench", "-p", "host", "--bench", "per_request", "--"])
        .args(["--warm-up-time", "2", "--measurement-time", "5"]);
    let output = run(cargo)?;
    Ok(parse(&String::from_utf8_lossy(&output.stdout)))
}

/// The `per_request/NAME … time: [LOW UNIT MID UNIT HIGH UNIT]` estimates
/// of criterion's output, in order (the name and `time:` may be on one line
/// or two).
pub fn parse(out: &str) -> Vec<Estimate> {
    let mut found = Vec::new();
    let mut rest = out;
    while let Some(at) = rest.find("per_request/") {
        rest = &rest[at + "per_request/".len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let (name, after) = rest.split_at(end);
        let Some(after) = after.trim_start().strip_prefix("time:") else {
            continue;
        };
        let Some(interval) = after.trim_start().strip_prefix('[') else {
            continue;
        };
        let words: Vec<&str> = interval.split_whitespace().take(4).collect();
        if let (false, [_, _, value, unit]) = (name.is_empty(), words.as_slice())
            && let Ok(value) = value.parse()
        {
            found.push(Estimate {
                name: name.to_string(),
                value,
                unit: unit.to_string(),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criterion_output_gives_the_middle_estimates() {
        let out = "\
Benchmarking per_request/fresh_instance: Analyzing
per_request/fresh_instance
                        time:   [19.801 µs 19.884 µs 19.970 µs]
                        change: [-1.2% +0.1% +1.3%] (p = 0.90 > 0.05)
Benchmarking per_request/reused_instance: Collecting 100 samples
per_request/reused_instance time:   [6.8901 µs 6.9098 µs 6.9310 µs]
Found 3 outliers among 100 measurements (3.00%)
";
        let found = parse(out);
        assert_eq!(
            found,
            [
                Estimate {
                    name: "fresh_instance".into(),
                    value: 19.884,
                    unit: "µs".into()
                },
                Estimate {
                    name: "reused_instance".into(),
                    value: 6.9098,
                    unit: "µs".into()
                },
            ]
        );
    }

    #[test]
    fn output_without_estimates_gives_none() {
        assert!(parse("Benchmarking per_request/fresh_instance: Warming up\n").is_empty());
        assert!(parse("").is_empty());
    }
}
