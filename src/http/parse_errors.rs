//! hyper's own answers to a request it could not parse, given the JSON body every other
//! answer has.
//!
//! When a request head is malformed (400), too large (431) or has too long a URI (414), hyper
//! answers by itself, before any service sees a request, with an empty body. A client that reads
//! our error bodies (`{"error": …, "message": …}`) then gets nothing to read, and an operator
//! looking at a sender's delivery history sees a bare status. hyper 1 offers no hook for that
//! answer (it is written by its connection state machine, `on_parse_error`), so the connection's
//! IO is wrapped here: a write that is exactly such an answer is swapped for the same status with
//! a JSON body. Hand-written because no crate does this, and small because the rule is narrow: the
//! write must be a whole response head for one of those three statuses with `content-length: 0`
//! and nothing after it. Every answer of the bridge's own has a JSON body (see `answer.rs`), so
//! none of them ever matches.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// IO whose parse-error answers carry a JSON body.
pub(crate) struct JsonParseErrors<I> {
    io: I,
    /// The replacement answer still to be written, from `written` on.
    pending: Vec<u8>,
    written: usize,
}

impl<I> JsonParseErrors<I> {
    pub(crate) fn new(io: I) -> Self {
        JsonParseErrors {
            io,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<I: AsyncWrite + Unpin> JsonParseErrors<I> {
    /// Writes out what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for JsonParseErrors<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(answer) = with_json_body(buf) {
            // The replacement stands for all of `buf`; flush and shutdown write it out first.
            (this.pending, this.written) = (answer, 0);
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The error code and message of each status hyper answers on its own; the codes are the
/// reasons `connections_closed_total` counts these connections under.
fn explain(status: &[u8]) -> Option<(&'static str, &'static str)> {
    match status {
        b"400" => Some((
            "bad_request_head",
            "the request line or a header could not be parsed",
        )),
        b"414" => Some(("uri_too_long", "the request URI is too long")),
        b"431" => Some((
            "request_head_too_large",
            "the request line and headers are larger than this server takes",
        )),
        _ => None,
    }
}

/// `head` with a JSON body, if it is one of hyper's own bodiless error answers.
fn with_json_body(head: &[u8]) -> Option<Vec<u8>> {
    let (code, message) = explain(head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?)?;
    let text = std::str::from_utf8(head).ok()?;
    let lines = text.strip_suffix("\r\n\r\n")?;
    if lines.contains("\r\n\r\n") {
        return None;
    }
    let mut lines = lines.split("\r\n");
    let status_line = lines.next()?;
    let (empty, others): (Vec<&str>, Vec<&str>) = lines.partition(|l| {
        l.split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
    });
    if empty.len() != 1 || empty[0].split_once(':')?.1.trim() != "0" {
        return None;
    }
    let mut body = serde_json::to_vec(&serde_json::json!({"error": code, "message": message}))
        .unwrap_or_default();
    body.push(b'\n');
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for line in others {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HYPERS_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 11:28:03 GMT\r\n\r\n";

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn hypers_own_answers_get_a_json_body_and_keep_their_headers() {
        let out = text(&with_json_body(HYPERS_431).unwrap());
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(head.contains("\r\ndate: Wed, 02 Dec 2026"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: application/json"),
            "{head}"
        );
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "request_head_too_large");
        let bad =
            text(HYPERS_431).replace("431 Request Header Fields Too Large", "400 Bad Request");
        let out = text(&with_json_body(bad.as_bytes()).unwrap());
        assert!(out.contains(r#""error":"bad_request_head""#), "{out}");
    }

    #[test]
    fn answers_of_the_bridges_own_are_left_alone() {
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n{\"error\":\"x\"}      \n";
        assert_eq!(with_json_body(ours), None, "a head with a body");
        let head_only = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 20\r\n\r\n";
        assert_eq!(with_json_body(head_only), None, "a head declaring a body");
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(with_json_body(ok), None, "another status");
        assert_eq!(with_json_body(b"HTTP/1.1 431 "), None, "not a whole head");
    }

    #[tokio::test]
    async fn the_replacement_is_written_whole_through_a_slow_connection() {
        // A pipe of 7 bytes at a time: the replacement goes out in many writes.
        let (client, server) = tokio::io::duplex(7);
        let mut io = JsonParseErrors::new(server);
        let writer = tokio::spawn(async move {
            io.write_all(HYPERS_431).await.unwrap();
            io.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        let mut client = client;
        client.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, with_json_body(HYPERS_431).unwrap());
    }
}
