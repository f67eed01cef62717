//! Bindings for the choice of values to free for a fixed order (`crate::remat`).

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::errors::InputError;
use crate::remat::{self, Candidate, Effect, Goal};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(select_frees, m)?)?;
    Ok(())
}

/// (start, end, bytes)
type EffectTuple = (usize, usize, i64);
/// (cost, group, [effect, ...], [excluded candidate, ...], [(other candidate, [effect, ...]), ...])
type CandidateTuple = (
    f64,
    usize,
    Vec<EffectTuple>,
    Vec<usize>,
    Vec<(usize, Vec<EffectTuple>)>,
);

fn effects(tuples: Vec<EffectTuple>) -> Vec<Effect> {
    tuples
        .into_iter()
        .map(|(start, end, bytes)| Effect { start, end, bytes })
        .collect()
}

/// Chooses which candidates to apply to a step of live bytes `profile` (one value per step): with
/// `budget`, every step at most `budget` bytes at the least total cost; without, the least peak with
/// the total cost at most `allowance` (None: no limit). A candidate is `(cost, group, effects,
/// excludes, joint)`, each effect `(start, end, bytes)` adding `bytes` (negative: freeing) over the
/// half-open steps `start..end`; at most one candidate per group is chosen, none with one it
/// excludes, and `joint` lists `(other, effects)` that apply when both are chosen. Returns a dict: `chosen` (indices),
/// `peak_bytes` (of the profile with them applied), `cost`, `bound` (a proven lower bound on the
/// cost, or on the peak), `status` ("optimal", "time_limit", "infeasible", "feasible"). Raises
/// `InputError` for a malformed candidate or allowance.
#[pyfunction]
#[pyo3(signature = (profile, candidates, budget=None, allowance=None, time_limit=10.0))]
fn select_frees<'py>(
    py: Python<'py>,
    profile: Vec<u64>,
    candidates: Vec<CandidateTuple>,
    budget: Option<u64>,
    allowance: Option<f64>,
    time_limit: f64,
) -> PyResult<Bound<'py, PyDict>> {
    if !(time_limit.is_finite() && time_limit >= 0.0) {
        return Err(InputError::new_err(format!(
            "time_limit must be a number of seconds at least 0, got {time_limit}"
        )));
    }
    let candidates: Vec<Candidate> = candidates
        .into_iter()
        .map(|(cost, group, own, excludes, joint)| Candidate {
            cost,
            group,
            effects: effects(own),
            excludes,
            joint: joint.into_iter().map(|(j, e)| (j, effects(e))).collect(),
        })
        .collect();
    let goal = match budget {
        Some(b) => Goal::Budget(b),
        None => Goal::LeastPeak(allowance),
    };
    let limit = Duration::from_secs_f64(time_limit);
    let s = py
        .detach(|| remat::select(&profile, &candidates, goal, limit))
        .map_err(|e| InputError::new_err(e.to_string()))?;
    let d = PyDict::new(py);
    d.set_item("chosen", s.chosen)?;
    d.set_item("peak_bytes", s.peak)?;
    d.set_item("cost", s.cost)?;
    d.set_item("bound", s.bound)?;
    d.set_item("status", s.status.name())?;
    Ok(d)
}
