//! The runtime's state machine: one [`Phase`] value, changed only by the transitions below (each
//! refused with a [`RuntimeError::WrongMode`] that says what to do), from which the route of every
//! request and the recording it belongs to follow.
//!
//! ```text
//! passthrough ──profile()──▶ recording ──end──▶ passthrough (trace kept) ──plan()──▶ planned
//! planned ──step()──▶ in step ──end──▶ planned;   planned ──profile()──▶ recording ──end──▶ planned
//! ```
//! Outside a step every request goes to the fallback pool, in every mode.

use std::fmt;

use super::device::{Recording, Route};
use super::error::RuntimeError;

/// What `stats()["mode"]` reports: the phase without the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything from the fallback pool.
    Passthrough,
    /// Inside `profile()`: served by the fallback, and every allocation and free recorded.
    Recording,
    /// A plan is loaded and its arena reserved; `step()` replays it.
    Planned,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Passthrough => "passthrough",
            Mode::Recording => "recording",
            Mode::Planned => "planned",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the runtime is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Phase {
    /// No plan: everything from the fallback pool.
    #[default]
    Passthrough,
    /// Inside `profile()`.
    Recording,
    /// Plans installed, outside a step.
    Planned,
    /// Inside `step()`, with the user's key if one was given.
    InStep { key: Option<String> },
}

impl Phase {
    pub fn mode(&self) -> Mode {
        match self {
            Phase::Passthrough => Mode::Passthrough,
            Phase::Recording => Mode::Recording,
            Phase::Planned | Phase::InStep { .. } => Mode::Planned,
        }
    }

    pub fn in_step(&self) -> bool {
        matches!(self, Phase::InStep { .. })
    }

    /// The open step's key.
    pub fn step_key(&self) -> Option<&str> {
        match self {
            Phase::InStep { key } => key.as_deref(),
            _ => None,
        }
    }

    /// Where a request goes in this phase.
    pub fn route(&self, automatic: bool) -> Route {
        match self {
            Phase::Recording => Route::Record,
            Phase::InStep { .. } if automatic => Route::ReplayRecord,
            Phase::InStep { .. } => Route::Replay,
            Phase::Passthrough | Phase::Planned => Route::Fallback,
        }
    }

    /// Which recording a free belongs to in this phase.
    pub fn recording(&self, automatic: bool) -> Recording {
        match self {
            Phase::Recording => Recording::Profile,
            Phase::InStep { .. } if automatic => Recording::Step,
            _ => Recording::No,
        }
    }

    fn refuse(&self, action: &'static str, hint: &'static str) -> RuntimeError {
        RuntimeError::WrongMode {
            action,
            mode: self.mode(),
            hint,
        }
    }

    /// `profile()`: from passthrough or planned.
    pub fn begin_profile(&self) -> Result<Phase, RuntimeError> {
        match self {
            Phase::Recording => {
                Err(self.refuse("start profiling", "profile() blocks cannot be nested"))
            }
            Phase::InStep { .. } => Err(self.refuse(
                "start profiling",
                "a step() block is open; profile outside of step()",
            )),
            Phase::Passthrough | Phase::Planned => Ok(Phase::Recording),
        }
    }

    /// The end of `profile()`: planned again when plans were installed before, else passthrough
    /// (the recorded trace waits for `plan()`).
    pub fn end_profile(&self, has_plans: bool) -> Result<Phase, RuntimeError> {
        match self {
            Phase::Recording if has_plans => Ok(Phase::Planned),
            Phase::Recording => Ok(Phase::Passthrough),
            _ => Err(self.refuse("end profiling", "no profile() block is open")),
        }
    }

    /// Whether `plan()` (or an automatic plan) may install plans now; it leaves the runtime planned.
    pub fn check_plan(&self, action: &'static str) -> Result<(), RuntimeError> {
        match self {
            Phase::Recording | Phase::InStep { .. } => Err(self.refuse(
                action,
                "call plan() after the profile() block and outside step()",
            )),
            Phase::Passthrough | Phase::Planned => Ok(()),
        }
    }

    /// `step()`: only with plans installed.
    pub fn begin_step(&self, key: Option<&str>) -> Result<Phase, RuntimeError> {
        match self {
            Phase::Planned => Ok(Phase::InStep {
                key: key.map(str::to_string),
            }),
            Phase::InStep { .. } => {
                Err(self.refuse("start a planned step", "step() blocks cannot be nested"))
            }
            Phase::Passthrough | Phase::Recording => Err(self.refuse(
                "start a planned step",
                "record a step inside `with model_opt.profile():` and call model_opt.plan() first",
            )),
        }
    }

    /// The end of `step()`.
    pub fn end_step(&self) -> Result<Phase, RuntimeError> {
        match self {
            Phase::InStep { .. } => Ok(Phase::Planned),
            _ => Err(self.refuse("end a step", "no step() block is open")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Phase> {
        vec![
            Phase::Passthrough,
            Phase::Recording,
            Phase::Planned,
            Phase::InStep { key: None },
            Phase::InStep {
                key: Some("len64".into()),
            },
        ]
    }

    /// Every transition from every phase, against the diagram in the header.
    #[test]
    fn transitions_follow_the_diagram() {
        for p in all() {
            let step = p.in_step();
            let recording = p == Phase::Recording;
            assert_eq!(
                p.begin_profile().ok(),
                (!step && !recording).then_some(Phase::Recording),
                "{p:?}"
            );
            assert_eq!(
                p.end_profile(true).ok(),
                recording.then_some(Phase::Planned)
            );
            assert_eq!(
                p.end_profile(false).ok(),
                recording.then_some(Phase::Passthrough)
            );
            assert_eq!(p.check_plan("plan").is_ok(), !step && !recording, "{p:?}");
            assert_eq!(
                p.begin_step(Some("k")).ok(),
                (p == Phase::Planned).then(|| Phase::InStep {
                    key: Some("k".into())
                }),
                "{p:?}"
            );
            assert_eq!(p.end_step().ok(), step.then_some(Phase::Planned), "{p:?}");
        }
    }

    #[test]
    fn refusals_name_the_mode_and_what_to_do() {
        let e = Phase::Passthrough.begin_step(None).unwrap_err().to_string();
        assert_eq!(
            e,
            "cannot start a planned step while the runtime is passthrough: record a step inside \
             `with model_opt.profile():` and call model_opt.plan() first"
        );
        let e = Phase::InStep { key: None }
            .begin_profile()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("while the runtime is planned: a step() block is open"),
            "{e}"
        );
        let e = Phase::Recording.begin_profile().unwrap_err().to_string();
        assert!(e.ends_with("profile() blocks cannot be nested"), "{e}");
    }

    #[test]
    fn routes_and_recordings_follow_the_phase() {
        for automatic in [false, true] {
            assert_eq!(Phase::Passthrough.route(automatic), Route::Fallback);
            assert_eq!(Phase::Planned.route(automatic), Route::Fallback);
            assert_eq!(Phase::Recording.route(automatic), Route::Record);
            assert_eq!(Phase::Recording.recording(automatic), Recording::Profile);
            assert_eq!(Phase::Planned.recording(automatic), Recording::No);
        }
        let step = Phase::InStep { key: None };
        assert_eq!(step.route(true), Route::ReplayRecord);
        assert_eq!(step.route(false), Route::Replay);
        assert_eq!(step.recording(true), Recording::Step);
        assert_eq!(step.recording(false), Recording::No);
        assert_eq!(
            Phase::InStep {
                key: Some("k".into())
            }
            .step_key(),
            Some("k")
        );
        assert_eq!(step.mode(), Mode::Planned);
    }
}
