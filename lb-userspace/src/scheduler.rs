//! Builds each service's scheduling table, the `Array<u32>` the XDP program reads for a
//! flow's first packet (`SCHED_TABLES`; docs/SCHEDULERS.md).
//!
//! - `sh`, `dh`, `mh`: a Maglev table of a prime size `M`. Every real with a weight above
//!   zero gets a quota of positions, its weight's share of `M` (to within one), and the
//!   reals take turns, each claiming the next free position of its own permutation of
//!   `0..M` (`offset + j * skip mod M`) until its quota is met (Katran's weighted fill). Offsets and skips come from a fixed, seeded 64-bit mix of
//!   the real's address and port (SplitMix64's finaliser: integer arithmetic only), and
//!   reals are taken in (address, port) order, so the same configuration gives the
//!   byte-identical table on every director, build and machine, whatever the order the
//!   reals are listed in. Removing a real moves little more than the positions it held.
//! - `rr`, `wrr`: the sequence IPVS's `wrr` walks (`rr`: every weighted real once), in the
//!   order the reals are listed; the program gives each CPU its own cursor over it.

use std::net::IpAddr;

use lb_common::{AddrWords, MAX_TABLE_LEN, REAL_NONE, ipv4_words, ipv6_words};

/// A real server as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
}

/// Maglev table sizes: IPVS `mh` offers these primes (`CONFIG_IP_VS_MH_TAB_INDEX`), and so
/// does Cilium; 65,537 is Katran's. Any prime from the smallest to the largest is accepted.
pub const MAGLEV_SIZES: [u32; 11] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 65537, 131071,
];

/// The default Maglev size: IPVS's default. 16 KiB per service; with up to 40 equally
/// weighted reals every real is within 1% of its share (docs/SCHEDULERS.md).
pub const DEFAULT_MAGLEV_SIZE: u32 = 4093;

/// Whether `n` is prime (trial division; `n` is at most `MAX_TABLE_LEN`).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A Maglev table of `size` positions (a prime), each the position in `members` of the real
/// that owns it. Empty when no member has a weight above zero.
pub fn maglev(members: &[Member], size: u32, seed: u32) -> Vec<u32> {
    let seed_hash = mix64(u64::from(seed) ^ 0x9e37_79b9_7f4a_7c15);
    let mut live: Vec<(usize, &Member)> = members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.weight > 0)
        .collect();
    if live.is_empty() || size == 0 {
        return Vec::new();
    }
    live.sort_by_key(|(_, m)| (m.address, m.port));
    let m = u64::from(size);
    let quotas = quotas(&live, m);
    // Per real: where its permutation stands next, its step, and its claims left.
    let mut walk: Vec<(u64, u64, u64)> = live
        .iter()
        .zip(&quotas)
        .map(|((_, member), &quota)| {
            let h = member_hash(seed_hash, member);
            let offset = mix64(h ^ 0x5851_f42d_4c95_7f2d) % m;
            let skip = if m > 1 {
                mix64(h ^ 0x1405_7b7e_f767_814f) % (m - 1) + 1
            } else {
                1
            };
            (offset, skip, quota)
        })
        .collect();
    let mut table = vec![REAL_NONE; size as usize];
    let mut turns: Vec<usize> = (0..live.len()).filter(|&i| quotas[i] > 0).collect();
    while !turns.is_empty() {
        for &i in &turns {
            let (next, skip, left) = &mut walk[i];
            loop {
                let at = *next as usize;
                *next += *skip;
                if *next >= m {
                    *next -= m;
                }
                if table[at] == REAL_NONE {
                    table[at] = live[i].0 as u32;
                    *left -= 1;
                    break;
                }
            }
        }
        turns.retain(|&i| walk[i].2 > 0);
    }
    table
}

/// Each real's number of positions: its weight's share of `m`, rounded down, and the
/// positions left over one each to the reals with the largest remainders (ties to the
/// earlier), so the quotas add up to `m` and each is within one of its exact share.
fn quotas(live: &[(usize, &Member)], m: u64) -> Vec<u64> {
    let total: u64 = live.iter().map(|(_, r)| u64::from(r.weight)).sum();
    let exact: Vec<(u64, u64)> = live
        .iter()
        .map(|(_, r)| {
            let scaled = u128::from(m) * u128::from(r.weight);
            let total = u128::from(total);
            ((scaled / total) as u64, (scaled % total) as u64)
        })
        .collect();
    let mut quotas: Vec<u64> = exact.iter().map(|&(q, _)| q).collect();
    let left = m - quotas.iter().sum::<u64>();
    let mut by_remainder: Vec<usize> = (0..live.len()).collect();
    by_remainder.sort_by(|&a, &b| exact[b].1.cmp(&exact[a].1).then(a.cmp(&b)));
    for &i in by_remainder.iter().take(left as usize) {
        quotas[i] += 1;
    }
    quotas
}

/// IPVS's weighted round-robin sequence over the members with a weight above zero, in list
/// order: pass after pass with the current weight stepping down from the largest weight by
/// the weights' greatest common divisor, each pass taking every real whose weight reaches
/// it. A real of weight `w` appears `w / gcd` times. `Err(length)` when the sequence would
/// be longer than `MAX_TABLE_LEN`.
pub fn wrr_sequence(members: &[Member]) -> Result<Vec<u32>, u64> {
    let live: Vec<(u32, u32)> = members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.weight > 0)
        .map(|(i, m)| (i as u32, m.weight))
        .collect();
    let Some(max) = live.iter().map(|&(_, w)| w).max() else {
        return Ok(Vec::new());
    };
    let step = live.iter().fold(0, |g, &(_, w)| gcd(g, w));
    let length: u64 = live.iter().map(|&(_, w)| u64::from(w / step)).sum();
    if length > u64::from(MAX_TABLE_LEN) {
        return Err(length);
    }
    let mut sequence = Vec::with_capacity(length as usize);
    let mut current = max;
    loop {
        sequence.extend(live.iter().filter(|&&(_, w)| w >= current).map(|&(i, _)| i));
        if current <= step {
            return Ok(sequence);
        }
        current -= step;
    }
}

/// The members with a weight above zero, once each, in list order (`rr`).
pub fn rr_sequence(members: &[Member]) -> Vec<u32> {
    (0..members.len() as u32)
        .filter(|&i| members[i as usize].weight > 0)
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn member_hash(seed_hash: u64, m: &Member) -> u64 {
    let words: AddrWords = match m.address {
        IpAddr::V4(a) => ipv4_words(a.octets()),
        IpAddr::V6(a) => ipv6_words(a.octets()),
    };
    let family = if m.address.is_ipv4() { 4u64 } else { 6u64 };
    let mut h = mix64(seed_hash ^ family);
    for w in words {
        h = mix64(h ^ u64::from(u32::from_be(w)));
    }
    mix64(h ^ u64::from(m.port))
}

/// SplitMix64's finaliser: a bijective 64-bit mix.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(last: u8, weight: u32) -> Member {
        Member {
            address: IpAddr::from([192, 0, 2, last]),
            port: 80,
            weight,
        }
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &t in table {
            counts[t as usize] += 1;
        }
        counts
    }

    #[test]
    fn sizes_are_prime() {
        assert!(MAGLEV_SIZES.iter().all(|&s| is_prime(s)));
        assert!(is_prime(DEFAULT_MAGLEV_SIZE));
        assert!(!is_prime(1) && !is_prime(4095) && !is_prime(65535));
    }

    #[test]
    fn maglev_positions_follow_weights_to_one_position() {
        for seed in [0, 1, 0xdead_beef] {
            let members = [member(11, 1), member(12, 2), member(13, 3), member(14, 0)];
            let c = counts(&maglev(&members, 4093, seed), 4);
            assert_eq!(c[3], 0, "a weight-0 real got positions");
            for (i, &got) in c.iter().take(3).enumerate() {
                let want = 4093.0 * (i + 1) as f64 / 6.0;
                assert!((got as f64 - want).abs() <= 1.0, "seed {seed}: {c:?}");
            }
        }
    }

    #[test]
    fn maglev_without_weight_is_empty() {
        assert!(maglev(&[member(11, 0)], 251, 0).is_empty());
        assert!(maglev(&[], 251, 0).is_empty());
    }

    /// The table as addresses, so tables from differently ordered lists compare.
    fn owners(members: &[Member], seed: u32) -> Vec<IpAddr> {
        maglev(members, 4093, seed)
            .into_iter()
            .map(|t| members[t as usize].address)
            .collect()
    }

    #[test]
    fn maglev_list_order_does_not_matter() {
        let a = [member(11, 1), member(12, 2), member(13, 3), member(14, 1)];
        let b = [member(14, 1), member(13, 3), member(11, 1), member(12, 2)];
        assert_eq!(owners(&a, 9), owners(&b, 9));
    }

    #[test]
    fn removing_one_of_n_moves_little_else() {
        let all: Vec<Member> = (1..=10).map(|i| member(i, 1)).collect();
        let before = owners(&all, 3);
        let after = owners(&[&all[..4], &all[5..]].concat(), 3);
        let gone = all[4].address;
        let others = before.iter().filter(|&&b| b != gone).count();
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != gone && b != a)
            .count();
        // Maglev moves a few positions that the removed real did not hold.
        assert!(
            (moved as f64) / (others as f64) < 0.02,
            "{moved} of {others} moved"
        );
    }

    #[test]
    fn wrr_is_ipvs_interleaving() {
        let seq = wrr_sequence(&[member(11, 4), member(12, 3), member(13, 2), member(14, 0)]);
        assert_eq!(seq, Ok(vec![0, 0, 1, 0, 1, 2, 0, 1, 2]));
        assert_eq!(
            wrr_sequence(&[member(11, 2), member(12, 4)]),
            Ok(vec![1, 0, 1])
        );
        assert_eq!(wrr_sequence(&[member(11, 0)]), Ok(vec![]));
        assert_eq!(
            wrr_sequence(&[member(11, 65_535), member(12, 65_534), member(13, 65_533)])
                .map(|s| s.len()),
            Ok(196_602)
        );
        let huge: Vec<Member> = (1..=40).map(|i| member(i, 65_000 + u32::from(i))).collect();
        assert!(wrr_sequence(&huge).is_err());
    }

    #[test]
    fn rr_takes_every_weighted_real_once() {
        assert_eq!(
            rr_sequence(&[member(11, 4), member(12, 0), member(13, 1)]),
            vec![0, 2]
        );
    }

    #[test]
    fn the_maglev_table_for_a_fixed_configuration_never_changes() {
        // Directors running different xdpvs builds must agree: a change to the builder
        // that moves positions is an incompatible change and must show up here. The full
        // golden table is in tests/golden (tests/tests/packet_sched.rs).
        let table = maglev(&[member(11, 1), member(12, 2), member(13, 3)], 251, 42);
        let fingerprint = table.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &t| {
            (h ^ u64::from(t)).wrapping_mul(0x100_0000_01b3)
        });
        assert_eq!(&table[..12], GOLDEN_HEAD, "first positions changed");
        assert_eq!(fingerprint, GOLDEN_FNV, "table changed");
    }

    const GOLDEN_HEAD: &[u32] = &[0, 1, 2, 1, 1, 2, 2, 2, 2, 1, 2, 0];
    const GOLDEN_FNV: u64 = 4_658_971_156_300_060_827;
}
