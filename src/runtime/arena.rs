//! The arena: one backend allocation of the plan's size, and the record of which planned ranges of
//! it are live. [`Arena::try_claim`] is where invariant 1 is enforced: a range is handed out only when
//! it overlaps no live range, whichever step allocated that one.

use std::collections::BTreeMap;

use super::backend::{Backend, BackendError};

/// The plan entry of an allocation served first-fit from the free space (by no plan entry).
pub const NO_ENTRY: usize = usize::MAX;

/// A live planned allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    /// End of the claimed range (offset + slot).
    pub end: usize,
    /// Index of the plan entry it was served for ([`NO_ENTRY`] when served first-fit).
    pub entry: usize,
    /// Bytes the caller asked for.
    pub requested: usize,
    /// The stream it was allocated on (`record_stream` on that same stream changes nothing).
    pub stream: usize,
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
        stream: usize,
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
                stream,
            },
        );
        Some(self.base + offset)
    }

    /// Claims the first free range of `len` bytes (a multiple of `align`, as every live range's end
    /// is) for a request that follows no plan entry; its address, or `None` when no gap is that long.
    pub fn claim_first_fit(
        &mut self,
        len: usize,
        align: usize,
        requested: usize,
        stream: usize,
    ) -> Option<usize> {
        let align = align.max(1);
        let mut start = 0usize;
        for (&offset, live) in &self.live {
            if offset >= start && offset - start >= len {
                break;
            }
            start = start.max(live.end.checked_next_multiple_of(align)?);
        }
        self.try_claim(start, len, NO_ENTRY, requested, stream)
    }

    /// Whether `[offset, offset + len)` overlaps a live range.
    pub fn overlaps(&self, offset: usize, len: usize) -> bool {
        let end = offset.saturating_add(len);
        self.live
            .range(..end)
            .next_back()
            .is_some_and(|(_, l)| l.end > offset)
    }

    /// The live ranges, `(offset, end)`, in address order.
    pub fn live_ranges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.live.iter().map(|(&o, l)| (o, l.end))
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
        let x = a.try_claim(0, 1024, 0, 1000, 0).unwrap();
        assert_eq!(x, a.base());
        assert!(
            a.try_claim(512, 1024, 1, 1, 0).is_none(),
            "overlaps the live range"
        );
        assert!(
            a.try_claim(1024, 1024, 1, 1, 0).is_some(),
            "touching is fine"
        );
        assert!(a.try_claim(3584, 1024, 2, 1, 0).is_none(), "past the end");
        assert_eq!(a.release(x).map(|l| l.requested), Some(1000));
        assert!(a.try_claim(512, 512, 3, 1, 0).is_some());
        a.free(&b, -1).unwrap();
    }

    #[test]
    fn contains_is_the_half_open_range_of_the_arena() {
        let b = HostBackend::new();
        let a = Arena::reserve(&b, -1, 4096).unwrap();
        assert!(a.contains(a.base()) && a.contains(a.base() + 4095));
        // The first byte past the end may start another allocation (a pool segment mapped right
        // after the arena): it is not the arena's.
        assert!(!a.contains(a.base() + 4096));
        assert!(!a.contains(a.base() - 1));
        a.free(&b, -1).unwrap();
    }

    /// Host memory that counts what is returned, and refuses a free of nothing (as cuMemFree does).
    #[derive(Default)]
    struct StrictBackend {
        host: HostBackend,
        frees: std::sync::atomic::AtomicUsize,
    }

    impl Backend for StrictBackend {
        fn name(&self) -> &'static str {
            "strict"
        }
        fn alloc(&self, device: i32, size: usize) -> Result<usize, BackendError> {
            self.host.alloc(device, size)
        }
        fn free(&self, device: i32, addr: usize, size: usize) -> Result<(), BackendError> {
            self.frees
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            assert!(addr != 0 && size != 0, "free of nothing");
            self.host.free(device, addr, size)
        }
        fn synchronize(&self, _device: i32) -> Result<(), BackendError> {
            Ok(())
        }
        fn mem_info(&self, _device: i32) -> Result<Option<(u64, u64)>, BackendError> {
            Ok(None)
        }
    }

    #[test]
    fn an_empty_arena_holds_no_memory_and_returns_none() {
        let b = StrictBackend::default();
        let a = Arena::reserve(&b, 0, 0).unwrap();
        assert!(!a.contains(a.base()) && a.is_idle());
        a.free(&b, 0).unwrap();
        let a = Arena::reserve(&b, 0, 512).unwrap();
        a.free(&b, 0).unwrap();
        assert_eq!(b.frees.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum ArenaOp {
        Claim { offset: usize, len: usize },
        Release { pick: usize },
        ReleaseAt { offset: usize },
        FirstFit { len: usize },
        Overlaps { offset: usize, len: usize },
    }

    fn arena_op() -> impl Strategy<Value = ArenaOp> {
        prop_oneof![
            3 => (0usize..20, 0usize..6).prop_map(|(o, l)| ArenaOp::Claim { offset: o * 512, len: l * 512 }),
            2 => any::<usize>().prop_map(|pick| ArenaOp::Release { pick }),
            1 => (0usize..10_000).prop_map(|offset| ArenaOp::ReleaseAt { offset }),
            2 => (1usize..6).prop_map(|l| ArenaOp::FirstFit { len: l * 512 }),
            1 => (0usize..9000, 0usize..3000).prop_map(|(offset, len)| ArenaOp::Overlaps { offset, len }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// `try_claim` against a plain list of live ranges checked pair by pair: a claim succeeds
        /// exactly when the range is non-empty, inside the arena and disjoint from every live one.
        #[test]
        fn claims_agree_with_a_list_of_live_ranges(ops in proptest::collection::vec(arena_op(), 1..60)) {
            const SIZE: usize = 8192;
            let b = HostBackend::new();
            let mut a = Arena::reserve(&b, -1, SIZE).unwrap();
            let mut model: Vec<(usize, usize)> = Vec::new(); // (offset, end)
            for (entry, op) in ops.into_iter().enumerate() {
                match op {
                    ArenaOp::Claim { offset, len } => {
                        let end = offset + len;
                        let ok = len > 0
                            && end <= SIZE
                            && model.iter().all(|&(o, e)| e <= offset || end <= o);
                        let got = a.try_claim(offset, len, entry, len, 0);
                        prop_assert_eq!(got.is_some(), ok, "claim [{}, {}) with live {:?}", offset, end, model);
                        if let Some(addr) = got {
                            prop_assert_eq!(addr, a.base() + offset);
                            model.push((offset, end));
                        }
                    }
                    ArenaOp::Release { pick } => {
                        if model.is_empty() {
                            continue;
                        }
                        let (o, e) = model.swap_remove(pick % model.len());
                        let live = a.release(a.base() + o);
                        prop_assert_eq!(live.map(|l| l.end), Some(e));
                    }
                    ArenaOp::ReleaseAt { offset } => {
                        let expected = model.iter().position(|&(o, _)| o == offset);
                        let live = a.release(a.base() + offset);
                        prop_assert_eq!(live.is_some(), expected.is_some());
                        if let Some(i) = expected {
                            model.swap_remove(i);
                        }
                    }
                    ArenaOp::FirstFit { len } => {
                        // The lowest multiple of 512 where `len` bytes fit between live ranges.
                        let free = |o: usize| o + len <= SIZE && model.iter().all(|&(mo, me)| me <= o || o + len <= mo);
                        let expected = (0..SIZE / 512).map(|k| k * 512).find(|&o| free(o));
                        let got = a.claim_first_fit(len, 512, len, 0);
                        prop_assert_eq!(got.map(|addr| addr - a.base()), expected, "first fit of {} in {:?}", len, model);
                        if let Some(o) = expected {
                            prop_assert_eq!(a.get(a.base() + o).map(|l| l.entry), Some(NO_ENTRY));
                            model.push((o, o + len));
                        }
                    }
                    ArenaOp::Overlaps { offset, len } => {
                        let expected = model.iter().any(|&(o, e)| o < offset + len && offset < e);
                        prop_assert_eq!(a.overlaps(offset, len), expected, "[{}, +{}) in {:?}", offset, len, model);
                    }
                }
                prop_assert_eq!(a.live_count(), model.len());
                prop_assert_eq!(a.is_idle(), model.is_empty());
            }
            a.free(&b, -1).unwrap();
        }
    }
}
