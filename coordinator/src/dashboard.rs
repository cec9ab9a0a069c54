//! The web dashboard (`--http-listen`): jobs, a live job page, workers, models and job reports, served over the
//! gRPC port's TLS with the same tokens and roles.
//!
//! A browser logs in once with its token (kept in an HttpOnly, SameSite=Strict cookie and checked against the
//! tokens file on every request, so a revoked token stops working at once); scripts may send
//! `Authorization: Bearer` instead. Each page is allowed to the roles of the gRPC method it shows
//! (`security::policy`): the jobs list is `ListJobs`, promoting a model is `PromoteModel`. Forms that change
//! something carry a token derived from the caller's own, so another site cannot submit them.

use std::net::SocketAddr;
use std::pin::Pin;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use plankton_security::{Authenticator, Principal, ServerIo, ServerSecurity, rule_for};
use plankton_web::pages::{self, JobFilter, Viewer};

use crate::state::ClusterState;

/// The cookie holding a browser's token.
const SESSION_COOKIE: &str = "plankton_token";

/// Longest token accepted from a form, a cookie or a header (generated tokens are 64 hex digits).
const MAX_TOKEN_LEN: usize = 512;

/// What every handler needs.
#[derive(Clone)]
struct Dashboard {
    state: ClusterState,
    authenticator: Authenticator,
    /// Cookies are marked `Secure` when the dashboard is served over TLS.
    tls: bool,
}

/// Serves the dashboard on `listener` until `shutdown` is cancelled.
pub async fn serve_dashboard(
    state: ClusterState,
    security: &ServerSecurity,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let local_address = listener.local_addr()?;
    let dashboard = Dashboard {
        state,
        authenticator: security.authenticator()?,
        tls: security.tls.is_some(),
    };
    let incoming = security.incoming(listener, shutdown.clone()).await?;
    info!(%local_address, tls = dashboard.tls, "dashboard listening");
    let listener = IncomingListener {
        incoming: Box::pin(incoming),
        local_address,
    };
    axum::serve(listener, router(dashboard))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

fn router(dashboard: Dashboard) -> Router {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/", get(jobs_list))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/live", get(job_live))
        .route("/jobs/{id}/report", get(job_report))
        .route("/workers", get(workers_page))
        .route("/models", get(models_page))
        .route("/models/promote", post(promote))
        .with_state(dashboard)
}

/// The TLS (or plaintext) connections of the gRPC port's machinery, as an axum listener.
struct IncomingListener {
    incoming: Pin<Box<dyn Stream<Item = Result<ServerIo, std::io::Error>> + Send>>,
    local_address: SocketAddr,
}

impl axum::serve::Listener for IncomingListener {
    type Io = ServerIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(io)) => {
                    let peer = tonic::transport::server::Connected::connect_info(&io)
                        .remote_addr()
                        .unwrap_or(self.local_address);
                    return (io, peer);
                }
                Some(Err(error)) => warn!(%error, "dashboard connection failed"),
                // Accepting stopped (shutdown): graceful shutdown ends the server meanwhile.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_address)
    }
}

/// Why a request is not served.
enum Refusal {
    /// No or a wrong token: browsers are sent to the login page.
    Unauthenticated {
        wants_page: bool,
        next: String,
    },
    Forbidden(Viewer, String),
    NotFound(Viewer, String),
    BadRequest(Viewer, String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthenticated {
                wants_page: true,
                next,
            } => {
                Redirect::to(&format!("/login?next={}", encode_query_value(&next))).into_response()
            }
            Refusal::Unauthenticated {
                wants_page: false, ..
            } => (StatusCode::UNAUTHORIZED, "log in first").into_response(),
            Refusal::Forbidden(viewer, message) => {
                error_response(&viewer, StatusCode::FORBIDDEN, &message)
            }
            Refusal::NotFound(viewer, message) => {
                error_response(&viewer, StatusCode::NOT_FOUND, &message)
            }
            Refusal::BadRequest(viewer, message) => {
                error_response(&viewer, StatusCode::BAD_REQUEST, &message)
            }
        }
    }
}

fn error_response(viewer: &Viewer, status: StatusCode, message: &str) -> Response {
    (
        status,
        Html(pages::error_page(Some(viewer), status.as_u16(), message)),
    )
        .into_response()
}

impl Dashboard {
    /// The caller, allowed to do what the gRPC method `rpc_path` does; `path` is the page asked for.
    fn authorize(
        &self,
        headers: &HeaderMap,
        rpc_path: &str,
        path: &str,
    ) -> Result<(Principal, Viewer), Refusal> {
        let wants_page = !path.ends_with("/live");
        let token = presented_token(headers);
        let principal = self
            .authenticator
            .authenticate(token.as_deref())
            .map_err(|failure| {
                if token.is_some() {
                    info!(target: "audit", path, ?failure, "dashboard request refused: not authenticated");
                }
                Refusal::Unauthenticated {
                    wants_page,
                    next: path.to_string(),
                }
            })?;
        let viewer = self.viewer(&principal, token.as_deref());
        let allowed = rule_for(rpc_path).is_some_and(|rule| rule.allows(principal.role));
        if !allowed {
            info!(target: "audit", caller = principal.name, role = principal.role.as_str(), path, "dashboard request refused: role not allowed");
            return Err(Refusal::Forbidden(
                viewer,
                format!(
                    "the {} role may not see this page ({rpc_path})",
                    principal.role.as_str()
                ),
            ));
        }
        Ok((principal, viewer))
    }

    fn viewer(&self, principal: &Principal, token: Option<&str>) -> Viewer {
        Viewer {
            name: principal.name.clone(),
            role: principal.role.as_str().to_string(),
            can_promote: rule_for("/plankton.v1.ModelRegistry/PromoteModel")
                .is_some_and(|rule| rule.allows(principal.role)),
            csrf_token: csrf_token(token),
        }
    }

    fn session_cookie(&self, token: &str, max_age_seconds: u64) -> HeaderValue {
        let secure = if self.tls { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_seconds}{secure}"
        ))
        .expect("hex token and fixed attributes are a valid header value")
    }
}

/// The token of a request: `Authorization: Bearer`, else the session cookie.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let cookie = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(&format!("{SESSION_COOKIE}=")))
    };
    bearer
        .or_else(cookie)
        .filter(|token| !token.is_empty() && token.len() <= MAX_TOKEN_LEN)
        .map(str::to_string)
}

/// A form token bound to the caller's own token: another site can neither read nor forge it.
fn csrf_token(token: Option<&str>) -> String {
    let digest = Sha256::digest(format!("plankton-dashboard-form:{}", token.unwrap_or("")));
    digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `next` when it is a path of this site (not `//host` or a full URL), else `/`.
fn local_path(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

fn encode_query_value(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

// ------------------------------------------------------------------ login

#[derive(Deserialize)]
struct NextQuery {
    #[serde(default)]
    next: String,
}

async fn login_form(Query(query): Query<NextQuery>) -> Html<String> {
    Html(pages::login_page(None, local_path(&query.next)))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

async fn login(State(dashboard): State<Dashboard>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim();
    let next = local_path(&form.next).to_string();
    let principal = if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        None
    } else {
        dashboard.authenticator.authenticate(Some(token)).ok()
    };
    match principal {
        Some(principal) if token.bytes().all(|byte| byte.is_ascii_graphic()) => {
            info!(target: "audit", caller = principal.name, role = principal.role.as_str(), "dashboard login");
            let mut response = Redirect::to(&next).into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                dashboard.session_cookie(token, 12 * 3600),
            );
            response
        }
        _ => {
            info!(target: "audit", "dashboard login refused: unknown token");
            (
                StatusCode::UNAUTHORIZED,
                Html(pages::login_page(Some("unknown token"), &next)),
            )
                .into_response()
        }
    }
}

async fn logout(State(dashboard): State<Dashboard>) -> Response {
    let mut response = Redirect::to("/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, dashboard.session_cookie("", 0));
    response
}

// ------------------------------------------------------------------ pages

#[derive(Deserialize)]
struct JobsQuery {
    phase: Option<String>,
    model: Option<String>,
    q: Option<String>,
}

fn non_empty(value: Option<String>) -> Option<String> {
    value
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

async fn jobs_list(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<JobsQuery>,
) -> Result<Html<String>, Refusal> {
    let (_, viewer) = dashboard.authorize(&headers, "/plankton.v1.JobService/ListJobs", "/")?;
    let filter = JobFilter {
        phase: non_empty(query.phase),
        model: non_empty(query.model),
        text: non_empty(query.q),
    };
    let mut jobs = dashboard.state.list_jobs();
    jobs.sort_by_key(|job| std::cmp::Reverse(job.created_unix_ms));
    Ok(Html(pages::jobs_page(&viewer, &jobs, &filter)))
}

fn find_job(
    dashboard: &Dashboard,
    viewer: &Viewer,
    job_id: &str,
) -> Result<plankton_proto::v1::Job, Refusal> {
    dashboard
        .state
        .get_job(job_id)
        .map_err(|_| Refusal::NotFound(viewer.clone(), format!("no job {job_id}")))
}

async fn job_page(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(job_id): Path<String>,
) -> Result<Html<String>, Refusal> {
    let path = format!("/jobs/{job_id}");
    let (_, viewer) = dashboard.authorize(&headers, "/plankton.v1.JobService/GetJob", &path)?;
    let job = find_job(&dashboard, &viewer, &job_id)?;
    Ok(Html(pages::job_page(&viewer, &job)))
}

async fn job_live(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(job_id): Path<String>,
) -> Result<Response, Refusal> {
    let path = format!("/jobs/{job_id}/live");
    let (_, viewer) = dashboard.authorize(&headers, "/plankton.v1.JobService/GetJob", &path)?;
    let job = find_job(&dashboard, &viewer, &job_id)?;
    // Polled every 1.5 s, and a 40-class heatmap is ~400 KB of SVG: gzip shrinks it ~10x.
    Ok(compressed_html(&headers, pages::job_live_fragment(&job)))
}

/// `html` gzip-compressed when the client accepts it (fast level: the text is very repetitive), not cached.
fn compressed_html(request_headers: &HeaderMap, html: String) -> Response {
    let accepts_gzip = request_headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| {
            value
                .split(',')
                .any(|coding| coding.trim().starts_with("gzip"))
        });
    let html_headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    if accepts_gzip {
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(html.len() / 8),
            flate2::Compression::fast(),
        );
        if std::io::Write::write_all(&mut encoder, html.as_bytes()).is_ok()
            && let Ok(body) = encoder.finish()
        {
            return (
                html_headers,
                [
                    (header::CONTENT_ENCODING, "gzip"),
                    (header::VARY, "accept-encoding"),
                ],
                body,
            )
                .into_response();
        }
    }
    (html_headers, html).into_response()
}

async fn job_report(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(job_id): Path<String>,
) -> Result<Response, Refusal> {
    let path = format!("/jobs/{job_id}/report");
    let (_, viewer) =
        dashboard.authorize(&headers, "/plankton.v1.JobService/GetJobReport", &path)?;
    let job = find_job(&dashboard, &viewer, &job_id)?;
    Ok(compressed_html(
        &headers,
        crate::report::render_job_report(&job).await,
    ))
}

async fn workers_page(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
) -> Result<Html<String>, Refusal> {
    let (_, viewer) =
        dashboard.authorize(&headers, "/plankton.v1.JobService/ListWorkers", "/workers")?;
    let workers = dashboard.state.list_workers();
    let jobs = dashboard.state.list_jobs();
    Ok(Html(pages::workers_page(&viewer, &workers, &jobs)))
}

async fn models_page(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
) -> Result<Html<String>, Refusal> {
    let (_, viewer) =
        dashboard.authorize(&headers, "/plankton.v1.ModelRegistry/ListModels", "/models")?;
    let models = dashboard.state.registry.list("");
    Ok(Html(pages::models_page(&viewer, &models, None)))
}

#[derive(Deserialize)]
struct PromoteForm {
    name: String,
    version: u32,
    alias: String,
    csrf: String,
}

async fn promote(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<PromoteForm>,
) -> Result<Response, Refusal> {
    let (principal, viewer) = dashboard.authorize(
        &headers,
        "/plankton.v1.ModelRegistry/PromoteModel",
        "/models",
    )?;
    let expected = csrf_token(presented_token(&headers).as_deref());
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        form.csrf.as_bytes(),
        expected.as_bytes(),
    )) {
        info!(target: "audit", caller = principal.name, "dashboard promote refused: bad form token");
        return Err(Refusal::Forbidden(
            viewer,
            "the form is stale or not from this dashboard: reload the page".into(),
        ));
    }
    let notice = match dashboard
        .state
        .registry
        .promote(&form.name, form.version, form.alias.trim())
    {
        Ok(promoted) => {
            info!(target: "audit", caller = principal.name, name = promoted.name, version = promoted.version, alias = form.alias, "model promoted (dashboard)");
            format!(
                "{} version {} is now {}",
                promoted.name,
                promoted.version,
                form.alias.trim()
            )
        }
        Err(error) => return Err(Refusal::BadRequest(viewer, error.to_string())),
    };
    let models = dashboard.state.registry.list("");
    Ok(Html(pages::models_page(&viewer, &models, Some(&notice))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(local_path("/jobs/job-1"), "/jobs/job-1");
        assert_eq!(local_path("//evil.example/x"), "/");
        assert_eq!(local_path("https://evil.example/"), "/");
        assert_eq!(local_path("/\\evil.example"), "/");
        assert_eq!(local_path(""), "/");
    }

    #[test]
    fn tokens_come_from_the_bearer_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; plankton_token=abc123"),
        );
        assert_eq!(presented_token(&headers).as_deref(), Some("abc123"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz"),
        );
        assert_eq!(presented_token(&headers).as_deref(), Some("xyz"));
    }

    #[tokio::test]
    async fn html_is_gzipped_only_for_clients_that_accept_it() {
        let html = "<svg>".to_string() + &"<rect class=\"cell\"/>".repeat(1000) + "</svg>";
        let plain = compressed_html(&HeaderMap::new(), html.clone());
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0.9"),
        );
        let gzipped = compressed_html(&headers, html.clone());
        assert_eq!(gzipped.headers()[header::CONTENT_ENCODING], "gzip");
        let body = axum::body::to_bytes(gzipped.into_body(), usize::MAX)
            .await
            .unwrap();
        assert!(body.len() * 10 < html.len(), "{} bytes", body.len());
        let mut unzipped = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut unzipped)
            .unwrap();
        assert_eq!(unzipped, html);
    }

    #[test]
    fn form_tokens_differ_per_caller_token() {
        assert_ne!(csrf_token(Some("a")), csrf_token(Some("b")));
        assert_eq!(csrf_token(Some("a")), csrf_token(Some("a")));
        assert_eq!(csrf_token(Some("a")).len(), 32);
    }
}
