//! Client deadlines (`grpc-timeout`) on the inference RPCs: the tower layer that reads them, refuses calls
//! whose deadline has already passed on arrival, hands the deadline to the handlers (so queued work carries
//! it to the batcher) and counts every call dropped because its deadline passed or its client went away.
//!
//! tonic itself ends a call when its `grpc-timeout` elapses (dropping the handler); this layer sits inside that
//! timeout, so such a call is seen here as dropped before its answer, and counted.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::HeaderMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::DropLabels;

/// A deadline shorter than this is taken as already passed on arrival: no answer could reach the client in
/// time, so nothing is decoded or computed for it.
pub const MIN_USEFUL_TIMEOUT: Duration = Duration::from_millis(1);

/// The deadline of a call, in its request extensions when the client sent `grpc-timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestDeadline(pub Instant);

/// The deadline the client set on `request`, if any.
pub fn request_deadline<T>(request: &tonic::Request<T>) -> Option<Instant> {
    request
        .extensions()
        .get::<RequestDeadline>()
        .map(|deadline| deadline.0)
}

/// Whether the layer applies to the RPC at `path`: the inference services, not health or reflection.
fn is_inference_path(path: &str) -> bool {
    path.starts_with("/plankton.v1.Inference/")
        || path.starts_with("/inference.GRPCInferenceService/")
}

/// A `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n). None when absent or malformed
/// (a malformed header is ignored, as tonic does).
pub fn parse_grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Adds deadline handling to the inference server's routes.
#[derive(Clone, Debug)]
pub struct DeadlineLayer {
    dropped: Family<DropLabels, Counter>,
}

impl DeadlineLayer {
    /// `dropped` counts the calls dropped (`plankton_serve_requests_dropped_total`).
    pub fn new(dropped: Family<DropLabels, Counter>) -> Self {
        DeadlineLayer { dropped }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            dropped: self.dropped.clone(),
        }
    }
}

/// The service [`DeadlineLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct DeadlineService<S> {
    inner: S,
    dropped: Family<DropLabels, Counter>,
}

/// Counts the call as dropped unless it was answered.
struct UnansweredCall {
    deadline: Option<Instant>,
    dropped: Family<DropLabels, Counter>,
    answered: bool,
}

impl Drop for UnansweredCall {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let reason = if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            "deadline"
        } else {
            "cancelled"
        };
        self.dropped
            .get_or_create(&DropLabels {
                reason,
                stage: "in_flight",
            })
            .inc();
    }
}

type BoxFuture<Output> = Pin<Box<dyn Future<Output = Output> + Send + 'static>>;

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for DeadlineService<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RequestBody: Send + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        // The clone that was polled ready serves this request; the fresh clone waits for the next one.
        let fresh_inner = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh_inner);
        if !is_inference_path(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let timeout = parse_grpc_timeout(request.headers());
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        if let Some(timeout) = timeout
            && timeout < MIN_USEFUL_TIMEOUT
        {
            self.dropped
                .get_or_create(&DropLabels {
                    reason: "deadline",
                    stage: "arrival",
                })
                .inc();
            let status = tonic::Status::deadline_exceeded(format!(
                "the deadline ({timeout:?} after arrival) passed before any work could start"
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        if let Some(deadline) = deadline {
            request.extensions_mut().insert(RequestDeadline(deadline));
        }
        let unanswered = UnansweredCall {
            deadline,
            dropped: self.dropped.clone(),
            answered: false,
        };
        let response = inner.call(request);
        Box::pin(async move {
            // The whole guard moves into the future (not just its flag): dropping the future drops it.
            let mut unanswered = unanswered;
            let answer = response.await;
            unanswered.answered = true;
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::{Layer, Service};

    use super::*;

    /// An inner service that counts its calls, remembers whether each carried a deadline, and answers at once
    /// or never.
    #[derive(Clone, Default)]
    struct Recorder {
        calls: Arc<AtomicUsize>,
        with_deadline: Arc<AtomicUsize>,
        never_answers: bool,
    }

    impl Service<http::Request<()>> for Recorder {
        type Response = http::Response<String>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if request.extensions().get::<RequestDeadline>().is_some() {
                self.with_deadline.fetch_add(1, Ordering::SeqCst);
            }
            if self.never_answers {
                Box::pin(std::future::pending())
            } else {
                Box::pin(std::future::ready(Ok(http::Response::new(String::new()))))
            }
        }
    }

    fn request(path: &str, timeout: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(path);
        if let Some(timeout) = timeout {
            builder = builder.header("grpc-timeout", timeout);
        }
        builder.body(()).unwrap()
    }

    fn dropped(
        family: &Family<DropLabels, Counter>,
        reason: &'static str,
        stage: &'static str,
    ) -> u64 {
        family.get_or_create(&DropLabels { reason, stage }).get()
    }

    #[tokio::test]
    async fn an_expired_deadline_is_refused_on_arrival_and_counted_without_calling_the_handler() {
        let family = Family::<DropLabels, Counter>::default();
        let recorder = Recorder::default();
        let mut service = DeadlineLayer::new(family.clone()).layer(recorder.clone());

        let response = service
            .call(request(
                "/inference.GRPCInferenceService/ModelInfer",
                Some("1n"),
            ))
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
        assert_eq!(recorder.calls.load(Ordering::SeqCst), 0);
        assert_eq!(dropped(&family, "deadline", "arrival"), 1);

        service
            .call(request("/plankton.v1.Inference/Predict", Some("5S")))
            .await
            .unwrap();
        assert_eq!(recorder.calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            recorder.with_deadline.load(Ordering::SeqCst),
            1,
            "the handler sees the deadline"
        );

        // Health and reflection are not deadline-checked.
        service
            .call(request("/grpc.health.v1.Health/Check", Some("1n")))
            .await
            .unwrap();
        assert_eq!(recorder.calls.load(Ordering::SeqCst), 2);
        assert_eq!(dropped(&family, "deadline", "arrival"), 1);
        assert_eq!(dropped(&family, "cancelled", "in_flight"), 0);
    }

    #[tokio::test]
    async fn a_call_abandoned_before_its_answer_is_counted_once() {
        let family = Family::<DropLabels, Counter>::default();
        let recorder = Recorder {
            never_answers: true,
            ..Recorder::default()
        };
        let mut service = DeadlineLayer::new(family.clone()).layer(recorder);
        let pending = service.call(request("/plankton.v1.Inference/Predict", None));
        drop(pending);
        assert_eq!(dropped(&family, "cancelled", "in_flight"), 1);

        let mut expiring = service.call(request("/plankton.v1.Inference/Predict", Some("2m")));
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut expiring)
                .await
                .is_err()
        );
        drop(expiring);
        assert_eq!(dropped(&family, "deadline", "in_flight"), 1);
        assert_eq!(dropped(&family, "cancelled", "in_flight"), 1);
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        headers
    }

    #[test]
    fn parses_every_grpc_timeout_unit_and_ignores_malformed_values() {
        for (text, expected) in [
            ("2H", Duration::from_secs(7200)),
            ("3M", Duration::from_secs(180)),
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("99999999u", Duration::from_micros(99_999_999)),
            ("1n", Duration::from_nanos(1)),
        ] {
            assert_eq!(parse_grpc_timeout(&headers(text)), Some(expected), "{text}");
        }
        for malformed in ["", "S", "5", "123456789S", "5x", "-5S"] {
            let mut map = HeaderMap::new();
            if let Ok(value) = malformed.parse() {
                map.insert("grpc-timeout", value);
            }
            assert_eq!(parse_grpc_timeout(&map), None, "{malformed:?}");
        }
        assert_eq!(parse_grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn only_the_inference_rpcs_are_deadline_checked() {
        assert!(is_inference_path("/plankton.v1.Inference/Predict"));
        assert!(is_inference_path(
            "/inference.GRPCInferenceService/ModelInfer"
        ));
        assert!(!is_inference_path("/grpc.health.v1.Health/Check"));
        assert!(!is_inference_path(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        ));
    }
}
