//! One webhook request, from bytes on the wire to an answer.
//!
//! `path → source` (404), `method` (405), client allowlist (403), `Content-Encoding` (415),
//! each answered once the body it did not want is read and dropped (so the connection stays
//! usable); `body` read with a size limit, a deadline and a memory budget shared by all
//! connections (413, 408, 503); the [`Pipeline`] authenticates and parses it (401, 400); only then does
//! the request take an in-flight slot (503), so a stranger who sends headers and no body, or
//! a body with a bad signature, never takes a slot from a real sender. The pipeline then says
//! what became of the event, and [`answer_for`] turns that outcome into an answer, in the
//! status the source's sender counts as success (Eduzz: 200 and nothing else). The request's
//! span records source, slug, event id and outcome, logged once at the end, and the source's
//! failing streak ([`FailingSources`]) hears of every answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::answer::{self, Answer};
use super::client_ip::ProxyPolicy;
use super::connections::ConnectionState;
use super::failing::FailingSources;
use super::outcome::{answer_for, refuse, refuse_closing};
use crate::metrics::{Metrics, RequestLabels};
use crate::pipeline::{Inbound, Outcome, Pipeline};
use crate::source::Source;
use crate::telemetry::spans::{self, RequestSpan};
use crate::telemetry::{LogThrottle, TraceContext};

/// The webhook handler: the pipeline, and the limits put on strangers before it.
pub struct Webhook {
    pipeline: Pipeline,
    /// Whose `X-Forwarded-For` to believe.
    proxies: ProxyPolicy,
    /// Authenticated requests being processed, all sources together.
    in_flight: Arc<Semaphore>,
    /// Bytes of request bodies held in memory, all connections together.
    body_memory: Arc<Semaphore>,
    max_body_bytes: usize,
    body_timeout: Duration,
    /// Refusals are logged at most once per interval per outcome.
    throttle: LogThrottle,
    /// How long each source has gone without a 2xx.
    failing: Arc<FailingSources>,
    /// `https` when the listener speaks TLS, for the request spans.
    scheme: &'static str,
}

/// One request's place in tracing: its server span (disabled when tracing is off), and where
/// its event's trace is: the span's position, or with tracing off an incoming context the
/// source trusts, passed on as it came.
struct RequestTrace {
    span: tracing::Span,
    at: Option<TraceContext>,
}

/// What became of one request: its answer, the outcome logged and counted for it, and
/// whether it passed authentication (only then is a 4xx the sender's own, not a stranger's).
struct Reply {
    answer: Answer,
    outcome: &'static str,
    authenticated: bool,
}

impl Reply {
    /// The answer to a request refused before it was authenticated.
    fn early((answer, outcome): (Answer, &'static str)) -> Reply {
        Reply {
            answer,
            outcome,
            authenticated: false,
        }
    }
}

/// A request refused before the pipeline saw it.
#[derive(Debug, Clone, Copy)]
enum RefusedBeforePipeline {
    MethodNotAllowed,
    Forbidden,
    /// A `Content-Encoding` the bridge does not decode: refused rather than published as
    /// bytes nobody checked (and a gzipped body would never be valid JSON anyway).
    UnsupportedEncoding,
    Busy(&'static str),
    TooLarge(usize),
    BodyTimeout,
    BodyUnreadable,
}

impl RefusedBeforePipeline {
    /// The answer, and the outcome logged for it.
    fn answer(self) -> (Answer, &'static str) {
        match self {
            RefusedBeforePipeline::MethodNotAllowed => {
                (answer::method_not_allowed("POST"), "method_not_allowed")
            }
            RefusedBeforePipeline::Forbidden => refuse(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this address may not post to this source",
            ),
            RefusedBeforePipeline::UnsupportedEncoding => refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                "send the body without Content-Encoding (identity)",
            ),
            RefusedBeforePipeline::Busy(why) => (answer::busy(why, 1), "busy"),
            RefusedBeforePipeline::TooLarge(max) => refuse_closing(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &format!("the body is larger than {max} bytes"),
            ),
            RefusedBeforePipeline::BodyTimeout => refuse_closing(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the body did not arrive in time",
            ),
            RefusedBeforePipeline::BodyUnreadable => refuse_closing(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                "the body could not be read",
            ),
        }
    }
}

impl Webhook {
    pub fn new(pipeline: Pipeline, server: &super::Server) -> Webhook {
        let failing = Arc::new(FailingSources::new(
            pipeline.sources(),
            pipeline.metrics().clone(),
        ));
        Webhook {
            pipeline,
            failing,
            proxies: server.proxies.clone(),
            in_flight: Arc::new(Semaphore::new(server.max_in_flight_requests)),
            body_memory: Arc::new(Semaphore::new(server.max_body_memory_bytes)),
            max_body_bytes: server.max_body_bytes,
            body_timeout: server.body_timeout,
            throttle: LogThrottle::new(Duration::from_secs(10)),
            scheme: if server.tls.is_some() {
                "https"
            } else {
                "http"
            },
        }
    }

    /// Each source's failing streak, which `/metrics` samples.
    pub(crate) fn failing(&self) -> Arc<FailingSources> {
        self.failing.clone()
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        self.pipeline.metrics()
    }

    /// Handles one request on the public listener, from `peer`. Generic over the body so the
    /// same code serves hyper's connections and in-memory requests (the fuzz target).
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>, peer: SocketAddr) -> Answer
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let Some((source, token)) = self.pipeline.sources().lookup(req.uri().path()) else {
            self.count("-", StatusCode::NOT_FOUND, started);
            self.metrics().refusal("-", "not_found");
            return self.after_unread_body(req, answer::not_found()).await;
        };
        let source = source.clone();
        let token = token.map(str::to_owned);
        let client = self.proxies.client_ip(peer.ip(), req.headers());
        let trace = self.request_trace(&source, client, &req);
        let span = tracing::info_span!(
            "webhook",
            source = %source.name,
            %client,
            slug = tracing::field::Empty,
            event_id = tracing::field::Empty,
        );
        async {
            let reply = match screen(&source, client, &req) {
                Err(early) => {
                    let mut reply = Reply::early(early.answer());
                    reply.answer = self.after_unread_body(req, reply.answer).await;
                    reply
                }
                Ok(()) => self.take(&source, token.as_deref(), req, &trace).await,
            };
            let status = reply.answer.status();
            spans::request_answered(&trace.span, status.as_u16(), reply.outcome);
            self.log(status, reply.outcome);
            self.count(&source.name, status, started);
            if status.is_client_error() || status.is_server_error() {
                self.metrics().refusal(&source.name, reply.outcome);
            }
            self.failing.answered(&source, status, reply.authenticated);
            reply.answer
        }
        .instrument(span)
        .await
    }

    /// The request's server span, and where its event's trace is.
    fn request_trace<B>(
        &self,
        source: &Source,
        client: std::net::IpAddr,
        req: &Request<B>,
    ) -> RequestTrace {
        let incoming = match source.trust_traceparent {
            true => TraceContext::from_headers(req.headers()),
            false => None,
        };
        let user_agent = req.headers().get(http::header::USER_AGENT);
        let span = spans::request(
            &RequestSpan {
                method: req.method(),
                route: &source.path,
                version: req.version(),
                scheme: self.scheme,
                client,
                user_agent: user_agent.and_then(|v| v.to_str().ok()),
                source: &source.name,
            },
            incoming.as_ref(),
        );
        let at = spans::position(&span).or(incoming);
        RequestTrace { span, at }
    }

    /// Reads the body, has the pipeline authenticate it, takes an in-flight slot, and hands
    /// the event on, in the trace `trace`.
    async fn take<B>(
        &self,
        source: &Source,
        token: Option<&str>,
        req: Request<B>,
        trace: &RequestTrace,
    ) -> Reply
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let received_at = SystemTime::now();
        let (parts, body) = req.into_parts();
        // The body's bytes stay counted against the memory budget until the answer.
        let (body, _memory) = match self.read_body(&parts.headers, body).await {
            Ok(read) => read,
            Err(early) => return Reply::early(early.answer()),
        };
        let inbound = Inbound {
            headers: &parts.headers,
            path_token: token,
            body,
            received_at,
        };
        let mut event = match self.pipeline.authenticate(source, inbound) {
            Ok(event) => event,
            Err(outcome) => {
                return Reply {
                    answer: answer_for(&outcome, source.accepted_status),
                    outcome: outcome.label(),
                    authenticated: !matches!(outcome, Outcome::Unauthorized(_)),
                }
            }
        };
        spans::request_event(&trace.span, &event.id, &event.slug, event.body.len());
        event.trace = trace.at.clone();
        // From here the connection is not closed to make room for others (unless it already
        // is being closed: then the event is not taken, and the sender retries).
        let connection = parts.extensions.get::<ConnectionState>();
        let refused = if connection.is_some_and(|c| !c.busy()) {
            Err(RefusedBeforePipeline::Busy(
                "the connection is being closed",
            ))
        } else {
            self.slots(source)
        };
        let (answer, outcome) = match refused {
            Err(early) => early.answer(),
            Ok(_slots) => {
                let outcome = self.pipeline.deliver(source, event).await;
                (
                    answer_for(&outcome, source.accepted_status),
                    outcome.label(),
                )
            }
        };
        Reply {
            answer,
            outcome,
            authenticated: true,
        }
    }

    /// The in-flight slots of an authenticated request, overall and for its source.
    fn slots(&self, source: &Source) -> Result<Slots, RefusedBeforePipeline> {
        let Ok(global) = self.in_flight.clone().try_acquire_owned() else {
            return Err(RefusedBeforePipeline::Busy("too many requests in flight"));
        };
        let local = match &source.in_flight {
            None => None,
            Some(limit) => Some(limit.clone().try_acquire_owned().map_err(|_| {
                RefusedBeforePipeline::Busy("too many requests in flight for this source")
            })?),
        };
        Ok(Slots {
            _global: global,
            _source: local,
        })
    }

    /// `answer`, to a request refused before its body was read, once that body is read and
    /// dropped (up to `max_body_bytes`, within `body_timeout`): the next request on the
    /// connection then starts where it should. A body declared or found larger, unreadable
    /// or too slow gets `answer` with `Connection: close` instead, so the client opens a new
    /// connection rather than send into one that hyper is closing.
    async fn after_unread_body<B>(&self, req: Request<B>, answer: Answer) -> Answer
    where
        B: Body<Data = Bytes> + Send,
    {
        let max = self.max_body_bytes;
        if declared_length(req.headers()).is_some_and(|n| n > max as u64) {
            return answer::closing(answer);
        }
        let drained = async {
            let mut body = std::pin::pin!(req.into_body());
            let mut seen = 0usize;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return false };
                seen = seen.saturating_add(frame.data_ref().map_or(0, |d| d.len()));
                if seen > max {
                    return false;
                }
            }
            true
        };
        match tokio::time::timeout(self.body_timeout, drained).await {
            Ok(true) => answer,
            _ => answer::closing(answer),
        }
    }

    /// The whole body, read with a size limit and a deadline.
    ///
    /// A body declared over the limit (or over the memory budget) is not kept, but it is
    /// still read and dropped until it ends or the body deadline passes, and only then does the
    /// refusal go out (nginx's lingering close, bounded by time rather than size): a client that
    /// sends its whole body before reading (Python's `urllib`, most SDKs) then reads the 413,
    /// where closing on unread input would make the kernel reset the connection under it. What
    /// a stranger can cost this way is bandwidth for `body_timeout`, never memory, and the
    /// connection is one of those closed first to make room (it was never authenticated). A
    /// body with no declared length that crosses the limit is refused at once: nothing says it
    /// will ever end, and its sender may be waiting for the answer before it stops.
    async fn read_body<B>(
        &self,
        headers: &http::HeaderMap,
        body: B,
    ) -> Result<(Bytes, Option<OwnedSemaphorePermit>), RefusedBeforePipeline>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let max = self.max_body_bytes;
        let declared = declared_length(headers);
        // Refused as soon as it is known to be too large (or the memory budget is full); the
        // rest is read and dropped before the refusal is answered.
        let mut refused = declared
            .is_some_and(|n| n > max as u64)
            .then_some(RefusedBeforePipeline::TooLarge(max));
        let read = async {
            let mut body = std::pin::pin!(body);
            let mut buf = bytes::BytesMut::new();
            let mut memory: Option<OwnedSemaphorePermit> = None;
            let mut seen = 0usize;
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|_| refused.unwrap_or(RefusedBeforePipeline::BodyUnreadable))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                seen = seen.saturating_add(data.len());
                if seen > max {
                    if declared.is_none() {
                        return Err(RefusedBeforePipeline::TooLarge(max));
                    }
                    refused.get_or_insert(RefusedBeforePipeline::TooLarge(max));
                }
                if refused.is_none() {
                    match self.reserve_memory(&mut memory, data.len()) {
                        Ok(()) => buf.extend_from_slice(&data),
                        Err(e) => refused = Some(e),
                    }
                }
                if refused.is_some() {
                    (memory, buf) = (None, bytes::BytesMut::new());
                }
            }
            match refused {
                Some(e) => Err(e),
                None => Ok((buf.freeze(), memory)),
            }
        };
        let read = tokio::time::timeout(self.body_timeout, read).await;
        match read {
            Ok(read) => read,
            // Still arriving at the deadline: a body known to be too large says so.
            Err(_) => Err(refused.unwrap_or(RefusedBeforePipeline::BodyTimeout)),
        }
    }

    /// Logs the request's end: refusals at most once per 10 s per outcome (with the number
    /// held back since), so a flood cannot flood the log too.
    fn log(&self, status: StatusCode, outcome: &'static str) {
        let code = status.as_u16();
        if !(status.is_client_error() || status.is_server_error()) {
            tracing::debug!(status = code, outcome, "webhook taken");
            return;
        }
        let Some(held_back) = self.throttle.admit(outcome) else {
            return;
        };
        if status.is_server_error() {
            tracing::warn!(
                status = code,
                outcome,
                similar_since_last_line = held_back,
                "webhook not taken"
            );
        } else {
            tracing::info!(
                status = code,
                outcome,
                similar_since_last_line = held_back,
                "webhook refused"
            );
        }
    }

    /// Counts `len` more bytes of body against the shared memory budget; `Busy` when the
    /// bodies being received already fill it.
    fn reserve_memory(
        &self,
        held: &mut Option<OwnedSemaphorePermit>,
        len: usize,
    ) -> Result<(), RefusedBeforePipeline> {
        let full = RefusedBeforePipeline::Busy("too many request bodies being received");
        let n = u32::try_from(len).map_err(|_| full)?;
        let more = self
            .body_memory
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| full)?;
        match held {
            Some(p) => p.merge(more),
            None => *held = Some(more),
        }
        Ok(())
    }

    fn count(&self, source: &str, status: StatusCode, started: Instant) {
        let metrics = self.metrics();
        metrics
            .http_requests
            .get_or_create(&RequestLabels {
                source: source.to_string(),
                status: status.as_u16(),
            })
            .inc();
        metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The body's length as its `Content-Length` declares it, if it does.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Method, allowlist and encoding, before a byte of the body is read.
fn screen<B>(
    source: &Source,
    client: std::net::IpAddr,
    req: &Request<B>,
) -> Result<(), RefusedBeforePipeline> {
    if req.method() != Method::POST {
        return Err(RefusedBeforePipeline::MethodNotAllowed);
    }
    if !source.allows(client) {
        return Err(RefusedBeforePipeline::Forbidden);
    }
    let encoded = req
        .headers()
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(RefusedBeforePipeline::UnsupportedEncoding);
    }
    Ok(())
}

/// The in-flight slots a request holds until it is answered.
struct Slots {
    _global: OwnedSemaphorePermit,
    _source: Option<OwnedSemaphorePermit>,
}
