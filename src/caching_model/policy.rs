//! The size policy of PyTorch's CUDA caching allocator: its constants, how a request is rounded,
//! which pool serves it, how large a new segment is, and when a cached block is split.
//!
//! Values and rules are those of `c10/cuda/CUDACachingAllocator.cpp` with the default
//! configuration (no `PYTORCH_CUDA_ALLOC_CONF`): `max_split_size` unlimited, no
//! `roundup_power2_divisions`, no expandable segments.

/// All sizes are rounded up to a multiple of this (`kMinBlockSize`); it is also the smallest block.
pub const MIN_BLOCK_SIZE: u64 = 512;
/// The largest request served by the small pool (`kSmallSize`, 1 MiB).
pub const SMALL_SIZE: u64 = 1 << 20;
/// Size of a small-pool segment (`kSmallBuffer`, 2 MiB).
pub const SMALL_BUFFER: u64 = 2 << 20;
/// Size of the segment a large request below [`MIN_LARGE_ALLOC`] gets (`kLargeBuffer`, 20 MiB).
pub const LARGE_BUFFER: u64 = 20 << 20;
/// Large requests from this size on get a segment of their own size (`kMinLargeAlloc`, 10 MiB).
pub const MIN_LARGE_ALLOC: u64 = 10 << 20;
/// Such segments are rounded up to a multiple of this (`kRoundLarge`, 2 MiB).
pub const ROUND_LARGE: u64 = 2 << 20;

/// The two free-block pools of a device (each further keyed by stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PoolKind {
    /// Requests of at most [`SMALL_SIZE`] bytes, packed into 2 MiB segments.
    Small,
    /// Larger requests.
    Large,
}

/// `round_size`: a request rounded up to a multiple of 512 bytes, at least 512.
pub fn round_size(size: u64) -> u64 {
    if size < MIN_BLOCK_SIZE {
        MIN_BLOCK_SIZE
    } else {
        size.div_ceil(MIN_BLOCK_SIZE) * MIN_BLOCK_SIZE
    }
}

/// `get_pool`: the pool that serves a rounded size.
pub fn pool_for(rounded: u64) -> PoolKind {
    if rounded <= SMALL_SIZE {
        PoolKind::Small
    } else {
        PoolKind::Large
    }
}

/// `get_allocation_size`: the size of the segment (`cudaMalloc`) made for a rounded request that no
/// cached block can serve.
pub fn allocation_size(rounded: u64) -> u64 {
    if rounded <= SMALL_SIZE {
        SMALL_BUFFER
    } else if rounded < MIN_LARGE_ALLOC {
        LARGE_BUFFER
    } else {
        rounded.div_ceil(ROUND_LARGE) * ROUND_LARGE
    }
}

/// `should_split`: whether a free block of `block_size` bytes chosen for a rounded request of
/// `rounded` bytes is split, the remainder going back to the pool. In the small pool any remainder
/// of at least 512 bytes is split off; in the large pool only a remainder above 1 MiB (with the
/// default unlimited `max_split_size`, whose `size < max_split_size` test always holds).
pub fn should_split(pool: PoolKind, block_size: u64, rounded: u64) -> bool {
    let remaining = block_size - rounded;
    match pool {
        PoolKind::Small => remaining >= MIN_BLOCK_SIZE,
        PoolKind::Large => remaining > SMALL_SIZE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn rounding_is_to_512_bytes_with_a_512_byte_minimum() {
        assert_eq!(round_size(0), 512);
        assert_eq!(round_size(1), 512);
        assert_eq!(round_size(512), 512);
        assert_eq!(round_size(513), 1024);
        // 1000 bytes: ceil(1000 / 512) = 2 blocks of 512.
        assert_eq!(round_size(1000), 1024);
        // Large sizes are rounded to 512 too (the 2 MiB rounding is for segments only).
        assert_eq!(round_size(5 * MIB + 1), 5 * MIB + 512);
    }

    #[test]
    fn pools_split_at_one_mebibyte_of_rounded_size() {
        assert_eq!(pool_for(MIB), PoolKind::Small);
        assert_eq!(pool_for(MIB + 512), PoolKind::Large);
        // 1 MiB - 1 byte rounds to exactly 1 MiB: still small.
        assert_eq!(pool_for(round_size(MIB - 1)), PoolKind::Small);
        // 1 MiB + 1 byte rounds to 1 MiB + 512: large.
        assert_eq!(pool_for(round_size(MIB + 1)), PoolKind::Large);
    }

    #[test]
    fn segment_sizes_follow_get_allocation_size() {
        assert_eq!(allocation_size(512), 2 * MIB);
        assert_eq!(allocation_size(MIB), 2 * MIB);
        assert_eq!(allocation_size(MIB + 512), 20 * MIB);
        assert_eq!(allocation_size(10 * MIB - 512), 20 * MIB);
        // From 10 MiB on: the request itself, rounded up to 2 MiB.
        assert_eq!(allocation_size(10 * MIB), 10 * MIB);
        assert_eq!(allocation_size(11 * MIB), 12 * MIB);
        assert_eq!(allocation_size(12 * MIB), 12 * MIB);
        assert_eq!(allocation_size(12 * MIB + 512), 14 * MIB);
    }

    #[test]
    fn split_thresholds_differ_between_pools() {
        // Small pool: a 512-byte remainder is enough.
        assert!(should_split(PoolKind::Small, 2 * MIB, 2 * MIB - 512));
        assert!(!should_split(PoolKind::Small, 1024, 1024));
        // Large pool: the remainder must exceed 1 MiB.
        assert!(!should_split(PoolKind::Large, 3 * MIB, 2 * MIB));
        assert!(should_split(PoolKind::Large, 3 * MIB + 512, 2 * MIB));
        assert!(should_split(PoolKind::Large, 20 * MIB, 5 * MIB));
    }
}
