//! Blocks, segments and the free pools of one device's caching allocator.
//!
//! A segment is one `cudaMalloc`; it is cut into blocks that are contiguous and cover it exactly.
//! Free blocks wait in the small or large pool, ordered by `(stream, size, address)` as in
//! PyTorch's `BlockComparatorSize`, so the first block at or after `(stream, size)` is the best fit
//! (the smallest that is large enough, the lowest address among equals). A freed block merges with
//! its free neighbours, which are always in the same segment: blocks are never merged across
//! segments, even when two segments happen to be adjacent in the address space.

use std::collections::BTreeSet;

use super::policy::{allocation_size, pool_for, round_size, should_split, PoolKind, ROUND_LARGE};

/// A CUDA stream, as the allocator keys its pools (PyTorch compares the `cudaStream_t` pointers).
pub type Stream = u64;

/// Where the model's first segment starts. Real `cudaMalloc` addresses differ; segments here are
/// laid out one after another from this base (see the module docs of `caching_model`).
pub const DEFAULT_BASE: u64 = 1 << 32;

/// A handle on a block, valid until the block is merged into a neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockId(usize);

#[derive(Clone, Debug)]
struct Block {
    addr: u64,
    size: u64,
    /// The caller's size before rounding (0 while free).
    requested: u64,
    allocated: bool,
    prev: Option<BlockId>,
    next: Option<BlockId>,
    segment: usize,
}

/// One segment (one `cudaMalloc` of the real allocator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub size: u64,
    pub stream: Stream,
    pub pool: PoolKind,
    /// Given back to the device (`cudaFree`) when memory ran short: see
    /// [`CachingAllocator::malloc_within`]. Its bytes no longer count as reserved.
    pub released: bool,
    head: BlockId,
}

/// A block as reported to callers (a snapshot's block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    pub addr: u64,
    pub size: u64,
    /// The size the caller asked for (0 for a free block).
    pub requested: u64,
    pub allocated: bool,
}

/// The result of [`CachingAllocator::malloc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub block: BlockId,
    pub addr: u64,
    /// The block's size: the rounded request, or more when the remainder was too small to split.
    pub size: u64,
    /// The index of the segment created for this request, if no cached block could serve it.
    pub new_segment: Option<usize>,
}

type PoolKey = (Stream, u64, u64, BlockId);

/// The caching allocator of one device, with PyTorch's default policy and unlimited memory.
#[derive(Clone, Debug)]
pub struct CachingAllocator {
    blocks: Vec<Option<Block>>,
    free_slots: Vec<usize>,
    small: BTreeSet<PoolKey>,
    large: BTreeSet<PoolKey>,
    segments: Vec<Segment>,
    next_addr: u64,
    allocated: u64,
    requested: u64,
    reserved: u64,
    cache_flushes: u64,
}

impl Default for CachingAllocator {
    fn default() -> Self {
        CachingAllocator::new(DEFAULT_BASE)
    }
}

impl CachingAllocator {
    /// An empty allocator whose first segment will start at `base`.
    pub fn new(base: u64) -> CachingAllocator {
        CachingAllocator {
            blocks: Vec::new(),
            free_slots: Vec::new(),
            small: BTreeSet::new(),
            large: BTreeSet::new(),
            segments: Vec::new(),
            next_addr: base,
            allocated: 0,
            requested: 0,
            reserved: 0,
            cache_flushes: 0,
        }
    }

    /// Bytes in allocated blocks (block sizes, as `torch.cuda.memory_allocated()` counts them).
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated
    }

    /// Bytes the caller asked for in live allocations (before rounding).
    pub fn requested_bytes(&self) -> u64 {
        self.requested
    }

    /// Bytes in segments (`torch.cuda.memory_reserved()`).
    pub fn reserved_bytes(&self) -> u64 {
        self.reserved
    }

    /// Times memory ran short and the wholly free segments were given back
    /// ([`CachingAllocator::malloc_within`]).
    pub fn cache_flushes(&self) -> u64 {
        self.cache_flushes
    }

    /// Every segment made so far, in creation order (released ones flagged).
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The blocks of segment `index`, in address order.
    pub fn segment_blocks(&self, index: usize) -> Vec<BlockInfo> {
        let mut out = Vec::new();
        if self.segments[index].released {
            return out;
        }
        let mut cur = Some(self.segments[index].head);
        while let Some(id) = cur {
            out.push(self.info(id));
            cur = self.block(id).next;
        }
        out
    }

    /// The current state of a block.
    pub fn info(&self, id: BlockId) -> BlockInfo {
        let b = self.block(id);
        BlockInfo {
            addr: b.addr,
            size: b.size,
            requested: b.requested,
            allocated: b.allocated,
        }
    }

    /// Serves a request of `size` bytes on `stream` (PyTorch's `malloc`: round, best fit in the
    /// stream's pool, else a new segment, then split if the policy says so). A request of 0 bytes
    /// is served like one of 1 byte; PyTorch itself never calls its allocator for 0 bytes.
    pub fn malloc(&mut self, size: u64, stream: Stream) -> Allocation {
        self.malloc_within(size, stream, None)
            .expect("with unlimited memory a request is always served")
    }

    /// [`malloc`](Self::malloc) on a device of `limit` bytes (none: unlimited); `None` when the
    /// request does not fit (PyTorch's out-of-memory error). As PyTorch does when `cudaMalloc` fails
    /// (`release_cached_blocks`, then a second try), a new segment that would pass the limit first
    /// makes the allocator give back every segment that is wholly free; only if it still does not fit
    /// is the request refused.
    pub fn malloc_within(
        &mut self,
        size: u64,
        stream: Stream,
        limit: Option<u64>,
    ) -> Option<Allocation> {
        let rounded = round_size(size);
        let kind = pool_for(rounded);
        let (id, new_segment) = match self.best_fit(kind, stream, rounded) {
            Some(id) => (id, None),
            None => {
                let segment_size = allocation_size(rounded);
                if let Some(limit) = limit {
                    if self.reserved + segment_size > limit {
                        self.release_cached_segments();
                        if self.reserved + segment_size > limit {
                            return None;
                        }
                    }
                }
                let (id, seg) = self.new_segment(kind, stream, segment_size);
                (id, Some(seg))
            }
        };
        let block_size = self.block(id).size;
        let id = if should_split(kind, block_size, rounded) {
            self.split(id, rounded, kind, stream)
        } else {
            id
        };
        let b = self.block_mut(id);
        b.allocated = true;
        b.requested = size;
        let (addr, bsize) = (b.addr, b.size);
        self.allocated += bsize;
        self.requested += size;
        Some(Allocation {
            block: id,
            addr,
            size: bsize,
            new_segment,
        })
    }

    /// `release_cached_blocks`: gives back every segment whose one block is free.
    fn release_cached_segments(&mut self) {
        self.cache_flushes += 1;
        for i in 0..self.segments.len() {
            let seg = &self.segments[i];
            if seg.released {
                continue;
            }
            let (head, kind, stream, size) = (seg.head, seg.pool, seg.stream, seg.size);
            let b = self.block(head);
            if b.allocated || b.next.is_some() {
                continue;
            }
            let key = self.key(head, stream);
            self.pool_mut(kind).remove(&key);
            self.blocks[head.0] = None;
            self.free_slots.push(head.0);
            self.segments[i].released = true;
            self.reserved -= size;
        }
    }

    /// Returns an allocated block to its pool, merged with its free neighbours in the segment.
    ///
    /// # Panics
    /// If the block is not allocated (a double free is a bug in the caller).
    pub fn free(&mut self, id: BlockId) {
        let b = self.block_mut(id);
        assert!(b.allocated, "free of a block that is not allocated");
        b.allocated = false;
        let (size, requested) = (b.size, b.requested);
        b.requested = 0;
        self.allocated -= size;
        self.requested -= requested;
        if let Some(prev) = self.block(id).prev {
            self.try_merge(id, prev);
        }
        if let Some(next) = self.block(id).next {
            self.try_merge(id, next);
        }
        let seg = &self.segments[self.block(id).segment];
        let (kind, stream) = (seg.pool, seg.stream);
        let key = self.key(id, stream);
        self.pool_mut(kind).insert(key);
    }

    /// Checks the allocator's internal consistency; returns the first problem found. For tests.
    pub fn check(&self) -> Result<(), String> {
        let (mut allocated, mut reserved, mut free_blocks) = (0, 0, 0);
        for (i, seg) in self.segments.iter().enumerate() {
            if seg.released {
                continue;
            }
            reserved += seg.size;
            let blocks = self.segment_blocks(i);
            let mut at = seg.addr;
            for (j, b) in blocks.iter().enumerate() {
                if b.addr != at {
                    return Err(format!("segment {i}: block {j} at {} not {at}", b.addr));
                }
                at += b.size;
                if b.allocated {
                    allocated += b.size;
                } else {
                    free_blocks += 1;
                    if j > 0 && !blocks[j - 1].allocated {
                        return Err(format!("segment {i}: adjacent free blocks not merged"));
                    }
                }
            }
            if at != seg.addr + seg.size {
                return Err(format!("segment {i}: blocks end at {at}, not its end"));
            }
        }
        if allocated != self.allocated || reserved != self.reserved {
            return Err("byte counters disagree with the blocks".to_string());
        }
        if free_blocks != self.small.len() + self.large.len() {
            return Err("free blocks and pools disagree".to_string());
        }
        Ok(())
    }

    fn block(&self, id: BlockId) -> &Block {
        self.blocks[id.0].as_ref().expect("stale block id")
    }

    fn block_mut(&mut self, id: BlockId) -> &mut Block {
        self.blocks[id.0].as_mut().expect("stale block id")
    }

    fn add_block(&mut self, block: Block) -> BlockId {
        match self.free_slots.pop() {
            Some(i) => {
                self.blocks[i] = Some(block);
                BlockId(i)
            }
            None => {
                self.blocks.push(Some(block));
                BlockId(self.blocks.len() - 1)
            }
        }
    }

    fn key(&self, id: BlockId, stream: Stream) -> PoolKey {
        let b = self.block(id);
        (stream, b.size, b.addr, id)
    }

    fn pool_mut(&mut self, kind: PoolKind) -> &mut BTreeSet<PoolKey> {
        match kind {
            PoolKind::Small => &mut self.small,
            PoolKind::Large => &mut self.large,
        }
    }

    /// `get_free_block`: the first free block at or after `(stream, size)`, if on that stream.
    fn best_fit(&mut self, kind: PoolKind, stream: Stream, size: u64) -> Option<BlockId> {
        let pool = self.pool_mut(kind);
        let key = *pool.range((stream, size, 0, BlockId(0))..).next()?;
        if key.0 != stream {
            return None;
        }
        pool.remove(&key);
        Some(key.3)
    }

    /// `alloc_block`: a new segment holding one (not pooled) block that covers it.
    fn new_segment(&mut self, kind: PoolKind, stream: Stream, size: u64) -> (BlockId, usize) {
        let addr = self.next_addr;
        self.next_addr = (addr + size).div_ceil(ROUND_LARGE) * ROUND_LARGE;
        self.reserved += size;
        let segment = self.segments.len();
        let id = self.add_block(Block {
            addr,
            size,
            requested: 0,
            allocated: false,
            prev: None,
            next: None,
            segment,
        });
        self.segments.push(Segment {
            addr,
            size,
            stream,
            pool: kind,
            released: false,
            head: id,
        });
        (id, segment)
    }

    /// `alloc_found_block` with a split: a new block takes the first `size` bytes of `id`, whose
    /// remainder goes back to the pool (as in PyTorch, the remainder keeps the old block).
    fn split(&mut self, id: BlockId, size: u64, kind: PoolKind, stream: Stream) -> BlockId {
        let rest = self.block(id).clone();
        let front = self.add_block(Block {
            addr: rest.addr,
            size,
            requested: 0,
            allocated: false,
            prev: rest.prev,
            next: Some(id),
            segment: rest.segment,
        });
        match rest.prev {
            Some(p) => self.block_mut(p).next = Some(front),
            None => self.segments[rest.segment].head = front,
        }
        let r = self.block_mut(id);
        r.prev = Some(front);
        r.addr += size;
        r.size -= size;
        let key = self.key(id, stream);
        self.pool_mut(kind).insert(key);
        front
    }

    /// `try_merge_blocks`: `dst` (just freed) absorbs its neighbour `src` if `src` is free.
    fn try_merge(&mut self, dst: BlockId, src: BlockId) {
        let s = self.block(src).clone();
        if s.allocated {
            return;
        }
        let seg = &self.segments[s.segment];
        let (kind, stream) = (seg.pool, seg.stream);
        let removed = self.pool_mut(kind).remove(&(stream, s.size, s.addr, src));
        debug_assert!(removed, "a free neighbour is always pooled");
        if self.block(dst).prev == Some(src) {
            let d = self.block_mut(dst);
            d.addr = s.addr;
            d.prev = s.prev;
            match s.prev {
                Some(p) => self.block_mut(p).next = Some(dst),
                None => self.segments[s.segment].head = dst,
            }
        } else {
            self.block_mut(dst).next = s.next;
            if let Some(n) = s.next {
                self.block_mut(n).prev = Some(dst);
            }
        }
        self.block_mut(dst).size += s.size;
        self.blocks[src.0] = None;
        self.free_slots.push(src.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const BASE: u64 = DEFAULT_BASE;

    fn fresh() -> CachingAllocator {
        CachingAllocator::default()
    }

    #[test]
    fn a_small_request_gets_a_two_mib_segment() {
        // 1000 bytes round to 1024 (2 × 512); 1024 <= 1 MiB so it is small and a 2 MiB segment is
        // made. The remainder 2 MiB - 1024 >= 512 is split off and pooled.
        let mut a = fresh();
        let x = a.malloc(1000, 0);
        assert_eq!((x.addr, x.size, x.new_segment), (BASE, 1024, Some(0)));
        assert_eq!(a.allocated_bytes(), 1024);
        assert_eq!(a.requested_bytes(), 1000);
        assert_eq!(a.reserved_bytes(), 2 * MIB);
        assert_eq!(a.segments()[0].pool, PoolKind::Small);
        let blocks = a.segment_blocks(0);
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            (blocks[1].addr, blocks[1].size),
            (BASE + 1024, 2 * MIB - 1024)
        );
        a.check().unwrap();
    }

    #[test]
    fn a_five_mib_request_gets_a_twenty_mib_segment_and_splits_it() {
        // 5 MiB is large and below 10 MiB: a 20 MiB segment. The remainder 15 MiB > 1 MiB: split.
        let mut a = fresh();
        let x = a.malloc(5 * MIB, 0);
        assert_eq!((x.size, x.new_segment), (5 * MIB, Some(0)));
        assert_eq!(a.reserved_bytes(), 20 * MIB);
        assert_eq!(a.allocated_bytes(), 5 * MIB);
        assert_eq!(a.segments()[0].pool, PoolKind::Large);
        assert_eq!(a.segment_blocks(0).len(), 2);
        a.check().unwrap();
    }

    #[test]
    fn a_request_from_ten_mib_on_gets_its_own_segment_rounded_to_two_mib() {
        // 12 MiB: exactly its size. 11 MiB + 1 byte rounds to 11 MiB + 512, whose segment is rounded
        // up to 12 MiB; the remainder 1 MiB - 512 is not above 1 MiB, so the whole 12 MiB block is
        // handed out and counted as allocated.
        let mut a = fresh();
        let x = a.malloc(12 * MIB, 0);
        assert_eq!((x.size, a.reserved_bytes()), (12 * MIB, 12 * MIB));
        let y = a.malloc(11 * MIB + 1, 0);
        assert_eq!(y.new_segment, Some(1));
        assert_eq!(a.segments()[1].size, 12 * MIB);
        assert_eq!(y.size, 12 * MIB);
        assert_eq!(a.allocated_bytes(), 24 * MIB);
        assert_eq!(a.requested_bytes(), 23 * MIB + 1);
        assert_eq!(a.segment_blocks(1).len(), 1);
        a.check().unwrap();
    }

    #[test]
    fn a_freed_block_is_reused_by_best_fit_and_split_only_above_one_mib() {
        let mut a = fresh();
        // A = 5 MiB: 20 MiB segment, A = [0, 5), free [5, 20) (15 MiB).
        let a5 = a.malloc(5 * MIB, 0);
        // B = 6 MiB: best fit is the 15 MiB block; B = [5, 11), free [11, 20) (9 MiB).
        let b6 = a.malloc(6 * MIB, 0);
        assert_eq!((b6.addr, b6.new_segment), (BASE + 5 * MIB, None));
        // Free A: its neighbour B is allocated, so no merge; free blocks are 5 MiB and 9 MiB.
        a.free(a5.block);
        assert_eq!(a.allocated_bytes(), 6 * MIB);
        // C = 4 MiB: the best fit is the 5 MiB block at the base (smaller than 9 MiB). The remainder
        // 1 MiB is not above 1 MiB: no split, C holds all 5 MiB.
        let c4 = a.malloc(4 * MIB, 0);
        assert_eq!((c4.addr, c4.size, c4.new_segment), (BASE, 5 * MIB, None));
        assert_eq!(a.allocated_bytes(), 11 * MIB);
        assert_eq!(a.reserved_bytes(), 20 * MIB);
        a.check().unwrap();
        // Free B then C: everything merges back into one 20 MiB block, which a 20 MiB request reuses.
        a.free(b6.block);
        a.free(c4.block);
        assert_eq!(a.segment_blocks(0).len(), 1);
        let d = a.malloc(20 * MIB, 0);
        assert_eq!((d.addr, d.new_segment), (BASE, None));
        assert_eq!(a.reserved_bytes(), 20 * MIB);
        a.check().unwrap();
    }

    #[test]
    fn small_pool_splits_a_remainder_of_exactly_512_bytes() {
        let mut a = fresh();
        // 1500 → 1536 at the base; a guard block after it keeps it from merging with the rest.
        let x = a.malloc(1500, 0);
        let _guard = a.malloc(512, 0);
        a.free(x.block);
        // 1000 → 1024: best fit is the free 1536 block; remainder 512 >= 512, so it is split.
        let y = a.malloc(1000, 0);
        assert_eq!((y.addr, y.size), (BASE, 1024));
        let blocks = a.segment_blocks(0);
        assert_eq!((blocks[1].addr, blocks[1].size), (BASE + 1024, 512));
        assert!(!blocks[1].allocated);
        a.check().unwrap();
    }

    #[test]
    fn blocks_never_merge_across_segments_even_when_adjacent() {
        let mut a = fresh();
        // Two 12 MiB requests: two 12 MiB segments, laid out back to back.
        let x = a.malloc(12 * MIB, 0);
        let y = a.malloc(12 * MIB, 0);
        assert_eq!(a.segments()[1].addr, a.segments()[0].addr + 12 * MIB);
        a.free(x.block);
        a.free(y.block);
        // 24 MiB of adjacent free bytes, but in two segments: a 24 MiB request needs a new segment.
        let z = a.malloc(24 * MIB, 0);
        assert_eq!(z.new_segment, Some(2));
        assert_eq!(a.reserved_bytes(), 48 * MIB);
        assert_eq!(a.segment_blocks(0).len(), 1);
        assert_eq!(a.segment_blocks(1).len(), 1);
        a.check().unwrap();
    }

    #[test]
    fn small_and_large_pools_do_not_share_blocks() {
        let mut a = fresh();
        // 1 MiB is small: a 2 MiB small segment. Once freed, the whole 2 MiB is a free small block.
        let s = a.malloc(MIB, 0);
        a.free(s.block);
        // 1.5 MiB is large: the free 2 MiB small block is not eligible; a 20 MiB segment is made.
        let l = a.malloc(3 * MIB / 2, 0);
        assert_eq!(l.new_segment, Some(1));
        assert_eq!(a.reserved_bytes(), 22 * MIB);
        a.free(l.block);
        // And back: 1000 bytes fit the 2 MiB small block (the free 20 MiB large one is not looked at).
        let t = a.malloc(1000, 0);
        assert_eq!((t.addr, t.new_segment), (BASE, None));
        // Filling the small segment (2 MiB = 2 × 1 MiB, the first 1024 bytes taken) needs a new one.
        let u = a.malloc(MIB, 0);
        assert_eq!(u.new_segment, None);
        let v = a.malloc(MIB, 0);
        assert_eq!(v.new_segment, Some(2));
        assert_eq!(a.segments()[2].pool, PoolKind::Small);
        assert_eq!(a.reserved_bytes(), 24 * MIB);
        a.check().unwrap();
    }

    #[test]
    fn pools_are_per_stream() {
        let mut a = fresh();
        let x = a.malloc(1000, 1);
        a.free(x.block);
        // The cached block belongs to stream 1: stream 2 gets a segment of its own.
        let y = a.malloc(1000, 2);
        assert_eq!(y.new_segment, Some(1));
        assert_eq!(a.segments()[1].stream, 2);
        // Stream 1 reuses its block.
        let z = a.malloc(1000, 1);
        assert_eq!((z.addr, z.new_segment), (BASE, None));
        a.check().unwrap();
    }

    #[test]
    fn equal_free_blocks_are_taken_lowest_address_first() {
        let mut a = fresh();
        // Four 1 KiB blocks; freeing the 1st and 3rd leaves two free 1 KiB holes.
        let v: Vec<_> = (0..4).map(|_| a.malloc(1024, 0)).collect();
        a.free(v[2].block);
        a.free(v[0].block);
        let w = a.malloc(1024, 0);
        assert_eq!(w.addr, BASE);
        let w2 = a.malloc(1024, 0);
        assert_eq!(w2.addr, BASE + 2048);
        a.check().unwrap();
    }

    #[test]
    #[should_panic(expected = "not allocated")]
    fn double_free_panics() {
        let mut a = fresh();
        let x = a.malloc(10, 0);
        let _y = a.malloc(10, 0);
        a.free(x.block);
        a.free(x.block);
    }
}
