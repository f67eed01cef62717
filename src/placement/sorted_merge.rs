//! Lazily merges ascending slices into one ascending sequence. A consumer that stops early (first fit
//! stops at the first gap) never pays for the rest, and one that reads everything pays
//! O(k log lists) instead of sorting k items.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub struct SortedMerge<'a, T> {
    /// What is left of each input slice after its head.
    lists: Vec<&'a [T]>,
    /// The smallest head of all, kept out of the heap: neighbours come in runs from one list (a
    /// long-lived buffer's node holds many in a row), and while the run lasts one comparison with
    /// the heap's top replaces a sift.
    head: Option<(T, usize)>,
    /// The heads of the other non-empty lists.
    heap: BinaryHeap<Reverse<(T, usize)>>,
}

impl<'a, T: Ord + Copy> SortedMerge<'a, T> {
    /// Every slice must be sorted ascending. Equal items come out in no particular order, which is
    /// harmless since they are indistinguishable.
    pub fn new(mut lists: Vec<&'a [T]>) -> SortedMerge<'a, T> {
        lists.retain(|l| !l.is_empty());
        let mut heap: BinaryHeap<Reverse<(T, usize)>> = BinaryHeap::with_capacity(lists.len());
        for (k, list) in lists.iter_mut().enumerate() {
            if let Some((&first, rest)) = list.split_first() {
                heap.push(Reverse((first, k)));
                *list = rest;
            }
        }
        let head = heap.pop().map(|Reverse(h)| h);
        SortedMerge { lists, head, heap }
    }
}

impl<T: Ord + Copy> Iterator for SortedMerge<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let (item, k) = self.head?;
        self.head = match self.lists[k].split_first() {
            Some((&next, rest)) => {
                self.lists[k] = rest;
                match self.heap.peek_mut() {
                    // The heap's top comes first: it becomes the head and `next` takes its place.
                    Some(mut top) if top.0 < (next, k) => {
                        Some(std::mem::replace(&mut *top, Reverse((next, k))).0)
                    }
                    _ => Some((next, k)),
                }
            }
            None => self.heap.pop().map(|Reverse(h)| h),
        };
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_like_a_sort() {
        let a = [1, 4, 4, 9];
        let b: [i32; 0] = [];
        let c = [0, 4, 5, 10, 11];
        let d = [2];
        let got: Vec<i32> = SortedMerge::new(vec![&a[..], &b[..], &c[..], &d[..]]).collect();
        let mut want: Vec<i32> = a.iter().chain(&c).chain(&d).copied().collect();
        want.sort();
        assert_eq!(got, want);
    }
}
