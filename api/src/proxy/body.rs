//! A streamed body that gives up when no frame comes for a while: a stalled
//! client or upstream holds a connection no longer than the idle timeout,
//! while a slow but moving one streams as long as it moves. Frames pass
//! one at a time (hyper asks for the next only once the last was written),
//! so a slow reader slows the writer instead of filling memory.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error an idle body ends with.
#[derive(Debug, thiserror::Error)]
#[error("no body bytes for the idle timeout")]
pub struct Idle;

pub struct IdleBody<B> {
    inner: B,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Told when the body has been read to its end (or failed).
    ended: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<B: Body> IdleBody<B> {
    pub fn new(inner: B, idle: Duration) -> IdleBody<B> {
        IdleBody { inner, idle, timer: Box::pin(tokio::time::sleep(idle)), ended: None }
    }

    /// [`IdleBody::new`], and a receiver that completes once the body has
    /// been read to its end, failed, or was dropped (a request's: when the
    /// wait for the upstream's answer begins).
    pub fn watched(inner: B, idle: Duration) -> (IdleBody<B>, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut body = IdleBody::new(inner, idle);
        if body.inner.is_end_stream() {
            let _ = tx.send(());
        } else {
            body.ended = Some(tx);
        }
        (body, rx)
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let at = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(at);
                let last = !matches!(frame, Some(Ok(_))) || this.inner.is_end_stream();
                if last {
                    if let Some(tx) = this.ended.take() {
                        let _ = tx.send(());
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.ended.take();
                    Poll::Ready(Some(Err(Box::new(Idle))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_that_stops_moving_ends_and_a_moving_one_does_not() {
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<bytes::Bytes>, std::io::Error>>(1);
        let body = IdleBody::new(http_body_util::StreamBody::new(rx), Duration::from_millis(200));
        let reader = tokio::spawn(async move { body.collect().await.map(|c| c.to_bytes().len()) });
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            futures::SinkExt::send(&mut tx, Ok(Frame::data(bytes::Bytes::from_static(b"abc")))).await.unwrap();
        }
        // Then silence, the sender still open: the idle timeout ends it.
        let err = reader.await.unwrap().unwrap_err();
        assert!(err.is::<Idle>(), "{err}");
        drop(tx);
    }
}
