//! The data of a transfer: a seeded pseudo-random byte stream and an incremental FNV-1a hash.

/// A seeded pseudo-random byte stream (splitmix64), identical however it is chunked.
pub struct ByteStream {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl ByteStream {
    pub fn new(seed: u64) -> ByteStream {
        ByteStream {
            state: seed,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        // Finish the current word, then whole words, then start a new partial one.
        while i < out.len() && self.used < 8 {
            out[i] = self.word[self.used];
            self.used += 1;
            i += 1;
        }
        while out.len() - i >= 8 {
            let w = self.next_word().to_le_bytes();
            out[i..i + 8].copy_from_slice(&w);
            i += 8;
        }
        if i < out.len() {
            self.word = self.next_word().to_le_bytes();
            self.used = 0;
            while i < out.len() {
                out[i] = self.word[self.used];
                self.used += 1;
                i += 1;
            }
        }
    }
}

/// 64-bit FNV-1a, fed incrementally.
pub struct Fnv64(pub u64);

impl Fnv64 {
    pub fn new() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}
