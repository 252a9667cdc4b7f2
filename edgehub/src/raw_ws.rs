//! A WebSocket client at the frame level, for a peer that does not follow RFC 6455 to the letter:
//! cloudStream sends binary bytes in *text* messages, which a conforming client (tungstenite's
//! `WebSocketStream`) refuses once they are not UTF-8. Here every data message is bytes. The
//! upgrade and the frame layout are tungstenite's (`generate_key`, `derive_accept_key`,
//! `FrameHeader`, `Frame::format`); only the UTF-8 check is left out.

use std::io::Cursor;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::client::{Request, generate_key};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

/// Largest upgrade answer read.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// What arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A whole text or binary message, as bytes.
    Data(Vec<u8>),
    /// A ping to answer with this payload.
    Ping(Vec<u8>),
    /// The peer closed.
    Close,
}

/// Sends the upgrade for `request` and checks the answer. Returns what the peer sent after it.
pub(crate) async fn handshake<S>(stream: &mut S, request: &Request) -> std::io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let key = generate_key();
    let uri = request.uri();
    let host = uri.authority().map_or("", |a| a.as_str());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in request.headers() {
        // The request's own upgrade headers are replaced by the ones above.
        let ours = matches!(
            name.as_str(),
            "host" | "upgrade" | "connection" | "sec-websocket-key" | "sec-websocket-version"
        );
        if let (false, Ok(v)) = (ours, value.to_str()) {
            head.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(bad("the upgrade answer is too long".to_owned()));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(bad("the peer closed during the upgrade".to_owned()));
        }
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(bad(format!("the upgrade was answered {status:?}")));
    }
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, v)| v.trim().to_owned());
    if accept.as_deref() != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(bad(
            "the upgrade answer's Sec-WebSocket-Accept does not match".to_owned(),
        ));
    }
    Ok(buf.split_off(end))
}

/// Reads frames out of `buf` (bytes received so far); what is not whole yet stays in it.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    buf: Vec<u8>,
    /// A fragmented message being put together.
    partial: Option<Vec<u8>>,
    max: usize,
}

impl Reader {
    pub(crate) fn new(leftover: Vec<u8>, max: usize) -> Self {
        Self {
            buf: leftover,
            partial: None,
            max,
        }
    }

    /// Where received bytes go.
    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The next whole message in the buffer, if there is one. `Err` for a message over the
    /// limit or a frame that makes no sense (the connection cannot go on).
    pub(crate) fn next(&mut self) -> Result<Option<Incoming>, String> {
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            let Some((header, len)) = FrameHeader::parse(&mut cursor).map_err(|e| e.to_string())?
            else {
                return Ok(None);
            };
            let start = usize::try_from(cursor.position()).map_err(|e| e.to_string())?;
            let len = usize::try_from(len).map_err(|e| e.to_string())?;
            if len > self.max {
                return Err(format!(
                    "a frame of {len} bytes is over the {} limit",
                    self.max
                ));
            }
            if self.buf.len() < start + len {
                return Ok(None);
            }
            let mut payload: Vec<u8> = self.buf[start..start + len].to_vec();
            self.buf.drain(..start + len);
            if let Some(mask) = header.mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
            }
            match header.opcode {
                OpCode::Control(Control::Ping) => return Ok(Some(Incoming::Ping(payload))),
                OpCode::Control(Control::Close) => return Ok(Some(Incoming::Close)),
                OpCode::Control(_) => {}
                OpCode::Data(Data::Continue) => {
                    let Some(mut whole) = self.partial.take() else {
                        return Err("a continuation frame without a message".to_owned());
                    };
                    whole.extend_from_slice(&payload);
                    if whole.len() > self.max {
                        return Err(format!("a message over the {} limit", self.max));
                    }
                    if header.is_final {
                        return Ok(Some(Incoming::Data(whole)));
                    }
                    self.partial = Some(whole);
                }
                OpCode::Data(_) => {
                    if header.is_final {
                        return Ok(Some(Incoming::Data(payload)));
                    }
                    self.partial = Some(payload);
                }
            }
        }
    }
}

/// `f` masked, as a client sends it, in wire form.
fn masked(mut f: Frame) -> Vec<u8> {
    f.header_mut().mask = Some(rand::random());
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = f.format(&mut out);
    out
}

/// A data message as cloudStream takes them: opcode *text*, any bytes (cloudStream refuses
/// binary messages: "Websocket message type must be 1 type").
pub(crate) fn text_bytes(payload: Vec<u8>) -> Vec<u8> {
    masked(Frame::message(payload, OpCode::Data(Data::Text), true))
}

/// A ping.
pub(crate) fn ping(payload: Vec<u8>) -> Vec<u8> {
    masked(Frame::ping(payload))
}

/// The answer to a ping.
pub(crate) fn pong(payload: Vec<u8>) -> Vec<u8> {
    masked(Frame::pong(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (unmasked).
    fn server(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let f = match opcode {
            OpCode::Control(Control::Ping) => Frame::ping(payload.to_vec()),
            OpCode::Control(_) => Frame::close(None),
            data => Frame::message(payload.to_vec(), data, fin),
        };
        let mut out = Vec::new();
        f.format(&mut out).unwrap();
        out
    }

    #[test]
    fn text_frames_with_any_bytes_are_read_whole() {
        let mut r = Reader::new(Vec::new(), 1 << 20);
        // Not UTF-8: what cloudStream sends for connectID 200.
        let text = server(OpCode::Data(Data::Text), true, &[0xc8, 0x01, 0x03, 0xff]);
        r.buffer().extend_from_slice(&text[..3]);
        assert_eq!(r.next(), Ok(None), "half a frame waits");
        r.buffer().extend_from_slice(&text[3..]);
        r.buffer()
            .extend(server(OpCode::Control(Control::Ping), true, b"p"));
        r.buffer()
            .extend(server(OpCode::Data(Data::Binary), false, b"ab"));
        r.buffer()
            .extend(server(OpCode::Data(Data::Continue), true, b"cd"));
        r.buffer()
            .extend(server(OpCode::Control(Control::Close), true, b""));
        assert_eq!(
            r.next(),
            Ok(Some(Incoming::Data(vec![0xc8, 0x01, 0x03, 0xff])))
        );
        assert_eq!(r.next(), Ok(Some(Incoming::Ping(b"p".to_vec()))));
        assert_eq!(r.next(), Ok(Some(Incoming::Data(b"abcd".to_vec()))));
        assert_eq!(r.next(), Ok(Some(Incoming::Close)));
        assert_eq!(r.next(), Ok(None));
        let mut small = Reader::new(server(OpCode::Data(Data::Binary), true, &[0; 64]), 16);
        assert!(small.next().is_err());
    }

    #[test]
    fn client_frames_are_masked_and_read_back() {
        let f = text_bytes(b"hello".to_vec());
        assert_eq!(
            (f[0], f[1] & 0x80),
            (0x81, 0x80),
            "final text frame, masked"
        );
        let mut r = Reader::new(f, 1 << 20);
        r.buffer().extend(ping(b"p".to_vec()));
        r.buffer().extend(pong(b"q".to_vec()));
        r.buffer().extend(text_bytes(vec![0xff, 0xfe]));
        assert_eq!(r.next(), Ok(Some(Incoming::Data(b"hello".to_vec()))));
        assert_eq!(r.next(), Ok(Some(Incoming::Ping(b"p".to_vec()))));
        // A pong is taken and skipped.
        assert_eq!(r.next(), Ok(Some(Incoming::Data(vec![0xff, 0xfe]))));
    }

    #[tokio::test]
    async fn the_upgrade_checks_the_accept_key() {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let request = "wss://cloud:10004/v1/kubeedge/connect"
            .into_client_request()
            .unwrap();
        let (mut client, mut server) = tokio::io::duplex(4096);
        let answer = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = server.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .trim()
                .to_owned();
            let accept = derive_accept_key(key.as_bytes());
            let mut answer = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").into_bytes();
            answer.extend_from_slice(b"\x81\x01x");
            server.write_all(&answer).await.unwrap();
            head
        });
        let leftover = handshake(&mut client, &request).await.unwrap();
        let head = answer.await.unwrap();
        assert!(
            head.starts_with("GET /v1/kubeedge/connect HTTP/1.1\r\n"),
            "{head}"
        );
        assert_eq!(head.matches("Sec-WebSocket-Key").count(), 1, "{head}");
        assert_eq!(
            leftover, b"\x81\x01x",
            "a frame sent right after the upgrade is kept"
        );
    }
}
