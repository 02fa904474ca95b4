//! `[telemetry.otlp]`: where traces go, and the exporter built from it.
//!
//! Off unless an endpoint is set. The settings are parsed once into an [`Otlp`] (a checked
//! endpoint, a ratio in 0..=1, the resource's attributes), which `check-config` builds too;
//! [`Otlp::tracer_provider`] makes the SDK's provider from it: a batch processor on its own
//! thread (a slow collector never holds a request up; when its queue is full, spans are
//! dropped, never events), a parent-based ratio sampler (a sampled request's publish is
//! sampled, whenever it happens), and the OTLP exporter over gRPC or HTTP/protobuf.

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::Deserialize;

use crate::problem::Problems;

/// `[telemetry]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Traces exported over OTLP; absent (the default), no traces are made at all.
    pub otlp: Option<OtlpSettings>,
}

/// `[telemetry.otlp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSettings {
    /// The collector: `http://host:4317` for gRPC, `http://host:4318` (or the full
    /// `…/v1/traces` URL) for HTTP/protobuf.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// The share of new traces exported, 0 to 1. A request that continues a trusted incoming
    /// context follows that context's decision instead.
    #[serde(default = "default_ratio")]
    pub sampling_ratio: f64,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// More resource attributes (`"deployment.environment.name" = "production"`).
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// How long one export may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

fn default_ratio() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "eduzz-kafka-bridge".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The OTLP export, checked.
#[derive(Debug, Clone)]
pub struct Otlp {
    /// The URL the exporter is given (for HTTP, with `/v1/traces` when only a root was set).
    endpoint: String,
    protocol: OtlpProtocol,
    ratio: f64,
    service_name: String,
    resource: BTreeMap<String, String>,
    timeout: Duration,
}

impl TelemetrySettings {
    /// The export, when one is configured and valid; problems go to `problems`.
    pub(crate) fn build(&self, problems: &mut Problems) -> Option<Otlp> {
        self.otlp.as_ref().and_then(|o| o.build(problems))
    }
}

impl OtlpSettings {
    fn build(&self, problems: &mut Problems) -> Option<Otlp> {
        let endpoint = endpoint(&self.endpoint, self.protocol);
        if let Err(why) = &endpoint {
            problems.push("telemetry.otlp.endpoint", why);
        }
        let ratio_ok = (0.0..=1.0).contains(&self.sampling_ratio);
        problems.require(
            ratio_ok,
            "telemetry.otlp.sampling_ratio",
            "must be between 0 and 1 (0.01 exports one new trace in a hundred)",
        );
        problems.require(
            !self.service_name.trim().is_empty(),
            "telemetry.otlp.service_name",
            "must not be empty",
        );
        problems.require(
            !self.timeout.is_zero(),
            "telemetry.otlp.timeout",
            "must be more than zero",
        );
        Some(Otlp {
            endpoint: endpoint.ok()?,
            protocol: self.protocol,
            ratio: self.sampling_ratio,
            service_name: self.service_name.clone(),
            resource: self.resource.clone(),
            timeout: self.timeout,
        })
        .filter(|_| ratio_ok)
    }
}

/// The exporter's URL: `http://` with a host (the exporter speaks plain text: a collector
/// agent beside the bridge is the usual hop, and TLS to a remote collector is its job); for
/// HTTP/protobuf the signal's path is added to a bare root, as the OTLP spec does for
/// `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn endpoint(text: &str, protocol: OtlpProtocol) -> Result<String, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("is not a URL ({e}): write it as http://host:port"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!(
            "{text:?} must be an http:// URL with a host (the exporter speaks plain text; put TLS in a collector beside the bridge)"
        ));
    }
    let bare = matches!(uri.path(), "" | "/");
    Ok(match protocol {
        OtlpProtocol::HttpProtobuf if bare => format!("{}/v1/traces", text.trim_end_matches('/')),
        _ => text.to_string(),
    })
}

impl Otlp {
    /// What `check-config` prints.
    pub fn describe(&self) -> String {
        let protocol = match self.protocol {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        };
        format!(
            "OTLP {protocol} to {}, {}% of new traces sampled, service {:?}",
            self.endpoint,
            self.ratio * 100.0,
            self.service_name
        )
    }

    /// The SDK's provider, exporting in batches. gRPC's channel is made on the current Tokio
    /// runtime (call this inside one); it connects lazily, so a collector that is down at
    /// start only costs the spans exported while it is.
    pub fn tracer_provider(
        &self,
    ) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match self.protocol {
            OtlpProtocol::Grpc => builder
                .with_tonic()
                .with_endpoint(&self.endpoint)
                .with_timeout(self.timeout)
                .build()?,
            OtlpProtocol::HttpProtobuf => builder
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(&self.endpoint)
                .with_timeout(self.timeout)
                .build()?,
        };
        let attributes = self
            .resource
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
        let resource = Resource::builder()
            .with_service_name(self.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_attributes(attributes)
            .build();
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(self.ratio)));
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MINIMAL;
    use crate::config::Config;

    #[test]
    fn tracing_is_off_unless_an_endpoint_is_set_and_every_bad_key_is_named() {
        assert!(Config::from_toml(MINIMAL).unwrap().tracing.is_none());
        let on = format!(
            "{MINIMAL}\n[telemetry.otlp]\nendpoint = \"http://collector:4318\"\nprotocol = \"http/protobuf\"\nsampling_ratio = 0.01\n"
        );
        let otlp = Config::from_toml(&on).unwrap().tracing.expect("on");
        assert_eq!(
            otlp.describe(),
            "OTLP http/protobuf to http://collector:4318/v1/traces, 1% of new traces sampled, service \"eduzz-kafka-bridge\""
        );
        let bad = format!(
            "{MINIMAL}\n[telemetry.otlp]\nendpoint = \"https://collector:4317\"\nsampling_ratio = 1.5\nservice_name = \" \"\n"
        );
        let e = Config::from_toml(&bad).unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "telemetry.otlp.endpoint",
            "telemetry.otlp.sampling_ratio",
            "telemetry.otlp.service_name",
        ] {
            assert!(keys.contains(&key), "{key} in {e}");
        }
        let unknown =
            format!("{MINIMAL}\n[telemetry.otlp]\nendpoint = \"http://c:4317\"\nratio = 1\n");
        assert!(
            Config::from_toml(&unknown).is_err(),
            "a stray key is refused"
        );
    }

    #[test]
    fn an_http_root_gets_the_traces_path_and_a_full_url_is_kept() {
        let http = OtlpProtocol::HttpProtobuf;
        assert_eq!(
            endpoint("http://collector:4318", http).unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            endpoint("http://collector:4318/", http).unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            endpoint("http://c:4318/otlp/v1/traces", http).unwrap(),
            "http://c:4318/otlp/v1/traces"
        );
        assert_eq!(
            endpoint("http://collector:4317", OtlpProtocol::Grpc).unwrap(),
            "http://collector:4317"
        );
        for bad in [
            "collector:4317",
            "https://collector:4317",
            "http://",
            "not a url",
        ] {
            assert!(endpoint(bad, OtlpProtocol::Grpc).is_err(), "{bad}");
        }
    }
}
