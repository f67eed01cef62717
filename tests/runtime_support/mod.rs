//! Shared by the runtime tests: a tiny deterministic RNG, random step programs, and a driver that runs
//! a program against a runtime, filling every allocation with a pattern unique to it and checking the
//! pattern when it is freed (so any overlap between live allocations fails the test).

#![allow(dead_code)]

pub mod c_abi;
pub mod soak;
pub mod stub_driver;

use std::collections::HashMap;

use model_opt::runtime::Runtime;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One operation of a step: allocate buffer `id`, or free it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Alloc {
        id: usize,
        size: usize,
        stream: usize,
    },
    Free {
        id: usize,
    },
}

/// A random step: `n` allocations, each freed later in the step unless it is persistent (kept until
/// the next step frees it, like gradients or a stored loss).
pub fn random_program(rng: &mut Rng, n: usize, streams: usize) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut live: Vec<usize> = Vec::new();
    for id in 0..n {
        let size = match rng.below(10) {
            0 => 1 + rng.below(64) as usize,
            1..=6 => 64 + rng.below(16 << 10) as usize,
            7 | 8 => (1 + rng.below(64)) as usize * 4096,
            _ => ((1 + rng.below(4)) as usize) << 18,
        };
        let stream = rng.below(streams as u64) as usize;
        ops.push(Op::Alloc { id, size, stream });
        live.push(id);
        while !live.is_empty() && rng.chance(55) {
            let k = rng.below(live.len() as u64) as usize;
            let id = live.swap_remove(k);
            ops.push(Op::Free { id });
        }
    }
    // Most survivors die at the end of the step; a few persist.
    for id in live {
        if !rng.chance(10) {
            ops.push(Op::Free { id });
        }
    }
    ops
}

/// A step of a model on a batch padded to `len`: requests that do not depend on the length first
/// (the same in every step, as the beginning of a forward pass often is), then activations
/// proportional to it, freed in reverse by the backward pass, then gradients that outlive the step.
pub fn padded_step(len: usize) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut id = 0;
    let mut alloc = |ops: &mut Vec<Op>, size: usize| {
        ops.push(Op::Alloc {
            id,
            size,
            stream: 0,
        });
        id += 1;
        id - 1
    };
    let fixed: Vec<usize> = [4096, 8192, 512]
        .into_iter()
        .map(|s| alloc(&mut ops, s))
        .collect();
    let acts: Vec<usize> = (0..16)
        .map(|i| alloc(&mut ops, (i % 5 + 1) * len * 48))
        .collect();
    for &a in fixed.iter().rev() {
        ops.push(Op::Free { id: a });
    }
    for &a in acts.iter().rev() {
        let scratch = alloc(&mut ops, len * 64);
        ops.push(Op::Free { id: scratch });
        ops.push(Op::Free { id: a });
    }
    for size in [20_000, 3_000, 70_000] {
        alloc(&mut ops, size); // gradients: persistent
    }
    ops
}

/// Ids allocated but never freed by `program`.
pub fn persistent_ids(program: &[Op]) -> Vec<usize> {
    let mut live = std::collections::BTreeSet::new();
    for op in program {
        match *op {
            Op::Alloc { id, .. } => {
                live.insert(id);
            }
            Op::Free { id } => {
                live.remove(&id);
            }
        }
    }
    live.into_iter().collect()
}

/// Invariant 1, checked directly: the new allocation `[addr, addr + size)` overlaps no live one.
pub fn assert_disjoint<'a>(addr: usize, size: usize, live: impl IntoIterator<Item = &'a Live>) {
    for other in live {
        assert!(
            addr + size <= other.addr || other.addr + other.size <= addr,
            "new allocation [{addr:#x}, +{size}) overlaps live [{:#x}, +{})",
            other.addr,
            other.size
        );
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Live {
    pub addr: usize,
    pub size: usize,
    pub tag: u64,
}

/// Runs programs against a runtime on one device, checking every byte it handed out.
pub struct Driver<'r> {
    pub rt: &'r Runtime,
    pub device: i32,
    next_tag: u64,
    /// (step, id) -> live allocation; survivors of a step are keyed by their step.
    pub live: HashMap<(u64, usize), Live>,
    pub step: u64,
}

fn word(tag: u64, i: usize) -> u64 {
    tag.rotate_left((i % 64) as u32) ^ i as u64
}

pub fn fill(l: &Live) {
    let words = l.size / 8;
    // SAFETY: the runtime handed out `size` writable bytes at `addr`, aligned to 512.
    let w = unsafe { std::slice::from_raw_parts_mut(l.addr as *mut u64, words) };
    for (i, x) in w.iter_mut().enumerate() {
        *x = word(l.tag, i);
    }
    // SAFETY: as above; the tail bytes after the last whole word.
    let tail = unsafe {
        std::slice::from_raw_parts_mut((l.addr + words * 8) as *mut u8, l.size - words * 8)
    };
    tail.fill(l.tag as u8);
}

pub fn check(l: &Live) {
    let words = l.size / 8;
    // SAFETY: still live, so still ours.
    let w = unsafe { std::slice::from_raw_parts(l.addr as *const u64, words) };
    for (i, &x) in w.iter().enumerate() {
        assert_eq!(
            x,
            word(l.tag, i),
            "allocation {:#x} (word {i}) of {} bytes was overwritten: two live allocations shared memory",
            l.addr,
            l.size
        );
    }
    // SAFETY: as above.
    let tail = unsafe {
        std::slice::from_raw_parts((l.addr + words * 8) as *const u8, l.size - words * 8)
    };
    assert!(
        tail.iter().all(|&b| b == l.tag as u8),
        "tail of allocation {:#x} was overwritten",
        l.addr
    );
}

impl<'r> Driver<'r> {
    pub fn new(rt: &'r Runtime, device: i32) -> Driver<'r> {
        Driver {
            rt,
            device,
            next_tag: 0x1234_5678_0000_0000,
            live: HashMap::new(),
            step: 0,
        }
    }

    pub fn alloc(&mut self, key: (u64, usize), size: usize, stream: usize) -> Live {
        let addr = self
            .rt
            .alloc(self.device, size, stream)
            .expect("allocation failed");
        assert_ne!(addr, 0);
        assert_eq!(addr % 512, 0, "misaligned allocation");
        // Invariant 1, checked directly too.
        assert_disjoint(addr, size, self.live.values());
        self.next_tag += 1;
        let l = Live {
            addr,
            size,
            tag: self.next_tag,
        };
        fill(&l);
        self.live.insert(key, l);
        l
    }

    pub fn free(&mut self, key: (u64, usize)) {
        if let Some(l) = self.live.remove(&key) {
            check(&l);
            self.rt.free(self.device, l.addr).expect("free failed");
        }
    }

    /// Runs one step of `program`; persistent buffers of earlier steps are freed first, when
    /// `free_survivors` (the program drops last step's gradients before making new ones).
    pub fn run_step(&mut self, program: &[Op], free_survivors: bool) {
        self.step += 1;
        if free_survivors {
            let old: Vec<_> = self
                .live
                .keys()
                .copied()
                .filter(|k| k.0 < self.step)
                .collect();
            for k in old {
                self.free(k);
            }
        }
        self.run_ops(program);
    }

    /// Runs more of the current step.
    pub fn run_ops(&mut self, program: &[Op]) {
        for op in program {
            match *op {
                Op::Alloc { id, size, stream } => {
                    self.alloc((self.step, id), size, stream);
                }
                Op::Free { id } => self.free((self.step, id)),
            }
        }
    }

    pub fn free_all(&mut self) {
        let keys: Vec<_> = self.live.keys().copied().collect();
        for k in keys {
            self.free(k);
        }
    }
}
