//! `--balance reuseport`: one listening socket per slot for each TCP
//! address, all bound with `SO_REUSEPORT` by the master and kept open by
//! it, so the kernel spreads new connections over the slots by flow hash
//! (nginx's `listen … reuseport`), while no queue dies with a worker: a
//! slot's new worker takes over the same socket, and a crashed worker's
//! queue waits for its replacement.
//!
//! The kernel would still hash connections onto a slot with no ready
//! worker, so the master steers: a classic BPF program on the group
//! (`SO_ATTACH_REUSEPORT_CBPF`, no privilege needed) maps each connection's
//! hash onto the slots that have one, and is swapped whenever that set
//! changes.
//!
//! Each slot has two sockets (lanes). A reload's new worker takes the lane
//! its predecessor does not use, so it gets no connection until the master
//! steers the slot onto its lane, once it has proven itself; a release that
//! dies before that loses nothing. The predecessor, steered away from,
//! accepts what its queue still holds for a grace before it stops.
//!
//! A program answers with an index into the group, the order in which its
//! sockets started listening; a socket that closes gives its index to the
//! last one. So sockets are only ever added (a lane's socket is made when
//! it first starts a worker) and kept until the master stops: a slot
//! scaled away keeps its sockets, steered away and empty, for when it comes
//! back. Indices never move, and a stray process still holding a socket
//! can never make them wrong.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use serde::{Deserialize, Serialize};

use socket2::{Domain, Socket, Type};

use crate::vocab::Lane;
use crate::vocab::SlotId;

/// One instruction of a classic BPF program (`struct sock_filter`).
pub type Insn = libc::sock_filter;

/// The reuseport groups, one per TCP address the master bound.
#[derive(Debug)]
pub struct Balancer {
    /// What each worker gets at fd 3, 4, …: the master's listeners; those
    /// of a group are replaced by the slot's own socket.
    listeners: Vec<RawFd>,
    groups: Vec<Group>,
    /// The queues the current programs steer to.
    steered: Option<Vec<(SlotId, Lane)>>,
}

#[derive(Debug)]
struct Group {
    /// Which listener this is (fd `3 + position` in a worker).
    position: usize,
    addr: SocketAddr,
    backlog: i32,
    /// Each slot's sockets, by lane, with their index in the kernel's
    /// group.
    sockets: BTreeMap<(SlotId, Lane), (Socket, u32)>,
}

impl Balancer {
    /// `listeners`: every listener's fd, in order, and for those that are
    /// TCP sockets bound here with `SO_REUSEPORT`, the address and backlog.
    /// Each of those becomes slot 0's first socket of a group (a duplicate
    /// fd of the same socket, index 0).
    pub fn new(listeners: &[(RawFd, Option<(SocketAddr, i32)>)]) -> io::Result<Balancer> {
        let mut groups = Vec::new();
        for (position, (fd, bound)) in listeners.iter().enumerate() {
            if let Some((addr, backlog)) = *bound {
                // SAFETY: the fd is the master's listener, open for as long
                // as it runs; dup'd, never closed through this borrow.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
                let socket = Socket::from(borrowed.try_clone_to_owned()?);
                groups.push(Group {
                    position,
                    addr,
                    backlog,
                    sockets: BTreeMap::from([((0, 0), (socket, 0))]),
                });
            }
        }
        Ok(Balancer {
            listeners: listeners.iter().map(|(fd, _)| *fd).collect(),
            groups,
            steered: None,
        })
    }

    /// Every group as a live upgrade hands it over: the sockets keep
    /// their numbers, and the steering program stays attached to the
    /// group in the kernel, so the new image only needs to know which is
    /// which.
    pub fn handover(&self) -> Vec<GroupFd> {
        self.groups
            .iter()
            .map(|group| GroupFd {
                position: group.position,
                addr: group.addr,
                backlog: group.backlog,
                sockets: group
                    .sockets
                    .iter()
                    .map(|(&(slot, lane), (socket, index))| QueueFd {
                        slot,
                        lane,
                        index: *index,
                        fd: socket.as_raw_fd(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// The groups an earlier image of the master handed over, as they
    /// were; `listeners` as for [`Balancer::new`].
    ///
    /// # Safety
    /// Every fd in `groups` must be the hand-over's, owned by nothing else.
    pub unsafe fn resume(listeners: &[RawFd], groups: &[GroupFd]) -> io::Result<Balancer> {
        let mut resumed = Vec::new();
        for group in groups {
            let mut sockets = BTreeMap::new();
            for queue in &group.sockets {
                // SAFETY: as the caller says.
                let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(queue.fd) });
                socket.set_cloexec(true)?;
                sockets.insert((queue.slot, queue.lane), (socket, queue.index));
            }
            resumed.push(Group {
                position: group.position,
                addr: group.addr,
                backlog: group.backlog,
                sockets,
            });
        }
        Ok(Balancer {
            listeners: listeners.to_vec(),
            groups: resumed,
            steered: None,
        })
    }

    /// Every socket of every group.
    pub fn fds_of_all_slots(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.groups
            .iter()
            .flat_map(|g| g.sockets.values().map(|(socket, _)| socket.as_raw_fd()))
    }

    /// The fds a worker of `slot` on `lane` gets, in listener order; the
    /// lane's sockets are made (bound and listening) the first time.
    pub fn fds(&mut self, slot: SlotId, lane: Lane) -> io::Result<Vec<RawFd>> {
        let mut fds = self.listeners.clone();
        for group in &mut self.groups {
            let key = (slot, lane);
            if !group.sockets.contains_key(&key) {
                let socket = reuseport_socket(group.addr, group.backlog)?;
                let index = group.sockets.len() as u32;
                // Not steered to until its worker is proven.
                group.sockets.insert(key, (socket, index));
            }
            fds[group.position] = group.sockets[&key].0.as_raw_fd();
        }
        Ok(fds)
    }

    /// The index in its group of the socket of `slot` on `lane`, for the
    /// listener at `position`, if that socket exists.
    pub fn index(&self, position: usize, slot: SlotId, lane: Lane) -> Option<u32> {
        let group = self.groups.iter().find(|g| g.position == position)?;
        group.sockets.get(&(slot, lane)).map(|(_, index)| *index)
    }

    /// Closes the master's copies of every socket (a stop began); the
    /// workers' copies stay open while they drain.
    pub fn close(&mut self) {
        self.groups.clear();
        self.listeners.clear();
    }

    /// Steers new connections onto the sockets of `live` (each slot's
    /// queue whose worker is proven, or every slot's). Swaps the programs
    /// only when the set changed; true if it did.
    pub fn steer(&mut self, live: &[(SlotId, Lane)]) -> io::Result<bool> {
        if self.steered.as_deref() == Some(live) {
            return Ok(false);
        }
        for group in &self.groups {
            let indices: Vec<u32> = live
                .iter()
                .filter_map(|queue| group.sockets.get(queue).map(|(_, index)| *index))
                .collect();
            let Some((socket, _)) = group.sockets.get(&(0, 0)) else {
                continue;
            };
            attach(socket, &program(&indices, group.addr.is_ipv6()))?;
        }
        self.steered = Some(live.to_vec());
        Ok(true)
    }
}

/// A group in a live upgrade's hand-over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupFd {
    pub position: usize,
    pub addr: SocketAddr,
    pub backlog: i32,
    pub sockets: Vec<QueueFd>,
}

/// One slot's socket on one lane, and its index in the kernel's group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueFd {
    pub slot: SlotId,
    pub lane: Lane,
    pub index: u32,
    pub fd: RawFd,
}

/// A socket that joins the group at `addr`.
fn reuseport_socket(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket)
}

/// The program for a group whose live members are at `indices`: a probe
/// of the master's (`probe.rs`: its DSCP mark) goes to the index its TTL
/// names, live or not; any other connection's flow hash (or, if the packet
/// has none, a random number), modulo their count, picks a live one. With
/// none, it answers an index past the end, and the kernel falls back to its
/// own hash over the whole group.
pub fn program(indices: &[u32], ipv6: bool) -> Vec<Insn> {
    const LD_ANC: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const LD_B: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const LD_H: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    const AND: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
    const SUB: u16 = (libc::BPF_ALU | libc::BPF_SUB | libc::BPF_K) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const MOD: u16 = (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;
    let ancillary = |what: i32| (libc::SKF_AD_OFF + what) as u32;
    // The packet's IP header (the program runs past the TCP header).
    let net = |offset: i32| (libc::SKF_NET_OFF + offset) as u32;
    let insn = |code, jt, jf, k| Insn { code, jt, jf, k };
    let mark = u32::from(super::probe::MARK);
    let mut p = if ipv6 {
        // Traffic class: bits 4-11 of the first 16; hop limit: byte 7.
        vec![
            insn(LD_H, 0, 0, net(0)),
            insn(AND, 0, 0, 0x0fc0),
            insn(JEQ, 0, 3, mark << 4),
            insn(LD_B, 0, 0, net(7)),
        ]
    } else {
        // TOS: byte 1; TTL: byte 8.
        vec![
            insn(LD_B, 0, 0, net(1)),
            insn(AND, 0, 0, 0xfc),
            insn(JEQ, 0, 3, mark),
            insn(LD_B, 0, 0, net(8)),
        ]
    };
    p.extend([insn(SUB, 0, 0, 1), insn(RET_A, 0, 0, 0)]);
    match indices {
        [] => p.push(insn(RET, 0, 0, u32::MAX)),
        [only] => p.push(insn(RET, 0, 0, *only)),
        _ => {
            p.extend([
                insn(LD_ANC, 0, 0, ancillary(libc::SKF_AD_RXHASH)),
                insn(JEQ, 0, 1, 0),
                insn(LD_ANC, 0, 0, ancillary(libc::SKF_AD_RANDOM)),
                insn(MOD, 0, 0, indices.len() as u32),
            ]);
            for (n, index) in indices.iter().enumerate() {
                p.push(insn(JEQ, 0, 1, n as u32));
                p.push(insn(RET, 0, 0, *index));
            }
            p.push(insn(RET, 0, 0, indices[0]));
        }
    }
    p
}

/// Swaps the group's program (atomically: a connection sees the old one or
/// the new one).
fn attach(socket: &Socket, program: &[Insn]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points into `program`, alive for the call; the kernel
    // copies the instructions.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A packet as the programs see it: its flow hash, the random number
    /// the kernel draws, and its IPv4 header's TOS and TTL.
    #[derive(Clone, Copy, Default)]
    struct Packet {
        hash: u32,
        random: u32,
        tos: u8,
        ttl: u8,
    }

    /// Runs `program` the way the kernel would, for the few instructions
    /// it uses, on an IPv4 packet.
    fn run(program: &[Insn], packet: Packet) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        let net = |k: u32| k as i32 - libc::SKF_NET_OFF;
        for _ in 0..program.len() {
            let i = program[pc];
            pc += 1;
            match (u32::from(i.code), i.k) {
                (c, k) if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    a = match k as i32 - libc::SKF_AD_OFF {
                        libc::SKF_AD_RXHASH => packet.hash,
                        libc::SKF_AD_RANDOM => packet.random,
                        other => panic!("loads ancillary {other}"),
                    }
                }
                (c, k) if c == libc::BPF_LD | libc::BPF_B | libc::BPF_ABS => {
                    a = match net(k) {
                        1 => packet.tos.into(),
                        8 => packet.ttl.into(),
                        other => panic!("loads IP byte {other}"),
                    }
                }
                (c, k) if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += usize::from(if a == k { i.jt } else { i.jf });
                }
                (c, k) if c == libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K => a %= k,
                (c, k) if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => a &= k,
                (c, k) if c == libc::BPF_ALU | libc::BPF_SUB | libc::BPF_K => a -= k,
                (c, k) if c == libc::BPF_RET | libc::BPF_K => return k,
                (c, _) if c == libc::BPF_RET | libc::BPF_A => return a,
                (c, _) => panic!("instruction {c:#x}"),
            }
        }
        panic!("ran off the end");
    }

    #[test]
    fn the_program_maps_every_hash_onto_exactly_the_live_slots() {
        for live in [vec![0], vec![1, 3], vec![0, 1, 2, 3], vec![5, 2, 7]] {
            let p = program(&live, false);
            assert!(p.len() <= 6 + 4 + 2 * live.len() + 1);
            let mut hit = BTreeSet::new();
            for hash in (0..4000u32).map(|h| h.wrapping_mul(2_654_435_761)) {
                // A client's packet: any TOS but the mark, any TTL.
                let packet = Packet {
                    hash,
                    tos: (hash % 256) as u8 & !0xfc | 0x10,
                    ttl: 64,
                    ..Packet::default()
                };
                let index = run(&p, packet);
                assert!(live.contains(&index), "{hash} -> {index} not in {live:?}");
                hit.insert(index);
            }
            assert_eq!(
                hit,
                live.iter().copied().collect(),
                "every live slot gets some"
            );
            // A packet without a hash is placed at random, still on a live one.
            let random = Packet {
                random: 12_345,
                ..Packet::default()
            };
            assert!(live.contains(&run(&p, random)));
        }
        assert_eq!(
            run(&program(&[], false), Packet::default()),
            u32::MAX,
            "none: the kernel's hash"
        );
    }

    #[test]
    fn a_probe_goes_to_the_index_its_ttl_names_live_or_not() {
        let p = program(&[1, 3], false);
        for ttl in [1u8, 3, 6, 255] {
            let probe = Packet {
                hash: 7,
                tos: super::super::probe::MARK | 0x01,
                ttl,
                ..Packet::default()
            };
            assert_eq!(run(&p, probe), u32::from(ttl) - 1);
        }
    }

    #[test]
    fn the_kernel_sends_connections_only_to_the_live_sockets() {
        let first = reuseport_socket("127.0.0.1:0".parse().unwrap(), 64).unwrap();
        let addr = first.local_addr().unwrap().as_socket().unwrap();
        let fd = first.as_raw_fd();
        let mut balancer = Balancer::new(&[(fd, Some((addr, 64)))]).unwrap();
        let fds: Vec<RawFd> = (0..4)
            .map(|slot| balancer.fds(slot, 0).unwrap()[0])
            .collect();
        assert_eq!(
            fds.iter().collect::<BTreeSet<_>>().len(),
            4,
            "one socket each"
        );
        assert!(balancer.steer(&[(1, 0), (3, 0)]).unwrap());
        assert!(
            !balancer.steer(&[(1, 0), (3, 0)]).unwrap(),
            "unchanged: not swapped"
        );
        let clients: Vec<_> = (0..40)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut accepted = [0; 4];
        for (slot, fd) in fds.iter().enumerate() {
            // SAFETY: borrowed for this loop; the balancer owns the socket.
            let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
            let socket = Socket::from(socket.try_clone_to_owned().unwrap());
            socket.set_nonblocking(true).unwrap();
            while socket.accept().is_ok() {
                accepted[slot] += 1;
            }
        }
        drop(clients);
        assert_eq!(accepted[0] + accepted[2], 0, "{accepted:?}");
        assert_eq!(accepted[1] + accepted[3], 40, "{accepted:?}");
        assert!(accepted[1] > 0 && accepted[3] > 0, "{accepted:?}");

        // A probe reaches slot 2's socket, which no client reaches.
        let index = balancer.index(0, 2, 0).unwrap();
        let probe = crate::sockets::probe::Probe::start(addr, "/", Some(index)).unwrap();
        // SAFETY: borrowed for this test; the balancer owns the socket.
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fds[2]) };
        let socket = Socket::from(socket.try_clone_to_owned().unwrap());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let peer = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the probe never arrived"
            );
            if let Ok((_, peer)) = socket.accept() {
                break peer.as_socket().unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(Some(peer), probe.ends().map(|(local, _)| local));
    }
}
