//! The fallback pool: a caching allocator over the backend for everything the plan does not cover
//! (passthrough and recording modes, divergent and persistent allocations), so those requests do not
//! call the driver each time.
//!
//! Requests are rounded to 512 bytes and served best-fit from cached free blocks of the same stream,
//! splitting a larger block; freed blocks merge with free neighbours of the same segment (one backend
//! allocation). Segments never move between streams, so memory a stream used is only reused by that
//! stream's later work, which the stream orders. `release_cached` returns fully free segments.

use std::collections::{BTreeMap, BTreeSet};

use super::backend::{Backend, BackendError};

/// Every block is a multiple of this, as in PyTorch's CUDA caching allocator.
pub const ROUNDING: usize = 512;
const SMALL_REQUEST: usize = 1 << 20;
const SMALL_SEGMENT: usize = 2 << 20;
const MEDIUM_REQUEST: usize = 10 << 20;
const MEDIUM_SEGMENT: usize = 20 << 20;
const LARGE_ROUNDING: usize = 2 << 20;

#[derive(Debug, Clone, Copy)]
struct Block {
    size: usize,
    segment: usize,
    stream: usize,
    /// In a small segment (requests up to 1 MiB): small and large requests never share a segment,
    /// so a small block kept for long (a loss, a step counter) never pins a large segment, and
    /// returning cached memory frees the large segments a step's temporaries used (as in PyTorch's
    /// allocator, whose small and large pools are apart).
    small: bool,
    /// Bytes the caller asked for; 0 when the block is free.
    requested: usize,
    used: bool,
}

#[derive(Debug, Default)]
pub struct FallbackPool {
    /// Every block, free or used, by address.
    blocks: BTreeMap<usize, Block>,
    /// Free blocks as (stream, small, size, address): best fit is the first entry at or above a size
    /// of the request's class.
    free: BTreeSet<(usize, bool, usize, usize)>,
    /// Segment start -> size.
    segments: BTreeMap<usize, usize>,
    reserved: usize,
    live_bytes: usize,
    /// Never return segments to the backend on an out-of-memory (see [`FallbackPool::keep_segments`]).
    keep: bool,
}

/// What a free found out about the block it released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    pub requested: usize,
    pub stream: usize,
}

/// No request can be larger: the most any allocation can be (Rust's and the C library's limit), far
/// above any device. Everything the runtime computes from a size (rounding, segments, offsets) stays
/// below `usize::MAX` because of it, and the arithmetic is checked besides.
pub const MAX_REQUEST: usize = isize::MAX as usize;

/// `size` rounded up to [`ROUNDING`]; `None` above [`MAX_REQUEST`].
pub fn round_size(size: usize) -> Option<usize> {
    if size > MAX_REQUEST {
        return None;
    }
    size.max(1).checked_next_multiple_of(ROUNDING)
}

/// The backend allocation that holds a block of `rounded` bytes; `None` when it cannot be computed.
fn segment_size(rounded: usize) -> Option<usize> {
    if rounded <= SMALL_REQUEST {
        Some(SMALL_SEGMENT)
    } else if rounded <= MEDIUM_REQUEST {
        Some(MEDIUM_SEGMENT)
    } else {
        rounded.checked_next_multiple_of(LARGE_ROUNDING)
    }
}

impl FallbackPool {
    pub fn new() -> FallbackPool {
        FallbackPool::default()
    }

    /// While on, an out-of-memory fails instead of first returning the cached segments: a CUDA graph's
    /// pool, whose cached blocks its replays may still use, and any pool while a graph is being
    /// captured (freeing device memory then would break the capture).
    pub fn keep_segments(&mut self, on: bool) {
        self.keep = on;
    }

    /// Bytes obtained from the backend and not yet returned.
    pub fn reserved_bytes(&self) -> usize {
        self.reserved
    }

    /// Bytes of blocks in use (rounded sizes).
    pub fn live_bytes(&self) -> usize {
        self.live_bytes
    }

    pub fn owns(&self, addr: usize) -> bool {
        matches!(self.blocks.get(&addr), Some(b) if b.used)
    }

    /// The stream the block in use at `addr` was allocated for.
    pub fn stream_of(&self, addr: usize) -> Option<usize> {
        self.blocks.get(&addr).filter(|b| b.used).map(|b| b.stream)
    }

    /// Bytes requested for the block in use at `addr`.
    pub fn requested(&self, addr: usize) -> Option<usize> {
        self.blocks
            .get(&addr)
            .filter(|b| b.used)
            .map(|b| b.requested)
    }

    /// A block of at least `size` bytes for `stream`. On a backend out-of-memory it releases the
    /// cached segments and tries once more before giving up.
    pub fn alloc(
        &mut self,
        backend: &dyn Backend,
        device: i32,
        size: usize,
        stream: usize,
    ) -> Result<usize, BackendError> {
        let Some(rounded) = round_size(size) else {
            return Err(BackendError::too_large(
                backend.name_of(device),
                device,
                size,
            ));
        };
        let small = rounded <= SMALL_REQUEST;
        let found = self
            .free
            .range((stream, small, rounded, 0)..=(stream, small, usize::MAX, usize::MAX))
            .next()
            .copied();
        let addr = match found {
            Some(key) => {
                self.free.remove(&key);
                key.3
            }
            None => self.grow(backend, device, rounded, stream)?,
        };
        let Some(block) = self.blocks.get_mut(&addr) else {
            unreachable!("free list and block map disagree");
        };
        let remainder = block.size - rounded;
        let (segment, block_stream, block_small) = (block.segment, block.stream, block.small);
        block.used = true;
        block.requested = size;
        if remainder >= ROUNDING {
            block.size = rounded;
            let tail = addr + rounded;
            self.blocks.insert(
                tail,
                Block {
                    size: remainder,
                    segment,
                    stream: block_stream,
                    small: block_small,
                    requested: 0,
                    used: false,
                },
            );
            self.free
                .insert((block_stream, block_small, remainder, tail));
        }
        self.live_bytes += self.blocks.get(&addr).map_or(0, |b| b.size);
        Ok(addr)
    }

    fn grow(
        &mut self,
        backend: &dyn Backend,
        device: i32,
        rounded: usize,
        stream: usize,
    ) -> Result<usize, BackendError> {
        let Some(seg) = segment_size(rounded) else {
            return Err(BackendError::too_large(
                backend.name_of(device),
                device,
                rounded,
            ));
        };
        let addr = match backend.alloc(device, seg) {
            Ok(a) => a,
            Err(e) if e.is_out_of_memory() && !self.keep => {
                self.release_cached(backend, device);
                backend.alloc(device, seg)?
            }
            Err(e) => return Err(e),
        };
        self.segments.insert(addr, seg);
        self.reserved += seg;
        self.blocks.insert(
            addr,
            Block {
                size: seg,
                segment: addr,
                stream,
                small: rounded <= SMALL_REQUEST,
                requested: 0,
                used: false,
            },
        );
        Ok(addr)
    }

    /// Releases the block at `addr`; `None` when no block in use starts there.
    pub fn free(&mut self, addr: usize) -> Option<Freed> {
        let block = self.blocks.get_mut(&addr)?;
        if !block.used {
            return None;
        }
        block.used = false;
        let freed = Freed {
            requested: block.requested,
            stream: block.stream,
        };
        block.requested = 0;
        let (mut start, mut size, segment, stream, small) =
            (addr, block.size, block.segment, block.stream, block.small);
        self.live_bytes -= size;
        // Merge with the next block of the same segment when it is free.
        if let Some(next) = self.blocks.get(&(start + size)).copied() {
            if !next.used && next.segment == segment {
                self.free.remove(&(stream, small, next.size, start + size));
                self.blocks.remove(&(start + size));
                size += next.size;
            }
        }
        // And with the previous one.
        if start != segment {
            if let Some((prev_addr, prev)) = self
                .blocks
                .range(..start)
                .next_back()
                .map(|(&a, &b)| (a, b))
            {
                if !prev.used && prev.segment == segment && prev_addr + prev.size == start {
                    self.free.remove(&(stream, small, prev.size, prev_addr));
                    self.blocks.remove(&start);
                    start = prev_addr;
                    size += prev.size;
                }
            }
        }
        if let Some(b) = self.blocks.get_mut(&start) {
            b.size = size;
        }
        self.free.insert((stream, small, size, start));
        Some(freed)
    }

    /// Returns every segment with nothing in use to the backend; the bytes released.
    pub fn release_cached(&mut self, backend: &dyn Backend, device: i32) -> usize {
        let empty: Vec<(usize, usize)> = self
            .segments
            .iter()
            .filter(|&(&start, &size)| matches!(self.blocks.get(&start), Some(b) if !b.used && b.size == size))
            .map(|(&s, &z)| (s, z))
            .collect();
        let mut released = 0;
        for (start, size) in empty {
            let (stream, small) = self
                .blocks
                .get(&start)
                .map_or((0, false), |b| (b.stream, b.small));
            // A failed free leaves the segment cached rather than forgetting memory we still own.
            if backend.free(device, start, size).is_ok() {
                self.free.remove(&(stream, small, size, start));
                self.blocks.remove(&start);
                self.segments.remove(&start);
                self.reserved -= size;
                released += size;
            }
        }
        released
    }

    /// Returns every segment, used or not (when the runtime shuts down).
    pub fn release_all(&mut self, backend: &dyn Backend, device: i32) {
        for (&start, &size) in &self.segments {
            let _ = backend.free(device, start, size);
        }
        *self = FallbackPool::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::backend::HostBackend;

    #[test]
    fn blocks_are_reused_split_and_merged() {
        let b = HostBackend::new();
        let mut p = FallbackPool::new();
        let a = p.alloc(&b, -1, 100, 0).unwrap();
        let c = p.alloc(&b, -1, 1000, 0).unwrap();
        assert_eq!(c, a + 512, "second block is split off the first segment");
        assert_eq!(p.reserved_bytes(), SMALL_SEGMENT);
        assert_eq!(
            p.free(a),
            Some(Freed {
                requested: 100,
                stream: 0
            })
        );
        assert_eq!(p.free(a), None, "double free is refused");
        assert_eq!(
            p.alloc(&b, -1, 512, 0).unwrap(),
            a,
            "best fit reuses the freed hole"
        );
        p.free(a);
        p.free(c);
        assert_eq!(p.live_bytes(), 0);
        assert_eq!(
            p.release_cached(&b, -1),
            SMALL_SEGMENT,
            "the merged segment is released"
        );
        assert_eq!(p.reserved_bytes(), 0);
    }

    /// Host memory that counts the bytes it has handed out and not had back, and whose next allocation
    /// fails with a driver error (not out of memory) when `fail` is set.
    struct WatchedHost {
        inner: HostBackend,
        fail: std::sync::atomic::AtomicBool,
        outstanding: std::sync::atomic::AtomicUsize,
    }

    impl WatchedHost {
        fn new() -> WatchedHost {
            WatchedHost {
                inner: HostBackend::new(),
                fail: false.into(),
                outstanding: 0.into(),
            }
        }
    }

    impl Backend for WatchedHost {
        fn name(&self) -> &'static str {
            "host"
        }
        fn alloc(&self, device: i32, size: usize) -> Result<usize, BackendError> {
            if self.fail.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return Err(BackendError::Driver {
                    call: "cuMemAlloc_v2",
                    code: "CUDA_ERROR_LAUNCH_FAILED".into(),
                    device,
                });
            }
            let addr = self.inner.alloc(device, size)?;
            self.outstanding
                .fetch_add(size, std::sync::atomic::Ordering::SeqCst);
            Ok(addr)
        }
        fn free(&self, device: i32, addr: usize, size: usize) -> Result<(), BackendError> {
            self.outstanding
                .fetch_sub(size, std::sync::atomic::Ordering::SeqCst);
            self.inner.free(device, addr, size)
        }
        fn synchronize(&self, device: i32) -> Result<(), BackendError> {
            self.inner.synchronize(device)
        }
        fn mem_info(&self, device: i32) -> Result<Option<(u64, u64)>, BackendError> {
            self.inner.mem_info(device)
        }
    }

    #[test]
    fn a_driver_error_keeps_the_cache_and_only_out_of_memory_gives_it_back() {
        // Out of memory gives back the cached segments and retries; any other error is the caller's
        // at once, and the cache stays (giving it back would cost the next steps their segments).
        let b = WatchedHost::new();
        let mut p = FallbackPool::new();
        let a = p.alloc(&b, -1, 100, 0).unwrap();
        p.free(a);
        assert_eq!(p.reserved_bytes(), SMALL_SEGMENT, "a free segment, cached");
        b.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let err = p.alloc(&b, -1, 4 << 20, 0).unwrap_err();
        assert!(matches!(err, BackendError::Driver { .. }), "{err}");
        assert_eq!(p.reserved_bytes(), SMALL_SEGMENT, "the cache is kept");
        p.release_cached(&b, -1);
    }

    #[test]
    fn release_all_gives_every_segment_back_used_or_not() {
        // At shutdown: cached segments and segments still holding blocks all go back to the backend.
        let b = WatchedHost::new();
        let mut p = FallbackPool::new();
        let small = p.alloc(&b, -1, 100, 0).unwrap();
        let _medium = p.alloc(&b, -1, 3 << 20, 0).unwrap();
        let _other_stream = p.alloc(&b, -1, 100, 7).unwrap();
        p.free(small);
        let held = b.outstanding.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(held, p.reserved_bytes());
        assert_eq!(held, 2 * SMALL_SEGMENT + MEDIUM_SEGMENT);
        p.release_all(&b, -1);
        assert_eq!(b.outstanding.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!((p.reserved_bytes(), p.live_bytes()), (0, 0));
    }

    #[test]
    fn streams_do_not_share_blocks() {
        let b = HostBackend::new();
        let mut p = FallbackPool::new();
        let a = p.alloc(&b, -1, 100, 1).unwrap();
        p.free(a);
        let c = p.alloc(&b, -1, 100, 2).unwrap();
        assert_ne!(a, c);
        assert_eq!(p.reserved_bytes(), 2 * SMALL_SEGMENT);
        p.free(c);
        p.release_all(&b, -1);
    }

    #[test]
    fn small_requests_never_pin_a_large_segment() {
        let b = HostBackend::new();
        let mut p = FallbackPool::new();
        // A step's large temporary, freed: its segment is cached, free.
        let big = p.alloc(&b, -1, 30 << 20, 0).unwrap();
        p.free(big);
        // A small request kept for long comes from a small segment, not from the cached large one.
        let small = p.alloc(&b, -1, 4096, 0).unwrap();
        assert!(
            small < big || small >= big + (30 << 20),
            "split off the large segment"
        );
        assert_eq!(p.reserved_bytes(), (30 << 20) + SMALL_SEGMENT);
        assert_eq!(
            p.release_cached(&b, -1),
            30 << 20,
            "the large segment goes back"
        );
        // And a large request is not served from a small segment's free space.
        let medium = p.alloc(&b, -1, (1 << 20) + 512, 0).unwrap();
        assert_eq!(p.reserved_bytes(), MEDIUM_SEGMENT + SMALL_SEGMENT);
        p.free(medium);
        p.free(small);
        assert_eq!(p.release_cached(&b, -1), MEDIUM_SEGMENT + SMALL_SEGMENT);
    }

    #[test]
    fn sizes_near_the_top_of_the_address_space_are_refused_not_wrapped() {
        // Before the checks, these rounded to 0 and the pool handed out memory it did not own.
        assert_eq!(round_size(0), Some(ROUNDING));
        assert_eq!(round_size(MAX_REQUEST), Some(MAX_REQUEST + 1));
        assert_eq!(round_size(MAX_REQUEST + 1), None);
        assert_eq!(round_size(usize::MAX), None);
        assert_eq!(segment_size(MAX_REQUEST + 1), Some(MAX_REQUEST + 1));
        assert_eq!(segment_size(usize::MAX - ROUNDING + 1), None);
        let b = HostBackend::new();
        let mut p = FallbackPool::new();
        for size in [
            usize::MAX,
            usize::MAX - 1,
            usize::MAX - (1 << 20) + 1,
            usize::MAX - (1 << 20),
            1 << 63,
            MAX_REQUEST + 1,
        ] {
            let e = p.alloc(&b, -1, size, 0).unwrap_err();
            assert!(e.is_out_of_memory(), "{size}: {e}");
            assert!(
                e.to_string()
                    .contains("larger than the largest possible allocation"),
                "{e}"
            );
        }
        // The largest size that rounds is passed to the backend, which cannot serve it either.
        let e = p.alloc(&b, -1, MAX_REQUEST, 0).unwrap_err();
        assert!(e.is_out_of_memory(), "{e}");
        assert_eq!((p.reserved_bytes(), p.live_bytes()), (0, 0));
        // And the pool still works, with memory of its own.
        let a = p.alloc(&b, -1, 4096, 0).unwrap();
        let c = p.alloc(&b, -1, 1000, 0).unwrap();
        assert_eq!(c, a + 4096);
        assert_eq!(p.reserved_bytes(), SMALL_SEGMENT);
        p.release_all(&b, -1);
    }

    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum PoolOp {
        Alloc { size: usize, stream: usize },
        Free { pick: usize },
        FreeForeign { pick: usize, delta: usize },
        ReleaseCached,
    }

    fn pool_op() -> impl Strategy<Value = PoolOp> {
        prop_oneof![
            4 => (prop_oneof![1usize..2048, 2048usize..(3 << 20)], 0usize..2)
                .prop_map(|(size, stream)| PoolOp::Alloc { size, stream }),
            3 => any::<usize>().prop_map(|pick| PoolOp::Free { pick }),
            1 => (any::<usize>(), 1usize..600).prop_map(|(pick, delta)| PoolOp::FreeForeign { pick, delta }),
            1 => Just(PoolOp::ReleaseCached),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The pool against a map of the blocks in use: every block is aligned, at least the
        /// rounded size, disjoint from every block in use, and of its request's stream; frees of
        /// anything but a block start in use are refused; the byte counts add up.
        #[test]
        fn blocks_agree_with_a_map_of_live_ranges(ops in proptest::collection::vec(pool_op(), 1..80)) {
            let b = HostBackend::new();
            let mut p = FallbackPool::new();
            // addr -> (rounded size, requested, stream)
            let mut model: BTreeMap<usize, (usize, usize, usize)> = BTreeMap::new();
            for op in ops {
                match op {
                    PoolOp::Alloc { size, stream } => {
                        let addr = p.alloc(&b, -1, size, stream).unwrap();
                        let rounded = round_size(size).unwrap();
                        prop_assert_eq!(addr % ROUNDING, 0);
                        for (&a, &(len, _, _)) in &model {
                            prop_assert!(a + len <= addr || addr + rounded <= a,
                                "[{:#x}, +{}) overlaps live [{:#x}, +{})", addr, rounded, a, len);
                        }
                        prop_assert_eq!(p.requested(addr), Some(size));
                        prop_assert!(p.owns(addr));
                        model.insert(addr, (rounded, size, stream));
                    }
                    PoolOp::Free { pick } => {
                        if model.is_empty() {
                            continue;
                        }
                        let addr = *model.keys().nth(pick % model.len()).unwrap();
                        let (_, requested, stream) = model.remove(&addr).unwrap();
                        prop_assert_eq!(p.free(addr), Some(Freed { requested, stream }));
                        prop_assert!(!p.owns(addr));
                        prop_assert_eq!(p.free(addr), None, "double free");
                    }
                    PoolOp::FreeForeign { pick, delta } => {
                        // An address strictly inside a live block is not a block. (Past its
                        // rounded size it may be the next block's start: `delta` is taken modulo.)
                        if let Some((&addr, &(len, _, _))) = model.iter().nth(pick % model.len().max(1)) {
                            let inside = 1 + delta % (len - 1);
                            prop_assert_eq!(p.free(addr + inside), None);
                            prop_assert!(!p.owns(addr + inside));
                        }
                    }
                    PoolOp::ReleaseCached => {
                        p.release_cached(&b, -1);
                    }
                }
                let live: usize = model.values().map(|v| v.0).sum();
                prop_assert!(p.live_bytes() >= live, "live {} < model {}", p.live_bytes(), live);
                // A block is the rounded size unless splitting would leave less than 512 bytes.
                prop_assert!(p.live_bytes() < live + model.len() * ROUNDING + 1);
                prop_assert!(p.reserved_bytes() >= p.live_bytes());
            }
            for addr in model.keys().copied().collect::<Vec<_>>() {
                p.free(addr);
            }
            prop_assert_eq!(p.live_bytes(), 0);
            p.release_cached(&b, -1);
            prop_assert_eq!(p.reserved_bytes(), 0, "every segment returned once nothing is live");
        }
    }
}
