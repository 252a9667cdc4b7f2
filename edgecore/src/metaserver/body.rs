//! Response bodies: a whole JSON document, or a stream of watch events fed by a task.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub(crate) type ApiBody = BoxBody<Bytes, Infallible>;

/// The frames a watch task sends, ending when the task drops its sender.
pub(crate) struct ChannelBody(pub(crate) mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// `value` as the JSON answer with `code`.
pub(crate) fn json_response(code: StatusCode, value: &Value) -> Response<ApiBody> {
    let mut text = value.to_string();
    text.push('\n');
    text_json_response(code, text)
}

/// JSON text, already written, as the answer with `code`.
pub(crate) fn text_json_response(code: StatusCode, text: String) -> Response<ApiBody> {
    let mut resp = Response::new(BoxBody::new(Full::new(Bytes::from(text))));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache, private"),
    );
    resp
}

/// A Kubernetes `Status` object for a failure.
pub(crate) fn status_object(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

/// The failure answered as a `Status`.
pub(crate) fn failure(code: StatusCode, reason: &str, message: &str) -> Response<ApiBody> {
    json_response(code, &status_object(code, reason, message))
}

/// The 404 of a path nothing is served at.
pub(crate) fn path_not_found(path: &str) -> Response<ApiBody> {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("the server could not find the requested resource ({path})"),
    )
}

/// A plain-text 200 (`/healthz`).
pub(crate) fn text_response(text: &'static str) -> Response<ApiBody> {
    let mut resp = Response::new(BoxBody::new(Full::new(Bytes::from_static(text.as_bytes()))));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A failure to answer as a `Status`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) code: StatusCode,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub(crate) fn response(&self) -> Response<ApiBody> {
        failure(self.code, self.reason, &self.message)
    }
}
