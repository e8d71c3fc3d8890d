//! Reading a daemon's state through `dhtun status --json`: the interface, its peers, drop
//! counters and the DHT object.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{cli_in, describe, run_timeout, Lab, BIN};

impl Lab {
    /// `dhtun status IFACE --json`, run in the namespace of `iface`'s daemon, parsed; the
    /// object for `iface`.
    pub fn status_raw(&self, iface: &str) -> Result<Value, String> {
        let args = ["status", iface, "--json"];
        let mut cmd = match self.daemon_ns(iface) {
            Some(ns) => cli_in(ns, &args),
            None => {
                let mut cmd = Command::new(BIN);
                cmd.args(args);
                cmd
            }
        };
        let out = run_timeout(&mut cmd, Duration::from_secs(10));
        if !out.status.success() {
            return Err(format!(
                "`dhtun status {iface} --json` failed: {}",
                describe(&out)
            ));
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "`dhtun status {iface} --json` printed invalid JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        // Accept an array too, and pick our interface out of it.
        let obj = match v {
            Value::Array(items) => items
                .into_iter()
                .find(|i| i["interface"] == iface)
                .ok_or_else(|| format!("status array has no entry for {iface}"))?,
            other => other,
        };
        if obj["interface"] != iface {
            return Err(format!(
                "status has \"interface\" {} instead of {iface}",
                obj["interface"]
            ));
        }
        Ok(obj)
    }

    #[track_caller]
    pub fn status(&self, iface: &str) -> Value {
        self.status_raw(iface).unwrap_or_else(|e| self.fail(e))
    }

    /// A `drops` counter of an interface's status.
    #[track_caller]
    pub fn drop_counter(&self, status: &Value, name: &str) -> u64 {
        status["drops"][name].as_u64().unwrap_or_else(|| {
            self.fail(format!(
                "status has no numeric drops.{name}; expected one per the contract. status: {status}"
            ))
        })
    }

    /// The status entry of peer `public_key`.
    #[track_caller]
    pub fn peer_status<'a>(&self, status: &'a Value, public_key: &str) -> &'a Value {
        status["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|p| p["public_key"] == public_key))
            .unwrap_or_else(|| {
                self.fail(format!(
                    "status has no peer with public_key {public_key}; status: {status}"
                ))
            })
    }

    /// A numeric counter of peer `public_key`.
    #[track_caller]
    pub fn peer_counter(&self, status: &Value, public_key: &str, field: &str) -> u64 {
        let p = self.peer_status(status, public_key);
        p[field].as_u64().unwrap_or_else(|| {
            self.fail(format!(
                "peer {public_key} has no numeric {field}; expected one per the contract. peer: {p}"
            ))
        })
    }

    /// The interface-level `dht` object of a status.
    #[track_caller]
    pub fn dht_status<'a>(&self, status: &'a Value) -> &'a Value {
        let dht = &status["dht"];
        if !dht.is_object() {
            self.fail(format!(
                "status has no \"dht\" object though the DHT is enabled; status: {status}"
            ));
        }
        dht
    }

    /// Wait until the daemon of `iface` has published its record; returns the record's sequence.
    #[track_caller]
    pub fn wait_published(&self, iface: &str) -> i64 {
        self.wait_until(
            &format!("{iface} publishing its DHT record"),
            Duration::from_secs(15),
            || {
                let status = self.status_raw(iface)?;
                status["dht"]["last_publish_seq"]
                    .as_i64()
                    .ok_or_else(|| format!("dht: {}", status["dht"]))
            },
        )
    }
}

/// The drop counters that moved between two statuses of one interface (or one peer), as
/// "name +n, ..." ("none" when nothing moved).
pub fn drops_moved(before: &Value, after: &Value) -> String {
    let Some(drops) = after["drops"].as_object() else {
        return "unknown (status has no drops object)".to_string();
    };
    let moved: Vec<String> = drops
        .iter()
        .filter_map(|(name, v)| {
            let d = v
                .as_u64()?
                .saturating_sub(before["drops"][name].as_u64().unwrap_or(0));
            (d > 0).then(|| format!("{name} +{d}"))
        })
        .collect();
    if moved.is_empty() {
        "none".to_string()
    } else {
        moved.join(", ")
    }
}
