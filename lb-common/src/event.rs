//! Things that happen to packets on their way, beside their outcome: connection-table
//! hits and inserts, next-hop fallbacks, fragments, ICMP errors. A packet may raise none
//! or several; each has a per-CPU counter in `EVENTS` (the outcome itself is counted
//! once, in `REASONS`).

macro_rules! events {
    ($($(#[doc = $doc:literal])* $name:ident = $code:literal, $text:literal;)+) => {
        /// Event codes; the value indexes the `EVENTS` counter array.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u32)]
        pub enum Event {
            $($(#[doc = $doc])* $name = $code,)+
        }

        impl Event {
            /// Every event, in code order.
            pub const ALL: &'static [Event] = &[$(Event::$name,)+];

            /// The name reported by the daemon and in metrics.
            pub const fn name(self) -> &'static str {
                match self { $(Event::$name => $text,)+ }
            }
        }
    };
}

events! {
    /// A packet found its flow's entry.
    CtHit = 0, "ct_hit";
    /// A packet found no entry (a new flow, or one this director has not seen).
    CtMiss = 1, "ct_miss";
    /// An entry was created (or replaced an expired or finished one).
    CtInsert = 2, "ct_insert";
    /// The flood guard refused an insert: the flow was forwarded, not remembered.
    CtInsertRefused = 3, "ct_insert_refused";
    /// The map refused an insert (should not happen with an LRU map).
    CtInsertFailed = 4, "ct_insert_failed";
    /// An entry had timed out; the flow was scheduled afresh.
    CtExpired = 5, "ct_expired";
    /// A SYN reused the 5-tuple of a finished connection; it was scheduled afresh.
    CtReused = 6, "ct_reused";
    /// An entry's real server had been removed; the entry was deleted.
    CtNodestExpired = 7, "ct_nodest_expired";
    /// A non-SYN TCP packet found no entry and was scheduled as a new flow.
    CtMidstreamMiss = 8, "ct_midstream_miss";
    /// The next-hop cache had no usable entry; `bpf_fib_lookup` was asked.
    NexthopFallback = 9, "nexthop_fallback";
    /// A first fragment was scheduled and remembered for the rest of its datagram.
    FragFirst = 10, "frag_first";
    /// A later fragment followed its datagram's first fragment.
    FragFollowed = 11, "frag_followed";
    /// An ICMP error quoting a tracked flow was sent to that flow's real.
    IcmpToReal = 12, "icmp_to_real";
    /// The ingress interface is not in `IFACES`, so its MAC could not be checked.
    IfaceUnknown = 13, "iface_unknown";
    /// A NAT real's answer found its flow's reply entry.
    CtReplyHit = 14, "ct_reply_hit";
    /// A full-NAT source port was taken by a live flow; another was tried.
    SnatRetry = 15, "snat_retry";
    /// A full-NAT source port held by an expired entry was taken over.
    SnatReclaimed = 16, "snat_reclaimed";
    /// A NAT flow's client-side hop (interface or MAC) changed; its reply entry follows.
    HopMoved = 17, "hop_moved";
    /// An ICMP error about a NAT flow was translated and sent to the flow's client.
    IcmpToClient = 18, "icmp_to_client";
    /// A NAT flow's reply entry was gone (evicted) and was made again by its forward
    /// packets.
    CtReplyRestored = 19, "ct_reply_restored";
    /// A NAT flow's other entry's key was held by another flow (after this flow's entry
    /// expired or was evicted): the entry ended and the packet was scheduled afresh.
    CtTwinTaken = 20, "ct_twin_taken";
    /// A persistent service's new flow went to the real its client's template names.
    PersistHit = 21, "persist_hit";
    /// A persistent service's new flow was scheduled and its client's template made (no
    /// template, or one expired, for a removed real, or for a real taking no new clients).
    PersistNew = 22, "persist_new";
}

/// Number of event codes: the size of the `EVENTS` array.
pub const EVENT_COUNT: u32 = 23;

const _: () = assert!(Event::ALL.len() == EVENT_COUNT as usize);
