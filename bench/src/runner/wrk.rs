//! One load run: `wrk -t1 -cN -dDs --latency` against a server, its output
//! parsed (requests, req/s, p50 and p99 latency, non-2xx responses) and the
//! server's CPU time per request taken from /proc around it; and the median
//! of several rounds.

use std::net::SocketAddr;
use std::process::Command;

use ::tests::Process;
use anyhow::{Context, Result, bail};

/// What one wrk run measured (latencies in ms).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measured {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub errors: u64,
    /// The server's user+system CPU time per request, in µs.
    pub cpu_us: f64,
}

impl Measured {
    /// The log line of one round.
    pub fn summary(&self) -> String {
        format!(
            "{:.0} req/s p50 {:.3} ms p99 {:.3} ms cpu {:.1} us/req",
            self.rps, self.p50, self.p99, self.cpu_us
        )
    }
}

/// Run wrk for `seconds` at `conns` connections against `addr`, served by
/// `server`.
pub fn run(addr: SocketAddr, conns: u32, seconds: u64, server: &Process) -> Result<Measured> {
    let cpu0 = server.cpu_seconds();
    let output = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{seconds}s"),
            "--latency",
        ])
        .arg(format!("http://{addr}/"))
        .output()
        .context("failed to run wrk")?;
    let cpu = server.cpu_seconds() - cpu0;
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (requests, mut measured) = parse(&String::from_utf8_lossy(&output.stdout))?;
    measured.cpu_us = cpu * 1e6 / requests.max(1) as f64;
    Ok(measured)
}

/// wrk's report: the number of requests and what it measured (no CPU).
pub fn parse(out: &str) -> Result<(u64, Measured)> {
    let (mut requests, mut rps, mut p50, mut p99) = (None, None, None, None);
    let mut errors = 0;
    for line in out.lines() {
        let line = line.trim();
        if let Some((n, _)) = line.split_once(" requests in ") {
            requests = n.parse().ok();
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors = v.trim().parse().context("non-2xx count")?;
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = Some(latency_ms(v.trim())?);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = Some(latency_ms(v.trim())?);
        }
    }
    let missing = |what| format!("wrk printed no {what}:\n{out}");
    Ok((
        requests.with_context(|| missing("request count"))?,
        Measured {
            rps: rps.with_context(|| missing("Requests/sec"))?,
            p50: p50.with_context(|| missing("50% latency"))?,
            p99: p99.with_context(|| missing("99% latency"))?,
            errors,
            cpu_us: 0.0,
        },
    ))
}

/// A wrk latency (`812.00us`, `2.59ms`, `1.02s`, `1.50m`) in ms.
fn latency_ms(text: &str) -> Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("latency without a unit: {text}"))?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().with_context(|| format!("latency: {text}"))?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => bail!("latency unit {unit}"),
    };
    Ok(value * scale)
}

/// The median of each measure over `runs` (errors are summed).
pub fn median(runs: &[Measured]) -> Measured {
    let of = |f: fn(&Measured) -> f64| middle(runs.iter().map(f).collect());
    Measured {
        rps: of(|r| r.rps),
        p50: of(|r| r.p50),
        p99: of(|r| r.p99),
        cpu_us: of(|r| r.cpu_us),
        errors: runs.iter().map(|r| r.errors).sum(),
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn middle(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
Running 5s test @ http://127.0.0.1:40000/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.63ms    1.01ms  20.01ms   91.20%
    Req/Sec    24.15k     1.02k   26.11k    80.00%
  Latency Distribution
     50%    2.59ms
     75%    2.90ms
     90%    3.40ms
     99%    5.67ms
  120160 requests in 5.00s, 10.02MB read
  Non-2xx or 3xx responses: 7
Requests/sec:  24032.00
Transfer/sec:      2.00MB
";

    #[test]
    fn wrk_output_gives_requests_rate_latencies_and_errors() {
        let (requests, m) = parse(OUTPUT).unwrap();
        assert_eq!(requests, 120160);
        assert_eq!(m.rps, 24032.0);
        assert_eq!(m.p50, 2.59);
        assert_eq!(m.p99, 5.67);
        assert_eq!(m.errors, 7);
    }

    #[test]
    fn latencies_in_other_units_are_converted_to_ms() {
        let out = OUTPUT
            .replace("2.59ms", "812.00us")
            .replace("5.67ms", "1.50s")
            .replace("  Non-2xx or 3xx responses: 7\n", "");
        let (_, m) = parse(&out).unwrap();
        assert!((m.p50 - 0.812).abs() < 1e-9, "{}", m.p50);
        assert_eq!(m.p99, 1500.0);
        assert_eq!(m.errors, 0, "no line, no errors");
    }

    #[test]
    fn output_without_a_rate_is_an_error() {
        let out = OUTPUT.replace("Requests/sec:  24032.00\n", "");
        let err = parse(&out).unwrap_err().to_string();
        assert!(err.contains("Requests/sec"), "{err}");
    }

    #[test]
    fn the_median_of_rounds_is_the_middle_one_and_errors_add_up() {
        let run = |rps, errors| Measured {
            rps,
            p50: rps / 10.0,
            errors,
            ..Measured::default()
        };
        let m = median(&[run(3.0, 1), run(1.0, 0), run(2.0, 2)]);
        assert_eq!((m.rps, m.p50, m.errors), (2.0, 0.2, 3));
        assert_eq!(median(&[run(1.0, 0), run(4.0, 0)]).rps, 2.5);
    }
}
