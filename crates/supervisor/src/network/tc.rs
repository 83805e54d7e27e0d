//! The tc filters that join a container link and its tap: which frames go
//! to the VM, which to the namespace's own stack, and which to both.
//!
//! Everything from the VM goes out of the container's link. Of what
//! arrives on the link, the VM gets everything but the answers to lookups
//! that dockerd's embedded resolver forwarded upstream from inside the
//! namespace: those come from port 53 to one of the namespace's own
//! ephemeral ports ([`runvm_contract::netns::LOCAL_PORTS`]) and go to the
//! namespace's stack, where dockerd waits for them. ARP replies and IPv6
//! neighbour advertisements go to both, since both stacks use the
//! container's addresses (the VM for everything, the namespace for those
//! lookups); requests and solicitations only to the VM, which alone
//! answers them.
//!
//! Filters are u32 classifiers, described here as data ([`Filter`],
//! [`U32`]) so that what they match is tested without root.

use runvm_contract::netns::LOCAL_PORTS_MASK;

/// One end of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The container's link (Docker's veth).
    Link,
    /// The tap of the VM's NIC.
    Tap,
}

/// What a filter selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// Every frame.
    Everything,
    /// An answer from port 53 to one of the namespace's ephemeral ports,
    /// over UDP or TCP, IPv4 or IPv6.
    ResolverAnswer { ipv6: bool, tcp: bool },
    /// The first fragment of an IPv6 UDP answer from port 53 to one of the
    /// namespace's ephemeral ports (an answer larger than the MTU, with a
    /// large EDNS buffer).
    ResolverAnswerFirstFragment,
    /// An IPv4 packet that is no later fragment (fragment offset 0), or
    /// an IPv6 one with a fragment header of offset 0.
    NoLaterFragment { ipv6: bool },
    /// Every IPv4 packet, or every IPv6 one with a fragment header: placed
    /// after [`Match::NoLaterFragment`], the later fragments, which carry
    /// no ports.
    LaterFragment { ipv6: bool },
    /// An ARP reply.
    ArpReply,
    /// An ICMPv6 neighbour advertisement.
    NeighbourAdvertisement,
}

/// What happens to the frames a filter selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// They go on to the namespace's own stack.
    Stack,
    /// A copy goes out of the other side; the frame goes on to the stack.
    Copy,
    /// They go out of the other side, and nowhere else.
    Redirect,
}

/// One ingress filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    /// The side whose ingress the filter sits on; the other side is where
    /// `Copy` and `Redirect` send frames.
    pub on: Side,
    /// tc priority: lower goes first; the first filter that matches decides.
    pub priority: u16,
    pub matches: Match,
    pub action: Action,
}

/// The filters of one link–tap pair, in the order they are added.
pub fn filters() -> Vec<Filter> {
    let mut out = Vec::new();
    let mut priority = 1;
    let mut add = |on, matches, action| {
        out.push(Filter {
            on,
            priority,
            matches,
            action,
        });
        priority += 1;
    };
    for ipv6 in [false, true] {
        for tcp in [false, true] {
            add(
                Side::Link,
                Match::ResolverAnswer { ipv6, tcp },
                Action::Stack,
            );
        }
    }
    add(
        Side::Link,
        Match::ResolverAnswerFirstFragment,
        Action::Stack,
    );
    // The namespace's stack resolves its gateway's address for the
    // lookups dockerd forwards: it gets the replies too. Requests (and
    // solicitations) are the VM's alone, which answers for the container
    // with its MAC: were the namespace to answer too, every peer would get
    // two replies, conflicting ones once the guest changes its MAC.
    add(Side::Link, Match::ArpReply, Action::Copy);
    add(Side::Link, Match::NeighbourAdvertisement, Action::Copy);
    // The later fragments of a datagram carry no ports: whose they are
    // cannot be told. Both stacks get them; each reassembles the datagrams
    // whose first fragment it got, and lets the rest expire (silently:
    // without the first fragment no error is sent).
    for ipv6 in [false, true] {
        add(
            Side::Link,
            Match::NoLaterFragment { ipv6 },
            Action::Redirect,
        );
        add(Side::Link, Match::LaterFragment { ipv6 }, Action::Copy);
    }
    add(Side::Link, Match::Everything, Action::Redirect);
    add(Side::Tap, Match::Everything, Action::Redirect);
    out
}

const ND_ADVERTISEMENT: u32 = 136;
const ARP_REPLY: u32 = 2;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

const IPPROTO_TCP: u32 = 6;
const IPPROTO_FRAGMENT: u32 = 44;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_ICMPV6: u32 = 58;

/// One u32 key: the 32-bit word at `offset` bytes into the network header,
/// masked with `mask`, equals `value` (both in host order here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub offset: i32,
    pub mask: u32,
    pub value: u32,
}

/// A filter's protocol and keys, as `tc filter … protocol P u32 match …`
/// would give them. No key matches every frame of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct U32 {
    /// The ethertype, in host order.
    pub protocol: u16,
    pub keys: Vec<Key>,
}

impl Match {
    /// The protocol and keys that select these frames.
    ///
    /// IPv4 answers are matched only without IP options (header length 5
    /// words), so the ports sit at a fixed offset, and only in a first
    /// fragment or a whole datagram (in a later fragment those bytes are
    /// data); IPv6 ones only without extension headers, or with just a
    /// fragment header. An answer with other headers goes to the VM and
    /// is lost to dockerd, which then asks again: no resolver adds them.
    pub fn u32(&self) -> U32 {
        let ports = Key {
            offset: 0,
            mask: 0xffff_0000 | u32::from(LOCAL_PORTS_MASK),
            value: (53 << 16) | u32::from(LOCAL_PORTS_MASK),
        };
        let proto = |tcp: bool| if tcp { IPPROTO_TCP } else { IPPROTO_UDP };
        // Identification | flags | fragment offset: offset 0.
        let v4_offset_0 = Key {
            offset: 4,
            mask: 0x0000_1fff,
            value: 0,
        };
        // Payload length | next header | hop limit.
        let v6_next = |next: u32| Key {
            offset: 4,
            mask: 0x0000_ff00,
            value: next << 8,
        };
        match *self {
            Match::Everything => U32 {
                protocol: ETH_P_ALL,
                keys: Vec::new(),
            },
            Match::ArpReply => U32 {
                protocol: ETH_P_ARP,
                // Hardware and protocol address lengths | operation.
                keys: vec![Key {
                    offset: 4,
                    mask: 0x0000_ffff,
                    value: ARP_REPLY,
                }],
            },
            Match::ResolverAnswer { ipv6: false, tcp } => U32 {
                protocol: ETH_P_IP,
                keys: vec![
                    // Header length 5 words: no options.
                    Key {
                        offset: 0,
                        mask: 0x0f00_0000,
                        value: 0x0500_0000,
                    },
                    v4_offset_0,
                    // TTL | protocol | checksum.
                    Key {
                        offset: 8,
                        mask: 0x00ff_0000,
                        value: proto(tcp) << 16,
                    },
                    Key {
                        offset: 20,
                        ..ports
                    },
                ],
            },
            Match::ResolverAnswerFirstFragment => U32 {
                protocol: ETH_P_IPV6,
                keys: vec![
                    v6_next(IPPROTO_FRAGMENT),
                    // Fragment header: next header | reserved | offset,
                    // flags: UDP, offset 0.
                    Key {
                        offset: 40,
                        mask: 0xff00_fff8,
                        value: IPPROTO_UDP << 24,
                    },
                    Key {
                        offset: 48,
                        ..ports
                    },
                ],
            },
            Match::NoLaterFragment { ipv6: false } => U32 {
                protocol: ETH_P_IP,
                keys: vec![v4_offset_0],
            },
            Match::NoLaterFragment { ipv6: true } => U32 {
                protocol: ETH_P_IPV6,
                keys: vec![
                    v6_next(IPPROTO_FRAGMENT),
                    Key {
                        offset: 40,
                        mask: 0x0000_fff8,
                        value: 0,
                    },
                ],
            },
            Match::LaterFragment { ipv6: false } => U32 {
                protocol: ETH_P_IP,
                keys: Vec::new(),
            },
            Match::LaterFragment { ipv6: true } => U32 {
                protocol: ETH_P_IPV6,
                keys: vec![v6_next(IPPROTO_FRAGMENT)],
            },
            Match::ResolverAnswer { ipv6: true, tcp } => U32 {
                protocol: ETH_P_IPV6,
                keys: vec![
                    v6_next(proto(tcp)),
                    Key {
                        offset: 40,
                        ..ports
                    },
                ],
            },
            Match::NeighbourAdvertisement => U32 {
                protocol: ETH_P_IPV6,
                keys: vec![
                    v6_next(IPPROTO_ICMPV6),
                    Key {
                        offset: 40,
                        mask: 0xff00_0000,
                        value: ND_ADVERTISEMENT << 24,
                    },
                ],
            },
        }
    }
}

#[cfg(test)]
impl U32 {
    /// Whether a frame of ethertype `protocol` whose network header (and
    /// what follows) is `packet` matches, as the kernel's u32 classifier
    /// decides: every key's word, big-endian in the packet, masked, equals
    /// its value. A packet too short for a key does not match.
    pub fn matches(&self, protocol: u16, packet: &[u8]) -> bool {
        if self.protocol != ETH_P_ALL && self.protocol != protocol {
            return false;
        }
        self.keys.iter().all(|k| {
            let Ok(at) = usize::try_from(k.offset) else {
                return false;
            };
            packet
                .get(at..at + 4)
                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
                .is_some_and(|w| w & k.mask == k.value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 packet header (20 bytes, or 24 with an option) followed by
    /// the first bytes of a UDP or TCP header.
    fn ipv4(proto: u8, sport: u16, dport: u16, options: bool) -> Vec<u8> {
        let ihl = if options { 6 } else { 5 };
        let mut p = vec![0x40 | ihl, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        p.extend([172, 18, 0, 1, 172, 18, 0, 2]);
        if options {
            p.extend([1, 1, 1, 1]);
        }
        p.extend(sport.to_be_bytes());
        p.extend(dport.to_be_bytes());
        p.extend([0; 8]);
        p
    }

    fn ipv6(next: u8, first: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 16, next, 64];
        p.extend([0; 32]);
        p.extend(first);
        p.extend([0; 12]);
        p
    }

    fn ports(sport: u16, dport: u16) -> [u8; 4] {
        let (s, d) = (sport.to_be_bytes(), dport.to_be_bytes());
        [s[0], s[1], d[0], d[1]]
    }

    /// Where the filters send a frame that arrives on `side`: to the VM,
    /// to the namespace's stack, or both. The first filter that matches
    /// decides, as in the kernel.
    fn fate(side: Side, protocol: u16, packet: &[u8]) -> (bool, bool) {
        let mut fs = filters();
        fs.sort_by_key(|f| f.priority);
        for f in fs.iter().filter(|f| f.on == side) {
            if f.matches.u32().matches(protocol, packet) {
                return match f.action {
                    Action::Stack => (false, true),
                    Action::Copy => (true, true),
                    Action::Redirect => (true, false),
                };
            }
        }
        (false, true)
    }

    const TO_VM: (bool, bool) = (true, false);
    const TO_STACK: (bool, bool) = (false, true);
    const TO_BOTH: (bool, bool) = (true, true);

    #[test]
    fn answers_to_dockers_forwarded_lookups_reach_the_namespace() {
        for proto in [17, 6] {
            for dport in [61440, 62000, 65535] {
                assert_eq!(
                    fate(Side::Link, ETH_P_IP, &ipv4(proto, 53, dport, false)),
                    TO_STACK,
                    "proto {proto} port {dport}"
                );
                assert_eq!(
                    fate(Side::Link, ETH_P_IPV6, &ipv6(proto, ports(53, dport))),
                    TO_STACK
                );
            }
        }
    }

    #[test]
    fn the_workloads_own_traffic_goes_to_the_vm() {
        let cases = [
            // The guest's own lookups: answers to its ephemeral ports.
            ipv4(17, 53, 32768, false),
            ipv4(17, 53, 60999, false),
            ipv4(17, 53, 61439, false),
            // Not from port 53.
            ipv4(17, 54, 61440, false),
            ipv4(6, 80, 62000, false),
            // Neither UDP nor TCP.
            ipv4(1, 53, 62000, false),
            // With IP options the ports are elsewhere: the VM's.
            ipv4(17, 53, 62000, true),
        ];
        for p in &cases {
            assert_eq!(fate(Side::Link, ETH_P_IP, p), TO_VM, "{p:?}");
        }
        assert_eq!(
            fate(Side::Link, ETH_P_IPV6, &ipv6(17, ports(53, 40000))),
            TO_VM
        );
        // An ICMPv6 echo is the VM's; a fragment header hides the ports.
        assert_eq!(
            fate(Side::Link, ETH_P_IPV6, &ipv6(58, [128, 0, 0, 0])),
            TO_VM
        );
        assert_eq!(
            fate(Side::Link, ETH_P_IPV6, &ipv6(44, [17, 0, 0, 0])),
            TO_VM,
            "the first fragment of a datagram that is no answer"
        );
        // A truncated packet matches no port key.
        assert!(fate(Side::Link, ETH_P_IP, &[0x45, 0, 0]).0);
    }

    /// `ipv4` as a fragment at `offset` (in 8-byte units), more to come.
    fn fragment(mut p: Vec<u8>, offset: u16) -> Vec<u8> {
        let word = 0x2000 | offset; // MF
        p[6..8].copy_from_slice(&word.to_be_bytes());
        p
    }

    /// An IPv6 packet with a fragment header (at `offset`, in 8-byte
    /// units, more to come) before a UDP header from `sport` to `dport`.
    fn ipv6_fragment(offset: u16, sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 24, 44, 64];
        p.extend([0; 32]);
        p.extend([17, 0]);
        p.extend(((offset << 3) | 1).to_be_bytes());
        p.extend([0, 0, 0, 1]);
        p.extend(ports(sport, dport));
        p.extend([0; 12]);
        p
    }

    #[test]
    fn an_answer_larger_than_the_mtu_reaches_the_namespace_whole() {
        // dockerd forwards a query with a 4096-byte EDNS buffer; the 3 KB
        // answer comes in fragments, and only the first has ports.
        let first = fragment(ipv4(17, 53, 62000, false), 0);
        assert_eq!(fate(Side::Link, ETH_P_IP, &first), TO_STACK);
        // The later ones: bytes of the answer where the ports would be.
        for data in [(53, 62000), (1, 2), (0x1234, 0x5678)] {
            let later = fragment(ipv4(17, data.0, data.1, false), 185);
            let (vm, stack) = fate(Side::Link, ETH_P_IP, &later);
            assert!(stack, "the namespace lacks a fragment of {data:?}");
            assert!(vm, "the VM lacks a fragment of {data:?}");
        }
        assert_eq!(
            fate(Side::Link, ETH_P_IPV6, &ipv6_fragment(0, 53, 62000)),
            TO_STACK
        );
        assert_eq!(
            fate(Side::Link, ETH_P_IPV6, &ipv6_fragment(0, 53, 40000)),
            TO_VM
        );
        assert_eq!(
            fate(Side::Link, ETH_P_IPV6, &ipv6_fragment(150, 53, 62000)),
            TO_BOTH
        );
    }

    #[test]
    fn the_vms_own_fragmented_datagrams_reach_it_whole() {
        // A first fragment that is no answer is the VM's alone; its later
        // fragments reach the VM too (and the namespace, which drops them).
        let first = fragment(ipv4(17, 5000, 6000, false), 0);
        assert_eq!(fate(Side::Link, ETH_P_IP, &first), TO_VM);
        let (vm, _) = fate(Side::Link, ETH_P_IP, &fragment(ipv4(17, 0, 0, false), 100));
        assert!(vm);
        // A whole datagram is not copied.
        assert_eq!(
            fate(Side::Link, ETH_P_IP, &ipv4(17, 5000, 6000, false)),
            TO_VM
        );
    }

    #[test]
    fn address_resolution_replies_reach_both_stacks_and_requests_the_vm_alone() {
        // Ethernet/IPv4 ARP: hardware type, protocol type, lengths, operation.
        let arp = |op: u8| [0, 1, 8, 0, 6, 4, 0, op];
        assert_eq!(fate(Side::Link, ETH_P_ARP, &arp(2)), TO_BOTH, "a reply");
        assert_eq!(
            fate(Side::Link, ETH_P_ARP, &arp(1)),
            TO_VM,
            "a request: only the VM answers it"
        );
        assert_eq!(
            fate(Side::Link, ETH_P_IPV6, &ipv6(58, [136, 0, 0, 0])),
            TO_BOTH,
            "an advertisement"
        );
        assert_eq!(
            fate(Side::Link, ETH_P_IPV6, &ipv6(58, [135, 0, 0, 0])),
            TO_VM,
            "a solicitation: only the VM answers it"
        );
        // Router advertisements and the rest of ICMPv6 are the VM's.
        assert_eq!(
            fate(Side::Link, ETH_P_IPV6, &ipv6(58, [134, 0, 0, 0])),
            TO_VM
        );
    }

    #[test]
    fn everything_from_the_vm_goes_out_of_the_link() {
        for (proto, p) in [
            (ETH_P_IP, ipv4(17, 53, 62000, false)),
            (ETH_P_ARP, vec![0, 1, 8, 0]),
            (ETH_P_IPV6, ipv6(58, [135, 0, 0, 0])),
        ] {
            assert_eq!(fate(Side::Tap, proto, &p), TO_VM, "redirected to the link");
        }
    }

    #[test]
    fn priorities_are_distinct_and_the_catch_all_comes_last() {
        let fs = filters();
        let mut prios: Vec<u16> = fs.iter().map(|f| f.priority).collect();
        prios.dedup();
        assert_eq!(prios.len(), fs.len());
        let last_on_link = fs.iter().rfind(|f| f.on == Side::Link).unwrap();
        assert_eq!(last_on_link.matches, Match::Everything);
        assert!(fs
            .iter()
            .filter(|f| f.on == Side::Link)
            .all(|f| f.priority <= last_on_link.priority));
    }
}
