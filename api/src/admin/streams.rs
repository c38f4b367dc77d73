//! Bounds on the admin API's server streams (`EventService/Watch`,
//! `AuditService/Export`): a client that opens many of them, or stops
//! reading, must not grow the node.
//!
//! - Each caller (user) holds at most [`PER_CALLER`] open streams, and a
//!   node at most [`PER_NODE`]; one more is `RESOURCE_EXHAUSTED`.
//! - What a stream has produced and its client has not yet taken is at most
//!   [`BUFFER_BYTES`] (and [`BUFFER_ITEMS`] messages). A client that takes
//!   nothing for [`STALL`] while the buffer is full is cut off with
//!   `RESOURCE_EXHAUSTED` ("resume from index N"), and its buffer is freed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Open streams one caller may hold on a node.
pub const PER_CALLER: usize = 4;
/// Open streams a node serves at once.
pub const PER_NODE: usize = 64;
/// Bytes one stream may hold for its client.
pub const BUFFER_BYTES: usize = 2 << 20;
/// Messages one stream may hold for its client.
pub const BUFFER_ITEMS: usize = 1024;
/// How long a stream waits for a client that reads nothing.
pub const STALL: Duration = Duration::from_secs(10);

/// Open streams, by caller.
#[derive(Clone, Debug, Default)]
pub struct Streams {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl Streams {
    /// A slot for one more stream of `caller`, if both caps allow it.
    pub fn open(&self, caller: &str) -> Result<Slot, Status> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = open.values().sum();
        let mine = open.get(caller).copied().unwrap_or(0);
        if mine >= PER_CALLER {
            return Err(Status::resource_exhausted(format!(
                "at most {PER_CALLER} open streams per caller: close one first"
            )));
        }
        if total >= PER_NODE {
            return Err(Status::resource_exhausted("this node serves as many streams as it can; try another node"));
        }
        *open.entry(caller.to_string()).or_default() += 1;
        Ok(Slot { streams: self.clone(), caller: caller.to_string() })
    }

    /// Streams open now (all callers).
    pub fn count(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }
}

/// One open stream; closing it (dropping the slot) frees it.
#[derive(Debug)]
pub struct Slot {
    streams: Streams,
    caller: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

/// A queued message, its share of the budget, and where a client that
/// never gets it resumes (a log index, an audit record number).
type Item<T> = (T, OwnedSemaphorePermit, u64);

/// What the producing and the consuming side share.
struct Shared<T> {
    rx: mpsc::Receiver<Item<T>>,
    /// The status the stream ends with, once the producer is done.
    end: Option<Status>,
    /// When the client last took a message (or the stream opened).
    last_read: tokio::time::Instant,
}

impl<T> Shared<T> {
    /// Closes the queue and drops what the client never took; the resume
    /// point of the first of those, if any.
    fn drop_queued(&mut self) -> Option<u64> {
        self.rx.close();
        let mut first = None;
        while let Ok((_, _, resume)) = self.rx.try_recv() {
            first.get_or_insert(resume);
        }
        first
    }
}

/// The producing side of a bounded stream.
pub struct Sender<T> {
    tx: mpsc::Sender<Item<T>>,
    budget: Arc<Semaphore>,
    shared: Arc<Mutex<Shared<T>>>,
    stall: Duration,
    /// What the resume points count ("index", "audit record").
    unit: &'static str,
    _slot: Slot,
}

/// Why a send did not go through: the client went away or was cut off.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Gone,
    Stalled,
}

/// The stream a handler returns.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A bounded stream holding `slot`: the sender for the task that produces
/// it, the stream for tonic. The stream ends when the sender is dropped,
/// with the status [`Sender::fail`] left, if any.
/// `unit` names what the resume points count ("index", "audit record").
pub fn channel<T: prost::Message + Send + 'static>(slot: Slot, unit: &'static str) -> (Sender<T>, BoxStream<T>) {
    channel_with(slot, unit, STALL)
}

/// [`channel`] with another wait for a client that reads nothing.
fn channel_with<T: prost::Message + Send + 'static>(
    slot: Slot,
    unit: &'static str,
    stall: Duration,
) -> (Sender<T>, BoxStream<T>) {
    let (tx, rx) = mpsc::channel::<Item<T>>(BUFFER_ITEMS);
    let budget = Arc::new(Semaphore::new(BUFFER_ITEMS));
    let shared = Arc::new(Mutex::new(Shared { rx, end: None, last_read: tokio::time::Instant::now() }));
    let stream = Receiver { shared: shared.clone() };
    (Sender { tx, budget, shared, stall, unit, _slot: slot }, Box::pin(stream))
}

/// The consuming side, as tonic polls it.
struct Receiver<T> {
    shared: Arc<Mutex<Shared<T>>>,
}

impl<T> Stream for Receiver<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        match s.rx.poll_recv(cx) {
            // The permit goes as tonic takes the message (to encode and send it).
            Poll::Ready(Some((item, _permit, _))) => {
                s.last_read = tokio::time::Instant::now();
                Poll::Ready(Some(Ok(item)))
            }
            Poll::Ready(None) => Poll::Ready(s.end.take().map(Err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The client went away (tonic dropped the stream): the producer learns it
/// at its next send, and what was queued goes now.
impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).drop_queued();
    }
}

/// Units of [`BUFFER_BYTES`] an item of `bytes` takes: the budget counts
/// [`BUFFER_ITEMS`] units, so at most that many items and about that many bytes.
fn units(bytes: usize) -> u32 {
    let unit = BUFFER_BYTES / BUFFER_ITEMS;
    bytes.div_ceil(unit).clamp(1, BUFFER_ITEMS) as u32
}

impl<T: prost::Message> Sender<T> {
    /// Queues `item` for the client, waiting for room while the client
    /// keeps reading. A client that took nothing for [`STALL`] is cut off:
    /// what it had not taken is dropped, and the stream ends with
    /// `RESOURCE_EXHAUSTED` and where to resume (`resume` of the first
    /// message it did not get: what to ask for to carry on).
    pub async fn send(&self, item: T, resume: u64) -> Result<(), Ended> {
        let need = units(item.encoded_len());
        let acquire = self.budget.clone().acquire_many_owned(need);
        tokio::pin!(acquire);
        let permit = loop {
            let idle_until = self.shared.lock().unwrap_or_else(|p| p.into_inner()).last_read + self.stall;
            tokio::select! {
                permit = &mut acquire => break permit.map_err(|_| Ended::Gone)?,
                _ = self.tx.closed() => return Err(Ended::Gone),
                _ = tokio::time::sleep_until(idle_until) => {
                    let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                    if s.last_read + self.stall > tokio::time::Instant::now() {
                        continue; // it read meanwhile: slow, not stopped
                    }
                    let from = s.drop_queued().unwrap_or(resume);
                    tracing::warn!(unit = self.unit, resume = from, "admin stream cut off: its client stopped reading");
                    let msg =
                        format!("the client stopped reading for {:?}; resume from {} {from}", self.stall, self.unit);
                    s.end = Some(Status::resource_exhausted(msg));
                    return Err(Ended::Stalled);
                }
            }
        };
        self.tx.send((item, permit, resume)).await.map_err(|_| Ended::Gone)
    }

    /// Whether the client has gone away.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Ends the stream with `status` after what is queued.
    pub fn fail(&self, status: Status) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).end = Some(status);
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use gatehouse_proto::admin::WatchEvent;

    use super::*;

    #[test]
    fn callers_and_the_node_have_caps() {
        let s = Streams::default();
        let mine: Vec<Slot> = (0..PER_CALLER).map(|_| s.open("alice").unwrap()).collect();
        assert_eq!(s.open("alice").unwrap_err().code(), tonic::Code::ResourceExhausted);
        let other = s.open("bob").unwrap();
        drop(mine);
        assert_eq!(s.count(), 1);
        assert!(s.open("alice").is_ok());
        drop(other);
        let many: Vec<Slot> = (0..PER_NODE).map(|i| s.open(&format!("user{i}")).unwrap()).collect();
        assert_eq!(s.open("carol").unwrap_err().code(), tonic::Code::ResourceExhausted);
        drop(many);
        assert_eq!(s.count(), 0);
    }

    #[test]
    fn units_bound_bytes_and_items() {
        assert_eq!(units(0), 1);
        assert_eq!(units(1), 1);
        assert_eq!(units(BUFFER_BYTES), BUFFER_ITEMS as u32);
        assert_eq!(units(BUFFER_BYTES * 10), BUFFER_ITEMS as u32, "one large item still fits alone");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_off_and_told_where_to_resume() {
        let s = Streams::default();
        let (tx, mut rx) = channel_with::<WatchEvent>(s.open("alice").unwrap(), "index", Duration::from_millis(50));
        // The client takes the first three, then nothing.
        for i in 0..3 {
            tx.send(WatchEvent { index: i, ..Default::default() }, i).await.unwrap();
        }
        for i in 0..3 {
            assert_eq!(rx.next().await.unwrap().unwrap().index, i);
        }
        let mut sent = 3;
        let ended = loop {
            match tx.send(WatchEvent { index: sent, ..Default::default() }, sent).await {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(ended, Ended::Stalled);
        assert_eq!(sent, 3 + BUFFER_ITEMS as u64, "held at most the buffer");
        drop(tx);
        assert_eq!(s.count(), 0, "the slot is freed when the producer ends");
        // What the client never took is gone; it learns where to resume.
        let last = rx.next().await.expect("a status").unwrap_err();
        assert!(rx.next().await.is_none());
        assert_eq!(last.code(), tonic::Code::ResourceExhausted);
        // It resumes from the first message it never got: nothing is skipped.
        assert!(last.message().ends_with("resume from index 3"), "{}", last.message());
    }

    #[tokio::test]
    async fn a_client_that_reads_slowly_is_not_cut_off() {
        let s = Streams::default();
        let stall = Duration::from_millis(30);
        let (tx, mut rx) = channel_with::<WatchEvent>(s.open("alice").unwrap(), "index", stall);
        for i in 0..BUFFER_ITEMS as u64 {
            tx.send(WatchEvent { index: i, ..Default::default() }, 0).await.unwrap();
        }
        // A large message needs half the buffer freed: hundreds of reads,
        // far longer than `stall`, but the client never pauses that long.
        let command =
            gatehouse_proto::events::Command { request_id: "x".repeat(BUFFER_BYTES / 2), ..Default::default() };
        let big = WatchEvent {
            kind: Some(gatehouse_proto::admin::watch_event::Kind::Command(command)),
            ..Default::default()
        };
        let producer = tokio::spawn(async move { tx.send(big, 0).await });
        for _ in 0..BUFFER_ITEMS / 2 + 1 {
            rx.next().await.unwrap().unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(producer.await.unwrap(), Ok(()), "a client that keeps reading is served");
    }

    #[tokio::test]
    async fn a_reading_client_gets_everything_and_a_gone_one_ends_the_producer() {
        let s = Streams::default();
        let (tx, mut rx) = channel::<WatchEvent>(s.open("alice").unwrap(), "index");
        let producer = tokio::spawn(async move {
            for i in 0..(BUFFER_ITEMS as u64 * 3) {
                tx.send(WatchEvent { index: i, ..Default::default() }, 0).await.unwrap();
            }
        });
        for i in 0..(BUFFER_ITEMS as u64 * 3) {
            assert_eq!(rx.next().await.unwrap().unwrap().index, i);
        }
        producer.await.unwrap();
        let (tx, rx) = channel::<WatchEvent>(s.open("alice").unwrap(), "index");
        drop(rx);
        assert_eq!(tx.send(WatchEvent::default(), 0).await, Err(Ended::Gone));
    }
}
