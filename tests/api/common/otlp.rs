//! A real OTLP receiver, in the test process: the collector's trace service over gRPC
//! (tonic's server with the generated `TraceService`) and over HTTP/protobuf (`POST
//! /v1/traces`, decoded with prost), keeping every span it is sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

/// One span as the receiver got it: ids as hex, attributes as text.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `SpanKind` as the protocol numbers it (2 server, 4 producer, 1 internal).
    pub kind: i32,
    /// `Status.code` (0 unset, 1 ok, 2 error).
    pub status: i32,
    pub attributes: BTreeMap<String, String>,
    /// Resource attributes.
    pub resource: BTreeMap<String, String>,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

pub const SERVER: i32 = 2;
pub const PRODUCER: i32 = 4;
pub const INTERNAL: i32 = 1;

/// The receiver's two endpoints and what they were sent.
pub struct OtlpReceiver {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Clone)]
struct Collector(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut kept = self.0.lock().unwrap();
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for s in scope.spans {
                    kept.push(ReceivedSpan {
                        service: service.clone(),
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent_span_id: hex::encode(&s.parent_span_id),
                        name: s.name,
                        kind: s.kind,
                        status: s.status.map_or(0, |st| st.code),
                        attributes: attributes(&s.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
    }
}

fn attributes(
    kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let collector = Collector(spans.clone());
        let grpc: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let service = TraceServiceServer::new(collector.clone());
        let grpc_task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve(grpc)
                .await
                .expect("the gRPC receiver serves");
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        let http_task = tokio::spawn(serve_http(listener, collector));
        // The gRPC server binds in its task: wait until it takes connections.
        let until = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(grpc).await.is_err() {
            assert!(Instant::now() < until, "the gRPC receiver did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        OtlpReceiver {
            grpc,
            http,
            spans,
            tasks: vec![grpc_task, http_task],
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits up to `timeout` until `done` holds of the spans received; returns them.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let until = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() > until {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// OTLP/HTTP with protobuf bodies: `POST /v1/traces`.
async fn serve_http(listener: tokio::net::TcpListener, collector: Collector) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let collector = collector.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let collector = collector.clone();
                    async move {
                        let ok = req.uri().path() == "/v1/traces";
                        let body = match req.into_body().collect().await {
                            Ok(b) => b.to_bytes(),
                            Err(_) => bytes::Bytes::new(),
                        };
                        let status = match ExportTraceServiceRequest::decode(body) {
                            Ok(request) if ok => {
                                collector.keep(request);
                                200
                            }
                            _ => 400,
                        };
                        let answer = ExportTraceServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec();
                        let mut response = hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(answer),
                        ));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}
