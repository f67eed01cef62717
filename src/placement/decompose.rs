//! Decomposition in time: where no lifetime crosses a moment, the buffers before it and after it
//! never meet, so each side is a placement problem of its own and the arena is the largest of their
//! peaks. Recorded steps split this way whenever several are recorded together (gradient
//! accumulation over micro-batches, a trace of several steps): a 20-step trace of 65,000 buffers is
//! twenty problems of 3,250 that the search settles in a fraction of a second each, where the whole
//! is past what it can take.
//!
//! The parts are not minimized one by one: the arena is the largest part's, so every part only has
//! to fit a common target. The target starts at the max load (no plan can do better); each part is
//! asked whether it fits (fast: greedy often does, and the search's pinnings settle recorded steps
//! at their bound). A part that does not fit the target is minimized, and its peak becomes the new
//! target for the parts after it. The proven bound is the largest of the parts' bounds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::incumbent::{deadline_after, Progress, ProgressFn};
use super::plan::{plan_whole, status_of, Method, PlanError, PlanOptions, PlanReport};
use super::problem::{Buffer, Bytes, Problem, Solution};

/// The buffers of each independent part, by index into the problem, parts in time order. One part
/// when nothing splits (or the problem is empty).
pub fn parts(problem: &Problem) -> Vec<Vec<usize>> {
    parts_of(problem, (0..problem.len()).collect())
}

/// [`parts`] of the buffers `order` of `problem` only.
fn parts_of(problem: &Problem, mut order: Vec<usize>) -> Vec<Vec<usize>> {
    order.sort_unstable_by_key(|&i| problem.buffers[i].lifetime.start);
    let mut parts: Vec<Vec<usize>> = Vec::new();
    let mut end = 0u64;
    for i in order {
        let life = problem.buffers[i].lifetime;
        // Half-open lifetimes: one that starts where the others end does not meet them.
        match parts.last_mut() {
            Some(part) if life.start < end => part.push(i),
            _ => parts.push(vec![i]),
        }
        end = end.max(life.end);
    }
    if parts.is_empty() {
        parts.push(Vec::new());
    }
    parts
}

/// Parts smaller than this are planned together with their neighbours in time: they are still
/// independent, and the search splits them apart again by itself, but each plan costs a greedy
/// portfolio and its threads, which a trace's hundreds of one-buffer parts (the optimizer's
/// temporaries) do not need (resnet152: 468 parts, 0.1 s planned one by one, 0.008 s whole).
pub const MIN_PART_BUFFERS: usize = 512;

/// [`parts`], each run of neighbours smaller than `min_buffers` joined into pieces of up to about
/// `min_buffers`. A large part is never joined to anything: the search's pinnings read a part's
/// time span, and a large part with a tail of small ones is not the shape they are made for.
pub fn pieces(problem: &Problem, min_buffers: usize) -> Vec<Vec<usize>> {
    join_small(parts(problem), min_buffers)
}

/// Joins each run of neighbouring `parts` smaller than `min_buffers` (see [`pieces`]).
fn join_small(parts: Vec<Vec<usize>>, min_buffers: usize) -> Vec<Vec<usize>> {
    let mut pieces: Vec<Vec<usize>> = Vec::new();
    let mut joining = false;
    for part in parts {
        let small = part.len() < min_buffers;
        match pieces.last_mut() {
            Some(last) if small && joining && last.len() < min_buffers => last.extend(part),
            _ => pieces.push(part),
        }
        joining = small;
    }
    pieces
}

/// The long-lived buffers that alone join large parts: those living through more than half the
/// whole span, when taking them out leaves at least two parts of `min_buffers` or more. Several
/// training steps recorded together are held together by the weights, gradients and optimizer
/// state, which live through all of them: taken out (and stacked first, see
/// [`plan_around_spine`]) they leave one part per step. (Shorter fractions also cut single steps
/// into windows, which the pinned search handles better whole.) `None` when the problem does not
/// split so, or when some buffer has a fixed offset (the stacking does not look at them).
pub fn spine(problem: &Problem, min_buffers: usize) -> Option<(Vec<usize>, Vec<Vec<usize>>)> {
    if problem.buffers.iter().any(|b| b.fixed_offset.is_some()) {
        return None;
    }
    let first = problem.buffers.iter().map(|b| b.lifetime.start).min()?;
    let last = problem.buffers.iter().map(|b| b.lifetime.end).max()?;
    let half = (last - first) / 2;
    let (spine, rest): (Vec<usize>, Vec<usize>) =
        (0..problem.len()).partition(|&i| problem.buffers[i].lifetime.len() > half);
    if spine.is_empty() {
        return None;
    }
    let rest = parts_of(problem, rest);
    let large = rest.iter().filter(|p| p.len() >= min_buffers).count();
    (large >= 2).then(|| (spine, join_small(rest, min_buffers)))
}

/// The spine buffers that cross the window `lo..hi`, clipped to it, fixed at their offsets, those
/// with the same clipped lifetime stacked one right on another merged into one: a part sees few
/// fixed buffers (each costs the search a check at every node), and after the first step the
/// spine crosses each window whole, as one block.
fn spine_in_window(problem: &Problem, placed: &[(usize, Bytes)], lo: u64, hi: u64) -> Vec<Buffer> {
    let mut clipped: Vec<Buffer> = placed
        .iter()
        .filter_map(|&(i, offset)| {
            let b = &problem.buffers[i];
            let lifetime =
                super::problem::Interval::new(b.lifetime.start.max(lo), b.lifetime.end.min(hi))?;
            let mut c = b.clone();
            c.lifetime = lifetime;
            c.fixed_offset = Some(offset);
            Some(c)
        })
        .collect();
    clipped.sort_by_key(|b| (b.lifetime.start, b.lifetime.end, b.fixed_offset));
    let mut merged: Vec<Buffer> = Vec::with_capacity(clipped.len());
    for b in clipped {
        if let Some(last) = merged.last_mut() {
            let top = last.fixed_offset.unwrap_or_default() + last.size;
            if last.lifetime == b.lifetime && b.fixed_offset == Some(top) {
                last.size = last.size + b.size;
                continue;
            }
        }
        merged.push(b);
    }
    merged
}

/// Offsets for `spine`, stacked in order of birth (the longer-lived lower when born together):
/// each on top of the stacked buffers it meets, aligned. What a LIFO allocator does, and a
/// training step allocates its long-lived state in the order it keeps it.
fn stack(problem: &Problem, spine: &[usize]) -> Vec<(usize, Bytes)> {
    let mut order = spine.to_vec();
    order.sort_by_key(|&i| {
        let l = problem.buffers[i].lifetime;
        (l.start, std::cmp::Reverse(l.end), i)
    });
    let mut placed: Vec<(usize, Bytes)> = Vec::with_capacity(order.len());
    for i in order {
        let b = &problem.buffers[i];
        let floor = placed
            .iter()
            .filter(|(j, _)| problem.buffers[*j].lifetime.intersects(&b.lifetime))
            .map(|&(j, o)| o + problem.buffers[j].size)
            .max()
            .unwrap_or(Bytes::ZERO);
        placed.push((i, floor.align_up(b.alignment)));
    }
    placed
}

/// Plans `problem` around its `spine` (from [`spine`]): the spine stacked first, then each piece
/// with the spine buffers that cross its time window, clipped to it, at their stacked offsets.
/// The stacking is a guess: a failure here proves nothing about the problem.
pub(crate) fn plan_around_spine(
    problem: &Problem,
    spine: &[usize],
    pieces: Vec<Vec<usize>>,
    lower_bound: Bytes,
    options: &PlanOptions,
    started: Instant,
) -> Result<PlanReport, PlanError> {
    let placed = stack(problem, spine);
    let parts = pieces
        .into_iter()
        .map(|piece| {
            let lo = piece
                .iter()
                .map(|&i| problem.buffers[i].lifetime.start)
                .min();
            let hi = piece.iter().map(|&i| problem.buffers[i].lifetime.end).max();
            let (Some(lo), Some(hi)) = (lo, hi) else {
                return Part::of(problem, piece);
            };
            Part::with_fixed(problem, piece, spine_in_window(problem, &placed, lo, hi))
        })
        .collect();
    plan_in_parts(problem, parts, placed, lower_bound, options, started)
}

/// One part: its own problem and the indices of its buffers in the whole.
struct Part {
    indices: Vec<usize>,
    problem: Problem,
    max_load: Bytes,
    /// Its shape: identical parts have equal keys.
    key: PartKey,
}

/// What planning the parts has settled so far.
struct Parts {
    parts: Vec<Part>,
    /// The latest report of each part that fits the current target.
    reports: Vec<Option<PlanReport>>,
    /// The largest bound proven on any part: a bound on the whole when `proofs_hold`.
    bound: Bytes,
    /// Buffers placed before the parts were planned, and their offsets. When there are any, the
    /// parts were cut around them by a guess, and what the parts prove does not hold for the whole.
    placed: Vec<(usize, Bytes)>,
}

impl Part {
    /// The buffers `indices` of `problem`, as a problem of their own.
    fn of(problem: &Problem, indices: Vec<usize>) -> Part {
        Part::with_fixed(problem, indices, Vec::new())
    }

    /// The buffers `indices` of `problem` and, after them, `fixed` buffers already placed (their
    /// offsets are not the part's to choose, and are not read back from its plan).
    fn with_fixed(problem: &Problem, indices: Vec<usize>, fixed: Vec<Buffer>) -> Part {
        let mut buffers: Vec<Buffer> = indices
            .iter()
            .map(|&i| problem.buffers[i].clone())
            .collect();
        buffers.extend(fixed);
        let sub = Problem::new(buffers);
        Part {
            indices,
            max_load: super::max_load(&sub),
            key: key_of(&sub),
            problem: sub,
        }
    }
}

/// Plans a problem made of several independent `pieces` (from [`pieces`]); `lower_bound` is the
/// whole problem's max load. Called by [`plan`](super::plan::plan) after its checks.
pub(crate) fn plan_parts(
    problem: &Problem,
    pieces: Vec<Vec<usize>>,
    lower_bound: Bytes,
    options: &PlanOptions,
    started: Instant,
) -> Result<PlanReport, PlanError> {
    let parts = pieces.into_iter().map(|p| Part::of(problem, p)).collect();
    plan_in_parts(problem, parts, Vec::new(), lower_bound, options, started)
}

/// Plans `parts` that together hold every buffer of `problem` but those of `placed`, whose
/// offsets are given. With `placed` empty the parts are independent and what they prove holds for
/// the whole; otherwise the parts were cut around `placed`, a guess, and only the max load is a
/// bound on the whole.
fn plan_in_parts(
    problem: &Problem,
    parts: Vec<Part>,
    placed: Vec<(usize, Bytes)>,
    lower_bound: Bytes,
    options: &PlanOptions,
    started: Instant,
) -> Result<PlanReport, PlanError> {
    let deadline = deadline_after(started, options.time_limit);
    let n = parts.len();
    let mut state = Parts {
        parts,
        reports: (0..n).map(|_| None).collect(),
        bound: lower_bound,
        placed,
    };
    let progress = options
        .progress
        .clone()
        .map(|user| Arc::new(Mutex::new(Combined::new(n, lower_bound, started, user))));
    let capacity = problem.capacity;
    let minimize = capacity.is_none() || options.minimize_below_capacity;
    // Decide mode asks every part for the capacity; minimize mode starts at the bound.
    let mut target = if minimize {
        lower_bound
    } else {
        capacity.unwrap_or(lower_bound)
    };
    let memo = Memo::default();
    let first = fit_all(&state, target, deadline, options, progress.as_ref(), &memo);
    let mut missing = Vec::new();
    for (i, result) in first {
        match result {
            Ok(report) => state.record(i, report),
            Err(e) => {
                state.learn(&e);
                missing.push((i, e));
            }
        }
    }
    if !minimize {
        // A planner bug first, then a proof that nothing fits, then whatever else stopped a part.
        let rank = |e: &PlanError| match e {
            PlanError::InvalidPlan(_) => 0,
            PlanError::Infeasible { .. } | PlanError::CapacityBelowBound { .. } => 1,
            _ => 2,
        };
        if let Some((_, err)) = missing.into_iter().min_by_key(|(_, e)| rank(e)) {
            return Err(whole_error(err, &state, target, lower_bound));
        }
    } else {
        // The parts that do not fit the bound, the one proven to need the most first: its peak
        // raises the target the most, and the others are asked for that target before they are
        // minimized.
        missing.sort_by_key(|(i, e)| std::cmp::Reverse((error_bound(e), state.parts[*i].max_load)));
        let parts_left = missing.len();
        for (k, (i, err)) in missing.into_iter().enumerate() {
            if let PlanError::InvalidPlan(_) = err {
                return Err(err);
            }
            let share = share_of(deadline, parts_left - k);
            let proven_over_target = error_bound(&err).is_some_and(|b| b > target);
            if target > lower_bound && !proven_over_target {
                match plan_one(
                    &state.parts[i],
                    Some(target),
                    share,
                    options,
                    progress.as_ref(),
                    &memo,
                    i,
                ) {
                    Ok(report) => {
                        state.record(i, report);
                        continue;
                    }
                    Err(e @ PlanError::InvalidPlan(_)) => return Err(e),
                    Err(e) => state.learn(&e),
                }
            }
            // Minimize the part (within the capacity, when there is one).
            let share = share_of(deadline, parts_left - k);
            let report = plan_one(
                &state.parts[i],
                capacity,
                share,
                options,
                progress.as_ref(),
                &memo,
                i,
            )
            .map_err(|e| whole_error(e, &state, capacity.unwrap_or(target), lower_bound))?;
            target = target.max(report.solution.peak);
            state.record(i, report);
        }
    }
    state.into_report(problem, lower_bound, options, started)
}

impl Parts {
    fn record(&mut self, i: usize, report: PlanReport) {
        self.bound = self.bound.max(report.proven_bound);
        self.reports[i] = Some(report);
    }

    /// Keeps what a failed part proved.
    fn learn(&mut self, err: &PlanError) {
        if let Some(bound) = error_bound(err) {
            self.bound = self.bound.max(bound);
        }
    }

    fn into_report(
        self,
        problem: &Problem,
        lower_bound: Bytes,
        options: &PlanOptions,
        started: Instant,
    ) -> Result<PlanReport, PlanError> {
        let mut offsets = vec![Bytes::ZERO; problem.len()];
        for &(i, o) in &self.placed {
            offsets[i] = o;
        }
        let (mut search_nodes, mut improve_tries) = (0, 0);
        // The part whose peak is the arena: what found its plan is what found the whole's.
        let mut critical: Option<&PlanReport> = None;
        for (part, report) in self.parts.iter().zip(&self.reports) {
            let Some(report) = report else {
                return Err(PlanError::InvalidPlan(
                    super::validate::InvalidPlan::WrongLength {
                        expected: problem.len(),
                        found: 0,
                    },
                ));
            };
            for (&i, &o) in part.indices.iter().zip(&report.solution.offsets) {
                offsets[i] = o;
            }
            search_nodes += report.search_nodes;
            improve_tries += report.improve_tries;
            if critical.is_none_or(|c| report.solution.peak > c.solution.peak) {
                critical = Some(report);
            }
        }
        let solution = Solution::from_offsets(problem, offsets);
        super::validate::validate(problem, &solution).map_err(PlanError::InvalidPlan)?;
        let bound = if self.placed.is_empty() {
            self.bound
        } else {
            lower_bound
        }
        .min(solution.peak);
        let closed = solution.peak <= bound;
        let found_by = critical.map_or("greedy", |c| {
            // The part's method reads `auto/search`: keep what follows the method's name.
            c.method
                .split_once('/')
                .map_or(c.method.as_str(), |(_, f)| f)
        });
        let method = match options.method {
            Method::Greedy => format!("parts({})/{found_by}", self.parts.len()),
            m => format!("{m}/parts({})/{found_by}", self.parts.len()),
        };
        // A plan not proven optimal is held up by its largest part: what stopped that part.
        let stopped_by = critical.and_then(|c| c.stopped_by).filter(|_| !closed);
        Ok(PlanReport {
            solution,
            lower_bound,
            proven_bound: bound,
            status: status_of(closed, stopped_by),
            method,
            elapsed: started.elapsed(),
            stopped_by,
            search_nodes,
            improve_tries,
        })
    }
}

/// The bound an error proves about its part, if any.
fn error_bound(err: &PlanError) -> Option<Bytes> {
    match err {
        PlanError::Infeasible { bound, .. } | PlanError::Timeout { bound, .. } => Some(*bound),
        PlanError::CapacityBelowBound { lower_bound, .. }
        | PlanError::NoPlanWithinCapacity { lower_bound, .. } => Some(*lower_bound),
        _ => None,
    }
}

/// A part's failure, said of the whole problem: the capacity and the max load are the whole's, the
/// bound the largest proven on any part, the best peak at least the part's.
fn whole_error(
    err: PlanError,
    state: &Parts,
    capacity: Bytes,
    whole_lower_bound: Bytes,
) -> PlanError {
    let bound = state.bound.max(error_bound(&err).unwrap_or(Bytes::ZERO));
    let best_of_others = state
        .reports
        .iter()
        .flatten()
        .map(|r| r.solution.peak)
        .max()
        .unwrap_or(Bytes::ZERO);
    match err {
        PlanError::Infeasible { .. } | PlanError::CapacityBelowBound { .. } => {
            PlanError::Infeasible { capacity, bound }
        }
        PlanError::Timeout { best_peak, .. } => PlanError::Timeout {
            capacity,
            best_peak: best_peak.max(best_of_others),
            bound,
        },
        PlanError::NoPlanWithinCapacity {
            best_peak,
            lower_bound,
            ..
        } => PlanError::NoPlanWithinCapacity {
            capacity,
            best_peak: best_peak.max(best_of_others),
            lower_bound: lower_bound.max(whole_lower_bound),
        },
        other => other,
    }
}

/// The time limit of the next of `parts_left` parts: an equal share of what is left.
fn share_of(deadline: Instant, parts_left: usize) -> Duration {
    deadline.saturating_duration_since(Instant::now()) / parts_left.max(1) as u32
}

/// A part up to its place in time: its buffers' lifetimes from its first moment, sizes,
/// alignments and fixed offsets, in order.
type PartKey = Vec<(u64, u64, u64, u64, Option<u64>)>;

/// The answers of parts planned so far, by their shape and capacity: the copies of a step tiled in
/// time (gradient accumulation, a trace of several steps) are planned once.
#[derive(Default)]
struct Memo(Mutex<HashMap<(PartKey, Option<Bytes>), Answer>>);

/// What planning one part ended with.
type Answer = Result<PlanReport, PlanError>;

/// The shape of a part's problem, up to its place in time.
fn key_of(problem: &Problem) -> PartKey {
    let first = problem
        .buffers
        .iter()
        .map(|b| b.lifetime.start)
        .min()
        .unwrap_or(0);
    problem
        .buffers
        .iter()
        .map(|b| {
            (
                b.lifetime.start - first,
                b.lifetime.end - first,
                b.size.0,
                b.alignment.0,
                b.fixed_offset.map(|f| f.0),
            )
        })
        .collect()
}

/// Plans part `i` with the given capacity (`None`: minimize) and time limit, or takes the answer
/// of an identical part planned before.
fn plan_one(
    part: &Part,
    capacity: Option<Bytes>,
    time_limit: Duration,
    options: &PlanOptions,
    progress: Option<&Arc<Mutex<Combined>>>,
    memo: &Memo,
    i: usize,
) -> Result<PlanReport, PlanError> {
    let progress = progress.map(|c| Combined::for_part(c, i));
    let key = (part.key.clone(), capacity);
    let known = memo
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned();
    if let Some(answer) = known {
        if let (Ok(report), Some(progress)) = (&answer, &progress) {
            progress(&Progress {
                incumbent: Some(report.solution.peak),
                bound: report.proven_bound,
                elapsed: report.elapsed,
                phase: "parts",
            });
        }
        return answer;
    }
    let problem = part.problem.clone().with_capacity(capacity);
    let options = PlanOptions {
        time_limit,
        progress,
        ..options.clone()
    };
    let answer = plan_whole(&problem, &options, part.max_load, Instant::now());
    memo.0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, answer.clone());
    answer
}

/// Asks every part whether it fits `target`, on one worker per core (at most four): the parts
/// take the time left in proportion to their sizes, and a part that finishes early leaves its time
/// to those after it. A part identical to an earlier one (a copy of a step) takes no time of its
/// own: the distinct parts are planned first, the copies then take their answers.
fn fit_all(
    state: &Parts,
    target: Bytes,
    deadline: Instant,
    options: &PlanOptions,
    progress: Option<&Arc<Mutex<Combined>>>,
    memo: &Memo,
) -> Vec<(usize, Result<PlanReport, PlanError>)> {
    let mut seen = std::collections::HashSet::new();
    let (distinct, copies): (Vec<usize>, Vec<usize>) =
        (0..state.parts.len()).partition(|&i| seen.insert(&state.parts[i].key));
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(distinct.len().max(1));
    let next = AtomicUsize::new(0);
    let sizes_left = Mutex::new(
        distinct
            .iter()
            .map(|&i| state.parts[i].problem.len())
            .sum::<usize>(),
    );
    let results = Mutex::new(Vec::with_capacity(state.parts.len()));
    let work = || {
        while let Some(&i) = distinct.get(next.fetch_add(1, Ordering::Relaxed)) {
            let part = &state.parts[i];
            let size = part.problem.len().max(1);
            let time_limit = {
                let mut left = sizes_left.lock().unwrap_or_else(|e| e.into_inner());
                let share = size as f64 / (*left).max(1) as f64 * workers as f64;
                *left = left.saturating_sub(part.problem.len());
                let remaining = deadline.saturating_duration_since(Instant::now());
                remaining.mul_f64(share.min(1.0))
            };
            let result = plan_one(part, Some(target), time_limit, options, progress, memo, i);
            results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((i, result));
        }
    };
    if workers <= 1 {
        work();
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (1..workers)
                .filter_map(|_| {
                    std::thread::Builder::new()
                        .name("model_opt-parts".into())
                        .spawn_scoped(scope, work)
                        .ok()
                })
                .collect();
            work();
            for h in handles {
                // A worker that panicked leaves its parts unplanned: they are reported missing.
                let _ = h.join();
            }
        });
    }
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    for i in copies {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let part = &state.parts[i];
        results.push((
            i,
            plan_one(part, Some(target), remaining, options, progress, memo, i),
        ));
    }
    results.sort_by_key(|(i, _)| *i);
    results
}

/// A progress callback that passes on only what improves on `best` and `bound`, timed from
/// `started`: for a second method that starts over after a first one already reported its plan.
pub(crate) fn only_improvements(
    user: ProgressFn,
    best: Option<Bytes>,
    bound: Bytes,
    started: Instant,
) -> ProgressFn {
    let mut combined = Combined::new(1, bound, started, user);
    combined.peaks[0] = best;
    combined.reported.0 = best;
    Combined::for_part(&Arc::new(Mutex::new(combined)), 0)
}

/// The whole plan's progress, from its parts': the incumbent is known once every part holds a
/// plan (the largest of their peaks), the bound is the largest of theirs.
struct Combined {
    peaks: Vec<Option<Bytes>>,
    bounds: Vec<Bytes>,
    reported: (Option<Bytes>, Bytes),
    started: Instant,
    user: ProgressFn,
}

impl Combined {
    fn new(parts: usize, bound: Bytes, started: Instant, user: ProgressFn) -> Combined {
        Combined {
            peaks: vec![None; parts],
            bounds: vec![Bytes::ZERO; parts],
            reported: (None, bound),
            started,
            user,
        }
    }

    /// The progress callback of part `i`.
    fn for_part(combined: &Arc<Mutex<Combined>>, i: usize) -> ProgressFn {
        let combined = combined.clone();
        Arc::new(move |p: &Progress| {
            let mut c = combined.lock().unwrap_or_else(|e| e.into_inner());
            c.update(i, p);
        })
    }

    fn update(&mut self, i: usize, p: &Progress) {
        // A part's peak may go up when it is planned again for a higher target; keep the best.
        if let Some(peak) = p.incumbent {
            self.peaks[i] = Some(self.peaks[i].map_or(peak, |old| old.min(peak)));
        }
        self.bounds[i] = self.bounds[i].max(p.bound);
        let incumbent = self
            .peaks
            .iter()
            .copied()
            .collect::<Option<Vec<Bytes>>>()
            .and_then(|v| v.into_iter().max());
        let bound = self
            .bounds
            .iter()
            .copied()
            .max()
            .unwrap_or_default()
            .max(self.reported.1);
        let bound = incumbent.map_or(bound, |peak| bound.min(peak));
        let better = match (incumbent, self.reported.0) {
            (Some(new), Some(old)) => new < old,
            (Some(_), None) => true,
            _ => false,
        };
        if better || bound > self.reported.1 {
            self.reported = (incumbent.or(self.reported.0), bound.max(self.reported.1));
            (self.user)(&Progress {
                incumbent: self.reported.0,
                bound: self.reported.1,
                elapsed: self.started.elapsed(),
                phase: p.phase,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::problem::Interval;

    fn buf(start: u64, end: u64, size: u64) -> Buffer {
        Buffer::new("b", Interval::new(start, end).unwrap(), Bytes(size))
    }

    #[test]
    fn splits_where_no_lifetime_crosses() {
        // [0,2) [1,3) | [3,5) [4,6) — touching at 3 does not join.
        let p = Problem::new(vec![buf(3, 5, 1), buf(0, 2, 1), buf(4, 6, 1), buf(1, 3, 1)]);
        assert_eq!(parts(&p), vec![vec![1, 3], vec![0, 2]]);
    }

    #[test]
    fn a_long_lifetime_joins_everything_it_crosses() {
        let p = Problem::new(vec![buf(0, 2, 1), buf(3, 5, 1), buf(1, 4, 1), buf(6, 7, 1)]);
        assert_eq!(parts(&p), vec![vec![0, 2, 1], vec![3]]);
    }

    #[test]
    fn small_parts_are_joined_with_their_neighbours() {
        // Five parts of one buffer, then one of three, then two of one.
        let mut bufs: Vec<Buffer> = (0..5).map(|t| buf(t, t + 1, 1)).collect();
        bufs.extend([buf(10, 12, 1), buf(11, 13, 1), buf(12, 14, 1)]);
        bufs.extend([buf(20, 21, 1), buf(21, 22, 1)]);
        let p = Problem::new(bufs);
        assert_eq!(parts(&p).len(), 8);
        assert_eq!(pieces(&p, 1).len(), 8);
        // Runs of small parts join up to the size; the part of three stands alone.
        assert_eq!(
            pieces(&p, 3),
            vec![vec![0, 1, 2], vec![3, 4], vec![5, 6, 7], vec![8, 9]]
        );
        assert_eq!(pieces(&p, 100).len(), 1);
    }

    #[test]
    fn an_empty_problem_is_one_empty_part() {
        assert_eq!(parts(&Problem::default()), vec![Vec::<usize>::new()]);
    }
}
