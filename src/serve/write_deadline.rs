//! A connection whose writes must make progress: a peer that stops reading
//! (a full TCP window, say after pipelining requests it never reads the
//! answers to) fails the connection after a while, instead of holding it and
//! its slot open for ever. Read timeouts are hyper's (header and body).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

pub struct WriteDeadline<Io> {
    io: Io,
    timeout: Duration,
    /// Armed while a write waits; disarmed by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<Io> WriteDeadline<Io> {
    pub fn new(io: Io, timeout: Duration) -> WriteDeadline<Io> {
        WriteDeadline {
            io,
            timeout,
            stalled: None,
        }
    }

    /// `poll` made no progress: time out once the stall has lasted too long.
    fn waited<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer stopped reading",
        )))
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for WriteDeadline<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.waited(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.waited(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.waited(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.waited(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_peer_that_stops_reading_fails_the_write() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut io = WriteDeadline::new(ours, Duration::from_millis(50));
        let started = std::time::Instant::now();
        let err = io.write_all(&[7; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
        // What fitted was written; nothing else.
        let mut seen = vec![0; 128];
        let read = theirs.read(&mut seen).await.unwrap();
        assert_eq!(read, 64);
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut io = WriteDeadline::new(ours, Duration::from_millis(100));
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut chunk = [0; 64];
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                match theirs.read(&mut chunk).await.unwrap() {
                    0 => return all,
                    read => all.extend_from_slice(&chunk[..read]),
                }
            }
        });
        // 16 stalls of ~20 ms each: longer than the timeout in total, never at once.
        io.write_all(&[7; 1024]).await.unwrap();
        io.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), vec![7; 1024]);
    }
}
