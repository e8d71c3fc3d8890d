//! `[interface] table` and `fwmark`: where the tunnel's routes go and which mark dhtun's own
//! sockets carry (see docs/full-tunnel.md).

use serde::Deserialize;

/// `[interface] table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableSetting {
    /// Prefixes go in the main table, as ever; default routes (0.0.0.0/0, ::/0 and their /1
    /// halves) go in a table of their own with policy rules, as wg-quick does.
    #[default]
    Auto,
    /// No routes at all: routing is left to the user.
    Off,
    /// Every route goes in this table and no rule is added (the user writes the policy).
    Number(u32),
}

/// The raw TOML value: "auto", "off", a number, or a number in a string.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawTable {
    Number(i64),
    Text(String),
}

impl RawTable {
    /// The setting, or what was wrong with the value.
    pub(super) fn parse(&self) -> Result<TableSetting, String> {
        let number = match self {
            Self::Text(text) if text == "auto" => return Ok(TableSetting::Auto),
            Self::Text(text) if text == "off" => return Ok(TableSetting::Off),
            Self::Text(text) => text.parse::<i64>().map_err(|_| {
                format!("table {text:?}: use \"auto\", \"off\" or a routing table number")
            })?,
            Self::Number(number) => *number,
        };
        match u32::try_from(number) {
            // 0 is "unspecified" to the kernel and 255 is the local table, which holds the
            // host's own addresses.
            Ok(0) | Ok(LOCAL_TABLE) => Err(format!(
                "table {number}: 0 and 255 (the local table) cannot hold the tunnel's routes"
            )),
            Ok(table) => Ok(TableSetting::Number(table)),
            Err(_) => Err(format!("table {number} is outside 1..=4294967295")),
        }
    }
}

const LOCAL_TABLE: u32 = 255;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_values() {
        let text = |t: &str| RawTable::Text(t.to_string()).parse();
        assert_eq!(text("auto"), Ok(TableSetting::Auto));
        assert_eq!(text("off"), Ok(TableSetting::Off));
        assert_eq!(text("1234"), Ok(TableSetting::Number(1234)));
        assert_eq!(
            RawTable::Number(51820).parse(),
            Ok(TableSetting::Number(51820))
        );
        assert!(text("main").unwrap_err().contains("\"auto\", \"off\""));
        assert!(RawTable::Number(0).parse().is_err());
        assert!(RawTable::Number(255).parse().is_err());
        assert!(RawTable::Number(-1).parse().is_err());
        assert!(RawTable::Number(1 << 32).parse().is_err());
    }
}
