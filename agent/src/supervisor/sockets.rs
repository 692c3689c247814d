//! Pure parsing for the drain: the kernel's TCP tables (`/proc/net/tcp`,
//! `/proc/net/tcp6`), socket links (`/proc/PID/fd/N` → `socket:[INODE]`), a
//! process's children (`/proc/PID/task/TID/children`) and parent
//! (`/proc/PID/stat`), and the count the drain waits on:
//! established connections whose local port is the service port.
//!
//! No I/O here; [`super::drain`] reads the files and feeds them in.

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
