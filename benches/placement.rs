//! Placement benchmark (issues 4 and 13): exact placement on the MiniMalloc challenging instances,
//! `auto` against the greedy portfolio on random instances, recorded training traces tiled in time,
//! and perfect packings. Prints Markdown tables.
//!
//! `cargo bench --bench placement [-- PART]` with PART one of `capacity`, `minimize`, `random`,
//! `tiled`, `perfect` (runs = 3 per instance unless `PLACEMENT_BENCH_RUNS` says otherwise; the
//! MiniMalloc data set is found next to the repository or at `MODEL_OPT_DATA`, the recorded traces
//! in `benches/data/`; `PLACEMENT_BENCH_SECONDS` sets the perfect packings' time limit, default 30).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use model_opt::placement::csv::read_csv_file;
use model_opt::placement::instances::{perfect_packing, tiled};
use model_opt::placement::random::{random_problem, Shape};
use model_opt::placement::{
    plan, Buffer, Bytes, Interval, Method, PlanError, PlanOptions, Problem, Progress,
};

fn data_dir() -> PathBuf {
    std::env::var_os("MODEL_OPT_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
        .join("minimalloc/challenging")
}

fn options(method: Method, seconds: f64) -> PlanOptions {
    PlanOptions {
        method,
        time_limit: Duration::from_secs_f64(seconds),
        threads: 1,
        ..Default::default()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load(name: &str) -> Problem {
    let path = data_dir().join(format!("{name}.1048576.csv"));
    match read_csv_file(&path) {
        Ok(p) => p.problem,
        Err(e) => {
            eprintln!("placement bench: {e}");
            std::process::exit(2);
        }
    }
}

fn at_capacity(runs: usize) {
    println!("\n### Challenging A–K at capacity 1048576 (`auto`, time limit 10 s)\n");
    println!("| instance | buffers | lower bound | peak | status | method | median time (s) | times (s) |");
    println!("|---|---|---|---|---|---|---|---|");
    for name in ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K"] {
        let problem = load(name).with_capacity(Some(Bytes(1048576)));
        let mut times = Vec::new();
        let mut last = String::new();
        for _ in 0..runs {
            let t = Instant::now();
            let r = plan(&problem, &options(Method::Auto, 10.0));
            times.push(t.elapsed().as_secs_f64());
            last = match r {
                Ok(r) => format!(
                    "{} | {} | {} | {}",
                    r.lower_bound, r.solution.peak, r.status, r.method
                ),
                Err(e) => format!(
                    "- | - | {} | {e}",
                    e.status().map_or("error".into(), |s| s.to_string())
                ),
            };
        }
        let shown: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
        println!(
            "| {name} | {} | {last} | {:.3} | {} |",
            problem.len(),
            median(times),
            shown.join(", ")
        );
    }
}

fn minimize(name: &str, seconds: f64, runs: usize) {
    let problem = load(name);
    let mut times = Vec::new();
    let mut rows = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        match plan(&problem, &options(Method::Auto, seconds)) {
            Ok(r) => rows.push(format!(
                "| {name} | {} | {} | {} | {} | {} | {} |",
                problem.len(),
                r.lower_bound,
                r.proven_bound,
                r.solution.peak,
                r.status,
                r.method
            )),
            Err(e) => rows.push(format!("| {name} | error: {e} |")),
        }
        times.push(t.elapsed().as_secs_f64());
    }
    for row in rows {
        println!("{row}");
    }
    println!(
        "\n{name}: median time {:.3} s over {runs} runs (limit {seconds} s)\n",
        median(times)
    );
}

fn random(sizes: &[(usize, f64)]) {
    println!("\n### Random instances: `auto` against the greedy portfolio (one run each)\n");
    println!("| buffers | lower bound | greedy / lower bound | greedy time (s) | auto limit (s) | auto's first plan at (s) | first plan / lower bound | auto / lower bound | auto status | auto found by | auto time (s) | auto <= greedy |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &(n, seconds) in sizes {
        let problem = random_problem(n, 0x9e37_79b9_7f4a_7c15 ^ n as u64, Shape::Sparse);
        let t = Instant::now();
        let greedy = plan(&problem, &options(Method::Greedy, seconds));
        let greedy_time = t.elapsed().as_secs_f64();
        // The first plan `auto` holds: when, and how good.
        let first: Arc<Mutex<Option<(f64, u64)>>> = Arc::default();
        let sink = first.clone();
        let opts = PlanOptions {
            progress: Some(Arc::new(move |p: &Progress| {
                let mut f = sink.lock().unwrap_or_else(|e| e.into_inner());
                if let (None, Some(peak)) = (*f, p.incumbent) {
                    *f = Some((p.elapsed.as_secs_f64(), peak.0));
                }
            })),
            ..options(Method::Auto, seconds)
        };
        let t = Instant::now();
        let auto = plan(&problem, &opts);
        let auto_time = t.elapsed().as_secs_f64();
        let (first_at, first_peak) = first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or((f64::NAN, 0));
        match (greedy, auto) {
            (Ok(g), Ok(a)) => {
                let lb = g.lower_bound.0 as f64;
                let ratio = |peak: u64| peak as f64 / lb;
                // The method string is `auto/<what found the plan>`; improve counts its tries.
                let found_by = a.method.trim_start_matches("auto/");
                println!(
                    "| {n} | {} | {:.4} | {greedy_time:.3} | {seconds} | {first_at:.3} | {:.4} | {:.4} | {} | {found_by} | {auto_time:.3} | {} |",
                    g.lower_bound,
                    ratio(g.solution.peak.0),
                    ratio(first_peak),
                    ratio(a.solution.peak.0),
                    a.status,
                    if a.solution.peak <= g.solution.peak { "yes" } else { "NO" }
                )
            }
            (g, a) => println!("| {n} | error: greedy {:?} auto {:?} |", g.err(), a.err()),
        }
    }
}

/// The recorded training traces of `benches/data/` (not their `.persistent` lists), by name.
fn recorded_traces() -> Vec<(String, Problem)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/data");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.retain(|p| {
        p.extension().is_some_and(|e| e == "csv")
            && !p.to_string_lossy().ends_with(".persistent.csv")
    });
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| {
            let name = p.file_stem()?.to_string_lossy().into_owned();
            match read_csv_file(&p) {
                Ok(f) => Some((name, f.problem)),
                Err(e) => {
                    eprintln!("placement bench: {e}");
                    None
                }
            }
        })
        .collect()
}

/// The buffers of `<name>.persistent.csv` (`id,lower,size,stream`: what the step leaves alive,
/// weights, gradients, optimizer state), alive from their birth to `end`.
fn persistent(name: &str, end: u64) -> Option<Vec<Buffer>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("benches/data")
        .join(format!("{name}.persistent.csv"));
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let lower: u64 = f.get(1)?.parse().ok()?;
            let size: u64 = f.get(2)?.parse().ok()?;
            Some(Buffer::new(
                format!("state_{}", f.first()?),
                Interval::new(lower, end)?,
                Bytes(size),
            ))
        })
        .collect()
}

/// Recorded traces copied 1, 5 and 20 times one after the other in time, minimized by `auto`;
/// then the same with the state the step leaves alive (its `.persistent.csv`) alive through all
/// the copies, as in gradient accumulation.
fn tiled_traces(seconds: f64, runs: usize) {
    println!("\n### Recorded traces tiled in time (`auto`, no capacity, time limit {seconds} s)\n");
    println!("| trace | copies | with state | buffers | lower bound | peak | peak / bound | status | found by | median time (s) | times (s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, trace) in recorded_traces() {
        for (copies, with_state) in [1, 5, 20, 1, 5, 20]
            .into_iter()
            .zip([false, false, false, true, true, true])
        {
            let mut problem = tiled(&trace, copies);
            if with_state {
                let end = problem
                    .buffers
                    .iter()
                    .map(|b| b.lifetime.end)
                    .max()
                    .unwrap_or(0)
                    + 1;
                match persistent(&name, end) {
                    Some(state) => problem.buffers.extend(state),
                    None => continue,
                }
            }
            let mut times = Vec::new();
            let mut last = String::new();
            for _ in 0..runs {
                let t = Instant::now();
                let r = plan(&problem, &options(Method::Auto, seconds));
                times.push(t.elapsed().as_secs_f64());
                last = match r {
                    Ok(r) => format!(
                        "{} | {} | {:.4} | {} | {}",
                        r.lower_bound,
                        r.solution.peak,
                        r.ratio(),
                        r.status,
                        r.method
                    ),
                    Err(e) => format!("- | - | - | error | {e}"),
                };
            }
            let shown: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
            println!(
                "| {name} | {copies} | {} | {} | {last} | {:.3} | {} |",
                if with_state { "yes" } else { "no" },
                problem.len(),
                median(times),
                shown.join(", ")
            );
        }
    }
}

/// Perfect packings (optimum = capacity = 2^20) decided at their capacity.
fn perfect(seconds: f64) {
    println!("\n### Perfect packings at capacity 1048576 (`auto`, time limit {seconds} s, one run each)\n");
    println!("| buffers | seed | peak (best found when none fits) | peak / bound | status | found by | time (s) |");
    println!("|---|---|---|---|---|---|---|");
    let mut solved = 0;
    let mut total = 0;
    for n in [100, 200, 400, 700, 1000] {
        for seed in 1..=3u64 {
            let problem = perfect_packing(n, 1 << 20, 64, seed).with_capacity(Some(Bytes(1 << 20)));
            let t = Instant::now();
            let r = plan(&problem, &options(Method::Auto, seconds));
            let time = t.elapsed().as_secs_f64();
            total += 1;
            match r {
                Ok(r) => {
                    solved += 1;
                    println!(
                        "| {n} | {seed} | {} | {:.4} | {} | {} | {time:.3} |",
                        r.solution.peak,
                        r.ratio(),
                        r.status,
                        r.method
                    );
                }
                Err(PlanError::Timeout { best_peak, .. }) => println!(
                    "| {n} | {seed} | ({best_peak}) | ({:.4}) | time_limit | - | {time:.3} |",
                    best_peak.0 as f64 / (1u64 << 20) as f64
                ),
                Err(e) => println!("| {n} | {seed} | - | - | error | {e} | {time:.3} |"),
            }
        }
    }
    println!("\nSolved {solved}/{total} within {seconds} s each.\n");
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects a part.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |part: &str| filter.is_empty() || filter.iter().any(|f| part.contains(f.as_str()));
    let runs: usize = std::env::var("PLACEMENT_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    if wants("capacity") {
        at_capacity(runs);
    }
    if wants("minimize") {
        println!("\n### Minimized (`auto`, no capacity)\n");
        println!("| instance | buffers | lower bound | proven bound | peak | status | method |");
        println!("|---|---|---|---|---|---|---|");
        minimize("C", 10.0, runs);
        println!("| instance | buffers | lower bound | proven bound | peak | status | method |");
        println!("|---|---|---|---|---|---|---|");
        minimize("D", 30.0, 1);
    }
    if wants("tiled") {
        tiled_traces(10.0, runs);
    }
    if wants("perfect") {
        let seconds = std::env::var("PLACEMENT_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30.0);
        perfect(seconds);
    }
    if wants("random") {
        random(&[
            (1_000, 2.0),
            (10_000, 5.0),
            (10_000, 20.0),
            (100_000, 1.0),
            (100_000, 5.0),
            (100_000, 30.0),
        ]);
    }
}
