//! The events of an ingest run and the end state they must leave.
//!
//! Id scheme (what `query` and `verify` rely on): user `n` of run `R` is
//! `user_bench_R_<n, 6 digits>` with the verified primary address
//! `bench.R.<n>@example.org`. Version `k` of a user (0 = `user.created`,
//! 1..=U = `user.updated`) has `first_name` `v<k>` and `updated_at`
//! `BASE_MS + 1000 k`; a deleted user gets a final `user.deleted` stamped
//! after its last version. Every delivery has its own `svix-id`
//! (`msg_bench_R_<n>_<k>`); a duplicate re-sends one delivery unchanged.

use serde_json::Value;

/// `updated_at` of version 0, in Unix milliseconds (the fixture's own).
pub const BASE_MS: i64 = 1_654_012_591_835;

/// The `public_metadata` key a stamped event carries its send time in
/// (Unix microseconds, 16 digits, as a string): it comes back in the change
/// feed, for `watch` to time the delivery.
pub const SENT_US_KEY: &str = "bench_sent_us";
/// What the send time replaces in a stamped body: as wide as the time.
pub const SENT_US_PLACEHOLDER: &str = "################";

/// What to send.
#[derive(Clone, Debug)]
pub struct PlanSpec {
    /// Run id: keeps the users of one run apart from every other's.
    pub run: String,
    /// Number of users.
    pub users: usize,
    /// `user.updated` events per user, after its `user.created`.
    pub updates: usize,
    /// Fraction of users that end with a `user.deleted`.
    pub delete_rate: f64,
    /// Fraction of deliveries sent a second time, unchanged.
    pub duplicate_rate: f64,
    /// Send the deliveries in random order (else: every create, then every
    /// first update, and so on; duplicates at the end).
    pub shuffle: bool,
    /// Seed of the random choices (deletes, duplicates, order).
    pub seed: u64,
}

/// One webhook delivery, unsigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The `svix-id`.
    pub msg_id: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// How a user must end up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Present at its last version.
    Live {
        /// `first_name` of the last version.
        first_name: String,
        /// `updated_at` of the last version, Unix milliseconds.
        updated_at_ms: i64,
    },
    /// Deleted: NOT_FOUND / missing.
    Deleted,
}

/// One user of the plan and its expected end state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedUser {
    /// Clerk user id.
    pub id: String,
    /// Verified primary address.
    pub email: String,
    /// Expected end state.
    pub end: End,
}

/// The deliveries in sending order, and the end state they lead to.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Deliveries, in the order to send them.
    pub deliveries: Vec<Delivery>,
    /// One entry per user.
    pub expected: Vec<ExpectedUser>,
}

/// User `n`'s id in run `run`.
pub fn user_id(run: &str, n: usize) -> String {
    format!("user_bench_{run}_{n:06}")
}

/// User `n`'s verified primary address in run `run`.
pub fn user_email(run: &str, n: usize) -> String {
    format!("bench.{run}.{n}@example.org")
}

/// Builds Clerk payloads from the `user.created` fixture.
#[derive(Clone, Debug)]
pub struct EventFactory {
    fixture: Value,
    /// Whether upserts carry [`SENT_US_PLACEHOLDER`] for a send time.
    stamped: bool,
}

impl Default for EventFactory {
    fn default() -> Self {
        Self::new()
    }
}

impl EventFactory {
    /// A factory over the repository's `user.created` fixture.
    pub fn new() -> Self {
        let fixture =
            serde_json::from_str(include_str!("../../tests/fixtures/clerk/user.created.json"))
                .expect("the fixture is JSON");
        Self {
            fixture,
            stamped: false,
        }
    }

    /// A factory whose upserts carry a send-time placeholder in
    /// `public_metadata` ([`SENT_US_KEY`]), to fill in with [`stamp`] just
    /// before sending.
    pub fn stamped() -> Self {
        Self {
            stamped: true,
            ..Self::new()
        }
    }

    /// Version `version` of user `n`: `user.created` for 0, else `user.updated`.
    pub fn upsert(&self, run: &str, n: usize, version: usize) -> Delivery {
        let updated_at = updated_at_ms(version);
        let mut event = self.fixture.clone();
        event["type"] = if version == 0 {
            "user.created"
        } else {
            "user.updated"
        }
        .into();
        event["timestamp"] = updated_at.into();
        let data = &mut event["data"];
        data["id"] = user_id(run, n).into();
        data["created_at"] = BASE_MS.into();
        data["updated_at"] = updated_at.into();
        data["first_name"] = format!("v{version}").into();
        data["external_id"] = format!("bench-{n}").into();
        if self.stamped {
            data["public_metadata"] = serde_json::json!({ SENT_US_KEY: SENT_US_PLACEHOLDER });
        }
        let email_id = format!("idn_bench_{run}_{n:06}");
        data["primary_email_address_id"] = email_id.clone().into();
        data["email_addresses"][0]["id"] = email_id.into();
        data["email_addresses"][0]["email_address"] = user_email(run, n).into();
        Delivery {
            msg_id: format!("msg_bench_{run}_{n}_{version}"),
            body: serde_json::to_vec(&event).expect("JSON"),
        }
    }

    /// The `user.deleted` of user `n`, stamped after version `last_version`.
    pub fn delete(&self, run: &str, n: usize, last_version: usize) -> Delivery {
        let event = serde_json::json!({
            "data": {"deleted": true, "id": user_id(run, n), "object": "user"},
            "object": "event",
            "timestamp": updated_at_ms(last_version) + 500,
            "type": "user.deleted",
        });
        Delivery {
            msg_id: format!("msg_bench_{run}_{n}_deleted"),
            body: serde_json::to_vec(&event).expect("JSON"),
        }
    }
}

/// Where `body` holds the send-time placeholder, if it does.
pub fn stamp_offset(body: &[u8]) -> Option<usize> {
    body.windows(SENT_US_PLACEHOLDER.len())
        .position(|window| window == SENT_US_PLACEHOLDER.as_bytes())
}

/// Writes `sent_us` (Unix microseconds) over the placeholder at `offset`.
pub fn stamp(body: &mut [u8], offset: usize, sent_us: u64) {
    let digits = format!("{sent_us:016}");
    body[offset..offset + SENT_US_PLACEHOLDER.len()].copy_from_slice(digits.as_bytes());
}

/// `updated_at` of a version, Unix milliseconds.
pub fn updated_at_ms(version: usize) -> i64 {
    BASE_MS + 1000 * version as i64
}

impl Plan {
    /// The deliveries and end state of `spec`.
    pub fn new(spec: &PlanSpec, factory: &EventFactory) -> Self {
        let mut random = XorShift::new(spec.seed);
        let deleted: Vec<bool> = (0..spec.users)
            .map(|_| random.chance(spec.delete_rate))
            .collect();
        let mut deliveries = Vec::with_capacity(spec.users * (spec.updates + 2));
        for version in 0..=spec.updates {
            for n in 0..spec.users {
                deliveries.push(factory.upsert(&spec.run, n, version));
            }
        }
        for (n, _) in deleted.iter().enumerate().filter(|(_, d)| **d) {
            deliveries.push(factory.delete(&spec.run, n, spec.updates));
        }
        let duplicates: Vec<Delivery> = deliveries
            .iter()
            .filter(|_| random.chance(spec.duplicate_rate))
            .cloned()
            .collect();
        deliveries.extend(duplicates);
        if spec.shuffle {
            for i in (1..deliveries.len()).rev() {
                let j = (random.next_u64() % (i as u64 + 1)) as usize;
                deliveries.swap(i, j);
            }
        }
        let expected = deleted
            .iter()
            .enumerate()
            .map(|(n, &deleted)| ExpectedUser {
                id: user_id(&spec.run, n),
                email: user_email(&spec.run, n),
                end: if deleted {
                    End::Deleted
                } else {
                    End::Live {
                        first_name: format!("v{}", spec.updates),
                        updated_at_ms: updated_at_ms(spec.updates),
                    }
                },
            })
            .collect();
        Self {
            deliveries,
            expected,
        }
    }
}

/// xorshift64*: enough randomness to pick events and ids, reproducible by seed.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// True with probability `p` (0 never, 1 always).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn spec() -> PlanSpec {
        PlanSpec {
            run: "t1".into(),
            users: 50,
            updates: 4,
            delete_rate: 0.0,
            duplicate_rate: 0.0,
            shuffle: false,
            seed: 7,
        }
    }

    fn parse(delivery: &Delivery) -> Value {
        serde_json::from_slice(&delivery.body).unwrap()
    }

    #[test]
    fn each_user_is_created_then_updated_with_growing_updated_at() {
        let plan = Plan::new(&spec(), &EventFactory::new());
        assert_eq!(plan.deliveries.len(), 50 * 5);
        let ids: HashSet<_> = plan.deliveries.iter().map(|d| &d.msg_id).collect();
        assert_eq!(ids.len(), plan.deliveries.len(), "svix-ids are unique");
        let mut last: HashMap<String, i64> = HashMap::new();
        for delivery in &plan.deliveries {
            let event = parse(delivery);
            let id = event["data"]["id"].as_str().unwrap().to_owned();
            let at = event["data"]["updated_at"].as_i64().unwrap();
            match last.get(&id) {
                None => assert_eq!(event["type"], "user.created"),
                Some(&before) => {
                    assert_eq!(event["type"], "user.updated");
                    assert!(at > before);
                }
            }
            last.insert(id, at);
        }
        assert_eq!(last.len(), 50);
        assert!(plan.expected.iter().all(|user| user.end
            == End::Live {
                first_name: "v4".into(),
                updated_at_ms: updated_at_ms(4)
            }));
        assert_eq!(plan.expected[3].id, "user_bench_t1_000003");
        assert_eq!(plan.expected[3].email, "bench.t1.3@example.org");
        let first = parse(&plan.deliveries[3]);
        assert_eq!(
            first["data"]["email_addresses"][0]["email_address"],
            "bench.t1.3@example.org"
        );
        assert_eq!(first["data"]["first_name"], "v0");
    }

    #[test]
    fn deletes_come_last_for_their_user_and_are_expected_gone() {
        let plan = Plan::new(
            &PlanSpec {
                delete_rate: 0.3,
                ..spec()
            },
            &EventFactory::new(),
        );
        let deleted: Vec<_> = plan
            .expected
            .iter()
            .filter(|u| u.end == End::Deleted)
            .collect();
        assert!((5..=25).contains(&deleted.len()), "{}", deleted.len());
        assert_eq!(plan.deliveries.len(), 50 * 5 + deleted.len());
        for user in deleted {
            let events: Vec<Value> = plan
                .deliveries
                .iter()
                .map(parse)
                .filter(|e| e["data"]["id"] == user.id.as_str())
                .collect();
            assert_eq!(events.len(), 6);
            let last = events.last().unwrap();
            assert_eq!(last["type"], "user.deleted");
            assert!(last["timestamp"].as_i64().unwrap() > updated_at_ms(4));
        }
    }

    #[test]
    fn duplicates_repeat_deliveries_unchanged() {
        let plan = Plan::new(
            &PlanSpec {
                duplicate_rate: 0.2,
                ..spec()
            },
            &EventFactory::new(),
        );
        let extra = plan.deliveries.len() - 250;
        assert!((20..=80).contains(&extra), "{extra}");
        let mut seen: HashMap<&str, &Delivery> = HashMap::new();
        let mut repeats = 0;
        for delivery in &plan.deliveries {
            if let Some(first) = seen.insert(&delivery.msg_id, delivery) {
                assert_eq!(first, delivery);
                repeats += 1;
            }
        }
        assert_eq!(repeats, extra);
    }

    #[test]
    fn shuffle_reorders_the_same_deliveries_reproducibly() {
        let ordered = Plan::new(&spec(), &EventFactory::new());
        let shuffled_spec = PlanSpec {
            shuffle: true,
            ..spec()
        };
        let shuffled = Plan::new(&shuffled_spec, &EventFactory::new());
        assert_ne!(ordered.deliveries, shuffled.deliveries);
        let sorted = |plan: &Plan| {
            let mut ids: Vec<_> = plan.deliveries.iter().map(|d| d.msg_id.clone()).collect();
            ids.sort();
            ids
        };
        assert_eq!(sorted(&ordered), sorted(&shuffled));
        assert_eq!(ordered.expected, shuffled.expected);
        let again = Plan::new(&shuffled_spec, &EventFactory::new());
        assert_eq!(again.deliveries, shuffled.deliveries);
    }

    #[test]
    fn a_stamped_upsert_carries_its_send_time_in_public_metadata() {
        let mut delivery = EventFactory::stamped().upsert("t1", 3, 1);
        let offset = stamp_offset(&delivery.body).expect("a placeholder");
        stamp(&mut delivery.body, offset, 1_700_000_000_123_456);
        let event = parse(&delivery);
        assert_eq!(
            event["data"]["public_metadata"][SENT_US_KEY],
            "1700000000123456"
        );
        assert_eq!(event["data"]["first_name"], "v1");
        let plain = EventFactory::new().upsert("t1", 3, 1);
        assert_eq!(stamp_offset(&plain.body), None);
    }

    #[test]
    fn rates_of_zero_and_one_are_exact() {
        let mut random = XorShift::new(0);
        assert!((0..1000).all(|_| !random.chance(0.0)));
        assert!((0..1000).all(|_| random.chance(1.0)));
    }
}
