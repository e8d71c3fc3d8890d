//! Keeping the routing-table part of the DHT status current, and whether the node counts as
//! bootstrapped: joined once its routing table held a node, and still joined while the table is
//! empty for a moment only.
//!
//! mainline empties its routing table when it learns our public IP and takes a new node id
//! (BEP 42), then refills it within seconds. A status read in between said "not bootstrapped,
//! 0 nodes known" about a node that had just found its peers through the DHT.

use super::{isolated, lock, DhtStatus};
use crate::core::limits::{
    DHT_ACTOR_TIMEOUT, DHT_STATUS_FIRST_INTERVAL, DHT_STATUS_INTERVAL, DHT_TABLE_RESET_GRACE,
};
use mainline::async_dht::AsyncDht;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Keeps the routing-table part of the status current, until the node is dropped or dies.
pub async fn refresh_status(node: AsyncDht, status: Arc<Mutex<DhtStatus>>) {
    let mut interval = DHT_STATUS_FIRST_INTERVAL;
    let mut joined = Joined::default();
    loop {
        let asking = node.clone();
        let ask = async move {
            let info = asking.info().await;
            let table = asking.to_bootstrap().await.len();
            (info, table)
        };
        match isolated(DHT_ACTOR_TIMEOUT, ask).await {
            Ok(Some((info, table))) => {
                let mut status = lock(&status);
                status.routing_table_size = table;
                status.bootstrapped = joined.update(table, Instant::now());
                status.server_mode = info.server_mode();
                status.public_address = info.public_address();
            }
            Ok(None) => {}
            Err(error) => {
                let mut status = lock(&status);
                status.bootstrapped = false;
                status.last_error = Some(error.to_string());
                tracing::error!("DHT: {error}");
                return;
            }
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(DHT_STATUS_INTERVAL);
    }
}

/// Whether the node has joined the DHT, from the routing table's size over time.
#[derive(Debug, Default)]
pub struct Joined {
    joined: bool,
    empty_since: Option<Instant>,
}

impl Joined {
    /// Takes in the routing table's size at `now`; returns whether the node counts as
    /// bootstrapped.
    pub fn update(&mut self, table: usize, now: Instant) -> bool {
        if table > 0 {
            self.joined = true;
            self.empty_since = None;
        } else if self.joined {
            let since = *self.empty_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= DHT_TABLE_RESET_GRACE {
                self.joined = false;
                self.empty_since = None;
            }
        }
        self.joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_short_empty_spell_keeps_a_joined_node_bootstrapped() {
        let start = Instant::now();
        let mut joined = Joined::default();
        assert!(!joined.update(0, start), "never joined");
        assert!(joined.update(3, start + Duration::from_secs(1)));
        // The table is reset under a new node id and refilled.
        assert!(joined.update(0, start + Duration::from_secs(2)));
        assert!(joined.update(2, start + Duration::from_secs(4)));
        // Empty for the whole grace period: no longer joined.
        let lost = start + Duration::from_secs(10);
        assert!(joined.update(0, lost));
        assert!(!joined.update(0, lost + DHT_TABLE_RESET_GRACE));
        assert!(!joined.update(0, lost + DHT_TABLE_RESET_GRACE * 2));
        assert!(joined.update(1, lost + DHT_TABLE_RESET_GRACE * 3));
    }
}
