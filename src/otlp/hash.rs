//! Hashing for series keys: the Fx word mixer rustc uses (fast, not DoS-resistant, which is
//! fine for keys only compared within one sender's series), and a hasher for keys that are
//! hashes already.

/// Seeds/mixes 64-bit words (the Fx hash rustc uses): fast, not DoS-resistant, which is fine
/// for keys that are only compared within one sender's series.
#[derive(Clone, Copy)]
pub struct Fx(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Fx {
    pub fn new() -> Fx {
        Fx(0)
    }

    pub fn word(self, w: u64) -> Fx {
        Fx((self.0.rotate_left(5) ^ w).wrapping_mul(SEED))
    }

    /// Mixes `b` in, with its length (so that "ab"+"c" and "a"+"bc" differ).
    pub fn bytes(mut self, b: &[u8]) -> Fx {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            self = self.word(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            self = self.word(tail_word(b, rest.len()));
        }
        self.word(b.len() as u64)
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// The last `n` (1..=7) bytes of `b` as a little-endian word, zero-padded: what copying them
/// into a zeroed `[u8; 8]` gives, without a memcpy call for a few bytes.
#[inline]
fn tail_word(b: &[u8], n: usize) -> u64 {
    let len = b.len();
    let le = |s: &[u8]| s.iter().rev().fold(0u64, |w, x| (w << 8) | u64::from(*x));
    if len >= 8 {
        // The last 8 bytes, shifted down past the ones hashed already.
        let w = u64::from_le_bytes(b[len - 8..].try_into().unwrap_or([0; 8]));
        w >> (8 * (8 - n))
    } else if n >= 4 {
        // Two overlapping 4-byte reads (n == len here).
        let lo = le(&b[..4]);
        let hi = le(&b[n - 4..n]);
        lo | (hi << (8 * (n - 4)))
    } else {
        le(b)
    }
}

impl Default for Fx {
    fn default() -> Self {
        Fx::new()
    }
}

/// Keys are hashes already: used as they are.
#[derive(Default)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = Fx(self.0).bytes(bytes).finish();
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_words_are_the_zero_padded_rest() {
        let data: Vec<u8> = (1..=40u8).map(|x| x.wrapping_mul(37)).collect();
        for len in 0..=data.len() {
            let b = &data[..len];
            let n = len % 8;
            if n == 0 {
                continue;
            }
            let mut w = [0u8; 8];
            w[..n].copy_from_slice(&b[len - n..]);
            assert_eq!(tail_word(b, n), u64::from_le_bytes(w), "len {len}");
        }
    }
}
