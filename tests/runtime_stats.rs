//! The runtime's memory statistics against a direct count: bytes served by the fallback pool, and the
//! peak of reserved bytes, which only grows (an `empty_cache` lowers what is reserved, not the peak).

use std::sync::Arc;

use model_opt::runtime::{HostBackend, Runtime, RuntimeConfig, HOST_DEVICE};

#[test]
fn fallback_bytes_and_the_reserved_peak_match_a_direct_count() {
    let rt = Runtime::new(Arc::new(HostBackend::new()), RuntimeConfig::default());
    // Small, medium and large requests: three segment classes of the pool.
    let sizes = [1000usize, 3 << 20, 12 << 20, 700];
    let mut live = Vec::new();
    let mut peak = 0u64;
    for (k, &size) in sizes.iter().enumerate() {
        live.push(rt.alloc(HOST_DEVICE, size, 0).unwrap());
        let st = rt.stats();
        assert_eq!(st.counters.fallback_allocations, k as u64 + 1);
        assert_eq!(
            st.counters.fallback_bytes,
            sizes[..=k].iter().map(|&s| s as u64).sum::<u64>()
        );
        assert_eq!(st.reserved_bytes, st.fallback_reserved_bytes);
        assert!(st.reserved_bytes >= st.counters.allocated_bytes);
        peak = peak.max(st.reserved_bytes);
        assert_eq!(st.peak_reserved_bytes, peak, "after request {k}");
    }
    assert!(peak >= sizes.iter().sum::<usize>() as u64);
    for addr in live {
        rt.free(HOST_DEVICE, addr).unwrap();
    }
    assert!(rt.empty_cache().unwrap() > 0);
    let st = rt.stats();
    assert_eq!(st.reserved_bytes, 0);
    assert_eq!(st.peak_reserved_bytes, peak, "the peak stays");
    let a = rt.alloc(HOST_DEVICE, 512, 0).unwrap();
    assert_eq!(rt.stats().peak_reserved_bytes, peak);
    rt.free(HOST_DEVICE, a).unwrap();
}
