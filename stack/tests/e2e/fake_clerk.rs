//! A local stand-in for Clerk's Backend API: `GET /v1/users` (offset paging
//! in created_at order, bare JSON array) and `GET /v1/users/count`, behind a
//! bearer key, with faults (429 with Retry-After, 500) and changes to the
//! user list injected at chosen requests.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The key the fake accepts.
pub(crate) const CLERK_KEY: &str = "sk_test_fakeKeyForTests0123456789";

/// What the fake answers a list request with instead of users.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fault {
    /// 429 with `Retry-After: seconds`.
    Throttle(u64),
    /// 500 with a Clerk error body.
    ServerError,
}

/// Changes the user list before the list request with this number is served.
pub(crate) type Mutation = Box<dyn FnMut(&mut Vec<Value>) + Send>;

/// A served (or refused) list request.
#[derive(Clone, Debug)]
pub(crate) struct Served {
    pub(crate) offset: usize,
    pub(crate) status: StatusCode,
    pub(crate) at: Instant,
}

#[derive(Default)]
struct State {
    /// Users in created_at order.
    users: Vec<Value>,
    /// List requests so far.
    requests: u32,
    faults: HashMap<u32, Fault>,
    mutations: HashMap<u32, Mutation>,
    served: Vec<Served>,
}

/// The running fake.
#[derive(Clone)]
pub(crate) struct FakeClerk {
    pub(crate) url: String,
    state: Arc<Mutex<State>>,
}

/// A Clerk user object as the Backend API and webhooks send it.
pub(crate) fn clerk_user(id: &str, created_at: i64, updated_at: i64) -> Value {
    json!({
        "id": id,
        "object": "user",
        "username": null,
        "first_name": format!("First {id}"),
        "last_name": format!("v{updated_at}"),
        "image_url": "https://img.clerk.com/x",
        "has_image": false,
        "primary_email_address_id": format!("idn_{id}"),
        "primary_phone_number_id": null,
        "primary_web3_wallet_id": null,
        "password_enabled": true,
        "two_factor_enabled": false,
        "email_addresses": [{
            "id": format!("idn_{id}"),
            "object": "email_address",
            "email_address": format!("{id}@example.com"),
            "verification": {"status": "verified", "strategy": "email_code", "attempts": null, "expire_at": null},
            "linked_to": []
        }],
        "phone_numbers": [],
        "web3_wallets": [],
        "external_accounts": [],
        "external_id": null,
        "public_metadata": {"n": created_at % 7},
        "private_metadata": {},
        "unsafe_metadata": {},
        "banned": false,
        "locked": false,
        "created_at": created_at,
        "updated_at": updated_at,
        "last_sign_in_at": null,
        "last_active_at": null
    })
}

impl FakeClerk {
    pub(crate) async fn start(users: Vec<Value>) -> Self {
        let state = Arc::new(Mutex::new(State {
            users,
            ..State::default()
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let service = service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state, request)) }
                });
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url: format!("http://{address}"),
            state,
        }
    }

    /// Answers list request number `request` (from 1) with `fault`.
    pub(crate) fn fail(&self, request: u32, fault: Fault) {
        self.state.lock().unwrap().faults.insert(request, fault);
    }

    /// Runs `mutation` on the user list before list request `request`.
    pub(crate) fn before_request(&self, request: u32, mutation: Mutation) {
        self.state
            .lock()
            .unwrap()
            .mutations
            .insert(request, mutation);
    }

    /// Every list request so far.
    pub(crate) fn served(&self) -> Vec<Served> {
        self.state.lock().unwrap().served.clone()
    }

    /// The users Clerk holds now.
    pub(crate) fn users(&self) -> Vec<Value> {
        self.state.lock().unwrap().users.clone()
    }

    /// Forgets the faults and counts requests from 1 again.
    pub(crate) fn reset_requests(&self) {
        let mut state = self.state.lock().unwrap();
        state.requests = 0;
        state.faults.clear();
        state.mutations.clear();
        state.served.clear();
    }
}

fn answer(state: &Mutex<State>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {CLERK_KEY}"));
    if !authorized {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"errors": [{"message": "Unauthorized", "long_message": "Invalid authentication", "code": "authentication_invalid"}]}),
        );
    }
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%2B", "+")))
        .collect();
    let mut state = state.lock().unwrap();
    match request.uri().path() {
        "/v1/users/count" => json_response(
            StatusCode::OK,
            json!({"object": "total_count", "total_count": state.users.len()}),
        ),
        "/v1/users" => {
            assert_eq!(
                query.get("order_by").map(String::as_str),
                Some("+created_at")
            );
            let limit: usize = query["limit"].parse().unwrap();
            let offset: usize = query["offset"].parse().unwrap();
            assert!((1..=500).contains(&limit), "Clerk allows limit 1..=500");
            state.requests += 1;
            let number = state.requests;
            if let Some(mut mutation) = state.mutations.remove(&number) {
                mutation(&mut state.users);
            }
            let (status, body) = match state.faults.get(&number) {
                Some(Fault::Throttle(seconds)) => {
                    let mut response = json_response(
                        StatusCode::TOO_MANY_REQUESTS,
                        json!({"errors": [{"message": "Too many requests", "code": "too_many_requests"}]}),
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, seconds.to_string().parse().unwrap());
                    state.served.push(Served {
                        offset,
                        status: StatusCode::TOO_MANY_REQUESTS,
                        at: Instant::now(),
                    });
                    return response;
                }
                Some(Fault::ServerError) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"errors": [{"message": "Internal error", "code": "internal_clerk_error"}]}),
                ),
                None => {
                    let end = (offset + limit).min(state.users.len());
                    let page = state.users.get(offset..end).unwrap_or(&[]).to_vec();
                    (StatusCode::OK, Value::Array(page))
                }
            };
            state.served.push(Served {
                offset,
                status,
                at: Instant::now(),
            });
            json_response(status, body)
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"errors": []})),
    }
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
