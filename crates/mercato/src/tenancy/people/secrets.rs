//! Password hashing (Argon2id) and one-time codes (TOTP, RFC 6238): the
//! CPU-bound checks of a login, run off the async workers.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use hmac::{Hmac, Mac};
use rand::RngCore;

/// Argon2id with OWASP's first recommended parameters: 19 MiB of memory,
/// 2 passes, 1 lane (25-30 ms per hash on one core of the development machine).
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
pub const ARGON2_PASSES: u32 = 2;
pub const ARGON2_LANES: u32 = 1;

fn argon2() -> Argon2<'static> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES, None)
        .expect("the constants are valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The PHC string of `password` (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`).
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .expect("Argon2 hashes any password of the policy's length")
        .to_string()
}

/// Whether `password` matches `stored`. With no stored hash (an unknown
/// e-mail) a hash is still checked, so the answer takes as long either way.
pub fn verify_password(password: &str, stored: Option<&str>) -> bool {
    static DECOY: OnceLock<String> = OnceLock::new();
    let decoy = DECOY.get_or_init(|| hash_password("a password nobody has"));
    let (phc, real) = match stored {
        Some(phc) => (phc, true),
        None => (decoy.as_str(), false),
    };
    let matches = PasswordHash::new(phc)
        .map(|parsed| {
            argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false);
    matches && real
}

/// `hash_password` on the blocking pool.
pub async fn hash_password_off_thread(password: String) -> String {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .expect("hashing does not panic")
}

/// `verify_password` on the blocking pool.
pub async fn verify_password_off_thread(password: String, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || verify_password(&password, stored.as_deref()))
        .await
        .unwrap_or(false)
}

/// A TOTP step: 30 seconds (RFC 6238's default, what authenticator apps use).
const TOTP_STEP: i64 = 30;

/// The 6-digit code of `secret` for Unix time `at` (RFC 6238, HMAC-SHA-1).
pub fn totp_code(secret: &[u8], at: i64) -> u32 {
    let counter = (at.div_euclid(TOTP_STEP)) as u64;
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = (digest[19] & 0x0f) as usize;
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    binary % 1_000_000
}

/// Whether `code` is the secret's code now, a step before or a step after
/// (clocks drift; a code lives at most 90 s).
pub fn totp_accepts(secret: &[u8], code: &str, now: i64) -> bool {
    let Ok(given) = code.trim().parse::<u32>() else {
        return false;
    };
    code.trim().len() == 6
        && [-TOTP_STEP, 0, TOTP_STEP]
            .iter()
            .any(|d| totp_code(secret, now + d) == given)
}

/// A new TOTP secret (160 bits, RFC 4226's recommendation).
pub fn new_totp_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 20];
    rand::rng().fill_bytes(&mut secret);
    secret
}

const BASE32_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding: how authenticator apps take a secret.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = BASE32_ALPHABET;
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The bytes of an RFC 4648 base32 text (any case, padding optional);
/// `None` unless it is base32 of at least 80 bits (RFC 4226's minimum).
pub fn base32_decode(raw: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in raw.trim().trim_end_matches('=').chars() {
        let v = BASE32_ALPHABET
            .iter()
            .position(|&a| a == c.to_ascii_uppercase() as u8)? as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    (out.len() >= 10).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_own_hash_only() {
        let stored = hash_password("correct horse battery");
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse battery", Some(&stored)));
        assert!(!verify_password("correct horse batterY", Some(&stored)));
        assert!(!verify_password("correct horse battery", None));
        assert!(!verify_password("x", Some("not a phc string")));
    }

    #[test]
    fn totp_matches_the_rfc_6238_test_vectors() {
        // RFC 6238 appendix B, SHA-1, the last 6 of its 8 digits.
        let secret = b"12345678901234567890";
        for (at, code) in [
            (59, 287_082),
            (1_111_111_109, 81_804),
            (1_234_567_890, 5_924),
            (2_000_000_000, 279_037),
        ] {
            assert_eq!(totp_code(secret, at), code, "at {at}");
        }
        assert!(totp_accepts(secret, "287082", 59 + 30));
        assert!(!totp_accepts(secret, "287082", 59 + 90));
        assert!(!totp_accepts(secret, "28708", 59));
    }

    #[test]
    fn base32_is_rfc_4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn base32_round_trips_a_secret() {
        let secret = new_totp_secret();
        assert_eq!(base32_decode(&base32(&secret)), Some(secret));
        assert_eq!(base32_decode("not base32!"), None);
    }
}
