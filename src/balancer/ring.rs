//! The consistent-hash lookup table: Maglev (Eisenbud et al., NSDI 2016) with weights.
//!
//! Why Maglev rather than a ketama ring: a lookup is one table read (`table[key % M]`)
//! instead of a binary search over hundreds of points per backend, and the table gives
//! every backend its share of slots to within one slot, so balance does not depend on
//! how many virtual points were afforded (with ketama's 160 points per backend a
//! backend's share varies by about 1/sqrt(160) ≈ 8 %, so the busiest of ten is typically
//! 10–15 % above the mean). Measured by the tests below (`--nocapture` prints it): with 10
//! equal backends and 100,000 keys the busiest gets 1.01 × the mean; going from 5 to 6
//! backends moves 16.6 % of the keys and from 10 to 11 moves 9.4 % (the minimum, 1/N, is
//! 16.7 % and 9.1 %); a pick costs 30–50 ns at any pool size (benches/hot_path.rs).
//!
//! Weights: each backend takes slots in proportion to its weight while the table is
//! filled. The table size M is a prime of at least 100 slots per backend (the paper's
//! recommendation for low disruption) and 20 per unit of gcd-reduced weight, taken from
//! a short list so that it stays the same when the pool grows or shrinks by a few.
//!
//! Failover: a key whose backend cannot take it walks the table forward from its slot
//! to the next backend that can. Consecutive slots belong to backends in a pseudo-random
//! order, so a dead backend's keys spread over all the others; the walk is a function of
//! the key alone, so keys come back when the backend recovers, and keys of healthy
//! backends never move.
//!
//! Slow start: a ring built to replace another remembers, for each slot whose owner
//! changed, the slot's owner before ([`Ring::prior`]); a key whose new home is still
//! ramping and not yet admitted stays there instead of moving to a third backend.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Slots walked before giving up on the table and scanning the backends.
const MAX_WALK: usize = 256;

/// A Maglev lookup table over a pool's backends.
#[derive(Debug, Clone)]
pub struct Ring {
    table: Box<[u32]>,
    backends: usize,
    /// Per slot, the index (in this ring's backends) of the slot's owner in the ring
    /// this one replaced, where that owner differs and is still here; `u32::MAX`
    /// elsewhere. Empty when there was no earlier ring of the same size.
    prior: Box<[u32]>,
}

impl Ring {
    /// Builds the table for backends given as (name, weight), in pool order.
    pub fn new(backends: &[(&str, u32)]) -> Ring {
        let n = backends.len();
        if n == 0 {
            return Ring {
                table: Box::new([]),
                backends: 0,
                prior: Box::new([]),
            };
        }
        let g = backends.iter().map(|b| b.1.max(1)).fold(0, gcd).max(1);
        let weights: Vec<u64> = backends.iter().map(|b| u64::from(b.1.max(1) / g)).collect();
        let total: u64 = weights.iter().sum();
        let m = table_size(n as u64, total);
        let perms: Vec<(u64, u64)> = backends
            .iter()
            .map(|(name, _)| {
                let offset = xxh3_64_with_seed(name.as_bytes(), 0x4d41_474c_4556_0001) % m;
                let skip = xxh3_64_with_seed(name.as_bytes(), 0x4d41_474c_4556_0002) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_w = weights.iter().copied().max().unwrap_or(1);
        let mut table = vec![u32::MAX; m as usize];
        // Each backend's position in its permutation (offset + j·skip mod m), advanced
        // by addition instead of a multiplication and a division per probe.
        let mut pos: Vec<u64> = perms.iter().map(|p| p.0).collect();
        let mut credit = vec![0u64; n];
        let mut filled = 0u64;
        'fill: loop {
            for i in 0..n {
                credit[i] += weights[i];
                while credit[i] >= max_w {
                    credit[i] -= max_w;
                    let skip = perms[i].1;
                    loop {
                        let slot = pos[i] as usize;
                        pos[i] += skip;
                        if pos[i] >= m {
                            pos[i] -= m;
                        }
                        if table[slot] == u32::MAX {
                            table[slot] = i as u32;
                            filled += 1;
                            break;
                        }
                    }
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Ring {
            table: table.into_boxed_slice(),
            backends: n,
            prior: Box::new([]),
        }
    }

    /// Remembers, for the slots whose owner changed, their owner in `earlier` (the
    /// ring this one replaces, over `earlier_names`; this ring's backends are
    /// `names`), so that [`Ring::prior`] can keep a key where it was.
    pub fn remember(&mut self, names: &[&str], earlier: &Ring, earlier_names: &[&str]) {
        if earlier.table.len() != self.table.len() || earlier_names.len() != earlier.backends {
            return;
        }
        let now_index: Vec<u32> = earlier_names
            .iter()
            .map(|old| {
                names
                    .iter()
                    .position(|n| n == old)
                    .map_or(u32::MAX, |i| i as u32)
            })
            .collect();
        let prior: Box<[u32]> = self
            .table
            .iter()
            .zip(earlier.table.iter())
            .map(|(&new, &old)| match now_index.get(old as usize) {
                Some(&i) if i != new => i,
                _ => u32::MAX,
            })
            .collect();
        if prior.iter().any(|&p| p != u32::MAX) {
            self.prior = prior;
        }
    }

    /// The key's owner in the ring this one replaced, when its owner changed and is
    /// still in the pool.
    #[inline]
    pub fn prior(&self, key: u64) -> Option<usize> {
        if self.prior.is_empty() {
            return None;
        }
        let p = self.prior[(key % self.prior.len() as u64) as usize];
        (p != u32::MAX).then_some(p as usize)
    }

    /// The key's own backend, all backends healthy.
    #[inline]
    pub fn home(&self, key: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(key % self.table.len() as u64) as usize] as usize)
    }

    /// The first backend, walking from the key's slot, that `ok` accepts; `None` when
    /// `ok` accepts none of the backends.
    #[inline]
    pub fn lookup(&self, key: u64, mut ok: impl FnMut(usize) -> bool) -> Option<usize> {
        let m = self.table.len();
        if m == 0 {
            return None;
        }
        let start = (key % m as u64) as usize;
        let first = self.table[start] as usize;
        if ok(first) {
            return Some(first);
        }
        let mut last = first;
        for step in 1..m.min(MAX_WALK) {
            let i = self.table[(start + step) % m] as usize;
            if i != last && ok(i) {
                return Some(i);
            }
            last = i;
        }
        // Most of the pool is out: any backend that can, in an order fixed by the key.
        let n = self.backends;
        let base = (key % n as u64) as usize;
        (0..n).map(|k| (base + k) % n).find(|&i| ok(i))
    }
}

/// Table sizes: primes, each about ten times the last. The size must not change when a
/// backend is added or removed (every key would move), so it moves only in big steps:
/// at least 100 slots per backend and 20 per unit of weight.
const TABLE_SIZES: [u64; 4] = [65_537, 655_373, 6_553_577, 65_536_043];

fn table_size(backends: u64, total_weight: u64) -> u64 {
    let need = (100 * backends).max(20 * total_weight);
    TABLE_SIZES
        .iter()
        .copied()
        .find(|&m| m >= need)
        .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1])
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n > 1;
    }
    if n % 2 == 0 {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::xxh3_64;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:8000", i + 1)).collect()
    }

    fn ring(names: &[String], weight: impl Fn(usize) -> u32) -> Ring {
        let b: Vec<(&str, u32)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), weight(i)))
            .collect();
        Ring::new(&b)
    }

    fn keys(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|i| xxh3_64(&i.to_le_bytes()))
    }

    fn owners(r: &Ring, names: &[String]) -> Vec<String> {
        keys(100_000)
            .map(|k| names[r.home(k).unwrap_or(0)].clone())
            .collect()
    }

    #[test]
    fn ten_equal_backends_are_balanced() {
        let n = names(10);
        let r = ring(&n, |_| 1);
        let mut counts = [0usize; 10];
        for k in keys(100_000) {
            counts[r.home(k).unwrap_or(0)] += 1;
        }
        let max = *counts.iter().max().unwrap_or(&0) as f64;
        eprintln!("busiest of 10: {:.3} × the mean", max / 10_000.0);
        assert!(
            max <= 1.10 * 10_000.0,
            "busiest got {max} of a 10,000 mean: {counts:?}"
        );
    }

    fn moved(a: &[String], b: &[String]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    }

    #[test]
    fn adding_or_removing_one_backend_moves_about_one_nth() {
        for n in [5usize, 10] {
            let small = names(n);
            let big = names(n + 1);
            let before = owners(&ring(&small, |_| 1), &small);
            let after = owners(&ring(&big, |_| 1), &big);
            let share = moved(&before, &after);
            eprintln!("{n} -> {}: {:.1} % of keys moved", n + 1, share * 100.0);
            assert!(
                share <= 1.15 / (n + 1) as f64,
                "adding 1 to {n} moved {share}"
            );
            let share = moved(&after, &before);
            eprintln!("{} -> {n}: {:.1} % of keys moved", n + 1, share * 100.0);
            assert!(
                share <= 1.15 / (n + 1) as f64,
                "removing 1 of {} moved {share}",
                n + 1
            );
        }
    }

    #[test]
    fn weights_are_respected_within_ten_percent() {
        let n = names(3);
        let r = ring(&n, |i| i as u32 + 1);
        let mut counts = [0f64; 3];
        for k in keys(120_000) {
            counts[r.home(k).unwrap_or(0)] += 1.0;
        }
        for (i, c) in counts.iter().enumerate() {
            let want = 120_000.0 * (i as f64 + 1.0) / 6.0;
            assert!(
                (c - want).abs() <= 0.10 * want,
                "backend {i}: {c} vs {want}"
            );
        }
    }

    #[test]
    fn down_backend_keys_fail_over_and_come_back_others_never_move() {
        let n = names(5);
        let r = ring(&n, |_| 1);
        let down = 2usize;
        let mut spread = [0usize; 5];
        for k in keys(50_000) {
            let home = r.home(k).unwrap_or(0);
            let got = r.lookup(k, |i| i != down).unwrap_or(usize::MAX);
            if home == down {
                assert_ne!(got, down);
                spread[got] += 1;
            } else {
                assert_eq!(got, home, "a healthy backend's key moved");
            }
            assert_eq!(r.lookup(k, |_| true), Some(home), "recovered: back home");
        }
        assert!(
            spread
                .iter()
                .enumerate()
                .filter(|(i, c)| *i != down && **c > 0)
                .count()
                >= 3,
            "{spread:?}"
        );
    }

    #[test]
    fn a_rebuilt_ring_remembers_where_moved_keys_were() {
        let small = names(5);
        let big = names(6);
        let before = ring(&small, |_| 1);
        let mut after = ring(&big, |_| 1);
        let small_refs: Vec<&str> = small.iter().map(String::as_str).collect();
        let big_refs: Vec<&str> = big.iter().map(String::as_str).collect();
        after.remember(&big_refs, &before, &small_refs);
        for k in keys(20_000) {
            let (old, new) = (before.home(k).unwrap_or(0), after.home(k).unwrap_or(0));
            if old == new {
                assert_eq!(after.prior(k), None);
            } else {
                assert_eq!(after.prior(k), Some(old), "the moved key's earlier home");
            }
        }
    }

    #[test]
    fn table_sizes_are_prime() {
        assert!(TABLE_SIZES.iter().all(|&m| is_prime(m)));
    }

    #[test]
    fn lookup_finds_any_remaining_backend() {
        let n = names(50);
        let r = ring(&n, |_| 1);
        for k in keys(1000) {
            assert_eq!(r.lookup(k, |i| i == 37), Some(37));
            assert_eq!(r.lookup(k, |_| false), None);
        }
    }
}
