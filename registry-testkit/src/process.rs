//! Helpers for tests that run the built binaries: free loopback ports and a child process
//! that is killed when the test ends, passing or not.

use std::process::Child;

/// A free loopback port, reserved by binding and released at once (another process may
/// take it before the child binds it: callers that start binaries retry on new ports).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free loopback ports, all held while they are picked.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("bound address").port())
        .collect()
}

/// Kills the child process when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
