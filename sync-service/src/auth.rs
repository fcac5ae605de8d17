//! Who may call what: bearer tokens in the `authorization` metadata, checked
//! by one tower layer in front of every service before any handler runs.
//!
//! Two roles. **Writers** (the gateway, a backfill) may apply events and read;
//! **readers** (other internal services) may only read. `grpc.health.v1` and
//! server reflection stay open: load balancers probe health without
//! credentials, and the schema is public in `proto/` anyway. Any other path,
//! including services added later, needs a writer unless it is listed as a
//! read: a new API is closed until someone decides otherwise.
//!
//! Tokens are kept as SHA-256 digests and a presented token is compared
//! against every configured digest without stopping at the first match, so
//! neither the comparison time nor the answer tells which tokens exist. The
//! handler learns the caller's role from a request extension ([`Caller`]).

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use http::{Request, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;
use tower::{Layer, Service};

/// Shortest token accepted: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// gRPC path prefixes that need no token.
const OPEN_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// gRPC path prefixes the read role may call.
const READ_PREFIXES: [&str; 3] = [
    "/clerk.sync.v1.UserDirectoryService/",
    "/clerk.sync.v1.OrganizationDirectoryService/",
    "/clerk.sync.v1.ReconcileService/ListPasses",
];

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Queries (and watches) the directory.
    Reader,
    /// Applies events, and reads.
    Writer,
}

/// Who is calling, as the auth layer established it; every request that
/// reaches a handler carries one in its extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The server runs without tokens: nobody is identified.
    Anonymous,
    /// Presented a valid token of this role.
    Authenticated(Role),
}

impl Caller {
    /// The caller of `request`. A request the layer did not see (a unit
    /// test calling a handler directly) counts as anonymous.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        request
            .extensions()
            .get::<Caller>()
            .copied()
            .unwrap_or(Caller::Anonymous)
    }

    /// Whether the caller proved who they are: private data is served only
    /// then.
    pub fn is_authenticated(self) -> bool {
        matches!(self, Caller::Authenticated(_))
    }
}

/// A list of bearer tokens from one setting, split on commas and whitespace.
/// `Debug` never shows them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TokenList(Vec<String>);

impl TokenList {
    /// Parses a setting's value. Errors say what is wrong without repeating
    /// the value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let tokens: Vec<String> = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|token| !token.is_empty())
            .map(str::to_owned)
            .collect();
        for (i, token) in tokens.iter().enumerate() {
            let n = i + 1;
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "token {n} is shorter than {MIN_TOKEN_LEN} characters"
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "token {n} has characters that cannot travel in a header (use printable ASCII)"
                ));
            }
        }
        Ok(Self(tokens))
    }

    /// This list and one more token.
    pub fn with(&self, token: &str) -> Self {
        let mut tokens = self.0.clone();
        tokens.push(token.to_owned());
        Self(tokens)
    }

    /// No token configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn digests(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.0.iter().map(|token| digest(token.as_bytes()))
    }
}

impl fmt::Debug for TokenList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenList({} redacted)", self.0.len())
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// The configured tokens of both roles, as digests.
#[derive(Clone)]
pub struct Tokens {
    known: Vec<([u8; 32], Role)>,
}

impl Tokens {
    /// The tokens of both roles. A token listed under both is an error: its
    /// role would be a guess.
    pub fn new(writers: &TokenList, readers: &TokenList) -> Result<Self, String> {
        let writer_digests: Vec<[u8; 32]> = writers.digests().collect();
        if readers.digests().any(|d| writer_digests.contains(&d)) {
            return Err("a token is listed as both a read and a write token".to_owned());
        }
        let known = writer_digests
            .into_iter()
            .map(|d| (d, Role::Writer))
            .chain(readers.digests().map(|d| (d, Role::Reader)))
            .collect();
        Ok(Self { known })
    }

    /// The role of `token`, if it is one of ours. Every digest is compared,
    /// in constant time, whatever matched.
    fn role_of(&self, token: &str) -> Option<Role> {
        let presented = digest(token.as_bytes());
        let mut role = None;
        for (known, known_role) in &self.known {
            if bool::from(known.ct_eq(&presented)) {
                role = Some(*known_role);
            }
        }
        role
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} redacted)", self.known.len())
    }
}

/// The tower layer that authenticates every call; `None` tokens means the
/// server runs unauthenticated (loopback, or explicitly asked for).
#[derive(Clone, Debug)]
pub struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
}

impl AuthLayer {
    /// Checks calls against `tokens`, or lets everyone in as anonymous.
    pub fn new(tokens: Option<Tokens>) -> Self {
        Self {
            tokens: tokens.map(Arc::new),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the server's routes.
#[derive(Clone, Debug)]
pub struct Authenticated<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S, B, ResBody> Service<Request<B>> for Authenticated<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match authorize(self.tokens.as_deref(), &request) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Either::Left(self.inner.call(request))
            }
            Err(status) => Either::Right(ready(Ok(status.into_http()))),
        }
    }
}

/// Decides whether `request` may go on, and as whom.
fn authorize<B>(tokens: Option<&Tokens>, request: &Request<B>) -> Result<Caller, Status> {
    let path = request.uri().path();
    let Some(tokens) = tokens else {
        return Ok(Caller::Anonymous);
    };
    let role = bearer_token(request).and_then(|token| tokens.role_of(token));
    if OPEN_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
        return Ok(role.map_or(Caller::Anonymous, Caller::Authenticated));
    }
    let Some(role) = role else {
        return Err(Status::unauthenticated(
            "a valid bearer token is required (authorization: Bearer <token>)",
        ));
    };
    let needed = if READ_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
        Role::Reader
    } else {
        Role::Writer
    };
    if role < needed {
        return Err(Status::permission_denied(
            "this token's role may not call this method",
        ));
    }
    Ok(Caller::Authenticated(role))
}

/// The token of an `authorization: Bearer <token>` header (scheme
/// case-insensitive), if there is one.
fn bearer_token<B>(request: &Request<B>) -> Option<&str> {
    bearer(
        request
            .headers()
            .get(http::header::AUTHORIZATION)?
            .to_str()
            .ok()?,
    )
}

/// Names the token an authenticated caller presented (its SHA-256 digest,
/// never the token), for what is limited per token; `None` without one.
pub(crate) fn token_key(metadata: &tonic::metadata::MetadataMap) -> Option<[u8; 32]> {
    let token = bearer(metadata.get("authorization")?.to_str().ok()?)?;
    Some(Sha256::digest(token.as_bytes()).into())
}

/// The token of a `Bearer <token>` header value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITE: &str = "write-token-0123456789";
    const READ: &str = "read-token-0123456789";

    fn tokens() -> Tokens {
        Tokens::new(
            &TokenList::parse(WRITE).unwrap(),
            &TokenList::parse(&format!("other-read-token-xyz, {READ}")).unwrap(),
        )
        .unwrap()
    }

    fn request(path: &str, authorization: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().uri(path);
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        builder.body(()).unwrap()
    }

    fn check(path: &str, authorization: Option<&str>) -> Result<Caller, tonic::Code> {
        authorize(Some(&tokens()), &request(path, authorization)).map_err(|s| s.code())
    }

    const APPLY: &str = "/clerk.sync.v1.UserSyncService/ApplyUserCreated";
    const GET: &str = "/clerk.sync.v1.UserDirectoryService/GetUser";

    #[test]
    fn roles_decide_what_a_token_may_call() {
        let writer = format!("Bearer {WRITE}");
        let reader = format!("bearer {READ}");
        assert_eq!(
            check(APPLY, Some(&writer)),
            Ok(Caller::Authenticated(Role::Writer))
        );
        assert_eq!(
            check(GET, Some(&writer)),
            Ok(Caller::Authenticated(Role::Writer))
        );
        assert_eq!(
            check(GET, Some(&reader)),
            Ok(Caller::Authenticated(Role::Reader))
        );
        assert_eq!(
            check(APPLY, Some(&reader)),
            Err(tonic::Code::PermissionDenied)
        );
        // A service nobody listed as a read needs a writer.
        assert_eq!(
            check("/clerk.sync.v1.SomethingNew/Do", Some(&reader)),
            Err(tonic::Code::PermissionDenied)
        );
    }

    #[test]
    fn missing_unknown_or_malformed_tokens_are_unauthenticated() {
        for authorization in [
            None,
            Some("Bearer not-a-known-token-at-all"),
            Some(WRITE),
            Some("Basic d3JpdGU6dG9rZW4="),
            Some("Bearer "),
            Some(&format!("Bearer {WRITE}x")),
        ] {
            assert_eq!(
                check(GET, authorization),
                Err(tonic::Code::Unauthenticated),
                "{authorization:?}"
            );
        }
    }

    #[test]
    fn health_and_reflection_are_open() {
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(check(path, None), Ok(Caller::Anonymous));
        }
    }

    #[test]
    fn without_tokens_everyone_is_anonymous() {
        assert_eq!(
            authorize(None, &request(APPLY, None)).ok(),
            Some(Caller::Anonymous)
        );
    }

    #[test]
    fn token_lists_split_on_commas_and_spaces_and_hide_their_values() {
        let list = TokenList::parse(
            " a-long-enough-token-1,a-long-enough-token-2\nb-long-enough-token-3 ",
        )
        .unwrap();
        assert_eq!(list.0.len(), 3);
        assert!(!format!("{list:?}").contains("long-enough"));
        assert!(TokenList::parse("").unwrap().is_empty());
    }

    #[test]
    fn weak_or_unsendable_tokens_are_refused_without_echoing_them() {
        let error = TokenList::parse("a-long-enough-token-1,short").unwrap_err();
        assert_eq!(error, "token 2 is shorter than 16 characters");
        let error = TokenList::parse("a-long-enough-token-é").unwrap_err();
        assert!(error.starts_with("token 1 has characters"), "{error}");
        assert!(!error.contains("long-enough"));
    }

    #[test]
    fn a_token_in_both_roles_is_refused() {
        let list = TokenList::parse(WRITE).unwrap();
        assert!(Tokens::new(&list, &list).is_err());
    }
}
