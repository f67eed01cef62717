//! CUDA graphs' private pools: what a graph capture allocates, kept apart from everything else.
//!
//! PyTorch captures a CUDA graph by telling its allocator, before and after the capture, that the
//! requests of the capturing stream go to a pool of their own, named by a `MempoolId` (several graphs
//! may share one). A graph's replays write to the addresses the capture was given, so that memory must
//! never serve anything outside the pool: blocks freed during or after the capture go back to the pool
//! (a later capture into the same pool may reuse them, in the order the replays also follow), and the
//! pool's segments go back to the driver only once PyTorch releases the pool (the graph is gone) and
//! nothing in it is in use. No segment of a pool is ever freed on an out-of-memory either.
//!
//! The filter that decides which requests belong to a capture (`std::function<bool(cudaStream_t)>`)
//! stays in the C++ front (`cpp/cuda_front.cpp`), which names the pool when it passes a request on.

use std::collections::HashMap;

use super::backend::{Backend, BackendError};
use super::fallback::{round_size, FallbackPool};

/// PyTorch's `MempoolId_t`: a pair, `(0, n)` for the pools graphs make, `(n, 0)` for the user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolId(pub u64, pub u64);

impl std::fmt::Display for PoolId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})", self.0, self.1)
    }
}

#[derive(Debug)]
struct GraphPool {
    id: PoolId,
    blocks: FallbackPool,
    /// Captures into this pool under way now.
    capturing: usize,
    /// Holders of the pool, as PyTorch counts them: each capture begun into it holds it (the graph
    /// it made, until PyTorch releases the pool for that graph). At 0, its segments go back once
    /// nothing in it is in use.
    uses: usize,
    /// Blocks in use that other streams use too (`record_stream`): freed, they stay allocated for as
    /// long as the pool lives (a replay may still use them on those streams), and count as unused
    /// for the pool's release. Address -> rounded bytes.
    shared: HashMap<usize, usize>,
    /// Those of them freed already: their rounded bytes.
    held_bytes: usize,
}

impl GraphPool {
    /// Nothing in it is in use but blocks held after `record_stream`.
    fn unused(&self) -> bool {
        self.blocks.live_bytes() == self.held_bytes
    }
}

/// The private pools of one device.
#[derive(Debug, Default)]
pub struct GraphPools {
    pools: Vec<GraphPool>,
}

impl GraphPools {
    /// Whether any pool exists (so a free must ask the pools first).
    pub fn active(&self) -> bool {
        !self.pools.is_empty()
    }

    /// Whether a capture into any pool is under way (between `begin` and `end`).
    pub fn capturing(&self) -> bool {
        self.pools.iter().any(|p| p.capturing > 0)
    }

    pub fn reserved_bytes(&self) -> usize {
        self.pools.iter().map(|p| p.blocks.reserved_bytes()).sum()
    }

    /// A capture into `id` begins (the pool is made on first use); it holds the pool until a
    /// [`GraphPools::release`].
    pub fn begin(&mut self, id: PoolId) {
        match self.pools.iter_mut().find(|p| p.id == id) {
            Some(p) => {
                p.capturing += 1;
                p.uses += 1;
            }
            None => {
                let mut blocks = FallbackPool::new();
                blocks.keep_segments(true);
                self.pools.push(GraphPool {
                    id,
                    blocks,
                    capturing: 1,
                    uses: 1,
                    shared: HashMap::new(),
                    held_bytes: 0,
                });
            }
        }
    }

    /// A capture into `id` ended; false when none was under way. Pools no longer held, with nothing
    /// in use, give their segments back once no capture is left.
    pub fn end(&mut self, backend: &dyn Backend, device: i32, id: PoolId) -> bool {
        let Some(p) = self
            .pools
            .iter_mut()
            .find(|p| p.id == id && p.capturing > 0)
        else {
            return false;
        };
        p.capturing -= 1;
        for i in (0..self.pools.len()).rev() {
            self.drop_if_done(backend, device, i);
        }
        true
    }

    /// One holder of `id` is done with it (PyTorch's `releasePool`: a graph is gone, or a warm-up
    /// into the pool ended). Once none is left, its segments go back to the backend when nothing in
    /// it is in use. False for a pool no capture holds.
    pub fn release(&mut self, backend: &dyn Backend, device: i32, id: PoolId) -> bool {
        let Some(i) = self.pools.iter().position(|p| p.id == id && p.uses > 0) else {
            return false;
        };
        self.pools[i].uses -= 1;
        self.drop_if_done(backend, device, i);
        true
    }

    /// `size` bytes from the pool `id` for `stream`. The pool must have been begun: a request named
    /// for a pool nobody began is a caller's mistake, refused rather than served from a pool that
    /// would never be released.
    pub fn alloc(
        &mut self,
        backend: &dyn Backend,
        device: i32,
        id: PoolId,
        size: usize,
        stream: usize,
    ) -> Result<usize, GraphPoolError> {
        let pool = self
            .pools
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or(GraphPoolError::UnknownPool(id))?;
        Ok(pool.blocks.alloc(backend, device, size, stream)?)
    }

    /// Takes back `addr` if a pool handed it out: the bytes requested for it. A pool no longer held,
    /// with nothing left in use, gives its segments back.
    pub fn free(&mut self, backend: &dyn Backend, device: i32, addr: usize) -> Option<usize> {
        let i = self.pools.iter().position(|p| p.blocks.owns(addr))?;
        let p = &mut self.pools[i];
        let requested = match p.shared.get_mut(&addr) {
            // Used on other streams: held (freed for its user, never handed out again).
            Some(rounded) if *rounded > 0 => {
                p.held_bytes += std::mem::take(rounded);
                p.blocks.requested(addr)?
            }
            Some(_) => return None, // freed already
            None => p.blocks.free(addr)?.requested,
        };
        self.drop_if_done(backend, device, i);
        Some(requested)
    }

    /// `addr`, in use in a pool, is used on another stream too (`record_stream`); false when no pool
    /// has it in use.
    pub fn record_stream(&mut self, addr: usize) -> bool {
        let Some(p) = self.pools.iter_mut().find(|p| p.blocks.owns(addr)) else {
            return false;
        };
        if p.shared.get(&addr) == Some(&0) {
            return false; // freed already, held
        }
        let rounded = p.blocks.requested(addr).and_then(round_size).unwrap_or(0);
        p.shared.insert(addr, rounded);
        true
    }

    /// Gives pool `i`'s segments back if nothing holds it and nothing in it is in use, unless a capture
    /// is under way on the device (freeing device memory then would break it: the next `end` does).
    fn drop_if_done(&mut self, backend: &dyn Backend, device: i32, i: usize) {
        let p = &self.pools[i];
        if p.uses == 0 && p.unused() && !self.capturing() {
            let mut p = self.pools.swap_remove(i);
            p.blocks.release_all(backend, device);
        }
    }

    /// Gives every segment back (the runtime shuts down).
    pub fn release_all(&mut self, backend: &dyn Backend, device: i32) {
        for mut p in self.pools.drain(..) {
            p.blocks.release_all(backend, device);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GraphPoolError {
    #[error(
        "a request for CUDA graph pool {0}, which no capture began (beginAllocateToPool was not \
         called for it on this device)"
    )]
    UnknownPool(PoolId),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::backend::HostBackend;

    #[test]
    fn a_pool_keeps_its_blocks_to_itself_until_released_and_empty() {
        let b = HostBackend::new();
        let mut pools = GraphPools::default();
        let id = PoolId(0, 1);
        pools.begin(id);
        assert!(pools.capturing());
        let x = pools.alloc(&b, -1, id, 1000, 7).unwrap();
        let y = pools.alloc(&b, -1, id, 1000, 7).unwrap();
        assert_ne!(x, y);
        // Freed during the capture: the same pool's next request reuses it.
        assert_eq!(pools.free(&b, -1, x), Some(1000));
        assert_eq!(pools.alloc(&b, -1, id, 1000, 7).unwrap(), x);
        assert!(pools.end(&b, -1, id));
        assert!(!pools.capturing());
        assert!(!pools.end(&b, -1, id), "no second end");
        // Another pool never gets this pool's memory.
        let other = PoolId(0, 2);
        pools.begin(other);
        let z = pools.alloc(&b, -1, other, 1000, 7).unwrap();
        assert_ne!(z, x);
        assert_ne!(z, y);
        pools.end(&b, -1, other);
        // Released while blocks are in use: the segments stay until the last is freed.
        let reserved = pools.reserved_bytes();
        assert!(pools.release(&b, -1, id));
        assert_eq!(pools.reserved_bytes(), reserved);
        pools.free(&b, -1, x);
        assert_eq!(pools.reserved_bytes(), reserved);
        pools.free(&b, -1, y);
        assert!(
            pools.reserved_bytes() < reserved,
            "released and empty: given back"
        );
        assert!(!pools.release(&b, -1, id), "gone");
        assert!(matches!(
            pools.alloc(&b, -1, id, 8, 7),
            Err(GraphPoolError::UnknownPool(_))
        ));
        pools.release_all(&b, -1);
        assert_eq!(pools.reserved_bytes(), 0);
    }

    #[test]
    fn a_released_pool_whose_block_is_in_use_is_not_released_again_and_goes_once_it_is_freed() {
        let b = HostBackend::new();
        let mut pools = GraphPools::default();
        let id = PoolId(0, 9);
        pools.begin(id);
        let x = pools.alloc(&b, -1, id, 4096, 7).unwrap();
        pools.end(&b, -1, id);
        assert!(pools.release(&b, -1, id));
        assert!(pools.reserved_bytes() > 0, "a block is still in use");
        assert!(!pools.release(&b, -1, id), "released more often than held");
        pools.free(&b, -1, x);
        assert_eq!(
            pools.reserved_bytes(),
            0,
            "the pool goes with its last block"
        );
    }

    #[test]
    fn a_pool_goes_only_when_every_capture_into_it_was_released() {
        // A warm-up into the pool (begin, end, release at once, as torch.compile's CUDA graph trees
        // do) and the graph captured into it (released when the graph is deleted): the first release
        // must not give back the memory the graph's replays write to.
        let b = HostBackend::new();
        let mut pools = GraphPools::default();
        let id = PoolId(0, 4);
        pools.begin(id); // the graph's capture
        let x = pools.alloc(&b, -1, id, 4096, 7).unwrap();
        pools.free(&b, -1, x); // its temporary, freed inside the capture
        pools.end(&b, -1, id);
        pools.begin(id); // a warm-up into the same pool
        pools.end(&b, -1, id);
        assert!(pools.release(&b, -1, id));
        let reserved = pools.reserved_bytes();
        assert!(reserved > 0, "the graph still holds its pool");
        assert!(pools.release(&b, -1, id)); // the graph is gone
        assert_eq!(pools.reserved_bytes(), 0);
        assert!(!pools.release(&b, -1, id), "released more often than held");
    }

    #[test]
    fn a_block_used_on_another_stream_is_held_once_freed_until_the_pool_goes() {
        let b = HostBackend::new();
        let mut pools = GraphPools::default();
        let id = PoolId(0, 3);
        pools.begin(id);
        let x = pools.alloc(&b, -1, id, 1000, 7).unwrap();
        let y = pools.alloc(&b, -1, id, 1000, 7).unwrap();
        assert!(pools.record_stream(x));
        assert!(!pools.record_stream(12345), "not a pool's");
        assert_eq!(pools.free(&b, -1, x), Some(1000));
        assert_eq!(pools.free(&b, -1, x), None, "freed already");
        assert!(!pools.record_stream(x), "freed already");
        // Held: the pool's next requests never get it.
        let mut zs = vec![y];
        for _ in 0..4 {
            let z = pools.alloc(&b, -1, id, 1000, 7).unwrap();
            assert!(z != x && z != y);
            zs.push(z);
        }
        pools.end(&b, -1, id);
        let reserved = pools.reserved_bytes();
        pools.release(&b, -1, id);
        assert_eq!(
            pools.reserved_bytes(),
            reserved,
            "y and the four are in use"
        );
        // Only the held block left: the pool goes, and the held block with it.
        for z in zs {
            pools.free(&b, -1, z);
        }
        assert_eq!(pools.reserved_bytes(), 0);
    }
}
