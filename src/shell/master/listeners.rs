//! The listeners a reload changes (`listen` in `--config`), the nginx way:
//! a new address is bound before the new generation starts, and only its
//! workers get it; an address the configuration dropped is closed once no
//! worker that had it is left (and no generation that may start again has
//! it), so a client of the old generation is served to the end.

use std::collections::BTreeSet;
use std::os::fd::RawFd;

use crate::launch::Launch;
use crate::shell::releases::ListenChange;
use crate::sockets::listen::{self, ListenAddr, Listener, Named};
use crate::supervisor::record::Record;
use crate::vocab::Generation;

use super::Master;

impl<L: Launch> Master<'_, L> {
    /// The listeners a worker of `generation` gets at fd 3, 4, …: its
    /// release's, or every one the master started with. `Err`: one of its
    /// release's was closed (it cannot start as its release says).
    pub(super) fn fds_of(&self, generation: Generation) -> Result<Vec<RawFd>, String> {
        let names = self
            .releases
            .as_ref()
            .and_then(|r| r.get(generation))
            .and_then(|r| r.listeners.as_ref());
        let Some(names) = names else {
            return Ok(self.listener_fds.clone());
        };
        names
            .iter()
            .map(|named| {
                self.listeners
                    .iter()
                    .find(|l| l.name == named.name)
                    .map(Listener::fd)
                    .ok_or_else(|| format!("its listener {} is closed", named.local))
            })
            .collect()
    }

    /// Where a worker of `generation` is probed: its first TCP listener.
    pub(super) fn probe_addr(&self, generation: Generation) -> Option<std::net::SocketAddr> {
        let names = self
            .releases
            .as_ref()
            .and_then(|r| r.get(generation))
            .and_then(|r| r.listeners.as_ref())?;
        names.iter().find_map(|named| {
            self.listeners
                .iter()
                .find(|l| l.name == named.name)
                .and_then(Listener::tcp_addr)
        })
    }

    /// The listeners of a new generation: each address it has that is
    /// open already, as it is (an address of an aborted generation not
    /// closed yet too), the others bound now. `Err`: an address that
    /// cannot be bound, one line; nothing is kept bound then.
    pub(super) fn relisten(
        &mut self,
        change: &ListenChange,
        generation: Generation,
    ) -> Result<Vec<Named>, String> {
        let mut names: Vec<Named> = change.before.iter().take(change.given).cloned().collect();
        let mut bound: Vec<Listener> = Vec::new();
        for (i, spec) in change.new.iter().enumerate() {
            let any_port = matches!(spec.addr, ListenAddr::Tcp(a) if a.port() == 0);
            if !any_port && change.new[..i].iter().any(|s| s.addr == spec.addr) {
                return Err(format!(
                    "listen {} is given twice; give each address once",
                    spec.addr
                ));
            }
            if let Some(open) = self.open_for(change, i, &names) {
                names.push(open);
                continue;
            }
            let taken = |name: &str| {
                self.listeners.iter().any(|l| l.name == name)
                    || bound.iter().any(|l| l.name == name)
            };
            let name = match &spec.name {
                Some(name) if taken(name) => {
                    return Err(format!(
                        "listen {spec_addr}: the name {name} is still an open listener's (an \
                         address being drained); give this one another name",
                        spec_addr = spec.addr
                    ));
                }
                Some(name) => name.clone(),
                None => {
                    let name = listen::default_name(spec, change.given + i);
                    if taken(&name) {
                        format!("{name}-g{generation}")
                    } else {
                        name
                    }
                }
            };
            let listener = listen::bind_one(spec, name, listen::backlog(change.backlog), false)
                .map_err(|e| e.to_string())?;
            names.push(listener.named());
            bound.push(listener);
        }
        for listener in bound {
            self.log.emit(&Record::Listening {
                name: listener.name.clone(),
                addr: listener.local.clone(),
            });
            self.ours.add(listener.fd());
            self.listeners.push(listener);
        }
        self.listeners_changed();
        Ok(names)
    }

    /// The open listener for `change.new[i]`: the one bound at its address,
    /// or for a port 0 the one the same spec got before; none taken yet.
    fn open_for(&self, change: &ListenChange, i: usize, taken: &[Named]) -> Option<Named> {
        let spec = &change.new[i];
        let free = |named: &Named| !taken.iter().any(|t| t.name == named.name);
        let open = |named: &Named| self.listeners.iter().any(|l| l.name == named.name);
        if matches!(spec.addr, ListenAddr::Tcp(a) if a.port() == 0) {
            // The n-th port 0 of that address is the n-th before.
            let nth = change.new[..i]
                .iter()
                .filter(|s| s.addr == spec.addr)
                .count();
            let j = (0..change.old.len())
                .filter(|&j| change.old[j].addr == spec.addr)
                .nth(nth)?;
            let named = change.before.get(change.given + j)?;
            return (free(named) && open(named)).then(|| named.clone());
        }
        let address = spec.addr.to_string();
        self.listeners
            .iter()
            .map(Listener::named)
            .find(|named| named.local == address && free(named))
    }

    /// Closes the listeners no generation that runs or may start again
    /// has: not a live worker's, not the serving one's, not the target of
    /// a reload under way.
    pub(super) fn close_unused_listeners(&mut self) {
        let Some(releases) = &self.releases else {
            return;
        };
        let names_of = |generation| releases.get(generation).and_then(|r| r.listeners.as_ref());
        // The generations that may start again first: it runs at every
        // exit, and most of the time they have every open listener, which
        // spares a look at each worker.
        let mut generations = vec![self.supervisor.serving_generation()];
        generations.extend(self.supervisor.reload_in_progress().map(|plan| plan.target));
        let mut used = BTreeSet::new();
        for &generation in &generations {
            match names_of(generation) {
                Some(names) => used.extend(names.iter().map(|n| n.name.clone())),
                // A generation with every listener of the start: nothing
                // is ever closed.
                None => return,
            }
        }
        if self.listeners.iter().all(|l| used.contains(&l.name)) {
            return;
        }
        let live: BTreeSet<Generation> = self.supervisor.workers().map(|w| w.generation).collect();
        for generation in live {
            match names_of(generation) {
                Some(names) => used.extend(names.iter().map(|n| n.name.clone())),
                None => return,
            }
        }
        let (keep, gone): (Vec<Listener>, Vec<Listener>) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(|l| used.contains(&l.name));
        self.listeners = keep;
        if gone.is_empty() {
            return;
        }
        for listener in gone {
            self.listener_fds.retain(|&fd| fd != listener.fd());
            self.log.emit(&Record::ListenerClosed {
                name: listener.name.clone(),
                addr: listener.local.clone(),
            });
        }
        self.listeners_changed();
    }

    /// `status` lists the listeners open now.
    fn listeners_changed(&mut self) {
        self.info.listeners = self
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.local.clone()))
            .collect();
    }
}
