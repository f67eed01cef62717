//! Instances built for benchmarks and tests whose optimum is known or whose shape is that of real
//! work: a recorded step tiled in time (what gradient accumulation or a trace of several steps
//! looks like), and perfect packings (a rectangle cut into buffers, so the optimum is its width).

use super::problem::{Buffer, Bytes, Interval, Problem};
use super::random::XorShift;

/// `copies` copies of `problem` one after the other in time, each shifted past the end of the one
/// before; names get a `#k` suffix. No lifetime crosses from one copy into the next.
pub fn tiled(problem: &Problem, copies: usize) -> Problem {
    let span = problem
        .buffers
        .iter()
        .map(|b| b.lifetime.end)
        .max()
        .unwrap_or(0);
    let buffers = (0..copies as u64)
        .flat_map(|k| {
            problem.buffers.iter().map(move |b| {
                let mut copy = b.clone();
                copy.name = format!("{}#{k}", b.name);
                copy.lifetime = Interval {
                    start: b.lifetime.start + k * span,
                    end: b.lifetime.end + k * span,
                };
                copy
            })
        })
        .collect();
    Problem::new(buffers).with_capacity(problem.capacity)
}

/// A `width` × `2n` rectangle of addresses × time cut into `n` buffers: the largest piece is cut
/// in two, across addresses or across time at random (each piece keeps at least `grain` bytes and
/// one tick), until there are `n`. The pieces tile the rectangle, so `width` bytes are live at
/// every moment and the cut itself is a plan at that peak: the optimum is `width`, and so is the
/// lower bound. Piece sizes are multiples of `grain` (`width` should be one too).
pub fn perfect_packing(n: usize, width: u64, grain: u64, seed: u64) -> Problem {
    let grain = grain.max(1);
    // Odd, as xorshift needs a nonzero state, and one per seed (`seed | 1` made 2 and 3 alike).
    let mut rng = XorShift(seed.wrapping_mul(2).wrapping_add(1));
    // (offset, size, start, end)
    let mut pieces = vec![(0u64, width, 0u64, 2 * n.max(1) as u64)];
    while pieces.len() < n {
        let area = |p: &(u64, u64, u64, u64)| u128::from(p.1) * u128::from(p.3 - p.2);
        let Some(i) = (0..pieces.len())
            .filter(|&i| pieces[i].1 >= 2 * grain || pieces[i].3 - pieces[i].2 >= 2)
            .max_by_key(|&i| (area(&pieces[i]), std::cmp::Reverse(i)))
        else {
            break;
        };
        let (offset, size, start, end) = pieces[i];
        let can_split_bytes = size >= 2 * grain;
        let can_split_time = end - start >= 2;
        let across_time = can_split_time && (!can_split_bytes || rng.next_u64().is_multiple_of(2));
        // Cut between a fifth and four fifths of the way, never at an edge.
        let cut = |len: u64, rng: &mut XorShift| {
            let lo = (len / 5).max(1);
            let hi = (len - len / 5).max(lo + 1).min(len);
            lo + rng.next_u64() % (hi - lo).max(1)
        };
        if across_time {
            let t = start + cut(end - start, &mut rng);
            pieces[i] = (offset, size, start, t);
            pieces.push((offset, size, t, end));
        } else {
            let units = size / grain;
            let s = cut(units, &mut rng) * grain;
            pieces[i] = (offset, s, start, end);
            pieces.push((offset + s, size - s, start, end));
        }
    }
    let buffers = pieces
        .into_iter()
        .enumerate()
        .map(|(i, (_, size, start, end))| {
            Buffer::new(format!("p{i}"), Interval { start, end }, Bytes(size))
        })
        .collect();
    Problem::new(buffers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::max_load;

    #[test]
    fn a_perfect_packing_is_live_at_its_width_at_every_moment() {
        for seed in 1..6 {
            let p = perfect_packing(200, 1 << 20, 64, seed);
            assert_eq!(p.len(), 200);
            assert_eq!(max_load(&p), Bytes(1 << 20));
            // Every moment of the rectangle is covered by exactly `width` bytes.
            let horizon = p.buffers.iter().map(|b| b.lifetime.end).max().unwrap();
            for t in 0..horizon {
                let live: u64 = p
                    .buffers
                    .iter()
                    .filter(|b| b.lifetime.start <= t && t < b.lifetime.end)
                    .map(|b| b.size.0)
                    .sum();
                assert_eq!(live, 1 << 20, "seed {seed} t {t}");
            }
            assert!(p.buffers.iter().all(|b| b.size.0 % 64 == 0 && b.size.0 > 0));
        }
    }

    #[test]
    fn tiled_copies_follow_each_other_in_time() {
        let p = perfect_packing(10, 1024, 1, 3);
        let t = tiled(&p, 3);
        assert_eq!(t.len(), 30);
        assert_eq!(max_load(&t), max_load(&p));
        assert_eq!(crate::placement::decompose::parts(&t).len() % 3, 0);
        assert_eq!(
            t.buffers[10].lifetime.start,
            p.buffers[0].lifetime.start + 20
        );
    }
}
