//! What a component is: its kind (one per world of the contract) and what its
//! `describe()` said. A leaf: every other module may take these from here.

use std::fmt;

use crate::bindings::wit::{AdapterInfo, RuleInfo, TilesInfo};

/// The three kinds of plugin, one per world of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `segment-rule`: decides segment membership.
    Rule,
    /// `channel-adapter`: formats provider requests.
    Channel,
    /// `promo-tiles`: decides on-site tiles.
    Tiles,
}

impl Kind {
    /// The WIT world name.
    pub fn world(self) -> &'static str {
        match self {
            Kind::Rule => "segment-rule",
            Kind::Channel => "channel-adapter",
            Kind::Tiles => "promo-tiles",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.world())
    }
}

/// What `describe()` returned, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginInfo {
    Rule(RuleInfo),
    Channel(AdapterInfo),
    Tiles(TilesInfo),
}

impl PluginInfo {
    /// The plugin's own name.
    pub fn name(&self) -> &str {
        match self {
            PluginInfo::Rule(i) => &i.name,
            PluginInfo::Channel(i) => &i.name,
            PluginInfo::Tiles(i) => &i.name,
        }
    }

    /// The plugin's own version string.
    pub fn version(&self) -> &str {
        match self {
            PluginInfo::Rule(i) => &i.version,
            PluginInfo::Channel(i) => &i.version,
            PluginInfo::Tiles(i) => &i.version,
        }
    }
}
