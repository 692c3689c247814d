//! The drain that follows the requests: after `state=draining` went out,
//! wait until the app has no open client connection on its service port
//! (or `--drain`, the maximum, runs out), so the app is stopped as soon as
//! its last request ended and never in the middle of one that the maximum
//! still allows.
//!
//! The count is trusted only after a minimum `grace` (`--drain-grace`): the
//! load balancer has to hear of the drain (gossip, lbgen's debounce, the
//! HAProxy change) before it stops sending new connections; an app with no
//! connection at the very start of the drain may still get some.
//!
//! Whose connections: as the container's PID 1, the network namespace is the
//! app's, so every established connection on the port counts. Anywhere else
//! (a host, `docker run --init`), only sockets held by shoal's own process
//! tree (the services, their children, orphans re-parented to shoal as the
//! subreaper) count, found through `/proc/PID/fd`, so another process on the
//! host with connections on the same port cannot hold the drain.
//! The sockets are those of the services' network namespace: shoal's own
//! (the usual case) through the kernel's `sock_diag` netlink dump, which
//! filters by state in the kernel, with `/proc/self/net/tcp{,6}` as the
//! fallback; another one through `/proc/PID/net/tcp{,6}` of a service's
//! process. Parsing is in [`super::sockets`].

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::sockets::{self, Owner};

/// Time between two counts once the grace is over: the app is stopped at
/// most this long (plus one count's time) after its last connection closed.
pub const POLL: Duration = Duration::from_millis(20);

/// The default `--drain-grace`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(1);

/// How to drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainSpec {
    /// `--drain`: the longest wait.
    pub max: Duration,
    /// `--drain-grace`: the shortest wait before connections are counted
    /// (capped at `max`).
    pub grace: Duration,
    /// The service port (tag `port`); without it the drain waits `max`.
    pub port: Option<u16>,
}

/// Why a drain ended (logged; kept as data for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// No open connection was left on the service port after the grace.
    Idle,
    /// The maximum ran out with connections still open (the last count).
    MaxReached { open: usize },
    /// Nothing to count (no service port, or the kernel's tables could not
    /// be read): the whole maximum was waited.
    Timer,
    /// The services ended by themselves during the drain.
    ServicesEnded,
}

/// How a drain went: why it ended and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    pub end: DrainEnd,
    pub took: Duration,
}

/// Counts the app's open connections on `port` (blocking: reads `/proc`
/// and the kernel's socket tables). `pids` are the running services'
/// processes (for their network namespace).
pub fn count_open(port: u16, pids: &[i32]) -> std::io::Result<usize> {
    let owner = if std::process::id() == 1 {
        Owner::Namespace
    } else {
        Owner::Inodes(tree_socket_inodes(std::process::id() as i32))
    };
    let mut total = 0;
    for ns in namespaces(pids) {
        let entries = match ns {
            // Ours: the kernel filters by state (fast with many TIME_WAITs);
            // the tables are the fallback if sock_diag is not there.
            Namespace::Own => match diag_dump() {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::debug!(error = %e, "sock_diag failed; reading /proc/self/net");
                    read_tables(Path::new("/proc/self/net"))?
                }
            },
            Namespace::Other(dir) => read_tables(&dir)?,
        };
        total += sockets::open_connections(&entries, port, &owner);
    }
    Ok(total)
}

/// The rows of `DIR/tcp` and `DIR/tcp6`.
fn read_tables(dir: &Path) -> std::io::Result<Vec<sockets::TcpEntry>> {
    let mut entries = Vec::new();
    for table in ["tcp", "tcp6"] {
        match std::fs::read_to_string(dir.join(table)) {
            Ok(text) => entries.extend(sockets::parse_tcp_table(&text)),
            // No IPv6 in this kernel or namespace: nothing to count there.
            Err(e) if table == "tcp6" && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(entries)
}

/// Established and listening TCP sockets of shoal's own network namespace,
/// IPv4 and IPv6, from a `sock_diag` netlink dump.
fn diag_dump() -> std::io::Result<Vec<sockets::TcpEntry>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            4, // NETLINK_SOCK_DIAG
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: a valid timeval of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for (seq, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        let req = sockets::diag_request(family, seq);
        // SAFETY: zeroed sockaddr_nl is valid; pid 0 = the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: the buffer and address are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let chunk = sockets::parse_diag(&buf[..n as usize]).map_err(std::io::Error::other)?;
            entries.extend(chunk.entries);
            if chunk.done || n == 0 {
                break;
            }
        }
    }
    Ok(entries)
}

/// A network namespace whose sockets are counted.
enum Namespace {
    /// shoal's own (the usual case: services do not leave it).
    Own,
    /// Another one: its `/proc/PID/net` directory.
    Other(std::path::PathBuf),
}

/// One entry per distinct network namespace of `pids` (shoal's own when
/// none can be read: the services share it).
fn namespaces(pids: &[i32]) -> Vec<Namespace> {
    let own = std::fs::read_link("/proc/self/ns/net").ok();
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for pid in pids {
        let proc_dir = Path::new("/proc").join(pid.to_string());
        if let Ok(ns) = std::fs::read_link(proc_dir.join("ns/net")) {
            if seen.insert(ns.clone()) {
                if Some(&ns) == own.as_ref() {
                    found.push(Namespace::Own);
                } else {
                    found.push(Namespace::Other(proc_dir.join("net")));
                }
            }
        }
    }
    if found.is_empty() {
        found.push(Namespace::Own);
    }
    found
}

/// The socket inodes held open by the descendants of `root` (not `root`
/// itself: shoal's own sockets are its API, gossip and health checks).
/// Processes that vanish while being read are skipped.
fn tree_socket_inodes(root: i32) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for pid in descendants(root) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if let Some(inode) = link.to_str().and_then(sockets::socket_inode) {
                    inodes.insert(inode);
                }
            }
        }
    }
    inodes
}

/// Every descendant of `root`: from each process's
/// `/proc/PID/task/TID/children` lists (a few small reads), or, on a
/// kernel without them, from the parent field of every `/proc/PID/stat`.
fn descendants(root: i32) -> Vec<i32> {
    match children_lists(root) {
        Some(found) => found,
        None => descendants_by_scan(root),
    }
}

/// None when the kernel has no `children` lists (`CONFIG_PROC_CHILDREN`).
fn children_lists(root: i32) -> Option<Vec<i32>> {
    let children_of = |pid: i32| -> Option<Vec<i32>> {
        let mut kids = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            match std::fs::read_to_string(task.path().join("children")) {
                Ok(text) => kids.extend(sockets::pid_list(&text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && pid == root => {
                    // Ours always exists: the kernel lacks the lists.
                    return None;
                }
                Err(_) => {} // a thread or process that just ended
            }
        }
        Some(kids)
    };
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut todo = children_of(root)?;
    while let Some(pid) = todo.pop() {
        if seen.insert(pid) {
            found.push(pid);
            todo.extend(children_of(pid).unwrap_or_default());
        }
    }
    Some(found)
}

fn descendants_by_scan(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some(ppid) = sockets::stat_ppid(&stat) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut todo: Vec<i32> = children.get(&root).cloned().unwrap_or_default();
    while let Some(pid) = todo.pop() {
        if seen.insert(pid) {
            found.push(pid);
            todo.extend(children.get(&pid).into_iter().flatten());
        }
    }
    found
}

/// Waits out a drain per `spec`; `pids` gives the services' current
/// processes at each count. Resolves early, with [`DrainEnd::ServicesEnded`],
/// when `ended` does.
pub async fn wait(
    spec: DrainSpec,
    pids: impl Fn() -> Vec<i32>,
    ended: impl std::future::Future<Output = i32>,
) -> DrainReport {
    let start = Instant::now();
    let deadline = start + spec.max;
    tokio::pin!(ended);
    let report = |end| DrainReport {
        end,
        took: start.elapsed(),
    };
    let Some(port) = spec.port else {
        tracing::info!(drain = ?spec.max, "no service port (tag `port`): waiting the whole drain");
        return tokio::select! {
            _ = tokio::time::sleep_until(deadline) => report(DrainEnd::Timer),
            _ = &mut ended => report(DrainEnd::ServicesEnded),
        };
    };
    tokio::select! {
        _ = tokio::time::sleep_until(start + spec.grace.min(spec.max)) => {}
        _ = &mut ended => return report(DrainEnd::ServicesEnded),
    }
    let mut open = 0;
    loop {
        let now_pids = pids();
        let counted = tokio::task::spawn_blocking(move || count_open(port, &now_pids))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match counted {
            Ok(0) => {
                tracing::info!(port, after = ?start.elapsed(), "no open connection left on the service port");
                return report(DrainEnd::Idle);
            }
            Ok(n) => {
                if n != open {
                    tracing::debug!(port, open = n, "waiting for open connections to close");
                }
                open = n;
            }
            Err(e) => {
                tracing::warn!(port, error = %e, "cannot count the open connections: waiting the whole drain");
                return tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => report(DrainEnd::Timer),
                    _ = &mut ended => report(DrainEnd::ServicesEnded),
                };
            }
        }
        if Instant::now() >= deadline {
            tracing::warn!(port, open, drain = ?spec.max, "drain maximum reached with connections open");
            return report(DrainEnd::MaxReached { open });
        }
        let next = (Instant::now() + POLL).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = &mut ended => return report(DrainEnd::ServicesEnded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn inode_of(fd: &impl AsRawFd) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        sockets::socket_inode(link.to_str().unwrap()).unwrap()
    }

    #[test]
    fn the_netlink_dump_and_the_proc_tables_see_the_same_real_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (served, _) = listener.accept().unwrap();
        let ours = Owner::Inodes([inode_of(&listener), inode_of(&served)].into());
        let dumped = diag_dump().expect("sock_diag dump");
        let read = read_tables(Path::new("/proc/self/net")).unwrap();
        assert_eq!(sockets::open_connections(&dumped, port, &ours), 1);
        assert_eq!(sockets::open_connections(&read, port, &ours), 1);
        assert_eq!(
            sockets::open_connections(&dumped, port, &Owner::Inodes(HashSet::new())),
            0
        );
        drop(served);
        let dumped = diag_dump().expect("sock_diag dump");
        assert_eq!(sockets::open_connections(&dumped, port, &ours), 0);
    }
}
