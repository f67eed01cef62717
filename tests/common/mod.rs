//! Helpers shared by the integration tests: the shared data sets and random instances.

#![allow(dead_code)]

use std::path::PathBuf;

use model_opt::placement::csv::read_csv_file;
use model_opt::placement::{Buffer, Bytes, Interval, Problem};

/// `../shared/data/minimalloc` beside the repository.
pub fn minimalloc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/minimalloc")
}

/// Every CSV file of a data set folder (`examples` or `challenging`), sorted, with its parsed problem.
pub fn instances(folder: &str) -> Vec<(String, Problem)> {
    let dir = minimalloc_dir().join(folder);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no instances in {}", dir.display());
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let parsed = read_csv_file(&p).unwrap_or_else(|e| panic!("{e}"));
            (name, parsed.problem)
        })
        .collect()
}

/// The number in a file name like `small_c.8.csv` or `A.1048576.csv`: the optimum or the capacity.
pub fn number_in_name(name: &str) -> u64 {
    name.split('.')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("name like X.N.csv")
}

/// A problem from `(start, end, size)` triples.
pub fn problem_of(triples: &[(u64, u64, u64)]) -> Problem {
    Problem::new(
        triples
            .iter()
            .enumerate()
            .map(|(i, &(s, e, size))| {
                Buffer::new(i.to_string(), Interval::new(s, e).unwrap(), Bytes(size))
            })
            .collect(),
    )
}

/// Seven buffers `(start, end, size)` whose optimum is one above their max load: the shapes cannot
/// interlock without a gap (found by a random search; `placement_exact` checks it by brute force).
pub const FRAGMENTED: [(u64, u64, u64); 7] = [
    (4, 7, 5),
    (7, 9, 6),
    (1, 4, 6),
    (6, 8, 6),
    (1, 2, 6),
    (3, 5, 4),
    (2, 7, 3),
];
