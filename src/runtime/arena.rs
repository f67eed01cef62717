//! The arena: one backend allocation of the plan's size, and the record of which planned ranges of
//! it are live. [`Arena::try_claim`] is where invariant 1 is enforced: a range is handed out only when
//! it overlaps no live range, whichever step allocated that one.

use std::collections::BTreeMap;

use super::backend::{Backend, BackendError};

/// A live planned allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    /// End of the claimed range (offset + slot).
    pub end: usize,
    /// Index of the plan entry it was served for.
    pub entry: usize,
    /// Bytes the caller asked for.
    pub requested: usize,
}

#[derive(Debug)]
pub struct Arena {
    base: usize,
    size: usize,
    /// Offset -> live range. Live ranges never overlap, so the one starting last before an end is the
    /// only one that can overlap a new range.
    live: BTreeMap<usize, Live>,
}

impl Arena {
    /// Reserves `size` bytes (none when 0).
    pub fn reserve(backend: &dyn Backend, device: i32, size: usize) -> Result<Arena, BackendError> {
        let base = if size == 0 {
            0
        } else {
            backend.alloc(device, size)?
        };
        Ok(Arena {
            base,
            size,
            live: BTreeMap::new(),
        })
    }

    pub fn base(&self) -> usize {
        self.base
    }

    pub fn size(&self) -> usize {
        self.size
    }

    #[inline]
    pub fn contains(&self, addr: usize) -> bool {
        self.size > 0 && addr >= self.base && addr < self.base + self.size
    }

    pub fn is_idle(&self) -> bool {
        self.live.is_empty()
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// The address of `[offset, offset + len)` when that range is inside the arena and overlaps no
    /// live range; it is then live until [`Arena::release`].
    #[inline]
    pub fn try_claim(
        &mut self,
        offset: usize,
        len: usize,
        entry: usize,
        requested: usize,
    ) -> Option<usize> {
        let end = offset.checked_add(len)?;
        if end > self.size || len == 0 {
            return None;
        }
        if let Some((_, before)) = self.live.range(..end).next_back() {
            if before.end > offset {
                return None;
            }
        }
        self.live.insert(
            offset,
            Live {
                end,
                entry,
                requested,
            },
        );
        Some(self.base + offset)
    }

    /// Ends the live range starting at `addr`; `None` when none starts there.
    #[inline]
    pub fn release(&mut self, addr: usize) -> Option<Live> {
        self.live.remove(&addr.checked_sub(self.base)?)
    }

    /// The live range starting at `addr`.
    #[inline]
    pub fn get(&self, addr: usize) -> Option<Live> {
        self.live.get(&addr.checked_sub(self.base)?).copied()
    }

    /// Returns the memory to the backend. The caller makes sure nothing is live in it.
    pub fn free(self, backend: &dyn Backend, device: i32) -> Result<(), BackendError> {
        if self.size > 0 {
            backend.free(device, self.base, self.size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::backend::HostBackend;

    #[test]
    fn overlapping_claims_are_refused() {
        let b = HostBackend::new();
        let mut a = Arena::reserve(&b, -1, 4096).unwrap();
        let x = a.try_claim(0, 1024, 0, 1000).unwrap();
        assert_eq!(x, a.base());
        assert!(
            a.try_claim(512, 1024, 1, 1).is_none(),
            "overlaps the live range"
        );
        assert!(a.try_claim(1024, 1024, 1, 1).is_some(), "touching is fine");
        assert!(a.try_claim(3584, 1024, 2, 1).is_none(), "past the end");
        assert_eq!(a.release(x).map(|l| l.requested), Some(1000));
        assert!(a.try_claim(512, 512, 3, 1).is_some());
        a.free(&b, -1).unwrap();
    }
}
