//! What 127.0.0.1 carries on this machine: a plain TCP copy between two
//! threads of this process (no TLS, no gRPC, nothing stored), the ceiling
//! a replication between two nodes on this machine is compared with.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Instant;

use anyhow::{Context, bail};

/// Bytes per `write` and per `read`.
const BUF: usize = 1 << 20;

/// One copy of `bytes` over one TCP connection on 127.0.0.1; returns the
/// seconds from the first write to the receiver's end of stream.
pub fn tcp_copy(bytes: u64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("loopback: binding 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> anyhow::Result<u64> {
        let (mut s, _) = listener.accept().context("loopback: accepting")?;
        let mut buf = vec![0u8; BUF];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf).context("loopback: reading")?;
            if n == 0 {
                return Ok(got);
            }
            got += n as u64;
        }
    });
    let mut s = TcpStream::connect(addr).context("loopback: connecting")?;
    // Not all zeros, so that nothing on the way could take a shortcut.
    let buf: Vec<u8> = (0..BUF).map(|i| (i * 31 % 251) as u8).collect();
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        s.write_all(&buf[..n]).context("loopback: writing")?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("loopback: the receiving thread panicked"))??;
    let secs = start.elapsed().as_secs_f64();
    if got != bytes {
        bail!("loopback: {got} bytes received of {bytes} sent");
    }
    Ok(secs)
}

/// `tries` copies of `bytes`; the seconds of each.
pub fn measure(bytes: u64, tries: usize) -> anyhow::Result<Vec<f64>> {
    (0..tries).map(|_| tcp_copy(bytes)).collect()
}
