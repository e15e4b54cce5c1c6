//! The national-standard primitives of the `sm` suite, from RustCrypto's
//! crates (no cipher is written here): SM3 (GB/T 32905-2016), HMAC-SM3
//! (RFC 2104 over SM3), and SM4 (GB/T 32907-2016) in GCM mode (NIST SP
//! 800-38D over a 128-bit block cipher; RFC 8998 names it for TLS).
//! `crypto::TenantKey` uses them for a key of the `sm` suite.

use aes_gcm::AesGcm;
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use hmac::{Hmac, Mac};
use sm3::Sm3;
use sm4::Sm4;

type Sm4Gcm = AesGcm<Sm4, U12>;

/// Bytes of an SM4-GCM nonce.
pub(crate) const NONCE_LEN: usize = 12;

/// SM3 of `data` (the standard's examples; the suite uses HMAC-SM3).
#[cfg(test)]
pub(crate) fn sm3(data: &[u8]) -> [u8; 32] {
    use sm3::Digest;
    Sm3::digest(data).into()
}

/// HMAC-SM3 of the concatenation of `parts` under `key`.
pub(crate) fn hmac_sm3(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length.
    let mut m = <Hmac<Sm3> as hmac::KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn cipher(key: &[u8; 32]) -> Sm4Gcm {
    // SM4 keys are 128 bits: the first half of the derived 256-bit key.
    Sm4Gcm::new_from_slice(&key[..16]).expect("16 bytes is an SM4 key")
}

/// SM4-GCM: `msg` sealed under the first 16 bytes of `key` with `nonce`,
/// `aad` authenticated; ciphertext then the 16-byte tag.
pub(crate) fn seal(key: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], msg: &[u8]) -> Vec<u8> {
    cipher(key)
        .encrypt(&(*nonce).into(), Payload { msg, aad })
        // Encryption fails only for messages beyond GCM's 64 GiB.
        .unwrap_or_default()
}

/// Opens what [`seal`] made, or `None` (wrong key, or altered bytes).
pub(crate) fn open(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Option<Vec<u8>> {
    cipher(key)
        .decrypt(&(*nonce).into(), Payload { msg: sealed, aad })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn sm3_matches_the_examples_of_gb_t_32905() {
        // GB/T 32905-2016, appendix A, example 1: "abc".
        assert_eq!(
            sm3(b"abc").to_vec(),
            unhex("66c7f0f4 62eeedd9 d1f2d46b dc10e4e2 4167c487 5cf2f7a2 297da02b 8f4ba8e0")
        );
        // Example 2: "abcd" repeated 16 times (512 bits).
        assert_eq!(
            sm3(&b"abcd".repeat(16)).to_vec(),
            unhex("debe9ff9 2275b8a1 38604889 c18e5a4d 6fdb70e5 387e5765 293dcba3 9c0c5732")
        );
    }

    #[test]
    fn sm4_matches_the_example_of_gb_t_32907() {
        use sm4::cipher::{BlockCipherEncrypt, KeyInit};
        // GB/T 32907-2016, appendix A, example 1: key = plaintext.
        let key = unhex("0123456789abcdeffedcba9876543210");
        let c = Sm4::new_from_slice(&key).unwrap();
        let mut block = sm4::cipher::Block::<Sm4>::try_from(&key[..]).unwrap();
        c.encrypt_block(&mut block);
        assert_eq!(block.to_vec(), unhex("681edf34d206965e86b3e94f536e4246"));
        // Example 2: the same block encrypted 1,000,000 times.
        let mut block = sm4::cipher::Block::<Sm4>::try_from(&key[..]).unwrap();
        for _ in 0..1_000_000 {
            c.encrypt_block(&mut block);
        }
        assert_eq!(block.to_vec(), unhex("595298c7c6fd271f0402f804c33d3f66"));
    }

    #[test]
    fn sm4_gcm_matches_the_test_vector_of_rfc_8998() {
        // RFC 8998, appendix A.1.
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&unhex("0123456789ABCDEFFEDCBA9876543210"));
        let nonce: [u8; 12] = unhex("00001234567800000000ABCD").try_into().unwrap();
        let aad = unhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2");
        let msg = unhex(
            "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD
             EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA",
        );
        let sealed = seal(&key, &nonce, &aad, &msg);
        let (ct, tag) = sealed.split_at(msg.len());
        assert_eq!(
            ct.to_vec(),
            unhex(
                "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735
                 D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
            )
        );
        assert_eq!(tag.to_vec(), unhex("83DE3541E4C2B58177E065A9BF7B62EC"));
        assert_eq!(open(&key, &nonce, &aad, &sealed).unwrap(), msg);
        // A flipped bit anywhere, or other associated data, is refused.
        for i in [0, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open(&key, &nonce, &aad, &bad).is_none());
        }
        assert!(open(&key, &nonce, b"other", &sealed).is_none());
    }

    #[test]
    fn hmac_sm3_is_keyed_and_joins_its_parts() {
        let a = hmac_sm3(b"key", &[b"ab", b"c"]);
        assert_eq!(a, hmac_sm3(b"key", &[b"abc"]));
        assert_ne!(a, hmac_sm3(b"other key", &[b"abc"]));
        assert_ne!(a, sm3(b"abc"));
    }
}
