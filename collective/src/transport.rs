//! The byte stream of one ring connection, plain TCP or TLS: [`Transport`] while its handshake runs,
//! [`LinkStream`] once it carries ring data.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use crate::abort::lock;
use crate::tls::TlsSession;
use crate::wire::{FrameReader, encode_frame};

/// A connection during its handshake; owned by the one thread running it.
#[derive(Debug)]
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsSession>),
}

impl Transport {
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(stream) => stream,
            Transport::Tls(session) => session.socket(),
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Whether a TLS handshake is still running (always false on plain TCP).
    pub(crate) fn is_tls_handshaking(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(session) => session.is_handshaking(),
        }
    }

    /// The next handshake frame once it is complete; `None` while the socket has nothing more.
    pub(crate) fn poll_frame<M: prost::Message + Default>(
        &mut self,
        reader: &mut FrameReader,
    ) -> io::Result<Option<M>> {
        match self {
            Transport::Plain(stream) => reader.poll(&mut &*stream),
            Transport::Tls(session) => session.poll_frame(reader),
        }
    }

    /// Writes one handshake frame completely, blocking at most `write_timeout` (the socket's blocking mode
    /// is restored afterwards).
    pub(crate) fn write_frame<M: prost::Message>(
        &mut self,
        message: &M,
        write_timeout: Duration,
    ) -> io::Result<()> {
        let frame = encode_frame(message)?;
        let was_nonblocking = !self.socket_is_blocking()?;
        self.socket().set_nonblocking(false)?;
        self.socket().set_write_timeout(Some(write_timeout))?;
        let written = match self {
            Transport::Plain(stream) => (&*stream).write_all(&frame),
            Transport::Tls(session) => session.write_all(&frame),
        };
        if was_nonblocking {
            self.socket().set_nonblocking(true)?;
        }
        written
    }

    /// Whether the socket blocks (the accepting side's sockets do not until they join the ring). std has no
    /// getter for `O_NONBLOCK`; socket2 does.
    fn socket_is_blocking(&self) -> io::Result<bool> {
        socket2::SockRef::from(self.socket())
            .nonblocking()
            .map(|nonblocking| !nonblocking)
    }

    /// 32 bytes identifying this TLS session on both of its ends; empty on plain TCP.
    pub(crate) fn channel_binding(&self) -> io::Result<Vec<u8>> {
        match self {
            Transport::Plain(_) => Ok(Vec::new()),
            Transport::Tls(session) => session.channel_binding().map(|binding| binding.to_vec()),
        }
    }

    /// The connection as a ring link: blocking, shared between the ring's threads.
    pub(crate) fn into_link_stream(self) -> io::Result<LinkStream> {
        self.socket().set_nonblocking(false)?;
        match self {
            Transport::Plain(stream) => Ok(LinkStream::Plain(stream)),
            Transport::Tls(session) => Ok(LinkStream::Tls {
                socket: session.socket().try_clone()?,
                session: Box::new(Mutex::new(*session)),
            }),
        }
    }
}

/// One ring connection carrying data. Each connection of a ring is read by one thread and written by one
/// thread at a time, so the TLS session's lock is never contended; the plain case is a `TcpStream` as before.
/// Timeouts and shutdown act on the socket, so an abort or a failing neighbour unblocks a thread inside a
/// TLS read or write at once.
#[derive(Debug)]
pub(crate) enum LinkStream {
    Plain(TcpStream),
    Tls {
        /// A clone of the session's socket, for timeouts and shutdown without taking the lock.
        socket: TcpStream,
        session: Box<Mutex<TlsSession>>,
    },
}

impl LinkStream {
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            LinkStream::Plain(stream) => stream,
            LinkStream::Tls { socket, .. } => socket,
        }
    }

    pub(crate) fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            LinkStream::Plain(stream) => (&*stream).write_all(bytes),
            LinkStream::Tls { session, .. } => lock(session).write_all(bytes),
        }
    }

    pub(crate) fn read_exact(&self, destination: &mut [u8]) -> io::Result<()> {
        match self {
            LinkStream::Plain(stream) => (&*stream).read_exact(destination),
            LinkStream::Tls { session, .. } => lock(session).read_exact(destination),
        }
    }

    /// Closes both directions (the other end reads end-of-stream, a blocked read or write here returns).
    pub(crate) fn shutdown(&self) {
        let _ = self.socket().shutdown(Shutdown::Both);
    }
}
