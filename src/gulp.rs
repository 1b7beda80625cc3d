//! Sockets read in gulps, for both SSH legs.
//!
//! russh reads every packet with two reads of its own (its length, then
//! the rest) straight from the socket, so bulk output cost two `recv`
//! calls per 32 KiB packet, and each freed only a little of the socket's
//! receive window, which woke the sending sshd to write a little more.
//! Reading up to 256 KiB at a time and serving russh's reads from that
//! halved the calls and lowered both postern's and the target sshd's CPU
//! per GiB (`docs/BENCHMARKS.md`). The buffer is filled without being
//! zeroed first (`poll_read_buf`), so an idle or interactive session
//! touches only the few KiB it uses. Written here because tokio's
//! `BufReader` zero-fills its whole buffer when it is made, which would
//! cost every idle session its full size in memory.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from a socket at a time, at most.
const GULP: usize = 256 * 1024;

/// A socket read in gulps of up to [`GULP`] bytes; writes pass straight through.
pub struct Gulp<S> {
    /// The socket; dropped with this.
    inner: S,
    /// Bytes read but not yet asked for. Allocated on the first read and
    /// kept for the connection's life; pages are touched only as data
    /// fills them.
    buf: BytesMut,
}

impl<S> Gulp<S> {
    pub fn new(inner: S) -> Gulp<S> {
        Gulp {
            inner,
            buf: BytesMut::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gulp<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.buf.is_empty() {
            if out.remaining() >= GULP {
                return Pin::new(&mut me.inner).poll_read(cx, out);
            }
            // Empty, so this reuses the buffer from its start.
            me.buf.reserve(GULP);
            match tokio_util::io::poll_read_buf(Pin::new(&mut me.inner), cx, &mut me.buf) {
                Poll::Ready(Ok(_)) => {}
                other => return other.map_ok(|_| ()),
            }
        }
        // Nothing buffered after a read is the end of the stream.
        let n = out.remaining().min(me.buf.len());
        out.put_slice(&me.buf[..n]);
        me.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gulp<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_of_any_size_see_every_byte_in_order_then_the_end() {
        let data: Vec<u8> = (0..3 * GULP + 12_345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            tx.write_all(&sent).await.expect("write");
            tx.shutdown().await.expect("shutdown");
        });
        let mut r = Gulp::new(rx);
        let mut got = Vec::new();
        // russh's pattern (4 bytes, then a packet), odd sizes, and reads
        // larger than a gulp, which bypass the buffer.
        let sizes = [4, 32_768, 1, 4, 100_000, GULP + 1, 3, 2 * GULP];
        'outer: loop {
            for &n in &sizes {
                let mut chunk = vec![0u8; n];
                let k = r.read(&mut chunk).await.expect("read");
                if k == 0 {
                    break 'outer;
                }
                got.extend_from_slice(&chunk[..k]);
            }
        }
        writer.await.expect("writer");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes reordered or changed");
    }
}
