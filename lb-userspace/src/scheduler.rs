//! Builds the per-service scheduling table that the XDP program indexes with the flow hash
//! (`SCHED_TABLE`, `SCHED_SLOTS` slots per service).
//!
//! Slots are given out by weighted rendezvous hashing: for each slot, every real server with
//! a weight above zero draws a pseudo-random score from (its address, its port, the slot,
//! the seed), scaled by its weight, and the best score takes the slot. That gives
//! - shares in proportion to weight;
//! - the same table for the same configuration on every director, whatever the order the
//!   reals are listed in (the draw depends on what a real is, not where it is listed), and
//!   whatever the machine (integer arithmetic only: no floating point, no libm);
//! - minimal disruption: removing a real (or setting its weight to 0) moves only the slots
//!   it held; adding a real moves slots only to it. LVS's own `sh` re-deals every bucket.

use std::net::IpAddr;

use lb_common::{AddrWords, REAL_NONE, SCHED_SLOTS, ipv4_words, ipv6_words};

/// A real server as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
}

/// Builds a table of `SCHED_SLOTS` entries, each the position in `members` of the real that
/// owns the slot, or `REAL_NONE` when no member has a weight above zero.
pub fn build_table(members: &[Member], seed: u32) -> Vec<u32> {
    let seed_hash = mix64(u64::from(seed) ^ 0x9e37_79b9_7f4a_7c15);
    let live: Vec<(u32, u64, &Member)> = members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.weight > 0)
        .map(|(i, m)| (i as u32, member_hash(seed_hash, m), m))
        .collect();
    (0..SCHED_SLOTS)
        .map(|slot| {
            let slot_key = u64::from(slot).wrapping_mul(0xd6e8_feb8_6659_fd93);
            let mut best: Option<(u32, u64, &Member)> = None;
            for &(pos, base, m) in &live {
                let score = neg_log2_q32(mix64(base ^ slot_key));
                best = match best {
                    Some(b) if !beats((score, m), (b.1, b.2)) => Some(b),
                    _ => Some((pos, score, m)),
                };
            }
            best.map_or(REAL_NONE, |(pos, _, _)| pos)
        })
        .collect()
}

/// Whether `a` takes the slot from `b`: the lower `score / weight` wins (an exponential
/// race, the discrete form of weighted rendezvous), compared exactly by cross-multiplying.
/// Exact ties fall to the lower (address, port), which keeps the result order-independent.
fn beats(a: (u64, &Member), b: (u64, &Member)) -> bool {
    let lhs = u128::from(a.0) * u128::from(b.1.weight);
    let rhs = u128::from(b.0) * u128::from(a.1.weight);
    lhs < rhs || (lhs == rhs && (a.1.address, a.1.port) < (b.1.address, b.1.port))
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

/// `-log2(h / 2^64)` in 32.32 fixed point, for `h` taken as a uniform draw in (0, 1).
/// Integer-only (repeated squaring for the fraction bits) so every machine agrees.
fn neg_log2_q32(h: u64) -> u64 {
    let h = h | 1;
    let lz = h.leading_zeros();
    let int_part = u64::from(63 - lz);
    // Mantissa in [1, 2) as Q1.63.
    let mut x = u128::from(h << lz);
    let mut frac = 0u64;
    for _ in 0..32 {
        x = (x * x) >> 63;
        frac <<= 1;
        if x >= 1 << 64 {
            frac |= 1;
            x >>= 1;
        }
    }
    (64u64 << 32) - ((int_part << 32) | frac)
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

    fn shares(table: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &t in table {
            counts[t as usize] += 1;
        }
        counts
    }

    #[test]
    fn log2_is_accurate() {
        assert_eq!(neg_log2_q32(1 << 63), 1 << 32); // -log2(1/2) = 1
        assert_eq!(neg_log2_q32(1 << 62), 2 << 32); // -log2(1/4) = 2
        // -log2(0.75) = 0.415037499...
        let v = neg_log2_q32(3 << 62) as f64 / (1u64 << 32) as f64;
        assert!((v - 0.415_037_499_278_843_8).abs() < 1e-8, "{v}");
    }

    #[test]
    fn shares_follow_weights() {
        for seed in [0, 1, 0xdead_beef] {
            let members = [member(11, 1), member(12, 2), member(13, 3)];
            let counts = shares(&build_table(&members, seed), 3);
            for (i, &c) in counts.iter().enumerate() {
                let want = SCHED_SLOTS as f64 * (i + 1) as f64 / 6.0;
                let off = (c as f64 - want).abs() / want;
                assert!(
                    off < 0.10,
                    "seed {seed}: real {i} has {c} slots, want ~{want}"
                );
            }
        }
    }

    #[test]
    fn zero_weight_gets_nothing_and_all_zero_is_empty() {
        let table = build_table(&[member(11, 0), member(12, 5)], 0);
        assert!(table.iter().all(|&t| t == 1));
        let table = build_table(&[member(11, 0), member(12, 0)], 0);
        assert!(table.iter().all(|&t| t == REAL_NONE));
        assert!(build_table(&[], 0).iter().all(|&t| t == REAL_NONE));
        assert_eq!(build_table(&[], 0).len(), SCHED_SLOTS as usize);
    }

    /// The table as addresses, so tables from differently ordered lists compare.
    fn owners(members: &[Member], seed: u32) -> Vec<Option<IpAddr>> {
        build_table(members, seed)
            .into_iter()
            .map(|t| members.get(t as usize).map(|m| m.address))
            .collect()
    }

    #[test]
    fn list_order_does_not_matter() {
        let a = [member(11, 1), member(12, 2), member(13, 3), member(14, 1)];
        let b = [member(14, 1), member(13, 3), member(11, 1), member(12, 2)];
        assert_eq!(owners(&a, 9), owners(&b, 9));
    }

    #[test]
    fn removing_a_real_moves_only_its_slots() {
        let all = [member(11, 1), member(12, 1), member(13, 1), member(14, 2)];
        let before = owners(&all, 3);
        let after = owners(&[all[0], all[1], all[3]], 3);
        let gone = Some(all[2].address);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if *b == gone {
                moved += 1;
            } else {
                assert_eq!(b, a, "a slot not held by the removed real moved");
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn adding_or_raising_a_real_moves_slots_only_to_it() {
        let three = [member(11, 1), member(12, 1), member(13, 1)];
        let before = owners(&three, 5);
        let mut four = three.to_vec();
        four.push(member(14, 1));
        let after = owners(&four, 5);
        let new = Some(member(14, 1).address);
        assert!(before.iter().zip(&after).all(|(b, a)| a == b || *a == new));

        let mut heavier = three;
        heavier[1].weight = 3;
        let after = owners(&heavier, 5);
        let raised = Some(heavier[1].address);
        assert!(
            before
                .iter()
                .zip(&after)
                .all(|(b, a)| a == b || *a == raised)
        );
    }

    #[test]
    fn the_table_for_a_fixed_configuration_never_changes() {
        // Directors running different xdpvs versions must agree: a change to the builder
        // that moves slots is an incompatible change and must show up here.
        let table = build_table(&[member(11, 1), member(12, 2), member(13, 3)], 42);
        let fingerprint = table.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &t| {
            (h ^ u64::from(t)).wrapping_mul(0x100_0000_01b3)
        });
        assert_eq!(&table[..12], GOLDEN_HEAD, "first slots changed");
        assert_eq!(fingerprint, GOLDEN_FNV, "table changed");
    }

    const GOLDEN_HEAD: &[u32] = &[2, 2, 1, 1, 1, 2, 2, 2, 2, 0, 0, 2];
    const GOLDEN_FNV: u64 = 14_131_025_510_351_129_354;
}
