//! A model of PyTorch's CUDA caching allocator (the `native` backend of
//! `c10/cuda/CUDACachingAllocator.cpp`, default configuration), to replay a recorded step and see
//! what PyTorch would have reserved for it: the number to compare a planned arena with.
//!
//! # What is modelled
//!
//! - Rounding ([`policy::round_size`]): every request rounded up to a multiple of 512 bytes, at
//!   least 512 (`kMinBlockSize`).
//! - Two pools ([`policy::pool_for`]): rounded sizes up to 1 MiB (`kSmallSize`) are served from the
//!   small pool, the rest from the large pool; a block never moves between pools.
//! - Segment sizes ([`policy::allocation_size`], `get_allocation_size`): 2 MiB (`kSmallBuffer`) for
//!   small requests, 20 MiB (`kLargeBuffer`) for large requests below 10 MiB (`kMinLargeAlloc`), and
//!   the request rounded up to 2 MiB (`kRoundLarge`) from 10 MiB on.
//! - Best fit (`get_free_block`): free blocks are ordered by `(stream, size, address)`; a request
//!   takes the first block of its stream at or above its rounded size. Only when none fits is a new
//!   segment made (`alloc_block`).
//! - Splitting ([`policy::should_split`]): the chosen block is split when the remainder is at least
//!   512 bytes in the small pool, or more than 1 MiB in the large pool; otherwise the whole block is
//!   handed out (and counted as allocated, as `memory_allocated()` does).
//! - Freeing (`free_block`, `try_merge_blocks`): a freed block merges with free neighbours of its own
//!   segment only; blocks of different segments are never merged, even at adjacent addresses.
//! - Streams: every pool is keyed by stream, so a block freed on one stream is only reused on it.
//! - Device memory is unlimited by default ([`replay`]): no segment is ever released (no
//!   `empty_cache()`), so reserved memory only grows. On a device of a given size
//!   ([`replay_within`]), a new segment that would pass it first makes the allocator give back every
//!   wholly free segment (`release_cached_blocks`, as PyTorch does when `cudaMalloc` fails), and a
//!   request that still does not fit is PyTorch's out-of-memory error.
//!
//! # What is not modelled
//!
//! - `release_available_cached_blocks` (it only frees oversize blocks, which need
//!   `max_split_size_mb`), the `garbage_collection_threshold` collection, and the memory the CUDA
//!   context itself takes (give `replay_within` what PyTorch can use, not the card's size).
//! - `max_split_size_mb` (default unlimited, which is what is modelled): no oversize blocks.
//! - `roundup_power2_divisions` (default none), `expandable_segments` (default off), and
//!   `pinned`/host allocators.
//! - Cross-stream use (`record_stream`): frees take effect at once; there are no CUDA events
//!   delaying the reuse of a block used on another stream, and no `process_events`.
//! - CUDA graph private pools, IPC, `trigger_free_memory_callbacks`.
//! - Real `cudaMalloc` addresses: segments are laid out one after another from
//!   [`pool::DEFAULT_BASE`]. Addresses only break ties between free blocks of equal size (lowest
//!   first), so a different address order can change which of two equal blocks is reused, never the
//!   policy.
//! - Several devices: a trace is replayed as one device (MiniMalloc CSV carries no device or stream;
//!   every buffer of a CSV trace is on stream 0).
//!
//! # Use
//!
//! ```
//! use model_opt::caching_model::{replay, Request};
//! use model_opt::placement::Interval;
//!
//! let r = |size, start, end| Request { size, lifetime: Interval::new(start, end).unwrap(), stream: 0 };
//! let out = replay(&[r(1000, 0, 2), r(5 << 20, 1, 3)]);
//! assert_eq!(out.report.reserved_peak, (2 << 20) + (20 << 20));
//! ```

pub mod policy;
pub mod pool;
pub mod replay;

pub use policy::PoolKind;
pub use pool::{Allocation, BlockId, BlockInfo, CachingAllocator, Segment, Stream};
pub use replay::{
    replay, replay_csv, replay_within, requests_csv, requests_of, smallest_device, Action,
    OutOfMemory, ReplayEvent, ReplayReport, Request, SimulatedStep,
};
