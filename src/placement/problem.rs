//! The placement problem's vocabulary: buffers with half-open lifetimes and sizes, a problem, a solution.

use std::fmt;
use std::ops::{Add, Sub};

/// A number of bytes (a size, an offset, or an arena's extent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

/// Largest size, time, offset or sum of sizes a problem may hold: with these limits no offset the
/// planner computes (at most the sum of sizes plus one alignment per buffer) can overflow a `u64`.
pub const MAX_VALUE: u64 = 1 << 53;

/// Largest alignment a buffer may ask for (1 GiB); alignments are powers of two.
pub const MAX_ALIGNMENT: u64 = 1 << 30;

impl Bytes {
    pub const ZERO: Bytes = Bytes(0);

    /// The smallest multiple of `alignment` that is `>= self` (alignment 0 or 1 means none).
    ///
    /// # Panics
    /// When that multiple does not fit in a `u64`, which [`Problem::check_limits`] rules out for
    /// every offset a planner computes: an overflow is a bug, never a silently wrong offset.
    pub fn align_up(self, alignment: Bytes) -> Bytes {
        self.checked_align_up(alignment).unwrap_or_else(|| {
            panic!("offset overflow: {self} rounded up to a multiple of {alignment} exceeds 2^64")
        })
    }

    /// The smallest multiple of `alignment` that is `>= self`, or `None` when it exceeds `u64::MAX`.
    pub fn checked_align_up(self, alignment: Bytes) -> Option<Bytes> {
        if alignment.0 <= 1 {
            return Some(self);
        }
        self.0
            .div_ceil(alignment.0)
            .checked_mul(alignment.0)
            .map(Bytes)
    }

    pub fn is_aligned(self, alignment: Bytes) -> bool {
        alignment.0 <= 1 || self.0.is_multiple_of(alignment.0)
    }
}

impl Add for Bytes {
    type Output = Bytes;
    fn add(self, rhs: Bytes) -> Bytes {
        Bytes(self.0 + rhs.0)
    }
}

impl Sub for Bytes {
    type Output = Bytes;
    fn sub(self, rhs: Bytes) -> Bytes {
        Bytes(self.0 - rhs.0)
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Index of a buffer inside its [`Problem`] (not the user-facing id, which is [`Buffer::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BufferId(pub usize);

impl fmt::Display for BufferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A half-open interval of event time `[start, end)`; never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Interval {
    pub start: u64,
    pub end: u64,
}

impl Interval {
    /// `None` when `end <= start`: a buffer must live for at least one tick.
    pub fn new(start: u64, end: u64) -> Option<Interval> {
        (end > start).then_some(Interval { start, end })
    }

    /// True when the two intervals share at least one moment.
    pub fn intersects(&self, other: &Interval) -> bool {
        self.start < other.end && other.start < self.end
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// One buffer to place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// The user's id (a string in MiniMalloc CSV).
    pub name: String,
    pub lifetime: Interval,
    pub size: Bytes,
    /// Offsets must be multiples of this; 1 means no constraint.
    pub alignment: Bytes,
    /// When set, the buffer must be placed exactly here (e.g. memory that is already in use).
    pub fixed_offset: Option<Bytes>,
}

impl Buffer {
    pub fn new(name: impl Into<String>, lifetime: Interval, size: Bytes) -> Buffer {
        Buffer {
            name: name.into(),
            lifetime,
            size,
            alignment: Bytes(1),
            fixed_offset: None,
        }
    }

    /// Size times lifetime: the buffer's area in the time × address plane.
    pub fn area(&self) -> u128 {
        u128::from(self.size.0) * u128::from(self.lifetime.len())
    }
}

/// Buffers to place, and optionally the arena's capacity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problem {
    pub buffers: Vec<Buffer>,
    pub capacity: Option<Bytes>,
}

impl Problem {
    pub fn new(buffers: Vec<Buffer>) -> Problem {
        Problem {
            buffers,
            capacity: None,
        }
    }

    pub fn with_capacity(mut self, capacity: Option<Bytes>) -> Problem {
        self.capacity = capacity;
        self
    }

    pub fn len(&self) -> usize {
        self.buffers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty()
    }

    pub fn buffer(&self, id: BufferId) -> &Buffer {
        &self.buffers[id.0]
    }

    pub fn ids(&self) -> impl Iterator<Item = BufferId> {
        (0..self.buffers.len()).map(BufferId)
    }

    /// Checks the limits that keep the planner's arithmetic exact: every alignment a power of two
    /// of at most [`MAX_ALIGNMENT`] (0 and 1 mean none), and sizes, times, fixed offsets and the sum of the sizes at
    /// most [`MAX_VALUE`]. The message names the first buffer out of bounds.
    pub fn check_limits(&self) -> Result<(), String> {
        let mut total: u64 = 0;
        for b in &self.buffers {
            let name = &b.name;
            if b.alignment.0 > 1 {
                check_alignment(b.alignment.0).map_err(|m| format!("buffer '{name}': {m}"))?;
            }
            for (what, value) in [
                ("size", b.size.0),
                ("lower", b.lifetime.start),
                ("upper", b.lifetime.end),
            ]
            .into_iter()
            .chain(b.fixed_offset.map(|f| ("fixed_offset", f.0)))
            {
                if value > MAX_VALUE {
                    return Err(format!(
                        "buffer '{name}': {what} {value} is too large (at most {MAX_VALUE})"
                    ));
                }
            }
            total = total.saturating_add(b.size.0);
            if total > MAX_VALUE {
                return Err(format!(
                    "sizes add up to more than {MAX_VALUE} bytes (at buffer '{name}')"
                ));
            }
        }
        Ok(())
    }
}

/// Why an alignment is refused: not a power of two, or above [`MAX_ALIGNMENT`].
pub fn check_alignment(alignment: u64) -> Result<(), String> {
    if !alignment.is_power_of_two() {
        return Err(format!(
            "alignment {alignment} is not a power of two (1, 2, 4, ..., {MAX_ALIGNMENT})"
        ));
    }
    if alignment > MAX_ALIGNMENT {
        return Err(format!(
            "alignment {alignment} is too large (at most {MAX_ALIGNMENT}, 1 GiB)"
        ));
    }
    Ok(())
}

/// An offset for every buffer of a problem (indexed by [`BufferId`]) and the resulting arena extent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Solution {
    pub offsets: Vec<Bytes>,
    /// The highest `offset + size` over all buffers: the arena a plan needs.
    pub peak: Bytes,
}

impl Solution {
    /// Builds a solution from offsets, computing its peak. A buffer of size zero holds no byte: it
    /// does not raise the peak, wherever it sits.
    pub fn from_offsets(problem: &Problem, offsets: Vec<Bytes>) -> Solution {
        let peak = problem
            .buffers
            .iter()
            .zip(&offsets)
            .filter(|(b, _)| b.size.0 > 0)
            .map(|(b, &o)| o + b.size)
            .max()
            .unwrap_or(Bytes::ZERO);
        Solution { offsets, peak }
    }

    pub fn offset(&self, id: BufferId) -> Bytes {
        self.offsets[id.0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_open_intervals_touching_do_not_intersect() {
        let a = Interval::new(0, 5).unwrap();
        let b = Interval::new(5, 9).unwrap();
        let c = Interval::new(4, 6).unwrap();
        assert!(!a.intersects(&b));
        assert!(a.intersects(&c) && b.intersects(&c));
        assert!(Interval::new(3, 3).is_none());
    }

    #[test]
    fn align_up_rounds_to_the_next_multiple() {
        assert_eq!(Bytes(0).align_up(Bytes(512)), Bytes(0));
        assert_eq!(Bytes(1).align_up(Bytes(512)), Bytes(512));
        assert_eq!(Bytes(1024).align_up(Bytes(512)), Bytes(1024));
        assert_eq!(Bytes(7).align_up(Bytes(1)), Bytes(7));
        assert_eq!(Bytes(u64::MAX).checked_align_up(Bytes(512)), None);
        assert_eq!(
            Bytes(u64::MAX - 1100).checked_align_up(Bytes(512)),
            Some(Bytes(u64::MAX - 1023))
        );
    }

    #[test]
    #[should_panic(expected = "offset overflow")]
    fn align_up_never_wraps() {
        let _ = Bytes(u64::MAX - 1).align_up(Bytes(1 << 30));
    }

    #[test]
    fn a_zero_size_buffer_does_not_raise_the_peak() {
        let p = Problem::new(vec![
            Buffer::new("a", Interval::new(0, 2).unwrap(), Bytes(4)),
            Buffer::new("z", Interval::new(0, 2).unwrap(), Bytes(0)),
        ]);
        let s = Solution::from_offsets(&p, vec![Bytes(0), Bytes(100)]);
        assert_eq!(s.peak, Bytes(4));
    }

    #[test]
    fn limits_name_the_buffer_and_the_limit() {
        let mut b = Buffer::new("a", Interval::new(0, 2).unwrap(), Bytes(4));
        b.alignment = Bytes(1 << 53);
        let err = Problem::new(vec![b.clone()]).check_limits().unwrap_err();
        assert_eq!(
            err,
            "buffer 'a': alignment 9007199254740992 is too large (at most 1073741824, 1 GiB)"
        );
        b.alignment = Bytes(24);
        let err = Problem::new(vec![b.clone()]).check_limits().unwrap_err();
        assert!(err.contains("alignment 24 is not a power of two"), "{err}");
        b.alignment = Bytes(512);
        assert_eq!(Problem::new(vec![b]).check_limits(), Ok(()));
    }
}
