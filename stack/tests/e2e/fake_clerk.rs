//! A local stand-in for Clerk's Backend API: `GET /v1/users` (paging by the
//! `starting_after` cursor in created_at order, bare JSON array; deep
//! offsets refused as Clerk's time out), `GET /v1/users/count` and
//! `GET /v1/users/{id}`, behind a bearer key, with faults (429 with
//! Retry-After, 500, a page of chosen bytes, a truncated page), changes to
//! the user list injected at chosen requests, and the misbehaviours probes
//! found: a cursor ignored, counts that lie, users hidden from the listing.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
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
#[derive(Clone, Debug)]
pub(crate) enum Fault {
    /// 429 with `Retry-After: seconds`.
    Throttle(u64),
    /// 500 with a Clerk error body.
    ServerError,
    /// 200 with these bytes as the page.
    Body(Bytes),
    /// 200 with only the first this many users of the right page.
    Truncate(usize),
}

/// Offsets from here on are refused, as Clerk's deep offsets time out.
pub(crate) const DEEP_OFFSET: usize = 500;

/// Changes the user list before the list request with this number is served.
pub(crate) type Mutation = Box<dyn FnMut(&mut Vec<Value>) + Send>;

/// The organization objects Clerk holds, each list in created_at order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Orgs {
    pub(crate) organizations: Vec<Value>,
    pub(crate) memberships: Vec<Value>,
    pub(crate) invitations: Vec<Value>,
    pub(crate) roles: Vec<Value>,
}

impl Orgs {
    /// Deletes organization `id` as Clerk does: its memberships and
    /// invitations go with it.
    pub(crate) fn delete_organization(&mut self, id: &str) {
        self.organizations.retain(|o| o["id"] != id);
        self.memberships.retain(|m| m["organization"]["id"] != id);
        self.invitations.retain(|i| i["organization_id"] != id);
    }

    fn sort(&mut self) {
        for list in [
            &mut self.organizations,
            &mut self.memberships,
            &mut self.invitations,
            &mut self.roles,
        ] {
            list.sort_by_key(|o| {
                (
                    o["created_at"].as_i64(),
                    o["id"].as_str().map(str::to_owned),
                )
            });
        }
    }
}

/// Changes the organization objects before the organization list request
/// with this number is served.
pub(crate) type OrgMutation = Box<dyn FnMut(&mut Orgs) + Send>;

/// A served (or refused) list request.
#[derive(Clone, Debug)]
pub(crate) struct Served {
    /// The `starting_after` cursor, if any.
    pub(crate) after: Option<String>,
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
    /// Serve every page from the start, whatever the cursor says.
    ignore_cursor: bool,
    /// Answers of the next count requests, instead of the truth.
    counts: Vec<u64>,
    /// Users left out of listings (and counts) but returned by id.
    hidden: Vec<String>,
    /// `GET /v1/users/{id}` requests so far.
    lookups: Vec<String>,
    /// How long each list request waits before it is answered.
    page_delay: Duration,
    orgs: Orgs,
    /// Organization list requests so far (they number the next two).
    org_requests: u32,
    org_faults: HashMap<u32, Fault>,
    org_mutations: HashMap<u32, OrgMutation>,
    /// Paths of the organization list requests, in order.
    org_served: Vec<String>,
    /// Organization objects asked for by id (`GET /v1/organizations/{id}`,
    /// its memberships, `GET /v1/organization_roles/{id}`).
    org_lookups: Vec<String>,
    /// Whether the instance has organizations turned off.
    organizations_disabled: bool,
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

/// A Clerk organization object as the Backend API sends it.
pub(crate) fn clerk_organization(id: &str, created_at: i64, updated_at: i64) -> Value {
    json!({
        "object": "organization",
        "id": id,
        "name": format!("Org {id} v{updated_at}"),
        "slug": id.replace('_', "-"),
        "image_url": "https://img.clerk.com/org",
        "has_image": false,
        "members_count": 99,
        "pending_invitations_count": 0,
        "max_allowed_memberships": 5,
        "admin_delete_enabled": true,
        "public_metadata": {"tier": "gold"},
        "private_metadata": {"secret": id},
        "created_by": "user_00000",
        "created_at": created_at,
        "updated_at": updated_at,
    })
}

/// A membership of `user_id` in `organization_id` with `role`, as Clerk's
/// instance-wide list sends it (the organization embedded).
pub(crate) fn clerk_membership(
    id: &str,
    organization_id: &str,
    user_id: &str,
    role: &str,
    created_at: i64,
    updated_at: i64,
) -> Value {
    json!({
        "object": "organization_membership",
        "id": id,
        "role": role,
        "role_name": role.trim_start_matches("org:"),
        "permissions": [format!("{role}:read")],
        "public_metadata": {},
        "private_metadata": {},
        // Clerk's snapshot: its count and time are not the directory's.
        "organization": clerk_organization(organization_id, 1, 1),
        "public_user_data": {
            "user_id": user_id,
            "first_name": "Member",
            "last_name": user_id,
            "image_url": "https://img.clerk.com/u",
            "has_image": false,
            "identifier": format!("{user_id}@example.com"),
        },
        "created_at": created_at,
        "updated_at": updated_at,
    })
}

/// An invitation to `organization_id` in `status`, as Clerk lists it.
pub(crate) fn clerk_invitation(
    id: &str,
    organization_id: &str,
    status: &str,
    created_at: i64,
    updated_at: i64,
) -> Value {
    json!({
        "object": "organization_invitation",
        "id": id,
        "email_address": format!("{id}@example.com"),
        "role": "org:member",
        "role_name": "Member",
        "organization_id": organization_id,
        "inviter_id": null,
        "public_inviter_data": null,
        "status": status,
        "public_metadata": {},
        "private_metadata": {},
        "url": format!("https://accounts.example.com/accept?ticket={id}"),
        "expires_at": created_at + 86_400_000,
        "created_at": created_at,
        "updated_at": updated_at,
        "public_organization_data": {"id": organization_id, "name": "x", "slug": null,
            "image_url": null, "has_image": false},
    })
}

/// A role with `permissions` (keys), as Clerk lists it.
pub(crate) fn clerk_role(
    id: &str,
    key: &str,
    permissions: &[&str],
    created_at: i64,
    updated_at: i64,
) -> Value {
    let permissions: Vec<Value> = permissions
        .iter()
        .map(|key| {
            json!({
                "object": "permission",
                "id": format!("perm_{}", key.replace(':', "_")),
                "name": key,
                "key": key,
                "description": "",
                "type": "user",
                "created_at": created_at,
                "updated_at": created_at,
            })
        })
        .collect();
    json!({
        "object": "role",
        "id": id,
        "name": key.trim_start_matches("org:"),
        "key": key,
        "description": null,
        "is_creator_eligible": true,
        "permissions": permissions,
        "created_at": created_at,
        "updated_at": updated_at,
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
                let service = service_fn(move |request: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let path = request.uri().path();
                        if path == "/v1/users" || ORG_LISTS.contains(&path) {
                            let delay = state.lock().unwrap().page_delay;
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, Infallible>(answer(&state, request))
                    }
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

    /// Makes every list request wait `delay` before it is answered.
    pub(crate) fn slow_pages(&self, delay: Duration) {
        self.state.lock().unwrap().page_delay = delay;
    }

    /// Replaces the users Clerk holds (kept in created_at order).
    pub(crate) fn change_users(&self, change: impl FnOnce(&mut Vec<Value>)) {
        let mut state = self.state.lock().unwrap();
        change(&mut state.users);
        state.users.sort_by_key(|user| {
            (
                user["created_at"].as_i64(),
                user["id"].as_str().map(str::to_owned),
            )
        });
    }

    /// List requests served so far (they number faults and mutations).
    pub(crate) fn list_requests(&self) -> u32 {
        self.state.lock().unwrap().requests
    }

    /// Serves every page from the start from now on (a cursor ignored).
    pub(crate) fn ignore_cursor(&self) {
        self.state.lock().unwrap().ignore_cursor = true;
    }

    /// Answers the next count requests with `counts`, in order.
    pub(crate) fn lie_about_counts(&self, counts: &[u64]) {
        self.state.lock().unwrap().counts = counts.to_vec();
    }

    /// Leaves `ids` out of listings and counts; still returns them by id.
    pub(crate) fn hide_from_listing(&self, ids: &[&str]) {
        self.state.lock().unwrap().hidden = ids.iter().map(|id| id.to_string()).collect();
    }

    /// Ids asked for with `GET /v1/users/{id}` so far.
    pub(crate) fn lookups(&self) -> Vec<String> {
        self.state.lock().unwrap().lookups.clone()
    }

    /// Every list request so far.
    pub(crate) fn served(&self) -> Vec<Served> {
        self.state.lock().unwrap().served.clone()
    }

    /// The users Clerk holds now.
    pub(crate) fn users(&self) -> Vec<Value> {
        self.state.lock().unwrap().users.clone()
    }

    /// Replaces the organization objects Clerk holds (kept in created_at
    /// order).
    pub(crate) fn change_orgs(&self, change: impl FnOnce(&mut Orgs)) {
        let mut state = self.state.lock().unwrap();
        change(&mut state.orgs);
        state.orgs.sort();
    }

    /// Answers organization list request number `request` (from 1) with
    /// `fault`.
    pub(crate) fn fail_org_list(&self, request: u32, fault: Fault) {
        self.state.lock().unwrap().org_faults.insert(request, fault);
    }

    /// Runs `mutation` on the organization objects before organization list
    /// request `request`.
    pub(crate) fn before_org_list(&self, request: u32, mutation: OrgMutation) {
        self.state
            .lock()
            .unwrap()
            .org_mutations
            .insert(request, mutation);
    }

    /// Turns the instance's organizations off: every organization endpoint
    /// answers 403 `organization_not_enabled_in_instance`.
    pub(crate) fn disable_organizations(&self) {
        self.state.lock().unwrap().organizations_disabled = true;
    }

    /// Paths of the organization list requests so far.
    pub(crate) fn org_lists_served(&self) -> Vec<String> {
        self.state.lock().unwrap().org_served.clone()
    }

    /// Organization objects asked for by id so far.
    pub(crate) fn org_lookups(&self) -> Vec<String> {
        self.state.lock().unwrap().org_lookups.clone()
    }

    /// Forgets the organization faults and counts their requests from 1.
    pub(crate) fn reset_org_requests(&self) {
        let mut state = self.state.lock().unwrap();
        state.org_requests = 0;
        state.org_faults.clear();
        state.org_mutations.clear();
        state.org_served.clear();
        state.org_lookups.clear();
    }

    /// Forgets the faults and counts requests from 1 again.
    pub(crate) fn reset_requests(&self) {
        let mut state = self.state.lock().unwrap();
        state.requests = 0;
        state.faults.clear();
        state.mutations.clear();
        state.served.clear();
        state.ignore_cursor = false;
        state.counts.clear();
        state.hidden.clear();
        state.lookups.clear();
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
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    let mut state = state.lock().unwrap();
    let path = request.uri().path();
    if path.starts_with("/v1/organization") {
        return organizations(&mut state, path, &query);
    }
    match path {
        "/v1/users/count" => {
            let total = if state.counts.is_empty() {
                (state.users.len() - listed_hidden(&state)) as u64
            } else {
                state.counts.remove(0)
            };
            json_response(
                StatusCode::OK,
                json!({"object": "total_count", "total_count": total}),
            )
        }
        "/v1/users" => list(&mut state, &query),
        path => match path.strip_prefix("/v1/users/") {
            Some(id) => {
                let id = percent_decode(id);
                state.lookups.push(id.clone());
                match state.users.iter().find(|u| u["id"] == *id.as_str()) {
                    Some(user) => json_response(StatusCode::OK, user.clone()),
                    None => not_found("user"),
                }
            }
            None => json_response(StatusCode::NOT_FOUND, json!({"errors": []})),
        },
    }
}

/// Hidden users that are in the list (they are left out of counts).
fn listed_hidden(state: &State) -> usize {
    state
        .users
        .iter()
        .filter(|u| state.hidden.iter().any(|id| u["id"] == *id.as_str()))
        .count()
}

fn list(state: &mut State, query: &HashMap<String, String>) -> Response<Full<Bytes>> {
    assert_eq!(
        query.get("order_by").map(String::as_str),
        Some("+created_at")
    );
    let limit: usize = query["limit"].parse().unwrap();
    assert!((1..=500).contains(&limit), "Clerk allows limit 1..=500");
    let offset: usize = query.get("offset").map_or(0, |o| o.parse().unwrap());
    let after = query.get("starting_after").cloned();
    state.requests += 1;
    let number = state.requests;
    if let Some(mut mutation) = state.mutations.remove(&number) {
        mutation(&mut state.users);
    }
    let served = |state: &mut State, status| {
        state.served.push(Served {
            after: after.clone(),
            status,
            at: Instant::now(),
        });
    };
    if offset >= DEEP_OFFSET || (offset > 0 && after.is_some()) {
        served(state, StatusCode::UNPROCESSABLE_ENTITY);
        return clerk_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "offset is too deep or combined with starting_after: paginate with starting_after",
        );
    }
    let visible: Vec<&Value> = state
        .users
        .iter()
        .filter(|u| !state.hidden.iter().any(|id| u["id"] == *id.as_str()))
        .collect();
    let start = match after.as_deref() {
        _ if state.ignore_cursor => Some(0),
        None => Some(offset),
        Some(after) => visible.iter().position(|u| u["id"] == after).map(|i| i + 1),
    };
    let Some(start) = start else {
        served(state, StatusCode::NOT_FOUND);
        return not_found("starting_after user");
    };
    let end = (start + limit).min(visible.len());
    let mut page: Vec<Value> = visible
        .get(start..end)
        .unwrap_or(&[])
        .iter()
        .map(|u| (*u).clone())
        .collect();
    let response = match state.faults.get(&number).cloned() {
        Some(Fault::Throttle(seconds)) => {
            served(state, StatusCode::TOO_MANY_REQUESTS);
            let mut response = clerk_error(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.to_string().parse().unwrap());
            return response;
        }
        Some(Fault::ServerError) => {
            clerk_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error")
        }
        Some(Fault::Body(bytes)) => {
            let mut response = json_response(StatusCode::OK, Value::Null);
            *response.body_mut() = Full::new(bytes);
            response
        }
        Some(Fault::Truncate(n)) => {
            page.truncate(n);
            json_response(StatusCode::OK, Value::Array(page))
        }
        None => json_response(StatusCode::OK, Value::Array(page)),
    };
    served(state, response.status());
    response
}

/// The organization list endpoints.
const ORG_LISTS: [&str; 4] = [
    "/v1/organizations",
    "/v1/organization_memberships",
    "/v1/organization_invitations",
    "/v1/organization_roles",
];

/// Answers an organization endpoint.
fn organizations(
    state: &mut State,
    path: &str,
    query: &HashMap<String, String>,
) -> Response<Full<Bytes>> {
    if state.organizations_disabled {
        return json_response(
            StatusCode::FORBIDDEN,
            json!({"errors": [{
                "message": "access denied",
                "long_message": "The organizations feature is not enabled for this instance. You can enable it at https://dashboard.clerk.com.",
                "code": "organization_not_enabled_in_instance"
            }]}),
        );
    }
    if ORG_LISTS.contains(&path) {
        return org_list(state, path, query);
    }
    let segments: Vec<String> = path.split('/').skip(2).map(percent_decode).collect();
    match segments.as_slice() {
        [list, id] if list == "organizations" => {
            state.org_lookups.push(id.clone());
            match state
                .orgs
                .organizations
                .iter()
                .find(|o| o["id"] == *id.as_str())
            {
                Some(organization) => json_response(StatusCode::OK, organization.clone()),
                None => not_found("organization"),
            }
        }
        [list, id, memberships] if list == "organizations" && memberships == "memberships" => {
            let user = query.get("user_id").cloned().unwrap_or_default();
            state.org_lookups.push(format!("{id}/{user}"));
            if !state
                .orgs
                .organizations
                .iter()
                .any(|o| o["id"] == *id.as_str())
            {
                return not_found("organization");
            }
            let data: Vec<Value> = state
                .orgs
                .memberships
                .iter()
                .filter(|m| m["organization"]["id"] == *id.as_str())
                .filter(|m| user.is_empty() || m["public_user_data"]["user_id"] == *user.as_str())
                .cloned()
                .collect();
            json_response(
                StatusCode::OK,
                json!({"data": data, "total_count": data.len()}),
            )
        }
        [list, id] if list == "organization_roles" => {
            state.org_lookups.push(id.clone());
            match state.orgs.roles.iter().find(|r| r["id"] == *id.as_str()) {
                Some(role) => json_response(StatusCode::OK, role.clone()),
                None => not_found("role"),
            }
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"errors": []})),
    }
}

/// One offset page of an organization list, `{data, total_count}`.
fn org_list(
    state: &mut State,
    path: &str,
    query: &HashMap<String, String>,
) -> Response<Full<Bytes>> {
    assert_eq!(
        query.get("order_by").map(String::as_str),
        Some("+created_at")
    );
    let limit: usize = query["limit"].parse().unwrap();
    assert!((1..=500).contains(&limit), "Clerk allows limit 1..=500");
    let offset: usize = query.get("offset").map_or(0, |o| o.parse().unwrap());
    state.org_requests += 1;
    let number = state.org_requests;
    if let Some(mut mutation) = state.org_mutations.remove(&number) {
        mutation(&mut state.orgs);
        state.orgs.sort();
    }
    state.org_served.push(path.to_owned());
    let list = match path {
        "/v1/organizations" => &state.orgs.organizations,
        "/v1/organization_memberships" => &state.orgs.memberships,
        "/v1/organization_invitations" => &state.orgs.invitations,
        _ => &state.orgs.roles,
    };
    let mut page: Vec<Value> = list.iter().skip(offset).take(limit).cloned().collect();
    let total_count = list.len();
    match state.org_faults.get(&number).cloned() {
        Some(Fault::Throttle(seconds)) => {
            let mut response = clerk_error(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.to_string().parse().unwrap());
            response
        }
        Some(Fault::ServerError) => {
            clerk_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error")
        }
        Some(Fault::Body(bytes)) => {
            let mut response = json_response(StatusCode::OK, Value::Null);
            *response.body_mut() = Full::new(bytes);
            response
        }
        Some(Fault::Truncate(n)) => {
            page.truncate(n);
            json_response(
                StatusCode::OK,
                json!({"data": page, "total_count": total_count}),
            )
        }
        None => json_response(
            StatusCode::OK,
            json!({"data": page, "total_count": total_count}),
        ),
    }
}

fn percent_decode(text: &str) -> String {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        match (byte, tail.get(..2)) {
            (b'%', Some(hex)) => {
                let hex = std::str::from_utf8(hex).unwrap();
                bytes.push(u8::from_str_radix(hex, 16).unwrap());
                rest = &tail[2..];
            }
            _ => {
                bytes.push(byte);
                rest = tail;
            }
        }
    }
    String::from_utf8(bytes).unwrap()
}

fn not_found(what: &str) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"errors": [{"message": format!("{what} not found"), "code": "resource_not_found"}]}),
    )
}

fn clerk_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        json!({"errors": [{"message": message, "code": "fake_error"}]}),
    )
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
