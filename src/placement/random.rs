//! Deterministic random instances shaped like a training step, for benchmarks and tests: most
//! buffers short-lived, one in ten living up to a quarter of the step, sizes multiples of 512 bytes
//! spread over orders of magnitude. The same `(n, seed, shape)` always gives the same problem.

use super::problem::{Buffer, Bytes, Interval, Problem};

/// How dense and how spread the instance is. Both put `n` buffers over `2n` ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Short buffers live up to 32 ticks; sizes 512 B to ~256 KiB, skewed towards small.
    Sparse,
    /// Short buffers live up to 64 ticks; sizes 512 B to 8 MiB over four orders of magnitude.
    /// A long-lived buffer meets about a quarter of all others.
    Dense,
}

/// `n` buffers named after their index (`r0`, `r1`, … for [`Shape::Sparse`], `0`, `1`, … for
/// [`Shape::Dense`]).
pub fn random_problem(n: usize, seed: u64, shape: Shape) -> Problem {
    let mut rng = XorShift(match shape {
        // xorshift never leaves 0.
        Shape::Sparse => seed | 1,
        Shape::Dense => seed.max(1),
    });
    let horizon = 2 * n as u64;
    let buffers = (0..n)
        .map(|i| {
            let start = rng.next_u64() % horizon.max(1);
            let long = rng.next_u64().is_multiple_of(10);
            let (short, name) = match shape {
                Shape::Sparse => (32, format!("r{i}")),
                Shape::Dense => (64, i.to_string()),
            };
            let len = 1 + if long {
                rng.next_u64() % (horizon / 4).max(1)
            } else {
                rng.next_u64() % short
            };
            let size = match shape {
                Shape::Sparse => 512 * (1 + (rng.next_u64() % 64) * (rng.next_u64() % 64) / 8),
                Shape::Dense => {
                    let x = rng.next_u64();
                    512 * (1 + x % (1 << (rng.next_u64() % 14)))
                }
            };
            let lifetime = Interval {
                start,
                end: start + len,
            };
            Buffer::new(name, lifetime, Bytes(size))
        })
        .collect();
    Problem::new(buffers)
}

/// Marsaglia's xorshift64: deterministic, no dependency.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut s = self.0;
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        self.0 = s;
        s
    }

    /// A number in `0..n` (`n` > 0); the modulo bias is irrelevant for these uses.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_problem_and_shapes_differ() {
        let a = random_problem(500, 7, Shape::Sparse);
        let b = random_problem(500, 7, Shape::Sparse);
        assert_eq!(a.buffers, b.buffers);
        let dense = random_problem(500, 7, Shape::Dense);
        assert_ne!(a.buffers, dense.buffers);
        for p in [&a, &dense] {
            assert!(p
                .buffers
                .iter()
                .all(|b| b.size.0 % 512 == 0 && b.size.0 > 0));
            assert!(p.buffers.iter().all(|b| b.lifetime.start < b.lifetime.end));
        }
    }
}
