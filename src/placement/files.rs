//! File pipelines: read a MiniMalloc CSV, plan or validate it, write the solution. The Python
//! bindings and the command line only convert arguments and results; what a failure means for the
//! caller (its exit status) is decided here, once (`FileError::exit_status`).

use std::path::{Path, PathBuf};

use crate::placement::csv::{read_csv_file, write_solution_csv, CsvError};
use crate::placement::{
    max_load, plan, validate, Bytes, InvalidPlan, PlanError, PlanOptions, PlanReport, Solution,
};

/// Exit status: no plan fits the capacity asked for.
pub const EXIT_NO_FIT: i32 = 1;
/// Exit status: the input is malformed or impossible, or an output cannot be written.
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit status: model_opt itself failed (a plan that did not validate); please report it.
pub const EXIT_INTERNAL: i32 = 3;

/// Why a file pipeline failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no offset column to validate", path.display())]
    NoOffsets { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Invalid { path: PathBuf, source: InvalidPlan },
}

impl FileError {
    /// The exit status of the command that failed this way (`EXIT_*`).
    pub fn exit_status(&self) -> i32 {
        match self {
            FileError::Plan(e) if e.is_capacity() => EXIT_NO_FIT,
            FileError::Plan(PlanError::InvalidPlan(_)) => EXIT_INTERNAL,
            _ => EXIT_BAD_INPUT,
        }
    }
}

/// What `plan_file` did: the number of buffers and the planner's report.
pub struct PlannedFile {
    pub buffers: usize,
    pub report: PlanReport,
}

/// What `validate_file` found in a valid solution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidatedFile {
    pub buffers: usize,
    pub lower_bound: Bytes,
    pub peak: Bytes,
}

/// Reads the buffers of `path`, plans them within `capacity` (if any), and writes the solution as
/// CSV to `output` (if any).
pub fn plan_file(
    path: &Path,
    output: Option<&Path>,
    capacity: Option<Bytes>,
    options: &PlanOptions,
) -> Result<PlannedFile, FileError> {
    let problem = read_csv_file(path)?.problem.with_capacity(capacity);
    let report = plan(&problem, options)?;
    if let Some(out) = output {
        std::fs::write(out, write_solution_csv(&problem, &report.solution)).map_err(|source| {
            FileError::Write {
                path: out.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(PlannedFile {
        buffers: problem.len(),
        report,
    })
}

/// Checks the `offset` column of the solution in `path` against its buffers (and `capacity`).
pub fn validate_file(path: &Path, capacity: Option<Bytes>) -> Result<ValidatedFile, FileError> {
    let parsed = read_csv_file(path)?;
    let problem = parsed.problem.with_capacity(capacity);
    let offsets = parsed.offsets.ok_or_else(|| FileError::NoOffsets {
        path: path.to_path_buf(),
    })?;
    let solution = Solution::from_offsets(&problem, offsets);
    validate(&problem, &solution).map_err(|source| FileError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(ValidatedFile {
        buffers: problem.len(),
        lower_bound: max_load(&problem),
        peak: solution.peak,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("model_opt_files_{name}_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const THREE: &str = "id,lower,upper,size\na,0,2,4\nb,1,3,4\nc,2,4,4\n";

    #[test]
    fn a_planned_file_is_written_and_validates() {
        let dir = scratch("plan");
        let input = write(&dir, "in.csv", THREE);
        let out = dir.join("out.csv");
        let planned = plan_file(&input, Some(&out), None, &PlanOptions::default()).unwrap();
        assert_eq!(planned.buffers, 3);
        let checked = validate_file(&out, None).unwrap();
        assert_eq!(checked.peak, planned.report.solution.peak);
        assert_eq!(checked.lower_bound, Bytes(8));
        assert_eq!(checked.peak, Bytes(8));
    }

    #[test]
    fn each_failure_has_its_exit_status() {
        let dir = scratch("errors");
        let input = write(&dir, "in.csv", THREE);
        let opts = PlanOptions::default();
        let no_fit = plan_file(&input, None, Some(Bytes(4)), &opts)
            .err()
            .unwrap();
        assert_eq!(no_fit.exit_status(), EXIT_NO_FIT, "{no_fit}");
        let missing = plan_file(&dir.join("missing.csv"), None, None, &opts)
            .err()
            .unwrap();
        assert_eq!(missing.exit_status(), EXIT_BAD_INPUT, "{missing}");
        let unwritable = dir.join("no_such_dir").join("out.csv");
        let write_err = plan_file(&input, Some(&unwritable), None, &opts)
            .err()
            .unwrap();
        assert!(matches!(write_err, FileError::Write { .. }), "{write_err}");
        assert_eq!(write_err.exit_status(), EXIT_BAD_INPUT);
        assert!(
            write_err.to_string().contains("cannot write"),
            "{write_err}"
        );
        let no_offsets = validate_file(&input, None).err().unwrap();
        assert_eq!(
            no_offsets.to_string(),
            format!("{}: no offset column to validate", input.display())
        );
        let overlapping = write(
            &dir,
            "bad.csv",
            "id,lower,upper,size,offset\na,0,2,4,0\nb,1,3,4,2\n",
        );
        let invalid = validate_file(&overlapping, None).err().unwrap();
        assert!(matches!(invalid, FileError::Invalid { .. }), "{invalid}");
        assert_eq!(invalid.exit_status(), EXIT_BAD_INPUT);
        let internal = FileError::Plan(PlanError::InvalidPlan(
            validate_file(&overlapping, None)
                .err()
                .map(|e| match e {
                    FileError::Invalid { source, .. } => source,
                    other => panic!("{other}"),
                })
                .unwrap(),
        ));
        assert_eq!(internal.exit_status(), EXIT_INTERNAL);
    }
}
