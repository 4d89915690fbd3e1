//! Short, readable room codes.

use ferry_protocol::RoomCode;

/// Letters and digits that cannot be confused with each other when read
/// aloud or typed from a screen (no `0/o`, `1/l/i`).
const ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";

/// Characters of randomness in a generated code.
pub const CODE_CHARS: usize = 8;

/// Bits of entropy in a generated code: 8 × log2(31) ≈ 39.6.
pub const CODE_BITS: f64 = 39.6;

/// Builds a room code such as `k7mx-2qfa` from random bytes supplied by the
/// driver (the engine has no randomness of its own). Uses rejection sampling,
/// so every character is uniform; returns `None` if `random` runs out.
pub fn from_random(random: &[u8]) -> Option<RoomCode> {
    let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut chars = random
        .iter()
        .filter(|&&b| b < limit)
        .map(|&b| ALPHABET[usize::from(b) % ALPHABET.len()] as char);
    let mut code = String::with_capacity(CODE_CHARS + 1);
    for i in 0..CODE_CHARS {
        if i == CODE_CHARS / 2 {
            code.push('-');
        }
        code.push(chars.next()?);
    }
    RoomCode::new(code).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_readable_and_valid() {
        let bytes: Vec<u8> = (0..=255).collect();
        let code = from_random(&bytes).unwrap();
        assert_eq!(code.as_str().len(), CODE_CHARS + 1);
        assert_eq!(code.as_str().as_bytes()[4], b'-');
        assert!(
            code.as_str()
                .bytes()
                .all(|b| b == b'-' || ALPHABET.contains(&b))
        );
        assert!(from_random(&[255; 64]).is_none());
        let expected = (ALPHABET.len() as f64).log2() * CODE_CHARS as f64;
        assert!((expected - CODE_BITS).abs() < 0.1);
    }
}
