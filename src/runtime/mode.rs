//! The runtime's state machine.
//!
//! ```text
//! passthrough ──profile()──▶ recording ──end──▶ passthrough (trace kept) ──plan()──▶ planned
//! planned ──step()──▶ in step ──end──▶ planned;   planned ──profile()──▶ recording (re-profile)
//! ```
//! Outside a step every request goes to the fallback pool, in every mode.

use std::fmt;

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
