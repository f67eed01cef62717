//! On a GPU, an unplanned step takes its temporaries from the arena's free space only while every plan
//! of the device runs on one stream (stub driver). Its own test binary: the stub's memory is global.

mod runtime_support;

use std::sync::Arc;

use model_opt::placement::PlanOptions;
use model_opt::runtime::backend::cuda::preload_driver;
use model_opt::runtime::{CudaBackend, Runtime, RuntimeConfig};
use runtime_support::stub_driver::build_stub;
use runtime_support::{Driver, Op};

const MIB: usize = 1 << 20;

#[test]
fn an_unplanned_step_stays_out_of_an_arena_that_several_streams_share() {
    preload_driver(build_stub().to_str().unwrap()).unwrap();
    let rt = Runtime::new(Arc::new(CudaBackend::new()), RuntimeConfig::default());
    let mut d = Driver::new(&rt, 1);
    // Plans on two streams: memory one stream used may still be in use by it when the other
    // would get it, so first-fit in the arena is not safe there.
    let two_streams = |mib: usize| {
        let mut ops = Vec::new();
        for (id, stream) in [(0, 0), (1, 7)] {
            ops.push(Op::Alloc {
                id,
                size: mib * MIB,
                stream,
            });
        }
        ops.push(Op::Free { id: 0 });
        ops.push(Op::Free { id: 1 });
        ops
    };
    rt.begin_profile().unwrap();
    d.run_step(&two_streams(4), true);
    rt.end_profile().unwrap();
    rt.plan(&PlanOptions::default()).unwrap();
    rt.begin_step(None).unwrap();
    d.run_step(&two_streams(2), true); // new sizes: unplanned
    let s = rt.end_step().unwrap();
    assert!(s.new_signature && s.unplanned_allocations == 2, "{s:?}");
    assert_eq!(rt.stats().counters.unplanned_arena_allocations, 0);
    d.free_all();
}
