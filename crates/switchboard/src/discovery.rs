//! Discovery through the store: gateways publish their internal address, workers and
//! API clients read the list.
//!
//! Keys (under the deployment name `ns`):
//! - `sb/{ns}/gateway-seq` — counter giving every gateway start a new number. It is
//!   seeded with the current Unix time, so even a wiped store (a memcached restart)
//!   does not hand out numbers used before (as long as fewer gateways start than
//!   seconds pass).
//! - `sb/{ns}/gw/{number}` — JSON [`GatewayEntry`], with a TTL the gateway refreshes.
//! - `sb/{ns}/gateways` — JSON list of numbers, updated with compare-and-swap; needed
//!   because memcached cannot list keys. Readers prune numbers whose entry expired.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchboard_store::{Store, StoreError, StoreExt};

/// What a gateway publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayEntry {
    /// The gateway's number (first part of its client ids).
    pub number: u32,
    /// Where workers connect.
    pub internal: SocketAddr,
    /// Client listener addresses, for operators and tests.
    pub listeners: Vec<SocketAddr>,
    /// Process id on its machine.
    pub pid: u32,
    /// Whether its internal listener speaks TLS (`gateway.internal_tls`).
    #[serde(default)]
    pub tls: bool,
}

fn seq_key(ns: &str) -> String {
    format!("sb/{ns}/gateway-seq")
}
fn entry_key(ns: &str, number: u32) -> String {
    format!("sb/{ns}/gw/{number}")
}
fn index_key(ns: &str) -> String {
    format!("sb/{ns}/gateways")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Takes a new gateway number from the store's counter.
pub async fn new_gateway_number(store: &dyn Store, ns: &str) -> Result<u32, StoreError> {
    let key = seq_key(ns);
    // Seed once with the time (a no-op when the counter exists), then take the next.
    let seed = (now_secs() & 0x3fff_ffff).to_string();
    store.add(&key, seed.as_bytes(), None).await?;
    let n = store.increment(&key, 1).await?;
    Ok((n & 0xffff_ffff) as u32)
}

/// Writes (or refreshes) a gateway's entry and makes sure the index lists it.
pub async fn publish(
    store: &dyn Store,
    ns: &str,
    entry: &GatewayEntry,
    ttl: Duration,
) -> Result<(), StoreError> {
    store
        .set_json(&entry_key(ns, entry.number), entry, Some(ttl))
        .await?;
    update_index(store, ns, |list| {
        if list.contains(&entry.number) {
            false
        } else {
            list.push(entry.number);
            true
        }
    })
    .await
}

/// Removes a gateway's entry (clean shutdown).
pub async fn unpublish(store: &dyn Store, ns: &str, number: u32) -> Result<(), StoreError> {
    store.delete(&entry_key(ns, number)).await?;
    update_index(store, ns, |list| {
        let before = list.len();
        list.retain(|n| *n != number);
        list.len() != before
    })
    .await
}

/// Every live gateway; numbers whose entry expired are pruned from the index.
pub async fn list(store: &dyn Store, ns: &str) -> Result<Vec<GatewayEntry>, StoreError> {
    let numbers: Vec<u32> = store.get_json(&index_key(ns)).await?.unwrap_or_default();
    let mut live = Vec::with_capacity(numbers.len());
    let mut dead = Vec::new();
    for n in numbers {
        match store.get_json::<GatewayEntry>(&entry_key(ns, n)).await {
            Ok(Some(e)) => live.push(e),
            Ok(None) => dead.push(n),
            Err(StoreError::Corrupt { key, reason }) => {
                tracing::warn!(%key, %reason, "ignoring a gateway entry that does not decode");
                dead.push(n);
            }
            Err(e) => return Err(e),
        }
    }
    if !dead.is_empty() {
        update_index(store, ns, |list| {
            let before = list.len();
            list.retain(|n| !dead.contains(n));
            list.len() != before
        })
        .await?;
    }
    Ok(live)
}

/// Read-modify-write of the index with compare-and-swap; `change` returns whether it
/// changed the list.
async fn update_index(
    store: &dyn Store,
    ns: &str,
    mut change: impl FnMut(&mut Vec<u32>) -> bool,
) -> Result<(), StoreError> {
    let key = index_key(ns);
    for _ in 0..100 {
        match store.gets(&key).await? {
            None => {
                let mut list = Vec::new();
                if !change(&mut list) {
                    return Ok(());
                }
                let bytes = serde_json::to_vec(&list).unwrap_or_default();
                if store.add(&key, &bytes, None).await? {
                    return Ok(());
                }
            }
            Some((bytes, token)) => {
                let mut list: Vec<u32> = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    tracing::warn!(%key, error = %e, "gateway index does not decode; rebuilding it");
                    Vec::new()
                });
                if !change(&mut list) {
                    return Ok(());
                }
                let bytes = serde_json::to_vec(&list).unwrap_or_default();
                if store.compare_and_swap(&key, token, &bytes, None).await? {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(StoreError::Backend {
        backend: store.backend(),
        target: key,
        reason: "gateway index kept changing under compare-and-swap (100 tries)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_store::MemoryStore;

    fn entry(number: u32) -> GatewayEntry {
        GatewayEntry {
            number,
            internal: "127.0.0.1:9".parse().unwrap(),
            listeners: vec![],
            pid: 1,
            tls: false,
        }
    }

    #[tokio::test]
    async fn numbers_are_unique_and_entries_listed_until_they_expire() {
        let store = MemoryStore::new();
        let a = new_gateway_number(&store, "t").await.unwrap();
        let b = new_gateway_number(&store, "t").await.unwrap();
        assert_ne!(a, b);
        publish(&store, "t", &entry(a), Duration::from_secs(60))
            .await
            .unwrap();
        publish(&store, "t", &entry(b), Duration::from_millis(50))
            .await
            .unwrap();
        publish(&store, "t", &entry(b), Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(list(&store, "t").await.unwrap().len(), 2);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(list(&store, "t").await.unwrap(), vec![entry(a)]);
        unpublish(&store, "t", a).await.unwrap();
        assert!(list(&store, "t").await.unwrap().is_empty());
    }
}
