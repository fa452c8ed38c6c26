//! The handshake's proof of the shared secret: HMAC-SHA256 over the gateway's random
//! nonce, the peer's role byte and its name. The secret itself never crosses the wire,
//! and a recorded answer is useless against another nonce.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::protocol::internal::{Role, NONCE_LEN};

type HmacSha256 = Hmac<Sha256>;

fn mac_of(secret: &str, nonce: &[u8; NONCE_LEN], role: Role, name: &str) -> HmacSha256 {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(nonce);
    mac.update(&[match role {
        Role::Worker => 1,
        Role::Api => 2,
    }]);
    mac.update(name.as_bytes());
    mac
}

/// The answer a peer sends in `Auth`.
pub fn answer(secret: &str, nonce: &[u8; NONCE_LEN], role: Role, name: &str) -> [u8; NONCE_LEN] {
    mac_of(secret, nonce, role, name)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks an answer in constant time.
pub fn verify(
    secret: &str,
    nonce: &[u8; NONCE_LEN],
    role: Role,
    name: &str,
    answer: &[u8; NONCE_LEN],
) -> bool {
    mac_of(secret, nonce, role, name)
        .verify_slice(answer)
        .is_ok()
}

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_secret_passes_wrong_fails() {
        let n = nonce();
        let a = answer("s3cret", &n, Role::Worker, "w1");
        assert!(verify("s3cret", &n, Role::Worker, "w1", &a));
        assert!(!verify("other", &n, Role::Worker, "w1", &a));
        assert!(!verify("s3cret", &n, Role::Api, "w1", &a));
        assert!(!verify("s3cret", &nonce(), Role::Worker, "w1", &a));
    }
}
