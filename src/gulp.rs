//! Sockets read in gulps, for both SSH legs.
//!
//! russh reads every packet with two reads of its own (its length, then
//! the rest) straight from the socket, so bulk output cost two `recv`
//! calls per 32 KiB packet, and each freed only a little of the socket's
//! receive window, which woke the sending sshd to write a little more.
//! Reading up to 256 KiB at a time and serving russh's reads from that
//! halved the calls and lowered both postern's and the target sshd's CPU
//! per GiB (`docs/BENCHMARKS.md`). The buffer is filled without being
//! zeroed first (`poll_read_buf`) and is large only while data streams
//! in, so an idle or interactive session holds only a few KiB. Written
//! here because tokio's `BufReader` zero-fills a buffer of fixed size
//! when it is made, which would cost every idle session that size.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from a socket at a time, at most, while data streams in.
const GULP: usize = 256 * 1024;

/// The buffer of a connection whose traffic is light (a handshake,
/// keystrokes, keepalives): one read of this size holds all of it.
const SMALL: usize = 16 * 1024;

/// A socket read in gulps; writes pass straight through.
///
/// The buffer is [`SMALL`] until a read fills all of it, then [`GULP`].
/// When the socket runs dry with nothing buffered, the buffer is freed
/// unless the last read was a large one (data is streaming), and the next
/// is [`SMALL`] again: an idle session, or one that has streamed output
/// and gone quiet, holds none.
pub struct Gulp<S> {
    /// The socket; dropped with this.
    inner: S,
    /// Bytes read but not yet asked for; allocated when a read needs it,
    /// freed when the socket is dry (see above).
    buf: BytesMut,
    /// How much room the next read gets: [`SMALL`] or [`GULP`].
    room: usize,
    /// Bytes the last read from the socket brought.
    last: usize,
}

impl<S> Gulp<S> {
    pub fn new(inner: S) -> Gulp<S> {
        Gulp {
            inner,
            buf: BytesMut::new(),
            room: SMALL,
            last: 0,
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
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if me.buf.is_empty() {
            if out.remaining() >= me.room {
                return Pin::new(&mut me.inner).poll_read(cx, out);
            }
            // Empty, so this reuses the buffer from its start.
            me.buf.reserve(me.room);
            let room = me.buf.capacity();
            match tokio_util::io::poll_read_buf(Pin::new(&mut me.inner), cx, &mut me.buf) {
                Poll::Ready(Ok(n)) => {
                    me.last = n;
                    if n == room {
                        me.room = GULP;
                    }
                }
                Poll::Pending => {
                    // Dry and empty: unless data is streaming, hold no
                    // buffer while waiting (an idle session keeps none).
                    if me.room == SMALL || me.last < SMALL {
                        me.room = SMALL;
                        me.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
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

    #[tokio::test]
    async fn the_buffer_grows_for_a_stream_and_shrinks_once_it_is_quiet() {
        let (mut tx, rx) = tokio::io::duplex(4 * GULP);
        let mut r = Gulp::new(rx);
        let mut chunk = vec![0u8; 4];
        tx.write_all(&[1u8; 100]).await.expect("write");
        r.read_exact(&mut chunk).await.expect("read");
        // One read took all 100 bytes; 96 wait in a small buffer.
        assert_eq!((r.room, r.buf.len()), (SMALL, 96));
        assert!(r.buf.capacity() < GULP, "light traffic gets a small buffer");
        // A stream, read as russh reads packets (their length, then the
        // rest): a read fills the small buffer, so the next ones gulp.
        tx.write_all(&vec![2u8; 2 * GULP]).await.expect("write");
        let mut left = 96 + 2 * GULP;
        while left > 0 {
            let mut packet = vec![0u8; left.min(4)];
            r.read_exact(&mut packet).await.expect("read");
            left -= packet.len();
            let mut packet = vec![0u8; left.min(32_764)];
            r.read_exact(&mut packet).await.expect("read");
            left -= packet.len();
        }
        assert_eq!(r.room, GULP);
        // Quiet again: a small read, then nothing to read.
        tx.write_all(&[3u8; 10]).await.expect("write");
        let mut ten = [0u8; 10];
        r.read_exact(&mut ten).await.expect("read");
        assert_eq!(ten, [3u8; 10]);
        let idle = tokio::time::timeout(std::time::Duration::from_millis(20), r.read(&mut chunk));
        assert!(idle.await.is_err(), "nothing was sent, so the read waits");
        assert_eq!(
            (r.room, r.buf.capacity()),
            (SMALL, 0),
            "the big buffer is freed"
        );
        // And it still reads.
        tx.write_all(b"ok").await.expect("write");
        let mut ok = [0u8; 2];
        r.read_exact(&mut ok).await.expect("read");
        assert_eq!(&ok, b"ok");
    }
}
