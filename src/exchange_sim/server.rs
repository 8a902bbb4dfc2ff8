//! The simulator's listener (HTTP or HTTPS, HTTP/1.1 with keep-alive): `POST /EWS/Exchange.asmx`
//! through Exchange's checks in Exchange's order (authentication 401, the tenant's EWS switch
//! 403, stalls, content type, schema fault, the mailbox acted for, throttling, the operation),
//! the OAuth token endpoint, and the control API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::answer::{self, Class, Fault, Message};
use super::auth::{self, Authentication, TokenGrant};
use super::ews::{self, Execution, Identity, Refusal};
use super::handle::Shared;
use super::request::{self, Operation};
use super::state::State;
use super::xml;

pub type Answer = Response<Full<Bytes>>;

pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors and the like: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| route(shared.clone(), request));
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
        // Reap finished connections so the set does not grow over a long run.
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
}

async fn route(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Answer, std::io::Error> {
    let path = request.uri().path().to_string();
    if path.eq_ignore_ascii_case("/EWS/Exchange.asmx") {
        return ews_call(shared, request).await;
    }
    if is_token_path(&path) {
        return Ok(token(shared, request).await);
    }
    if path == "/control" || path.starts_with("/control/") {
        return Ok(super::control::handle(shared, request).await);
    }
    Ok(plain(StatusCode::NOT_FOUND, "not found"))
}

/// `/oauth2/v2.0/token` or `/{tenant}/oauth2/v2.0/token`.
fn is_token_path(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["oauth2", "v2.0", "token"] => true,
        [tenant, "oauth2", "v2.0", "token"] => !tenant.is_empty(),
        _ => false,
    }
}

pub fn plain(status: StatusCode, text: &str) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub fn json_answer(status: StatusCode, value: &serde_json::Value) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn xml_answer(status: StatusCode, body: String) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    response
}

fn fault_answer(fault: &Fault) -> Answer {
    xml_answer(StatusCode::INTERNAL_SERVER_ERROR, answer::soap_fault(fault))
}

pub async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, Answer> {
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large or unreadable",
        )),
    }
}

fn header_text(request: &Request<Incoming>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn unauthorized(expired: bool) -> Answer {
    let mut response = plain(StatusCode::UNAUTHORIZED, "401 Unauthorized");
    let challenge = if expired {
        r#"Bearer error="invalid_token", error_description="The access token has expired""#
    } else {
        r#"Bearer realm="simulated-exchange", Basic realm="simulated-exchange""#
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    if expired {
        response.headers_mut().insert(
            "x-ms-diagnostics",
            HeaderValue::from_static(
                r#"2000001;reason="The token has expired.";error_category="invalid_token""#,
            ),
        );
    }
    response
}

/// The first ResponseCode that is not NoError, else NoError: the call's outcome in observation.
fn outcome_of(messages: &[Message]) -> String {
    messages
        .iter()
        .find(|m| m.class != Class::Success)
        .map_or_else(|| "NoError".to_string(), |m| m.code.clone())
}

async fn ews_call(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Answer, std::io::Error> {
    if request.method() != Method::POST {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "POST only");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(response);
    }
    let authorization = header_text(&request, "authorization");
    let anchor = header_text(&request, "x-anchormailbox");
    let content_type = header_text(&request, "content-type").unwrap_or_default();
    let body = match read_body(request, shared.options.max_body_bytes).await {
        Ok(body) => body,
        Err(answer) => return Ok(answer),
    };
    let options = &shared.options;

    // Authentication first: nothing of the body is looked at for an unknown caller.
    let identity = {
        let mut state = shared.lock();
        match auth::authenticate(
            authorization.as_deref(),
            options,
            &state.tokens,
            Instant::now(),
        ) {
            Authentication::Accepted(identity) => identity,
            Authentication::Refused(_) => {
                state.counts.unauthorized += 1;
                return Ok(unauthorized(false));
            }
            Authentication::Expired => {
                state.counts.unauthorized += 1;
                return Ok(unauthorized(true));
            }
        }
    };
    // Read once, outside the lock.
    let document = xml::parse(&body);
    let operation_name = document
        .as_ref()
        .ok()
        .and_then(|root| request::operation_name(root))
        .unwrap_or("unknown")
        .to_string();
    // The tenant's EWS switch, stalls.
    let stalled_until = {
        let mut state = shared.lock();
        if state.faults.ews_disabled {
            state.record_call(&operation_name, None, "http_403");
            return Ok(plain(
                StatusCode::FORBIDDEN,
                "403 Forbidden: EWS is disabled for this tenant, or this application is not on its EWS allow-list (Exchange Online EWSEnabled / EwsAllowedAppIDs).",
            ));
        }
        let stalled = state.faults.stalled_until(Instant::now());
        if stalled.is_some() {
            state.record_call(&operation_name, None, "stalled");
        }
        stalled
    };
    if let Some(until) = stalled_until {
        tokio::time::sleep_until(until.into()).await;
        // No answer at all: the connection closes without a response.
        return Err(std::io::Error::other(
            "stalled: the simulator does not answer",
        ));
    }
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("text/xml") {
        shared.lock().record_call(&operation_name, None, "http_415");
        return Ok(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "EWS takes SOAP 1.1 with Content-Type text/xml",
        ));
    }

    let root = match document {
        Ok(root) => root,
        Err(e) => {
            let (line, position) = xml::line_and_position(&body, e.offset);
            let fault = Fault::schema(line, position, &e.message);
            shared
                .lock()
                .record_call("unknown", None, "fault:ErrorSchemaValidation");
            return Ok(fault_answer(&fault));
        }
    };
    let parsed = match request::read_envelope(&root) {
        Ok(parsed) => parsed,
        Err(violation) => {
            let (line, position) = xml::line_and_position(&body, violation.offset);
            let fault = Fault::schema(line, position, &violation.message);
            shared
                .lock()
                .record_call(&operation_name, None, "fault:ErrorSchemaValidation");
            return Ok(fault_answer(&fault));
        }
    };
    let operation = parsed.operation.name().to_string();
    // The mailbox a refused call was for, as the request named it (observation only).
    let named = parsed
        .header
        .impersonation
        .as_ref()
        .and_then(|sid| sid.address())
        .map(str::to_string);
    let named = named.as_deref();
    if let Operation::Unsupported(name) = &parsed.operation {
        shared
            .lock()
            .record_call(&operation, named, "fault:ErrorInvalidRequest");
        return Ok(fault_answer(&ews::unsupported(name)));
    }

    // Throttling, then the mailbox acted for, then the operation: one critical section, so the
    // answer and the state agree.
    let (outcome, latency) = {
        let mut state = shared.lock();
        let latency = state.faults.latency;
        let call = Call {
            identity: &identity,
            request: &parsed,
            operation: &operation,
            anchor: anchor.as_deref(),
            named,
        };
        (answer_call(&shared, &mut state, &call), latency)
    };
    match outcome {
        Outcome::Fault(fault) => Ok(fault_answer(&fault)),
        Outcome::Answer { xml, delay } => {
            let wait = latency + delay.unwrap_or_default();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            Ok(xml_answer(StatusCode::OK, xml))
        }
    }
}

/// A checked request and what came with it.
struct Call<'a> {
    identity: &'a Identity,
    request: &'a request::Request,
    operation: &'a str,
    anchor: Option<&'a str>,
    /// The impersonated address as written, for observation.
    named: Option<&'a str>,
}

enum Outcome {
    Answer {
        xml: String,
        /// Answer this much later (the armed late CreateItem).
        delay: Option<Duration>,
    },
    Fault(Box<Fault>),
}

/// Throttling, the mailbox acted for, the operation, its bookkeeping; with the state locked.
fn answer_call(shared: &Arc<Shared>, state: &mut State, call: &Call<'_>) -> Outcome {
    let options = &shared.options;
    let operation = call.operation;
    let envelope = |messages: &[Message]| {
        answer::envelope(&answer::response_element(
            operation,
            messages,
            options.property_set_form,
        ))
    };
    if let Some(back_off) = state.faults.busy(Instant::now()) {
        let back_off_ms = u64::try_from(back_off.as_millis()).unwrap_or(u64::MAX);
        if options.busy_fault_operations.iter().any(|o| o == operation) {
            state.record_call(operation, call.named, "fault:ErrorServerBusy");
            return Outcome::Fault(Box::new(Fault::server_busy(back_off_ms)));
        }
        let messages: Vec<Message> = (0..ews::message_count(&call.request.operation))
            .map(|_| Message::server_busy(operation, back_off_ms))
            .collect();
        state.record_call(operation, call.named, "ErrorServerBusy");
        return Outcome::Answer {
            xml: envelope(&messages),
            delay: None,
        };
    }
    let mailbox =
        match ews::acting_mailbox(state, options, call.identity, call.request, call.anchor) {
            Ok(mailbox) => mailbox,
            Err(Refusal::Fault(fault)) => {
                state.record_call(operation, call.named, &format!("fault:{}", fault.code));
                return Outcome::Fault(fault);
            }
            Err(Refusal::Messages { code, text }) => {
                state.record_call(operation, call.named, code);
                if options.impersonation_errors_as_faults {
                    return Outcome::Fault(Box::new(Fault::other(code, &text)));
                }
                return Outcome::Answer {
                    xml: envelope(&ews::error_messages(&call.request.operation, code, &text)),
                    delay: None,
                };
            }
        };
    match ews::execute(
        state,
        options,
        &mailbox,
        call.request,
        OffsetDateTime::now_utc(),
    ) {
        Execution::Fault(fault) => {
            state.record_call(operation, Some(&mailbox), &format!("fault:{}", fault.code));
            Outcome::Fault(Box::new(fault))
        }
        Execution::Answer {
            messages,
            new_subscription,
            changed_mailbox,
        } => {
            let outcome = outcome_of(&messages);
            state.record_call(operation, Some(&mailbox), &outcome);
            if let Some(changed) = changed_mailbox {
                state.publish(&changed);
            }
            if let Some(id) = new_subscription {
                // Before the answer is written: the first notification may overtake it.
                super::delivery::spawn(shared, state, &id);
            }
            let delay = if operation == "CreateItem" && outcome == "NoError" {
                state.faults.answer_next_create_after.take()
            } else {
                None
            };
            Outcome::Answer {
                xml: envelope(&messages),
                delay,
            }
        }
    }
}

async fn token(shared: Arc<Shared>, request: Request<Incoming>) -> Answer {
    let error = |status: StatusCode, code: &str, description: &str| {
        json_answer(
            status,
            &json!({"error": code, "error_description": description}),
        )
    };
    if request.method() != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "AADSTS900561: The endpoint only accepts POST requests.",
        );
    }
    let content_type = header_text(&request, "content-type").unwrap_or_default();
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: The request body must be application/x-www-form-urlencoded.",
        );
    }
    let body = match read_body(request, 64 * 1024).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let Some(fields) = std::str::from_utf8(&body).ok().and_then(auth::form_fields) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: The request body is not a valid form.",
        );
    };
    match auth::check_token_request(&fields, &shared.options) {
        TokenGrant::Refuse(status, code, description) => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            &description,
        ),
        TokenGrant::Grant => {
            let mut state = shared.lock();
            let random = state.random();
            let (token, expires_in) = auth::issue(
                &mut state.tokens,
                random,
                shared.options.token_lifetime,
                Instant::now(),
            );
            json_answer(
                StatusCode::OK,
                &json!({
                    "token_type": "Bearer",
                    "expires_in": expires_in,
                    "ext_expires_in": expires_in,
                    "access_token": token,
                }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_paths() {
        assert!(is_token_path("/oauth2/v2.0/token"));
        assert!(is_token_path("/contoso.onmicrosoft.com/oauth2/v2.0/token"));
        assert!(!is_token_path("/oauth2/token"));
        assert!(!is_token_path("/a/b/oauth2/v2.0/token"));
    }
}
