//! 404 / 405 / 413 / 415: routing and framing, before any signature is
//! checked.

use http::{Method, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    fake_sync::FakeSync,
    helpers::{SECRET, TestApp, USER_CREATED, fixture, now, replaced, signed_headers, without},
};

#[tokio::test]
async fn unknown_path_is_404() {
    let app = TestApp::spawn().await;
    let body = fixture(USER_CREATED);
    let headers = signed_headers(SECRET, "msg_404", now(), &body);

    let response = app
        .request(Method::POST, "/webhooks/clerk", &headers, body)
        .await;

    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert!(app.upstream.received().is_empty());
}

#[tokio::test]
async fn other_methods_on_clerk_are_405_with_allow_post() {
    let app = TestApp::spawn().await;
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
        let response = app.request(method.clone(), "/clerk", &[], "").await;

        assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(response.headers[header::ALLOW], "POST", "{method}");
    }
    assert!(app.upstream.received().is_empty());
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415_and_not_forwarded() {
    let app = TestApp::spawn().await;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let body = fixture(USER_CREATED);
        let signed = signed_headers(SECRET, "msg_415", now(), &body);
        let headers = match content_type {
            Some(value) => replaced(&signed, "content-type", value),
            None => without(&signed, "content-type"),
        };

        let response = app.post_clerk(&headers, body).await;

        assert_eq!(
            response.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
    }
    assert!(app.upstream.received().is_empty());
}

/// A signed `user.created` padded with trailing spaces to exactly `size` bytes.
fn padded_event(size: usize) -> Vec<u8> {
    let mut body = fixture(USER_CREATED);
    assert!(body.len() <= size);
    body.resize(size, b' ');
    body
}

#[tokio::test]
async fn body_over_the_limit_is_413_and_not_forwarded() {
    let app = TestApp::spawn_with(FakeSync::start().await, |config| config.body_limit = 4096).await;

    let response = app.deliver("msg_big", padded_event(4097)).await;
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(app.upstream.received().is_empty());

    // The limit itself is allowed.
    let response = app.deliver("msg_at_limit", padded_event(4096)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(app.upstream.received().len(), 1);
}

#[tokio::test]
async fn default_limit_is_one_mebibyte() {
    let app = TestApp::spawn().await;

    let response = app.deliver("msg_huge", padded_event(1024 * 1024 + 1)).await;

    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(app.upstream.received().is_empty());
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let app = TestApp::spawn_with(FakeSync::start().await, |config| config.body_limit = 4096).await;
    let body = padded_event(8192);
    let headers = signed_headers(SECRET, "msg_chunked", now(), &body);

    // No Content-Length: the limit must hold while the body streams in.
    let mut request =
        String::from("POST /clerk HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n");
    for (name, value) in &headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Transfer-Encoding: chunked\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    for chunk in body.chunks(1000) {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        // The gateway may answer and close before the whole body is sent.
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;

    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(app.upstream.received().is_empty());
}
