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

/// The gateway's answer to a peer's own challenge (role byte 0, then the gateway's
/// number), so a peer knows it talks to a real gateway of its deployment and not to an
/// address someone planted in the store.
pub fn gateway_answer(secret: &str, peer_nonce: &[u8; NONCE_LEN], gateway: u32) -> [u8; NONCE_LEN] {
    gateway_mac(secret, peer_nonce, gateway)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a gateway's answer in constant time.
pub fn verify_gateway(
    secret: &str,
    peer_nonce: &[u8; NONCE_LEN],
    gateway: u32,
    answer: &[u8; NONCE_LEN],
) -> bool {
    gateway_mac(secret, peer_nonce, gateway)
        .verify_slice(answer)
        .is_ok()
}

fn gateway_mac(secret: &str, nonce: &[u8; NONCE_LEN], gateway: u32) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(nonce);
    mac.update(&[0]);
    mac.update(&gateway.to_be_bytes());
    mac
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
        let g = gateway_answer("s3cret", &n, 7);
        assert!(verify_gateway("s3cret", &n, 7, &g));
        assert!(!verify_gateway("s3cret", &n, 8, &g));
        assert!(!verify_gateway("other", &n, 7, &g));
        // A gateway answer is never a valid peer answer (no reflection).
        assert_ne!(&g[..], &answer("s3cret", &n, Role::Worker, "")[..]);
    }
}
