//! A fault-injecting TCP proxy for one directed link between two nodes.
//!
//! Node `a` dials node `b` through the proxy of link `a → b` (the node's
//! `[peer_routes]`), so every connection `a` opens to `b` (Raft RPCs, write
//! forwarding, read-index calls) passes here, in both byte directions.
//! Cutting `a → b` alone is a one-way partition: `a` cannot reach `b`, while
//! `b` still reaches `a` through the proxy of `b → a`.
//!
//! Faults model the network, not the application:
//! - [`Fault::Cut`]: packets are lost. Nothing is read or delivered (bytes
//!   back up as in a real TCP connection whose segments go unanswered) and
//!   new connections get no upstream until the link heals: a client sees a
//!   connect that hangs, like a dropped SYN. On heal, what was held flows on.
//! - [`Fault::Delay`]: every chunk is delivered that much later, in order.
//! - [`Fault::Flaky`]: each chunk resets its connection with the given
//!   probability (per mille), both ways.
//! - [`Fault::Reset`]: every open connection is reset, and new ones are
//!   reset at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What the link does to traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Cut,
    Delay(Duration),
    /// Resets a connection on a chunk with this probability, per mille.
    Flaky(u32),
    Reset,
}

/// One directed link's proxy. Dropping it closes the listener and every
/// connection.
pub struct LinkProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    task: tokio::task::JoinHandle<()>,
}

/// Why a connection ended early.
struct Reset;

impl LinkProxy {
    /// Listens on a free loopback port and forwards to `target`. `seed`
    /// makes the flaky link's choices reproducible.
    pub async fn start(target: String, seed: u64) -> std::io::Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (fault, rx) = watch::channel(Fault::Pass);
        let conns = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(async move {
            let mut open = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let n = conns.fetch_add(1, Ordering::Relaxed);
                        let rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(n));
                        open.spawn(connection(client, target.clone(), rx.clone(), rng));
                    }
                    // Reap finished connections so the set stays small.
                    Some(_) = open.join_next(), if !open.is_empty() => {}
                }
            }
        });
        Ok(LinkProxy { addr, fault, task })
    }

    /// Where the dialling node connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits while the link is cut; the fault that then holds.
async fn passable(rx: &mut watch::Receiver<Fault>) -> Fault {
    match rx.wait_for(|f| *f != Fault::Cut).await {
        Ok(f) => *f,
        // The proxy is gone: behave as reset.
        Err(_) => Fault::Reset,
    }
}

async fn connection(client: TcpStream, target: String, mut rx: watch::Receiver<Fault>, mut rng: rand::rngs::StdRng) {
    // A cut link answers no SYN: the client's connect hangs until it heals.
    if passable(&mut rx).await == Fault::Reset {
        let _ = client.set_zero_linger();
        return;
    }
    let Ok(server) = TcpStream::connect(&target).await else { return };
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
        // Dropping a socket resets it: an aborted connection is torn down
        // the way a reset link tears it down.
        let _ = s.set_zero_linger();
    }
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let mut dirs = JoinSet::new();
    for (read, write, seed) in [(cr, sw, 0u64), (sr, cw, 1u64)] {
        let (tx, queue) = mpsc::unbounded_channel();
        let rng = rand::rngs::StdRng::seed_from_u64(rng.gen::<u64>() ^ seed);
        dirs.spawn(reader(read, tx, rx.clone(), rng));
        dirs.spawn(writer(write, queue, rx.clone()));
    }
    while let Some(done) = dirs.join_next().await {
        if matches!(done, Ok(Err(Reset)) | Err(_)) {
            dirs.abort_all();
            return;
        }
    }
}

/// Reads chunks while the link passes and queues each with the time it is
/// due; `None` marks the end of the stream.
async fn reader(
    mut read: OwnedReadHalf,
    queue: mpsc::UnboundedSender<Option<(Instant, Vec<u8>)>>,
    mut rx: watch::Receiver<Fault>,
    mut rng: rand::rngs::StdRng,
) -> Result<(), Reset> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if passable(&mut rx).await == Fault::Reset {
            return Err(Reset);
        }
        let n = tokio::select! {
            r = read.read(&mut buf) => r.map_err(|_| Reset)?,
            // A change of fault is looked at before reading on.
            _ = rx.changed() => continue,
        };
        if n == 0 {
            let _ = queue.send(None);
            return Ok(());
        }
        let fault = *rx.borrow();
        let due = match fault {
            Fault::Delay(d) => Instant::now() + d,
            Fault::Flaky(per_mille) if rng.gen_range(0..1000) < per_mille => return Err(Reset),
            Fault::Reset => return Err(Reset),
            _ => Instant::now(),
        };
        if queue.send(Some((due, buf[..n].to_vec()))).is_err() {
            return Err(Reset);
        }
    }
}

/// Delivers queued chunks when due, holding them while the link is cut.
async fn writer(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Option<(Instant, Vec<u8>)>>,
    mut rx: watch::Receiver<Fault>,
) -> Result<(), Reset> {
    while let Some(item) = queue.recv().await {
        let Some((due, bytes)) = item else {
            let _ = write.shutdown().await;
            return Ok(());
        };
        tokio::time::sleep_until(due).await;
        if passable(&mut rx).await == Fault::Reset {
            return Err(Reset);
        }
        write.write_all(&bytes).await.map_err(|_| Reset)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server; returns its address.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8], within: Duration) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        match tokio::time::timeout(within, s.read_exact(&mut got)).await {
            Ok(r) => r.map(|_| got),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    #[tokio::test]
    async fn passes_holds_while_cut_and_delivers_on_heal() {
        let p = LinkProxy::start(echo().await.to_string(), 1).await.unwrap();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"hello", Duration::from_secs(5)).await.unwrap(), b"hello");

        p.set(Fault::Cut);
        let err = roundtrip(&mut s, b"lost?", Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "nothing crosses a cut link");
        p.set(Fault::Pass);
        let mut got = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"lost?", "held bytes flow on after the heal, like TCP retransmission");
    }

    #[tokio::test]
    async fn a_new_connection_over_a_cut_link_gets_through_only_after_the_heal() {
        let p = LinkProxy::start(echo().await.to_string(), 2).await.unwrap();
        p.set(Fault::Cut);
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert!(roundtrip(&mut s, b"x", Duration::from_millis(300)).await.is_err());
        p.set(Fault::Pass);
        let mut got = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn delay_slows_every_chunk() {
        let p = LinkProxy::start(echo().await.to_string(), 3).await.unwrap();
        p.set(Fault::Delay(Duration::from_millis(150)));
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        let started = std::time::Instant::now();
        roundtrip(&mut s, b"slow", Duration::from_secs(5)).await.unwrap();
        // Both directions are delayed: at least twice the delay.
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn reset_tears_down_open_connections_and_refuses_new_ones() {
        let p = LinkProxy::start(echo().await.to_string(), 4).await.unwrap();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        roundtrip(&mut s, b"up", Duration::from_secs(5)).await.unwrap();
        p.set(Fault::Reset);
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "the open connection ends: {r:?}");
        let mut s2 = TcpStream::connect(p.addr()).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), s2.read(&mut buf)).await.unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "a new connection ends: {r:?}");
        p.set(Fault::Pass);
        let mut s3 = TcpStream::connect(p.addr()).await.unwrap();
        roundtrip(&mut s3, b"back", Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn a_flaky_link_resets_some_connections_and_passes_others() {
        let p = LinkProxy::start(echo().await.to_string(), 5).await.unwrap();
        p.set(Fault::Flaky(500));
        let (mut ok, mut reset) = (0, 0);
        for _ in 0..40 {
            let mut s = TcpStream::connect(p.addr()).await.unwrap();
            match roundtrip(&mut s, b"coin", Duration::from_secs(2)).await {
                Ok(_) => ok += 1,
                Err(_) => reset += 1,
            }
        }
        assert!(ok > 0 && reset > 0, "ok {ok}, reset {reset}");
    }
}
