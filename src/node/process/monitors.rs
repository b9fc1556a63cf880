//! Monitors that peers hold on local processes (MONITOR_P in, DEMONITOR_P / MONITOR_P_EXIT
//! out), so a local process can die: when it exits, every watcher gets MONITOR_P_EXIT with
//! the exit reason, as from a BEAM process.
//!
//! Every `GenServer.call` places one (MONITOR_P by name) and removes it (DEMONITOR_P), so the
//! record is small and fixed-size: a reference's creation and id words, and the watcher's
//! pid numbers, both on the peer's own node (as BEAM makes them). A monitor from a pid or
//! with a reference of a third node is kept with its full terms ([`Foreign`]). Entries are
//! removed by DEMONITOR_P, by the target's exit (which fires them) and with the peer's
//! connection (its node-down already told the watchers `noconnection`).

use erl_dist::term::{Atom, Pid, Reference};
use std::collections::HashMap;

/// Default `--max-monitors-per-peer`: monitors one peer node may hold on local processes at
/// once. A call holds one while it waits, so this is far above any real client's
/// concurrency; it bounds what a peer that never demonitors can make kvnode keep (an entry
/// is about 64 bytes: 6.4 MB per peer at this bound).
pub const DEFAULT_MAX_MONITORS_PER_PEER: usize = 100_000;

/// The most id words a reference has (NEWER_REFERENCE_EXT allows up to 5).
pub const MAX_REF_WORDS: usize = 5;

/// A reference made by a peer, as a fixed-size map key (its node is the peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RefKey {
    /// The reference's creation.
    pub creation: u32,
    /// Number of id words used.
    pub len: u8,
    /// The id words (unused ones zero).
    pub ids: [u32; MAX_REF_WORDS],
}

impl RefKey {
    /// The key of `r` (None when it has more id words than a reference can have).
    pub fn of(r: &Reference) -> Option<RefKey> {
        if r.id.len() > MAX_REF_WORDS {
            return None;
        }
        let mut ids = [0; MAX_REF_WORDS];
        ids[..r.id.len()].copy_from_slice(&r.id);
        Some(RefKey {
            creation: r.creation,
            len: r.id.len() as u8,
            ids,
        })
    }

    /// The reference on node `node`.
    pub fn to_reference(self, node: &str) -> Reference {
        Reference {
            node: Atom::from(node),
            id: self.ids[..usize::from(self.len)].to_vec(),
            creation: self.creation,
        }
    }
}

/// A watcher pid on the peer's node: its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPid {
    /// Pid id.
    pub id: u32,
    /// Pid serial.
    pub serial: u32,
    /// Pid creation.
    pub creation: u32,
}

impl PeerPid {
    /// The pid on node `node`.
    pub fn to_pid(self, node: &str) -> Pid {
        Pid::new(node, self.id, self.serial, self.creation)
    }
}

/// The full terms of a monitor whose watcher or reference is not on the peer's node.
#[derive(Debug, Clone)]
pub struct Foreign {
    /// The watcher.
    pub watcher: Pid,
    /// The monitor reference.
    pub reference: Reference,
}

/// One monitor a peer holds on a local process.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The local process's registry key (`id | serial << 15`).
    pub target: u32,
    /// Placed by registered name (MONITOR_P_EXIT then names it, as BEAM does).
    pub by_name: bool,
    /// The watcher on the peer's node (ignored when `foreign` is set).
    pub watcher: PeerPid,
    /// Set for monitors whose terms are not on the peer's node.
    pub foreign: Option<Box<Foreign>>,
}

/// Per peer: reference -> monitor.
pub type PeerTable = HashMap<RefKey, Incoming, foldhash::fast::RandomState>;

/// The links one peer's processes hold: (local target's registry key, remote pid).
pub(super) type LinkSet = std::collections::HashSet<(u32, Pid), foldhash::fast::RandomState>;

/// All incoming monitors: peer node name -> its monitors; and the links peers' processes
/// made to local ones (peer -> (local process key, remote pid)).
#[derive(Default)]
pub struct Table {
    pub(super) peers: HashMap<String, PeerTable, foldhash::fast::RandomState>,
    pub(super) links: HashMap<String, LinkSet, foldhash::fast::RandomState>,
}

impl Table {
    /// Records a monitor from `peer`. False (nothing recorded) when the peer already holds
    /// `max` monitors.
    pub fn insert(&mut self, peer: &str, key: RefKey, monitor: Incoming, max: usize) -> bool {
        match self.peers.get_mut(peer) {
            Some(t) => {
                if t.len() >= max && !t.contains_key(&key) {
                    return false;
                }
                t.insert(key, monitor);
            }
            None => {
                self.peers
                    .entry(peer.to_owned())
                    .or_default()
                    .insert(key, monitor);
            }
        }
        true
    }

    /// Removes a monitor (DEMONITOR_P). The peer's (emptied) table is kept: the next call
    /// from that peer reuses it without allocating.
    pub fn remove(&mut self, peer: &str, key: &RefKey) -> Option<Incoming> {
        self.peers.get_mut(peer)?.remove(key)
    }

    /// Drops every monitor and link `peer` holds (its connection went down).
    pub fn remove_peer(&mut self, peer: &str) -> usize {
        self.links.remove(peer);
        self.peers.remove(peer).map_or(0, |t| t.len())
    }

    /// Records a link from `remote` (on `peer`) to the local process `target`. False
    /// (nothing recorded) when the peer already holds `max` links.
    pub fn link(&mut self, peer: &str, target: u32, remote: &Pid, max: usize) -> bool {
        // One allocation per peer, not per LINK; a set, so a peer's LINK/UNLINK cost O(1)
        // however many links it holds.
        let links = match self.links.get_mut(peer) {
            Some(links) => links,
            None => self.links.entry(peer.to_owned()).or_default(),
        };
        let key = (target, remote.clone());
        if links.contains(&key) {
            return true;
        }
        if links.len() >= max {
            return false;
        }
        links.insert(key);
        true
    }

    /// Removes a link (UNLINK, UNLINK_ID, or the remote process's exit signal). True if the
    /// link existed.
    pub fn unlink(&mut self, peer: &str, target: u32, remote: &Pid) -> bool {
        self.links
            .get_mut(peer)
            .is_some_and(|links| links.remove(&(target, remote.clone())))
    }

    /// Removes and returns the links to the process `target`: (peer, remote pid).
    pub fn take_links(&mut self, target: u32) -> Vec<(String, Pid)> {
        let mut out = Vec::new();
        for (peer, links) in self.links.iter_mut() {
            links.retain(|(t, p)| {
                if *t == target {
                    out.push((peer.clone(), p.clone()));
                    false
                } else {
                    true
                }
            });
        }
        out
    }

    /// Removes and returns every monitor on the process `target`, with its peer and key.
    pub fn take_target(&mut self, target: u32) -> Vec<(String, RefKey, Incoming)> {
        let mut out = Vec::new();
        for (peer, table) in self.peers.iter_mut() {
            table.retain(|key, m| {
                if m.target == target {
                    out.push((peer.clone(), *key, m.clone()));
                    false
                } else {
                    true
                }
            });
        }
        out
    }

    /// Number of monitors held.
    pub fn len(&self) -> usize {
        self.peers.values().map(|t| t.len()).sum()
    }

    /// Number of links peers' processes hold on local processes.
    pub fn link_count(&self) -> usize {
        self.links.values().map(|l| l.len()).sum()
    }
}
