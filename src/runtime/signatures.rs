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

use super::planning::DevicePlan;
use super::replay::Replay;

/// Default bound on the plans kept per device (`set_max_plans`).
pub const DEFAULT_MAX_PLANS: usize = 16;

/// One planned signature.
#[derive(Debug)]
pub struct Signature {
    /// The user's name for it (`step(key=...)`), if it was given one.
    pub key: Option<String>,
    pub replay: Replay,
    /// Logical time of its last use (for least-recently-used eviction).
    pub last_used: u64,
    /// The last step that followed it diverged; the next diverging one re-plans it.
    pub diverged: bool,
}

impl Signature {
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

    /// The streams its plan uses, sorted.
    pub fn streams(&self) -> Vec<usize> {
        let mut s: Vec<usize> = self.replay.plan.entries.iter().map(|e| e.stream).collect();
        s.sort_unstable();
        s.dedup();
        s
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

    /// The most recently used signature.
    pub fn most_recent(&self) -> Option<usize> {
        (0..self.sigs.len()).max_by_key(|&i| self.sigs[i].last_used)
    }

    pub fn by_key(&self, key: &str) -> Option<usize> {
        self.sigs.iter().position(|s| s.key.as_deref() == Some(key))
    }

    /// A signature (without a key) whose plan begins with exactly `requests`; the most recently
    /// used one when several do.
    pub fn with_prefix(&self, requests: &[(usize, usize)]) -> Option<usize> {
        (0..self.sigs.len())
            .filter(|&i| self.sigs[i].key.is_none() && self.sigs[i].begins_with(requests))
            .max_by_key(|&i| self.sigs[i].last_used)
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
    /// has exactly the same requests; drops the least recently used past `max` (never the one just
    /// added). Returns its index. Called between steps only: indices of other signatures move.
    pub fn insert(&mut self, sig: Signature, max: usize) -> usize {
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
            })
        });
        let i = match same {
            Some(i) => {
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
