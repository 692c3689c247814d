//! Pure parsing for the drain: the kernel's TCP tables (`/proc/net/tcp`,
//! `/proc/net/tcp6`), socket links (`/proc/PID/fd/N` → `socket:[INODE]`), a
//! process's children (`/proc/PID/task/TID/children`) and parent
//! (`/proc/PID/stat`), and the count the drain waits on:
//! established connections whose local port is the service port.
//!
//! The same rows also come from the kernel's `sock_diag` netlink interface
//! (what `ss` uses), which filters by state in the kernel: a namespace with
//! tens of thousands of `TIME_WAIT` sockets costs a 100 ms `/proc` read per
//! count but a sub-millisecond dump. [`diag_request`] and [`parse_diag`] are
//! its message formats (`linux/inet_diag.h`, `linux/netlink.h`).
//!
//! No I/O here; [`super::drain`] reads the files and sockets and feeds them in.

use std::collections::HashSet;

/// The kernel's `TCP_ESTABLISHED` (column `st`, hex).
const ESTABLISHED: u8 = 0x01;
/// The kernel's `TCP_LISTEN`.
const LISTEN: u8 = 0x0A;

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`: what the drain needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEntry {
    pub local_port: u16,
    /// The kernel's TCP state number (`01` established, `0A` listen, ...).
    pub state: u8,
    /// The socket's inode; 0 for a connection still in a listener's accept
    /// queue (no process holds it yet) or one in `TIME_WAIT`.
    pub inode: u64,
}

/// Parses a whole `/proc/net/tcp{,6}` text: the header line and lines that
/// do not parse (a format this code does not know) are skipped.
pub fn parse_tcp_table(text: &str) -> Vec<TcpEntry> {
    text.lines().filter_map(parse_tcp_line).collect()
}

/// Parses one row: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`,
/// with the local address as `HEXADDR:HEXPORT` (8 hex digits for IPv4, 32 for IPv6).
pub fn parse_tcp_line(line: &str) -> Option<TcpEntry> {
    let mut fields = line.split_whitespace();
    let slot = fields.next()?;
    if !slot.ends_with(':') {
        return None; // the header
    }
    let local = fields.next()?;
    let _remote = fields.next()?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    // tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout
    let inode = fields.nth(5)?.parse().ok()?;
    let (addr, port) = local.rsplit_once(':')?;
    if !matches!(addr.len(), 8 | 32) || !addr.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let local_port = u16::from_str_radix(port, 16).ok()?;
    Some(TcpEntry {
        local_port,
        state,
        inode,
    })
}

/// The inode of a `/proc/PID/fd/N` link that is a socket (`socket:[123]`).
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The parent pid from a `/proc/PID/stat` line. The command name in
/// parentheses may itself hold spaces and `)`, so the fields are read after
/// its last `)`: `state ppid ...`.
pub fn stat_ppid(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The pids of a `/proc/PID/task/TID/children` file (`"12 34 "`); words
/// that are not pids are skipped.
pub fn pid_list(text: &str) -> impl Iterator<Item = i32> + '_ {
    text.split_whitespace().filter_map(|w| w.parse().ok())
}

/// `SOCK_DIAG_BY_FAMILY`, the netlink message type of an inet_diag dump.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x100 | 0x200; // NLM_F_ROOT | NLM_F_MATCH
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_msg` up to and including `idiag_inode`.
const DIAG_MSG: usize = 72;
const IPPROTO_TCP: u8 = 6;

/// A dump request for the TCP sockets of `family` (`AF_INET` or `AF_INET6`)
/// in the states the drain looks at (established and listening): a
/// `nlmsghdr` and a `struct inet_diag_req_v2`, in host byte order.
pub fn diag_request(family: u8, seq: u32) -> Vec<u8> {
    let states: u32 = (1 << ESTABLISHED) | (1 << LISTEN);
    let len = (NLMSG_HDR + 56) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it in
    m.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]); // family, protocol, ext, pad
    m.extend_from_slice(&states.to_ne_bytes());
    m.extend_from_slice(&[0u8; 48]); // struct inet_diag_sockid: any
    m
}

/// One `recv` of a dump: its sockets, and whether the dump is complete.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DiagChunk {
    pub entries: Vec<TcpEntry>,
    pub done: bool,
}

/// Parses the messages of one `recv` of an inet_diag dump; a netlink error
/// message or a message too short for its header is an error.
pub fn parse_diag(mut buf: &[u8]) -> Result<DiagChunk, String> {
    let mut chunk = DiagChunk::default();
    while buf.len() >= NLMSG_HDR {
        let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let len = u32_at(buf, 0) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < NLMSG_HDR || len > buf.len() {
            return Err(format!(
                "netlink message of {len} bytes in {} bytes",
                buf.len()
            ));
        }
        let body = &buf[NLMSG_HDR..len];
        match kind {
            NLMSG_DONE => {
                chunk.done = true;
                return Ok(chunk);
            }
            NLMSG_ERROR => {
                let errno = if body.len() >= 4 {
                    -(u32_at(body, 0) as i32)
                } else {
                    0
                };
                return Err(format!(
                    "sock_diag: {}",
                    std::io::Error::from_raw_os_error(errno)
                ));
            }
            SOCK_DIAG_BY_FAMILY if body.len() >= DIAG_MSG => chunk.entries.push(TcpEntry {
                state: body[1],
                // idiag_sport, network byte order
                local_port: u16::from_be_bytes([body[4], body[5]]),
                inode: u64::from(u32_at(body, 68)),
            }),
            SOCK_DIAG_BY_FAMILY => {
                return Err(format!("inet_diag message of {} bytes", body.len()))
            }
            _ => {} // NLMSG_NOOP and the like
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        buf = &buf[next.min(buf.len())..];
    }
    Ok(chunk)
}

/// Which sockets count as the app's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Every socket of the network namespace: the supervisor is the
    /// container's PID 1, so the namespace is the app's.
    Namespace,
    /// Only sockets held open by the supervised process tree (their
    /// inodes), so another process on the host cannot hold the drain.
    Inodes(HashSet<u64>),
}

/// Established connections whose local port is `port`, owned per `owner`.
///
/// A connection still in a listener's accept queue has no inode yet; it
/// counts when the listener on `port` is the app's (the app will accept
/// and serve it).
pub fn open_connections(entries: &[TcpEntry], port: u16, owner: &Owner) -> usize {
    let ours = |inode: u64| match owner {
        Owner::Namespace => true,
        Owner::Inodes(set) => set.contains(&inode),
    };
    let listener_is_ours = entries
        .iter()
        .any(|e| e.state == LISTEN && e.local_port == port && ours(e.inode));
    entries
        .iter()
        .filter(|e| e.state == ESTABLISHED && e.local_port == port)
        .filter(|e| ours(e.inode) || (e.inode == 0 && listener_is_ours))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real rows, taken from a Linux 6.x host: a listener on 127.0.0.1:43243
    // (0xA8EB) with one accepted connection, the client side of it, and a
    // client connection to a port elsewhere in the table.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     
   2: 0100007F:A8EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 96730 1 0000000061178e1a 100 0 0 10 0                     
   3: 0100007F:ECF0 0100007F:A8EB 01 00000000:00000000 00:00000000 00000000     0        0 96731 2 0000000098e42c91 20 0 0 10 -1                     
   4: 0100007F:A8EB 0100007F:ECF0 01 00000000:00000000 00:00000000 00000000     0        0 96732 1 0000000018663d6f 20 0 0 10 -1                     
   5: 0100007F:B35C 0100007F:D3E5 01 00000000:00000000 00:00000000 00000000     0        0 96736 2 00000000a0ae7abe 20 0 0 10 -1                     
";

    // A listener on [::]:54245 (0xD3E5) with an IPv4-mapped and an IPv6
    // connection accepted, and the IPv6 client's side.
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:D3E5 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 96733 1 000000004db87993 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:D3E5 0000000000000000FFFF00000100007F:B35C 01 00000000:00000000 00:00000000 00000000     0        0 96737 1 00000000bdbb7dc9 20 0 0 10 -1
   2: 00000000000000000000000001000000:84C4 00000000000000000000000001000000:D3E5 01 00000000:00000000 00:00000000 00000000     0        0 96734 2 000000009546f29c 20 0 0 10 -1
   3: 00000000000000000000000001000000:D3E5 00000000000000000000000001000000:84C4 01 00000000:00000000 00:00000000 00000000     0        0 96735 1 00000000ba05ed19 20 0 0 10 -1
";

    // Port 40879 (0x9FAF): a connection not accepted yet (inode 0), then the
    // same after the client closed (CLOSE_WAIT on the server, FIN_WAIT2 on
    // the client, which has no inode any more).
    const QUEUED: &str = "   0: 0100007F:9FAF 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 96903 2 0000000061178e1a 100 0 0 10 0
   3: 0100007F:9FAF 0100007F:AD50 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000018663d6f 20 0 0 10 -1
   5: 0100007F:AD50 0100007F:9FAF 01 00000000:00000000 00:00000000 00000000     0        0 96904 2 00000000a0ae7abe 20 0 0 10 -1
";
    const CLOSED_BY_CLIENT: &str = "   0: 0100007F:9FAF 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 96903 1 0000000061178e1a 100 0 0 10 0
   3: 0100007F:9FAF 0100007F:AD50 08 00000000:00000001 00:00000000 00000000     0        0 96906 1 0000000018663d6f 20 4 0 10 -1
   5: 0100007F:AD50 0100007F:9FAF 05 00000000:00000000 03:00001769 00000000     0        0 0 3 00000000b5ec8bc4
";

    fn inodes(list: &[u64]) -> Owner {
        Owner::Inodes(list.iter().copied().collect())
    }

    #[test]
    fn rows_of_both_tables_parse_and_the_header_is_skipped() {
        let v4 = parse_tcp_table(TCP);
        assert_eq!(v4.len(), 4);
        assert_eq!(
            v4[0],
            TcpEntry {
                local_port: 0xA8EB,
                state: LISTEN,
                inode: 96730
            }
        );
        assert_eq!(
            v4[2],
            TcpEntry {
                local_port: 0xA8EB,
                state: ESTABLISHED,
                inode: 96732
            }
        );
        let v6 = parse_tcp_table(TCP6);
        assert_eq!(v6.len(), 4);
        assert_eq!(v6[1].local_port, 54245);
        assert_eq!(v6[1].inode, 96737);
    }

    #[test]
    fn lines_of_an_unknown_shape_are_skipped() {
        for bad in [
            "",
            "garbage",
            "   0: 0100007F 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1",
            "   0: 0100007F:ZZZZ 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1",
            "   0: 01007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1",
            "   0: 0100007F:0050 00000000:0000 0A 00000000:00000000",
            "   0: 0100007F:0050 00000000:0000 XY 00000000:00000000 00:00000000 00000000 0 0 1 1",
        ] {
            assert_eq!(parse_tcp_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_established_connections_on_the_service_port_count() {
        let v4 = parse_tcp_table(TCP);
        // The accepted connection; not the listener, not the client side
        // (its local port is ephemeral), not the connection to another port.
        assert_eq!(open_connections(&v4, 0xA8EB, &Owner::Namespace), 1);
        assert_eq!(open_connections(&v4, 0xB35C, &Owner::Namespace), 1);
        assert_eq!(open_connections(&v4, 80, &Owner::Namespace), 0);
        let v6 = parse_tcp_table(TCP6);
        assert_eq!(open_connections(&v6, 54245, &Owner::Namespace), 2);
    }

    #[test]
    fn outside_a_container_only_the_apps_own_sockets_count() {
        let v6 = parse_tcp_table(TCP6);
        assert_eq!(
            open_connections(&v6, 54245, &inodes(&[96733, 96737, 96735])),
            2
        );
        // Another process's connection on the same port does not hold the drain.
        assert_eq!(open_connections(&v6, 54245, &inodes(&[96733, 96737])), 1);
        assert_eq!(open_connections(&v6, 54245, &inodes(&[])), 0);
    }

    #[test]
    fn a_connection_waiting_to_be_accepted_counts_when_the_listener_is_the_apps() {
        let queued = parse_tcp_table(QUEUED);
        assert_eq!(open_connections(&queued, 0x9FAF, &inodes(&[96903])), 1);
        assert_eq!(open_connections(&queued, 0x9FAF, &inodes(&[1])), 0);
        assert_eq!(open_connections(&queued, 0x9FAF, &Owner::Namespace), 1);
        // Once the client closed, nothing is established on the port.
        let closed = parse_tcp_table(CLOSED_BY_CLIENT);
        assert_eq!(open_connections(&closed, 0x9FAF, &Owner::Namespace), 0);
    }

    /// A netlink message as the kernel sends it: header, then body.
    fn nlmsg(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDR + body.len()) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend_from_slice(&7u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    /// A `struct inet_diag_msg` for 127.0.0.1:`port`.
    fn diag_msg(state: u8, port: u16, inode: u32) -> Vec<u8> {
        let mut b = vec![0u8; DIAG_MSG];
        b[0] = 2; // AF_INET
        b[1] = state;
        b[4..6].copy_from_slice(&port.to_be_bytes());
        b[8..12].copy_from_slice(&[127, 0, 0, 1]);
        b[68..72].copy_from_slice(&inode.to_ne_bytes());
        b
    }

    #[test]
    fn a_sock_diag_dump_parses_into_the_same_rows() {
        let req = diag_request(10, 7);
        assert_eq!(req.len(), 72);
        assert_eq!(u32::from_ne_bytes([req[0], req[1], req[2], req[3]]), 72);
        assert_eq!(&req[16..18], &[10, IPPROTO_TCP]);

        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, &diag_msg(LISTEN, 0xA8EB, 96730));
        buf.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            &diag_msg(ESTABLISHED, 0xA8EB, 96732),
        ));
        let chunk = parse_diag(&buf).expect("parses");
        assert!(!chunk.done);
        assert_eq!(
            chunk.entries,
            [
                TcpEntry {
                    local_port: 0xA8EB,
                    state: LISTEN,
                    inode: 96730
                },
                TcpEntry {
                    local_port: 0xA8EB,
                    state: ESTABLISHED,
                    inode: 96732
                },
            ]
        );
        assert_eq!(
            open_connections(&chunk.entries, 0xA8EB, &inodes(&[96732])),
            1
        );
        buf.extend(nlmsg(NLMSG_DONE, &0u32.to_ne_bytes()));
        assert!(parse_diag(&buf).expect("parses").done);

        let err = parse_diag(&nlmsg(NLMSG_ERROR, &(-13i32).to_ne_bytes())).expect_err("EACCES");
        assert!(err.contains("sock_diag"), "{err}");
        let mut cut = nlmsg(SOCK_DIAG_BY_FAMILY, &diag_msg(ESTABLISHED, 80, 1));
        cut.truncate(40);
        assert!(parse_diag(&cut).is_err());
        assert!(parse_diag(&nlmsg(SOCK_DIAG_BY_FAMILY, &[0u8; 8])).is_err());
    }

    #[test]
    fn socket_links_and_stat_lines_parse() {
        assert_eq!(socket_inode("socket:[96732]"), Some(96732));
        assert_eq!(socket_inode("pipe:[97373]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
        let stat = "1094 (cat) R 1087 1087 10110 0 -1 4194304 99 0 0 0 0 0 0 0 20 0 1 0 79201";
        assert_eq!(stat_ppid(stat), Some(1087));
        // A command name with spaces and a parenthesis in it.
        assert_eq!(stat_ppid("77 (a) b (c)) S 12 77 77 0"), Some(12));
        assert_eq!(stat_ppid("77 (no end"), None);
        assert_eq!(
            pid_list("1431 2525 17493 ").collect::<Vec<_>>(),
            [1431, 2525, 17493]
        );
        assert_eq!(pid_list("").count(), 0);
    }
}
