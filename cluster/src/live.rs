//! Open TLS connections between nodes, held to the trust in force now.
//!
//! A handshake checks a peer's certificate once; a connection between nodes
//! lives for hours. Every connection this node dials or accepts with mutual
//! TLS is registered here with the certificate its peer presented, and
//! [`Live::recheck`] (run by the node at every reload tick, so also right
//! after the CA bundle or the deny-list changed) checks each one again
//! against the trust in force. A peer whose serial was denied is cut off at
//! once. One that fails otherwise (its CA left the bundle, it expired) is
//! closed at the first check [`GRACE`] after it first failed: meanwhile the
//! node moves its own calls to new connections and calls already under way
//! finish, so a CA rotation done in order fails no call. Either way this node talks only to peers that pass
//! today, whichever side opened the connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use gatehouse_storage::NodeId;
use gatehouse_tls::peer::Trust;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a connection whose peer stopped passing (other than by a
/// denial) stays open for the calls under way on it.
pub const GRACE: Duration = Duration::from_secs(5);

/// Which way a connection was opened, and so how its peer is checked.
#[derive(Debug, Clone, Copy)]
enum Side {
    /// This node dialled node `id`: the peer's certificate must be that node's.
    Dialled(NodeId),
    /// A peer dialled this node: its certificate must bind some node.
    Accepted,
}

/// One open connection's peer and its switch. One waker is kept: reads and
/// writes of a connection are polled by one task (hyper's connection task).
struct Gate {
    side: Side,
    certs: Vec<CertificateDer<'static>>,
    closed: AtomicBool,
    /// When it first failed a check (closed [`GRACE`] later if it still fails).
    doomed: Mutex<Option<Instant>>,
    /// The task that last polled the connection, woken when it is closed.
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    /// Whether the connection was closed; if not, `cx` is woken when it is.
    fn closed(&self, cx: &Context<'_>) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return true;
        }
        {
            let mut w = self.waker.lock().unwrap_or_else(|p| p.into_inner());
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        // Closed between the first look and storing the waker: seen now.
        self.closed.load(Ordering::Acquire)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            w.wake();
        }
    }

    /// Why the peer no longer passes, if it does not, and whether its
    /// serial is denied (a connection without a certificate counts as
    /// denied: it has no place here).
    fn fails(&self, trust: &Trust) -> Option<(String, bool)> {
        let Some((end, intermediates)) = self.certs.split_first() else {
            return Some(("no certificate".into(), true));
        };
        let why = match self.side {
            Side::Dialled(id) => trust.check_server(end, intermediates, id).err(),
            Side::Accepted => trust.check_client(end, intermediates).err(),
        }?;
        Some((why, trust.denies(end)))
    }
}

/// The open connections between this node and its peers, and the trust
/// they are held to.
#[derive(Clone)]
pub struct Live {
    trust: Trust,
    open: Arc<Mutex<Vec<Weak<Gate>>>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Live({} open)", self.open())
    }
}

impl Live {
    pub fn new(trust: Trust) -> Live {
        Live { trust, open: Arc::default() }
    }

    /// Registers a connection this node dialled to node `id`, whose
    /// certificate chain is `certs`.
    pub fn dialled<S>(&self, stream: S, certs: &[CertificateDer<'_>], id: NodeId) -> Guarded<S> {
        self.register(stream, certs, Side::Dialled(id))
    }

    /// Registers a connection a peer dialled, whose certificate chain is `certs`.
    pub fn accepted<S>(&self, stream: S, certs: &[CertificateDer<'_>]) -> Guarded<S> {
        self.register(stream, certs, Side::Accepted)
    }

    fn register<S>(&self, stream: S, certs: &[CertificateDer<'_>], side: Side) -> Guarded<S> {
        let gate = Arc::new(Gate {
            side,
            certs: certs.iter().map(|c| c.clone().into_owned()).collect(),
            closed: AtomicBool::new(false),
            doomed: Mutex::new(None),
            waker: Mutex::new(None),
        });
        {
            let mut list = self.open.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|g| g.strong_count() > 0);
            list.push(Arc::downgrade(&gate));
        }
        // Checked again once registered: a deny-list that changed between
        // the handshake and now is not missed (a recheck that ran in
        // between did not see this connection yet).
        if let Some((why, true)) = gate.fails(&self.trust) {
            tracing::warn!(side = ?gate.side, why = %why, "closing a new peer connection: its certificate no longer passes");
            gate.close();
        }
        Guarded { inner: stream, gate: Some(gate) }
    }

    /// Checks every open connection's peer against `trust`: closes those
    /// of a denied serial, and those that have failed for [`GRACE`]; marks
    /// the others that fail.
    pub fn recheck(&self) -> Rechecked {
        self.recheck_at(Instant::now())
    }

    fn recheck_at(&self, now: Instant) -> Rechecked {
        let trust = &self.trust;
        let open: Vec<Arc<Gate>> = {
            let mut list = self.open.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|g| g.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        let mut out = Rechecked::default();
        for gate in open.iter().filter(|g| !g.closed.load(Ordering::Acquire)) {
            let mut doomed = gate.doomed.lock().unwrap_or_else(|p| p.into_inner());
            match gate.fails(trust) {
                None => *doomed = None,
                Some((why, denied)) if denied || doomed.is_some_and(|at| now >= at + GRACE) => {
                    tracing::warn!(side = ?gate.side, why = %why, "closing a peer connection: its certificate no longer passes");
                    gate.close();
                    out.closed += 1;
                }
                Some(_) if doomed.is_some() => out.doomed += 1,
                Some((why, _)) => {
                    tracing::info!(side = ?gate.side, why = %why, "a peer connection's certificate no longer passes: closing it after the calls under way");
                    *doomed = Some(now);
                    out.doomed += 1;
                }
            }
        }
        out
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|g| g.strong_count() > 0).count()
    }
}

/// What one [`Live::recheck`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rechecked {
    /// Connections closed now.
    pub closed: usize,
    /// Connections that failed, left open for the calls under way on them
    /// (closed once they have failed for [`GRACE`]); new calls should go
    /// over new connections meanwhile.
    pub doomed: usize,
}

/// A connection that fails every read and write once [`Live::recheck`]
/// closed it.
pub struct Guarded<S> {
    inner: S,
    gate: Option<Arc<Gate>>,
}

impl<S> Guarded<S> {
    /// A connection no peer trust governs (the client listener's).
    pub fn plain(stream: S) -> Guarded<S> {
        Guarded { inner: stream, gate: None }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn closed(&self, cx: &Context<'_>) -> bool {
        self.gate.as_ref().is_some_and(|g| g.closed(cx))
    }
}

fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the peer's certificate no longer passes")
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.closed(cx) {
            return Poll::Ready(Err(refused()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.closed(cx) {
            return Poll::Ready(Err(refused()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.closed(cx) {
            return Poll::Ready(Err(refused()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closed(cx) {
            return Poll::Ready(Err(refused()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Closed: nothing more is sent, not even a close_notify to a peer
        // that may have stopped reading.
        if self.closed(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The gRPC server reads who called (the peer's certificates) through it.
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_tls::issue::{new_ca, node_certificate};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_connection_whose_peer_stops_passing_is_closed_and_a_blocked_read_wakes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("cluster CA", 30).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        let deny_file = dir.path().join("denied");
        std::fs::write(&deny_file, "").unwrap();
        let trust = Trust::load(&dir.path().join("ca.pem"), &[], Some(&deny_file)).unwrap();
        let two = node_certificate(&ca, 2, &[], &[], 30).unwrap();
        let three = node_certificate(&ca, 3, &[], &[], 30).unwrap();
        let cert = |i: &gatehouse_tls::issue::Issued| vec![i.cert_der.clone()];

        let live = Live::new(trust.clone());
        let (a, mut a_peer) = tokio::io::duplex(1024);
        let (b, _b_peer) = tokio::io::duplex(1024);
        let mut to_two = live.dialled(a, &cert(&two), 2);
        let from_three = live.accepted(b, &cert(&three));
        let none = Rechecked::default();
        assert_eq!((live.open(), live.recheck()), (2, none), "both pass");
        to_two.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        a_peer.read_exact(&mut got).await.unwrap();

        // A read waiting for data when node 2's serial is denied: it ends.
        let blocked = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            to_two.read(&mut buf).await
        });
        let waiting = |live: &Live| {
            let list = live.open.lock().unwrap();
            let first = list[0].upgrade().unwrap();
            let stored = first.waker.lock().unwrap().is_some();
            stored
        };
        while !waiting(&live) {
            tokio::task::yield_now().await;
        }
        let serial = gatehouse_tls::identity::parse(&two.cert_der).unwrap().serial;
        std::fs::write(&deny_file, format!("{serial}\n")).unwrap();
        assert!(trust.reload().unwrap());
        let closed_now = Rechecked { closed: 1, doomed: 0 };
        assert_eq!(live.recheck(), closed_now, "only node 2's connection, at once: it is denied");
        let e = blocked.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(live.recheck(), none, "closed once");
        std::fs::write(&deny_file, "").unwrap();
        assert!(!trust.reload().unwrap() && trust.reload().unwrap(), "lifted at the second read");

        // A CA bundle without the CA of node 3's certificate: marked at the
        // first check (calls under way may finish), closed at the first
        // check a grace later.
        let next = new_ca("next CA", 30).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &next.cert_pem).unwrap();
        assert!(trust.reload().unwrap());
        let t0 = Instant::now();
        let one_doomed = Rechecked { closed: 0, doomed: 1 };
        assert_eq!(live.recheck_at(t0), one_doomed);
        assert_eq!(live.recheck_at(t0 + GRACE / 2), one_doomed, "checked again soon (SIGHUP twice)");
        assert_eq!(live.recheck_at(t0 + GRACE), closed_now);
        // Back in the bundle before the second check: not closed.
        std::fs::write(dir.path().join("ca.pem"), format!("{}{}", ca.cert_pem, next.cert_pem)).unwrap();
        trust.reload().unwrap();
        let (c, _c_peer) = tokio::io::duplex(1024);
        let _four = live.accepted(c, &cert(&node_certificate(&ca, 4, &[], &[], 30).unwrap()));
        std::fs::write(dir.path().join("ca.pem"), &next.cert_pem).unwrap();
        trust.reload().unwrap();
        assert_eq!(live.recheck_at(t0), one_doomed);
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        trust.reload().unwrap();
        assert_eq!(live.recheck_at(t0 + GRACE), none);
        assert_eq!(live.recheck_at(t0 + GRACE * 2), none);

        // Dialled as node 5 but presenting node 2's certificate: not node 5.
        let (d, _d_peer) = tokio::io::duplex(1024);
        let _wrong = live.dialled(d, &cert(&two), 5);
        assert_eq!(live.recheck(), Rechecked { closed: 0, doomed: 1 });
        drop(from_three);
        assert_eq!(live.open(), 2, "dropped connections are forgotten");

        // Registered after the deny-list changed (a handshake that passed
        // just before): closed at once, without waiting for a recheck.
        let serial = gatehouse_tls::identity::parse(&three.cert_der).unwrap().serial;
        std::fs::write(&deny_file, format!("{serial}\n")).unwrap();
        trust.reload().unwrap();
        let (e, _e_peer) = tokio::io::duplex(1024);
        let mut late = live.accepted(e, &cert(&three));
        assert_eq!(late.write(b"x").await.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        // No certificate at all: no place here.
        let (f, _f_peer) = tokio::io::duplex(1024);
        let mut bare = live.accepted(f, &[]);
        assert!(bare.write(b"x").await.is_err());
    }
}
