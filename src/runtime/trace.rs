//! Recording one step: every allocation and free of a device, with its size, stream and event index.
//!
//! Event time counts allocations and frees together, so a buffer's lifetime is the half-open
//! interval `[alloc event, free event)` of the placement problem. Allocations still live when the
//! recording ends outlive the step: they are *persistent* and the plan leaves them to the fallback.

use std::collections::HashMap;
use std::fmt::Write as _;

/// One allocation seen while recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceBuffer {
    /// Position among the step's allocations (0 = first).
    pub index: usize,
    pub size: usize,
    pub stream: usize,
    pub alloc_event: u64,
    /// `None`: not freed before the recording ended (persistent).
    pub free_event: Option<u64>,
}

impl TraceBuffer {
    pub fn is_persistent(&self) -> bool {
        self.free_event.is_none()
    }
}

/// The recorded step of one device.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub buffers: Vec<TraceBuffer>,
    /// Events seen (allocations + frees of recorded buffers).
    pub events: u64,
    /// Address -> index of the live recorded buffer there.
    live: HashMap<usize, usize>,
}

impl Trace {
    pub fn new() -> Trace {
        Trace::default()
    }

    pub fn record_alloc(&mut self, addr: usize, size: usize, stream: usize) {
        let index = self.buffers.len();
        self.buffers.push(TraceBuffer {
            index,
            size,
            stream,
            alloc_event: self.events,
            free_event: None,
        });
        self.events += 1;
        self.live.insert(addr, index);
    }

    /// Records a free; frees of memory allocated before the recording began are not part of the step.
    pub fn record_free(&mut self, addr: usize) {
        if let Some(index) = self.live.remove(&addr) {
            self.buffers[index].free_event = Some(self.events);
            self.events += 1;
        }
    }

    /// Ends the recording: whatever is still live is persistent.
    pub fn finish(&mut self) {
        self.live.clear();
    }

    /// The requests `(size, stream)` of the step, in order.
    pub fn requests(&self) -> Vec<(usize, usize)> {
        self.buffers.iter().map(|b| (b.size, b.stream)).collect()
    }

    pub fn transient(&self) -> impl Iterator<Item = &TraceBuffer> {
        self.buffers.iter().filter(|b| !b.is_persistent())
    }

    pub fn persistent(&self) -> impl Iterator<Item = &TraceBuffer> {
        self.buffers.iter().filter(|b| b.is_persistent())
    }

    /// The transient buffers as MiniMalloc CSV (`id,lower,upper,size`), ids `d<device>_<index>`.
    pub fn transient_csv(&self, device: i32, out: &mut String) {
        for b in self.transient() {
            let end = b.free_event.unwrap_or(self.events);
            let _ = writeln!(
                out,
                "{},{},{},{}",
                buffer_name(device, b.index),
                b.alloc_event,
                end,
                b.size
            );
        }
    }

    /// The persistent buffers as CSV (`id,lower,size,stream`): they have no end inside the step.
    pub fn persistent_csv(&self, device: i32, out: &mut String) {
        for b in self.persistent() {
            let _ = writeln!(
                out,
                "{},{},{},{}",
                buffer_name(device, b.index),
                b.alloc_event,
                b.size,
                b.stream
            );
        }
    }
}

/// The id of a recorded buffer in exported files and plans.
pub fn buffer_name(device: i32, index: usize) -> String {
    if device < 0 {
        format!("host_{index}")
    } else {
        format!("d{device}_{index}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_and_persistence() {
        let mut t = Trace::new();
        t.record_alloc(100, 8, 0);
        t.record_alloc(200, 16, 0);
        t.record_free(100);
        t.record_free(999); // allocated before the recording: ignored
        t.finish();
        assert_eq!(t.buffers[0].free_event, Some(2));
        assert!(t.buffers[1].is_persistent());
        let mut csv = String::new();
        t.transient_csv(-1, &mut csv);
        assert_eq!(csv, "host_0,0,2,8\n");
    }

    #[test]
    fn a_free_after_the_end_of_the_recording_is_not_part_of_the_step() {
        // `finish` makes what is still live persistent for good: a free seen later (the recording
        // is over) must not turn it into a transient buffer of the step.
        let mut t = Trace::new();
        t.record_alloc(100, 8, 0);
        t.finish();
        t.record_free(100);
        assert!(t.buffers[0].is_persistent());
        assert_eq!(t.events, 1);
    }

    #[test]
    fn persistent_rows_list_what_outlived_the_step() {
        let mut t = Trace::new();
        t.record_alloc(100, 8, 0);
        t.record_alloc(200, 16, 3);
        t.record_alloc(300, 24, 0);
        t.record_free(100);
        t.finish();
        let mut csv = String::new();
        t.persistent_csv(1, &mut csv);
        assert_eq!(csv, "d1_1,1,16,3\nd1_2,2,24,0\n");
    }

    #[test]
    fn names_tell_the_host_from_device_zero() {
        assert_eq!(buffer_name(-1, 3), "host_3");
        assert_eq!(buffer_name(0, 3), "d0_3");
        assert_eq!(buffer_name(2, 0), "d2_0");
    }
}
