//! Checks the end state of an ingest run through the directory, so a fast
//! wrong answer cannot pass: every live user at its last version (by
//! `first_name` and `updated_at`) through `BatchGetUsers`, every deleted user
//! missing there and NOT_FOUND through `GetUser`, and a sample of live users
//! through `GetUser` too.

use clerk_sync_api::v1::{
    self, BatchGetUsersRequest, GetUserRequest,
    user_directory_service_client::UserDirectoryServiceClient,
};
use tonic::Code;

use crate::{
    plan::{End, ExpectedUser},
    target::GrpcTarget,
};

/// `BatchGetUsers` takes at most this many ids.
const BATCH: usize = 100;
/// Live users also checked one by one through `GetUser`.
const GET_USER_SAMPLE: usize = 20;

/// What a verification found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Users checked.
    pub checked: usize,
    /// One line per user not in its expected state.
    pub mismatches: Vec<String>,
}

impl Verdict {
    /// True when every user is as expected.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// `updated_at` of a user, Unix milliseconds.
fn updated_at_ms(user: &v1::User) -> Option<i64> {
    user.updated_at
        .as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

fn check_live(expected: &ExpectedUser, user: &v1::User, via: &str) -> Option<String> {
    let End::Live {
        first_name,
        updated_at_ms: at,
    } = &expected.end
    else {
        return Some(format!("{}: deleted, but {via} returned it", expected.id));
    };
    let found = (user.first_name.as_deref(), updated_at_ms(user));
    (found != (Some(first_name.as_str()), Some(*at))).then(|| {
        format!(
            "{}: expected first_name {first_name:?} updated_at {at}, {via} returned {:?} {:?}",
            expected.id, found.0, found.1
        )
    })
}

/// Verifies `expected` against the directory at `target` (read token).
/// Errors only when the directory cannot be asked; mismatches are in the verdict.
pub async fn verify(target: &GrpcTarget, expected: &[ExpectedUser]) -> anyhow::Result<Verdict> {
    let mut client = UserDirectoryServiceClient::new(target.connect().await?)
        .max_decoding_message_size(64 << 20);
    let mut verdict = Verdict::default();
    for chunk in expected.chunks(BATCH) {
        let answer = client
            .batch_get_users(target.request(BatchGetUsersRequest {
                ids: chunk.iter().map(|u| u.id.clone()).collect(),
            }))
            .await
            .map_err(|s| anyhow::anyhow!("BatchGetUsers failed: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        for user in chunk {
            verdict.checked += 1;
            let found = answer.users.iter().find(|u| u.id == user.id);
            let missing = answer.missing_ids.contains(&user.id);
            let mismatch = match (&user.end, found) {
                (End::Deleted, None) if missing => None,
                (End::Deleted, None) => Some(format!(
                    "{}: deleted, but BatchGetUsers neither returned it nor listed it missing",
                    user.id
                )),
                (End::Live { .. }, None) => Some(format!(
                    "{}: expected live, BatchGetUsers says missing",
                    user.id
                )),
                (_, Some(found)) => check_live(user, found, "BatchGetUsers"),
            };
            verdict.mismatches.extend(mismatch);
        }
    }
    let sample = expected.iter().filter(|u| u.end == End::Deleted).chain(
        expected
            .iter()
            .filter(|u| u.end != End::Deleted)
            .take(GET_USER_SAMPLE),
    );
    for user in sample {
        let answer = client
            .get_user(target.request(GetUserRequest {
                id: user.id.clone(),
            }))
            .await;
        let mismatch = match answer {
            Err(status) if status.code() == Code::NotFound => (user.end != End::Deleted)
                .then(|| format!("{}: expected live, GetUser says NOT_FOUND", user.id)),
            Err(status) => {
                anyhow::bail!("GetUser failed: {:?}: {}", status.code(), status.message())
            }
            Ok(answer) => match answer.into_inner().user {
                Some(found) => check_live(user, &found, "GetUser"),
                None => Some(format!("{}: GetUser answered without a user", user.id)),
            },
        };
        verdict.mismatches.extend(mismatch);
    }
    Ok(verdict)
}
