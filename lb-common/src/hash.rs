//! The flow hash, shared so the daemon (and its tests) can predict exactly which real the
//! program picks for a given address.

use crate::AddrWords;

/// Hashes an address (as stored in keys) with a seed: MurmurHash3's 32-bit block mix
/// and finaliser over the four words. Branch- and loop-free, so it verifies cheaply.
#[inline(always)]
pub fn addr_hash(addr: &AddrWords, seed: u32) -> u32 {
    fmix(mix_addr(addr, seed) ^ 16)
}

/// Hashes an address and a port (the client's, for `sh-port` / `mh-port`): the same
/// mix over a fifth word.
#[inline(always)]
pub fn addr_port_hash(addr: &AddrWords, port: u16, seed: u32) -> u32 {
    fmix(mix(mix_addr(addr, seed), u32::from(port)) ^ 20)
}

/// The block mix over the address's four words.
#[inline(always)]
fn mix_addr(addr: &AddrWords, seed: u32) -> u32 {
    mix(mix(mix(mix(seed, addr[0]), addr[1]), addr[2]), addr[3])
}

/// The position a hash picks in a table of `len` positions (`len > 0`).
#[inline(always)]
pub fn position(hash: u32, len: u32) -> u32 {
    hash % len
}

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4_words;

    #[test]
    fn matches_murmur3_reference_values() {
        // Published MurmurHash3_x86_32 test vectors anchor the byte-wise reference below...
        assert_eq!(murmur3_bytes(&[0, 0, 0, 0], 0), 0x2362_f9de);
        assert_eq!(murmur3_bytes(&[0x21, 0x43, 0x65, 0x87], 0), 0xf55b_516b);
        assert_eq!(
            murmur3_bytes(&[0x21, 0x43, 0x65, 0x87], 0x5082_edee),
            0x2362_f9de
        );
        // ...and the word-wise hash equals it over the 16 address bytes.
        let h = addr_hash(&ipv4_words([1, 2, 3, 4]), 0);
        assert_eq!(
            h,
            murmur3_bytes(&[1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0)
        );
    }

    /// A straightforward byte-wise MurmurHash3_x86_32, written from the algorithm's
    /// description, to check the word-wise version against.
    fn murmur3_bytes(data: &[u8], seed: u32) -> u32 {
        let mut h = seed;
        for chunk in data.chunks_exact(4) {
            let k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            h = mix(h, k);
        }
        fmix(h ^ data.len() as u32)
    }

    #[test]
    fn the_port_hash_is_murmur3_over_twenty_bytes() {
        let mut bytes = [0u8; 20];
        bytes[..4].copy_from_slice(&[192, 0, 2, 1]);
        bytes[16..18].copy_from_slice(&8080u16.to_le_bytes());
        assert_eq!(
            addr_port_hash(&ipv4_words([192, 0, 2, 1]), 8080, 5),
            murmur3_bytes(&bytes, 5)
        );
    }

    #[test]
    fn seed_and_address_change_the_hash() {
        let a = ipv4_words([192, 0, 2, 1]);
        let b = ipv4_words([192, 0, 2, 2]);
        assert_ne!(addr_hash(&a, 0), addr_hash(&b, 0));
        assert_ne!(addr_hash(&a, 0), addr_hash(&a, 1));
    }

    #[test]
    fn slots_spread_evenly_over_a_prefix() {
        // 65536 consecutive client addresses must fill every slot of the table about
        // equally: no slot gets more than twice its share.
        const LEN: u32 = 4093;
        let mut hits = [0u32; LEN as usize];
        for i in 0..65536u32 {
            let o = (0xc633_6400u32 + i).to_be_bytes();
            hits[position(addr_hash(&ipv4_words(o), 7), LEN) as usize] += 1;
        }
        let share = 65536 / LEN;
        assert!(
            hits.iter().all(|&n| n > 0 && n <= 2 * share + 8),
            "{:?}",
            &hits[..16]
        );
    }
}
