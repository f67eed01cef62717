//! The planned step signatures of one device: a bounded set of plans, one per kind of step the
//! program runs (a sequence length, the step that calls `optimizer.step()` in gradient accumulation,
//! a short last batch), all served from the device's one arena (only one step runs at a time, so the
//! arena is the largest plan's, not the sum).
//!
//! A step is recognised by its requests: it follows the most recently used signature while its
//! requests are exactly that plan's, and at the first one that differs it moves to a signature whose
//! plan begins with exactly the requests seen so far (a trie walk over the plans' request sequences,
//! done by comparing prefixes: there are at most a few dozen plans). Plans that begin alike place
//! their common beginning alike (see [`SignatureSet::prefix_hint`]), so the move is seamless: what the
//! step already holds is where the new plan wants it. A user key (`step(key=...)`) names the
//! signature instead.
//!
//! Requests alone do not tell every kind of step apart: in gradient accumulation the first
//! micro-batch (gradients set to None) requests exactly what the next ones request, but keeps
//! backward's gradients as `.grad` where the others free them after adding them in. What the device
//! holds when the step begins (its [`Start`]: live allocations and bytes) does tell them apart, so a
//! signature remembers the starts its steps were seen to begin from, and a step begins with the most
//! recent signature seen from its start. A start is only a preference: loops whose held memory
//! changes from step to step (the last batch's outputs, still referenced) keep following plans by
//! their requests; a signature of the same requests but other lifetimes is planned only when a step
//! from a new start showed them (`device.rs`, `end_step`).

use super::planning::DevicePlan;
use super::replay::Replay;
use super::trace::Trace;

/// Default bound on the plans kept per device (`set_max_plans`).
pub const DEFAULT_MAX_PLANS: usize = 16;

/// Starts remembered per signature (most recent kept).
const MAX_STARTS: usize = 8;

/// What a device holds when a step begins: its live allocations and their requested bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Start {
    pub allocations: usize,
    pub bytes: usize,
}

/// One planned signature.
#[derive(Debug)]
pub struct Signature {
    /// The user's name for it (`step(key=...)`), if it was given one.
    pub key: Option<String>,
    pub replay: Replay,
    /// What the device held when its steps began (the recorded one's first), most recent last.
    pub starts: Vec<Start>,
    /// The streams its plan uses, sorted.
    pub streams: Vec<usize>,
    /// Logical time of its last use (for least-recently-used eviction).
    pub last_used: u64,
    /// The last step that followed it diverged; the next diverging one re-plans it.
    pub diverged: bool,
}

impl Signature {
    pub fn new(key: Option<String>, plan: DevicePlan, start: Start) -> Signature {
        let mut streams: Vec<usize> = plan.entries.iter().map(|e| e.stream).collect();
        streams.sort_unstable();
        streams.dedup();
        Signature {
            key,
            replay: Replay::new(plan),
            starts: vec![start],
            streams,
            last_used: 0,
            diverged: false,
        }
    }

    /// Remembers that a step began from `start` and followed this plan as recorded.
    pub fn add_start(&mut self, start: Start) {
        if let Some(i) = self.starts.iter().position(|&s| s == start) {
            self.starts.remove(i);
        } else if self.starts.len() >= MAX_STARTS {
            self.starts.remove(0);
        }
        self.starts.push(start);
    }

    /// Whether the `k`-th request of a step that follows this plan exactly is `(size, stream)`.
    #[inline]
    pub fn expects(&self, k: usize, size: usize, stream: usize) -> bool {
        self.replay
            .plan
            .entries
            .get(k)
            .is_some_and(|e| e.size == size && e.stream == stream)
    }

    /// Whether this plan begins with exactly `requests` (size, stream).
    pub fn begins_with(&self, requests: &[(usize, usize)]) -> bool {
        let entries = &self.replay.plan.entries;
        entries.len() >= requests.len()
            && entries
                .iter()
                .zip(requests)
                .all(|(e, &(size, stream))| e.size == size && e.stream == stream)
    }

    /// Whether `trace` (a step that followed this plan) made this plan's first requests, exactly,
    /// but kept buffers the plan frees or freed buffers the plan keeps: the same requests with other
    /// lifetimes (false when the requests themselves differ).
    pub fn lifetimes_differ(&self, trace: &Trace) -> bool {
        let entries = &self.replay.plan.entries;
        entries.len() >= trace.buffers.len()
            && entries
                .iter()
                .zip(&trace.buffers)
                .all(|(e, b)| e.size == b.size && e.stream == b.stream)
            && entries
                .iter()
                .zip(&trace.buffers)
                .any(|(e, b)| e.offset.is_none() != b.is_persistent())
    }
}

/// The signatures of one device.
#[derive(Debug, Default)]
pub struct SignatureSet {
    sigs: Vec<Signature>,
    clock: u64,
}

impl SignatureSet {
    pub fn len(&self) -> usize {
        self.sigs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sigs.is_empty()
    }

    pub fn get(&self, i: usize) -> &Signature {
        &self.sigs[i]
    }

    pub fn get_mut(&mut self, i: usize) -> &mut Signature {
        &mut self.sigs[i]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Signature> {
        self.sigs.iter()
    }

    /// Marks signature `i` as used now.
    pub fn touch(&mut self, i: usize) {
        self.clock += 1;
        self.sigs[i].last_used = self.clock;
    }

    /// The signature a step beginning from `start` follows first: the most recently used one seen
    /// from that start, else the most recently used one.
    pub fn for_start(&self, start: Start) -> Option<usize> {
        (0..self.sigs.len())
            .max_by_key(|&i| (self.sigs[i].starts.contains(&start), self.sigs[i].last_used))
    }

    pub fn by_key(&self, key: &str) -> Option<usize> {
        self.sigs.iter().position(|s| s.key.as_deref() == Some(key))
    }

    /// A signature (without a key) whose plan begins with exactly `requests`: one seen from
    /// `start` first, the most recently used one among equals.
    pub fn with_prefix(&self, requests: &[(usize, usize)], start: Start) -> Option<usize> {
        (0..self.sigs.len())
            .filter(|&i| self.sigs[i].key.is_none() && self.sigs[i].begins_with(requests))
            .max_by_key(|&i| (self.sigs[i].starts.contains(&start), self.sigs[i].last_used))
    }

    /// The plan sharing the longest beginning with `requests` (size, stream), and that length: a
    /// new plan places those first buffers where this one does, so a step can move between the two.
    pub fn prefix_hint(&self, requests: &[(usize, usize)]) -> Option<(DevicePlan, usize)> {
        self.sigs
            .iter()
            .map(|s| {
                let common = s
                    .replay
                    .plan
                    .entries
                    .iter()
                    .zip(requests)
                    .take_while(|(e, &(size, stream))| e.size == size && e.stream == stream)
                    .count();
                (s, common)
            })
            .filter(|&(_, common)| common > 0)
            .max_by_key(|&(s, common)| (common, s.last_used))
            .map(|(s, common)| (s.replay.plan.clone(), common))
    }

    /// Adds a signature, replacing the one with the same key, or (without keys) the one whose plan
    /// has exactly the same requests and was seen from the same start (a plan of the same requests
    /// from another start is another signature: other lifetimes); drops the least recently used
    /// past `max` (never the one just added). Returns its index. Called between steps only: indices
    /// of other signatures move.
    pub fn insert(&mut self, mut sig: Signature, max: usize) -> usize {
        let requests: Vec<(usize, usize)> = sig
            .replay
            .plan
            .entries
            .iter()
            .map(|e| (e.size, e.stream))
            .collect();
        let same = sig.key.as_deref().and_then(|k| self.by_key(k)).or_else(|| {
            self.sigs.iter().position(|s| {
                s.key == sig.key
                    && s.replay.plan.entries.len() == requests.len()
                    && s.begins_with(&requests)
                    && sig.starts.iter().any(|x| s.starts.contains(x))
            })
        });
        let i = match same {
            Some(i) => {
                // The new plan keeps the starts the old one was seen from.
                let new_starts = std::mem::take(&mut sig.starts);
                sig.starts = std::mem::take(&mut self.sigs[i].starts);
                for s in new_starts {
                    sig.add_start(s);
                }
                self.sigs[i] = sig;
                i
            }
            None => {
                self.sigs.push(sig);
                self.sigs.len() - 1
            }
        };
        self.touch(i);
        let mut kept = i;
        while self.sigs.len() > max.max(1) {
            let victim = (0..self.sigs.len())
                .filter(|&j| j != kept)
                .min_by_key(|&j| self.sigs[j].last_used);
            let Some(victim) = victim else { break };
            self.sigs.remove(victim);
            if victim < kept {
                kept -= 1;
            }
        }
        kept
    }

    /// The largest arena any signature needs.
    pub fn arena_bytes(&self) -> usize {
        self.sigs
            .iter()
            .map(|s| s.replay.plan.arena_bytes)
            .max()
            .unwrap_or(0)
    }

    /// The largest lower bound of any signature.
    pub fn lower_bound(&self) -> u64 {
        self.sigs
            .iter()
            .map(|s| s.replay.plan.lower_bound)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::planning::PlanEntry;

    fn plan(sizes: &[usize]) -> DevicePlan {
        DevicePlan {
            entries: sizes
                .iter()
                .map(|&size| PlanEntry {
                    size,
                    slot: size.div_ceil(512) * 512,
                    stream: 0,
                    offset: Some(0),
                })
                .collect(),
            ..DevicePlan::default()
        }
    }

    fn start(allocations: usize) -> Start {
        Start {
            allocations,
            bytes: allocations * 100,
        }
    }

    #[test]
    fn a_step_begins_with_the_signature_seen_from_its_start() {
        let mut set = SignatureSet::default();
        let a = set.insert(Signature::new(None, plan(&[10, 20]), start(1)), 8);
        let b = set.insert(Signature::new(None, plan(&[10, 30]), start(2)), 8);
        assert_eq!((a, b), (0, 1));
        assert_eq!(set.for_start(start(1)), Some(0), "seen from there");
        assert_eq!(set.for_start(start(2)), Some(1));
        assert_eq!(set.for_start(start(9)), Some(1), "else the most recent");
        set.touch(0);
        assert_eq!(set.for_start(start(9)), Some(0));
        // Beginnings: a start seen by a signature wins over recency.
        assert_eq!(set.with_prefix(&[(10, 0)], start(2)), Some(1));
        assert_eq!(set.with_prefix(&[(10, 0)], start(9)), Some(0));
        assert_eq!(set.with_prefix(&[(10, 0), (30, 0)], start(1)), Some(1));
        assert_eq!(set.with_prefix(&[(11, 0)], start(1)), None);
    }

    #[test]
    fn the_same_requests_from_another_start_are_another_signature() {
        let mut set = SignatureSet::default();
        set.insert(Signature::new(None, plan(&[10, 20]), start(1)), 8);
        set.insert(Signature::new(None, plan(&[10, 20]), start(2)), 8);
        assert_eq!(set.len(), 2, "other lifetimes: kept apart");
        // Planned again from a start it was seen from: replaced, keeping its starts.
        set.get_mut(0).add_start(start(3));
        let i = set.insert(Signature::new(None, plan(&[10, 20]), start(3)), 8);
        assert_eq!((set.len(), i), (2, 0));
        assert_eq!(set.get(0).starts, vec![start(1), start(3)]);
        // A key names the signature, whatever the start.
        set.insert(
            Signature::new(Some("k".into()), plan(&[10, 20]), start(1)),
            8,
        );
        let k = set.insert(Signature::new(Some("k".into()), plan(&[5]), start(4)), 8);
        assert_eq!(set.len(), 3);
        assert_eq!(set.get(k).starts, vec![start(1), start(4)]);
    }

    #[test]
    fn past_the_bound_the_least_recently_used_goes_and_the_index_follows() {
        let mut set = SignatureSet::default();
        set.insert(Signature::new(None, plan(&[1]), start(0)), 2);
        set.insert(Signature::new(None, plan(&[2]), start(0)), 2);
        set.touch(0); // [1] used last: [2] is the least recently used
        let i = set.insert(Signature::new(None, plan(&[3]), start(0)), 2);
        assert_eq!(set.len(), 2, "exactly the bound");
        assert_eq!(
            set.get(i).replay.plan.entries[0].size,
            3,
            "the index of the one just added"
        );
        assert!(set.iter().any(|s| s.replay.plan.entries[0].size == 1));
        // The one just added stays even when it is the least recently used.
        let j = set.insert(Signature::new(None, plan(&[4]), start(0)), 1);
        assert_eq!(set.len(), 1);
        assert_eq!(set.get(j).replay.plan.entries[0].size, 4);
    }

    #[test]
    fn a_signature_remembers_its_most_recent_starts() {
        let mut sig = Signature::new(None, plan(&[10]), start(0));
        for k in 1..=MAX_STARTS + 2 {
            sig.add_start(start(k));
        }
        assert_eq!(sig.starts.len(), MAX_STARTS);
        assert_eq!(sig.starts.first(), Some(&start(3)));
        sig.add_start(start(5));
        assert_eq!(
            sig.starts.last(),
            Some(&start(5)),
            "seen again: most recent"
        );
        assert_eq!(sig.starts.len(), MAX_STARTS);
    }

    #[test]
    fn lifetimes_differ_on_the_same_requests_only() {
        let mut p = plan(&[100, 200, 300]);
        p.entries[1].offset = None; // kept past the step
        let sig = Signature::new(None, p, start(0));
        let trace = |ops: &[(bool, usize, usize)]| {
            let mut t = Trace::new();
            for &(alloc, addr, size) in ops {
                if alloc {
                    t.record_alloc(addr, size, 0);
                } else {
                    t.record_free(addr);
                }
            }
            t.finish();
            t
        };
        let requests = [(true, 1, 100), (true, 2, 200), (true, 3, 300)];
        let same = trace(&[&requests[..], &[(false, 1, 0), (false, 3, 0)]].concat());
        assert!(!sig.lifetimes_differ(&same));
        let swapped = trace(&[&requests[..], &[(false, 2, 0), (false, 3, 0)]].concat());
        assert!(
            sig.lifetimes_differ(&swapped),
            "100 kept, 200 freed: the other way round"
        );
        // A step that made only the plan's first request, keeping it.
        assert!(sig.lifetimes_differ(&trace(&[(true, 1, 100)])));
        assert!(!sig.lifetimes_differ(&trace(&[(true, 1, 100), (false, 1, 0)])));
        // Other requests: not a question of lifetimes.
        assert!(!sig.lifetimes_differ(&trace(&[(true, 1, 101)])));
        let longer = trace(&[&requests[..], &[(true, 4, 8)]].concat());
        assert!(!sig.lifetimes_differ(&longer));
    }
}
