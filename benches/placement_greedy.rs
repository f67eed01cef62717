//! Greedy placement benchmark: peak / lower bound and time of every rule on the challenging instances,
//! and the portfolio's time on random instances of 1k, 10k and 100k buffers.
//!
//! Run: `cargo bench --bench placement_greedy` (prints markdown tables for BENCHMARKS.md).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use model_opt::placement::csv::read_csv_file;
use model_opt::placement::greedy::{greedy, place, Rule};
use model_opt::placement::random::{random_problem, Shape};
use model_opt::placement::{max_load, validate, Problem};

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn timed<T>(runs: usize, mut f: impl FnMut() -> T) -> (T, Duration) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        last = Some(f());
        times.push(t.elapsed());
    }
    (last.expect("at least one run"), median(times))
}

fn main() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/minimalloc/challenging");
    println!("### Greedy rules on challenging A–E (peak / lower bound; median time of 21 runs)\n");
    print!("| rule |");
    let names = ["A", "B", "C", "D", "E"];
    for n in names {
        print!(" {n} | {n} time (µs) |");
    }
    println!("\n|---|{}", "---|---|".repeat(names.len()));
    let problems: Vec<Problem> = names
        .iter()
        .map(|n| {
            read_csv_file(&dir.join(format!("{n}.1048576.csv")))
                .expect("instance")
                .problem
        })
        .collect();
    let mut rows: Vec<(String, Vec<String>)> = Rule::ALL
        .iter()
        .map(|r| (r.to_string(), Vec::new()))
        .collect();
    rows.push(("portfolio (best of all)".into(), Vec::new()));
    for p in &problems {
        let lb = max_load(p).0 as f64;
        for (k, rule) in Rule::ALL.iter().enumerate() {
            let (s, t) = timed(21, || place(p, *rule));
            validate(p, &s).expect("valid plan");
            rows[k].1.push(format!(
                "{:.4} | {:.0}",
                s.peak.0 as f64 / lb,
                t.as_secs_f64() * 1e6
            ));
        }
        let ((s, _), t) = timed(21, || greedy(p));
        rows[Rule::ALL.len()].1.push(format!(
            "{:.4} | {:.0}",
            s.peak.0 as f64 / lb,
            t.as_secs_f64() * 1e6
        ));
    }
    for (name, cells) in rows {
        println!("| {name} | {} |", cells.join(" | "));
    }

    println!("\n### Greedy on random instances (median of 5 runs; 3 at 100k)\n");
    println!("| buffers | lower bound | peak | peak / lower bound | winning rule | size/first-fit alone (ms) | slowest rule alone (ms) | portfolio (ms) |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in [1_000, 10_000, 100_000] {
        let p = random_problem(n, 0x9E37_79B9_7F4A_7C15 ^ n as u64, Shape::Dense);
        let runs = if n >= 100_000 { 3 } else { 5 };
        let rule_times: Vec<(Rule, Duration)> = Rule::ALL
            .iter()
            .map(|&rule| (rule, timed(runs, || place(&p, rule)).1))
            .collect();
        let (slowest, slowest_time) = rule_times
            .iter()
            .max_by_key(|(_, t)| *t)
            .copied()
            .expect("eight rules");
        let ((s, rule), t) = timed(runs, || greedy(&p));
        validate(&p, &s).expect("valid plan");
        let lb = max_load(&p);
        println!(
            "| {n} | {lb} | {} | {:.4} | {rule} | {:.1} | {:.1} ({slowest}) | {:.1} |",
            s.peak,
            s.peak.0 as f64 / lb.0 as f64,
            rule_times[0].1.as_secs_f64() * 1e3,
            slowest_time.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e3
        );
    }
}
