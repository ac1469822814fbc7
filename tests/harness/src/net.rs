//! Which process serves a TCP port (Linux `/proc`): a test server's readiness check
//! answered by *another* test's server on a port both picked is not readiness.

/// Whether process `pid` holds a socket listening on TCP `port` (any local address,
/// IPv4 or IPv6): the socket's inode in `/proc/net/tcp{,6}` among the process's open
/// files.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // Columns: sl, local_address (hex ADDR:PORT), rem_address, st (0A: LISTEN), ...,
        // inode (the tenth).
        inodes.extend(text.lines().skip(1).filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1].ends_with(&suffix) && f[3] == "0A")
                .then(|| format!("socket:[{}]", f[9]))
        }));
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn a_listener_is_found_in_its_own_process_only() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), port));
        // PID 1 is not this test.
        assert!(!listens_on(1, port));
        drop(l);
        assert!(!listens_on(std::process::id(), port));
    }
}
