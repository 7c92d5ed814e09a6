//! Identifiers and join tokens, spelled as SwarmKit spells them: IDs are 128 random bits in base 36
//! (25 characters), tokens are `SWMTKN-1-<sha256 of the root CA certificate, base 36, 50
//! characters>-<128-bit secret, base 36, 25 characters>`.

use ring::rand::{SecureRandom, SystemRandom};

const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// `bytes` (big-endian) in base 36, left-padded with zeros to `width` characters.
pub fn base36(bytes: &[u8], width: usize) -> String {
    let mut number: Vec<u8> = bytes.to_vec();
    let mut digits = Vec::new();
    while number.iter().any(|&b| b != 0) {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 36) as u8;
            remainder = value % 36;
        }
        digits.push(DIGITS[remainder as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The system RNG only fails when the kernel has none; nothing safe can be done without one.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the kernel's random number generator failed");
    bytes
}

/// A new object ID (nodes, clusters): 128 random bits, base 36, 25 characters.
pub fn new_id() -> String {
    base36(&random_bytes::<16>(), 25)
}

/// A new join-token secret: 128 random bits, base 36, 25 characters.
pub fn new_secret() -> String {
    new_id()
}

/// The digest part of a join token: sha256 of the root CA certificate (DER), base 36, 50 chars.
pub fn ca_digest(ca_der: &[u8]) -> String {
    base36(
        ring::digest::digest(&ring::digest::SHA256, ca_der).as_ref(),
        50,
    )
}

pub fn join_token(ca_der: &[u8], secret: &str) -> String {
    format!("SWMTKN-1-{}-{secret}", ca_digest(ca_der))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: String,
    pub secret: String,
}

/// Parses a join token; `None` for anything that is not a well-formed version-1 token.
pub fn parse_join_token(token: &str) -> Option<JoinToken> {
    let rest = token.strip_prefix("SWMTKN-1-")?;
    let (digest, secret) = rest.split_once('-')?;
    let base36_of = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    if !base36_of(digest, 50) || !base36_of(secret, 25) {
        return None;
    }
    Some(JoinToken {
        ca_digest: digest.to_string(),
        secret: secret.to_string(),
    })
}

/// Compares secrets without leaking where they differ through timing.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The Raft member ID of a node: the first 8 bytes of sha256(node ID), never 0.
pub fn raft_id(node_id: &str) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, node_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_pads_and_converts() {
        assert_eq!(base36(&[0], 3), "000");
        assert_eq!(base36(&[35], 1), "z");
        assert_eq!(base36(&[1, 0], 0), "74"); // 256 = 7*36 + 4
        assert_eq!(base36(&[0xff; 16], 25).len(), 25);
        assert_eq!(base36(&[0xff; 32], 50).len(), 50);
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let token = join_token(b"not really a certificate", &new_secret());
        let parsed = parse_join_token(&token).expect("a token we made parses");
        assert_eq!(parsed.ca_digest, ca_digest(b"not really a certificate"));
        for bad in [
            "",
            "foobaz",
            "SWMTKN-1-garbage",
            "SWMTKN-2-1-x-y",
            &token.to_uppercase(),
            &token[..token.len() - 1],
        ] {
            assert_eq!(parse_join_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_have_dockers_shape() {
        let id = new_id();
        assert_eq!(id.len(), 25);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert_ne!(id, new_id());
    }
}
