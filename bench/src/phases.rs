//! The subcommands: ingest (+ verify), query, scan, ready and baselines. Each prints a
//! human summary and `RESULT` lines (`key=value`) for scripts such as
//! `bench/run.sh`.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use clerk_sync_api::v1::{
    BatchGetUsersRequest, CheckPermissionRequest, FindUserByEmailRequest, GetMembershipRequest,
    GetUserRequest, ListUsersRequest,
    organization_directory_service_client::OrganizationDirectoryServiceClient,
    user_directory_service_client::UserDirectoryServiceClient,
};
use futures::StreamExt as _;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    baselines::BaselineServer,
    cli::{BaselineArgs, IngestArgs, LoadArgs, Method, QueryArgs, ReadyArgs, ScanArgs},
    load::{self, HttpRequest, Pace, Progress},
    plan::{EventFactory, Plan, PlanSpec, user_email, user_id},
    procstat::{ProcSample, Watch},
    signing::SigningSecret,
    stats::Report,
    target::{GrpcTarget, WebhookTarget},
    verify::{Verdict, verify},
};

/// What `ingest` measured and found.
#[derive(Debug)]
pub struct IngestOutcome {
    /// The load phase.
    pub report: Report,
    /// The end-state check, when a sync-service URL was given (count mode only).
    pub verdict: Option<Verdict>,
}

impl IngestOutcome {
    /// True when every webhook was answered 200 and the end state (if checked) is right.
    pub fn passed(&self) -> bool {
        self.report.failures == 0 && self.verdict.as_ref().is_none_or(Verdict::passed)
    }
}

/// When the middle sample is taken.
enum Middle {
    AfterRequests(u64),
    AfterTime(Duration),
}

/// Runs `phase` with memory printed at start, middle and end and CPU per
/// request at the end, for every watched process.
async fn measured<Fut>(
    watch: &Watch,
    progress: Progress,
    middle: Middle,
    phase: Fut,
) -> anyhow::Result<Report>
where
    Fut: Future<Output = anyhow::Result<Report>>,
{
    let before = watch.sample();
    watch.print_memory("start", &before);
    print_rss_results("start", &before);
    let started = Instant::now();
    let monitor = {
        let watch = watch.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let reached = match middle {
                    Middle::AfterRequests(n) => progress.load(Ordering::Relaxed) >= n,
                    Middle::AfterTime(t) => started.elapsed() >= t,
                };
                if reached {
                    let samples = watch.sample();
                    watch.print_memory("middle", &samples);
                    print_rss_results("middle", &samples);
                    return;
                }
            }
        })
    };
    let report = phase.await;
    monitor.abort();
    let report = report?;
    let after = watch.sample();
    watch.print_memory("end", &after);
    print_rss_results("end", &after);
    Watch::print_cpu(&before, &after, report.count());
    for (b, a) in before.iter().zip(&after) {
        println!(
            "RESULT cpu pid={} us_per_request={:.1}",
            a.pid,
            a.cpu_us_since(b) as f64 / report.count().max(1) as f64
        );
    }
    Ok(report)
}

fn print_rss_results(when: &str, samples: &[ProcSample]) {
    for sample in samples {
        println!(
            "RESULT rss pid={} when={when} peak_kib={} rss_kib={}",
            sample.pid, sample.peak_rss_kib, sample.rss_kib
        );
    }
}

fn print_result(kind: &str, report: &Report) {
    println!(
        "RESULT {kind} rate={:.0} count={} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2} failed={}",
        report.rate(),
        report.count(),
        report.percentile_ms(50.0),
        report.percentile_ms(90.0),
        report.percentile_ms(99.0),
        report.percentile_ms(100.0),
        report.failures,
    );
    if let Some(first) = &report.first_failure {
        println!("  first failure: {first}");
    }
}

/// A run id from the clock: fresh users on every run.
fn clock_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}", nanos % (1 << 48))
}

impl IngestArgs {
    /// The plan these settings describe, for run `run`.
    pub fn plan_spec(&self, run: &str) -> PlanSpec {
        PlanSpec {
            run: run.to_owned(),
            users: self.users as usize,
            updates: self.updates as usize,
            delete_rate: self.delete_rate,
            duplicate_rate: self.duplicate_rate,
            shuffle: self.shuffle,
            seed: self.seed,
        }
    }
}

/// Signs `plan`'s deliveries for `target` now and splits them into lanes.
pub fn signed_lanes(
    target: &WebhookTarget,
    secret: &SigningSecret,
    plan: &Plan,
    connections: usize,
) -> Vec<std::vec::IntoIter<HttpRequest>> {
    let now = load::unix_now();
    let requests = plan
        .deliveries
        .iter()
        .map(|delivery| load::signed_request(target, secret, now, delivery))
        .collect();
    load::into_lanes(requests, connections)
        .into_iter()
        .map(Vec::into_iter)
        .collect()
}

/// `plan`'s deliveries in lanes that stamp each with its send time and sign
/// it as it is sent (see [`IngestArgs::stamp_send_time`]).
fn stamped_lanes(
    target: &WebhookTarget,
    secret: &SigningSecret,
    plan: &Plan,
    connections: usize,
) -> Vec<StampedLane> {
    load::into_lanes(plan.deliveries.clone(), connections)
        .into_iter()
        .map(|deliveries| StampedLane {
            deliveries: deliveries.into_iter(),
            target: target.clone(),
            secret: secret.clone(),
        })
        .collect()
}

/// A lane whose deliveries get their send time written in and their
/// signature made when the lane sends them.
struct StampedLane {
    deliveries: std::vec::IntoIter<crate::plan::Delivery>,
    target: WebhookTarget,
    secret: SigningSecret,
}

impl Iterator for StampedLane {
    type Item = HttpRequest;

    fn next(&mut self) -> Option<HttpRequest> {
        let mut delivery = self.deliveries.next()?;
        // Deletions carry no placeholder: they are sent unstamped.
        if let Some(offset) = crate::plan::stamp_offset(&delivery.body) {
            let sent_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            crate::plan::stamp(&mut delivery.body, offset, sent_us);
        }
        Some(load::signed_request(
            &self.target,
            &self.secret,
            load::unix_now(),
            &delivery,
        ))
    }
}

/// `ingest`: posts the plan (or a storm), prints figures, verifies when asked.
pub async fn ingest(args: &IngestArgs) -> anyhow::Result<IngestOutcome> {
    let target = WebhookTarget::resolve(&args.gateway_url).await?;
    let directory = match &args.sync_service_url {
        Some(url) => {
            Some(GrpcTarget::new(url.clone(), args.token.as_deref()).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let watch = Watch::new(args.load.server_pids.clone())?;
    let run = args.run_id.clone().unwrap_or_else(clock_run_id);
    let connections = args.load.connections as usize;
    let factory = if args.stamp_send_time {
        EventFactory::stamped()
    } else {
        EventFactory::new()
    };
    let progress = Progress::default();
    let (pace, paced) = match args.rate {
        Some(per_second) => (
            Pace::OpenLoop { per_second },
            format!("open loop at {per_second} events/s"),
        ),
        None => (Pace::ClosedLoop, "closed loop".to_owned()),
    };

    if let Some(seconds) = args.load.duration {
        println!(
            "ingest storm: {seconds} s of fresh users (run {run}), each 1 create + {} updates, {connections} connections, {paced} -> {}",
            args.updates, target.address
        );
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let lanes: Vec<_> = (0..connections)
            .map(|lane| StormLane {
                factory: factory.clone(),
                secret: args.webhook_secret.clone(),
                target: target.clone(),
                run: run.clone(),
                user: lane,
                step: connections,
                version: 0,
                updates: args.updates as usize,
                deadline,
            })
            .collect();
        let report = measured(
            &watch,
            progress.clone(),
            Middle::AfterTime(Duration::from_secs(seconds) / 2),
            load::post_lanes(&target, lanes, pace, progress),
        )
        .await?;
        println!("{}", report.summary("ingest (storm)", "events"));
        print_result("ingest", &report);
        if directory.is_some() {
            println!("  (the end state is not verified in --duration mode)");
        }
        return Ok(IngestOutcome {
            report,
            verdict: None,
        });
    }

    let plan = Plan::new(&args.plan_spec(&run), &factory);
    println!(
        "ingest: {} deliveries for {} users (run {run}; 1 create + {} updates each, delete rate {}, duplicate rate {}, {}), {connections} connections, {paced} -> {}",
        plan.deliveries.len(),
        args.users,
        args.updates,
        args.delete_rate,
        args.duplicate_rate,
        if args.shuffle { "shuffled" } else { "in order" },
        target.address,
    );
    let lanes: Vec<Box<dyn Iterator<Item = HttpRequest> + Send>> = if args.stamp_send_time {
        stamped_lanes(&target, &args.webhook_secret, &plan, connections)
            .into_iter()
            .map(|lane| Box::new(lane) as _)
            .collect()
    } else {
        signed_lanes(&target, &args.webhook_secret, &plan, connections)
            .into_iter()
            .map(|lane| Box::new(lane) as _)
            .collect()
    };
    let total = plan.deliveries.len() as u64;
    let report = measured(
        &watch,
        progress.clone(),
        Middle::AfterRequests(total / 2),
        load::post_lanes(&target, lanes, pace, progress),
    )
    .await?;
    println!("{}", report.summary("ingest", "events"));
    print_result("ingest", &report);
    let verdict = match &directory {
        Some(directory) => {
            let verdict = verify(directory, &plan.expected).await?;
            print_verdict(&verdict);
            Some(verdict)
        }
        None => None,
    };
    Ok(IngestOutcome { report, verdict })
}

/// Prints a verification's outcome (at most 10 mismatches).
pub fn print_verdict(verdict: &Verdict) {
    if verdict.passed() {
        println!(
            "verify: all {} users in their expected end state",
            verdict.checked
        );
    } else {
        println!(
            "verify: FAILED, {} mismatches among {} users:",
            verdict.mismatches.len(),
            verdict.checked
        );
        for line in verdict.mismatches.iter().take(10) {
            println!("  {line}");
        }
    }
    println!(
        "RESULT verify checked={} mismatches={}",
        verdict.checked,
        verdict.mismatches.len()
    );
}

/// A lane of a storm: fresh users (lane, lane + step, …), each created then
/// updated, signed when sent, until the deadline.
struct StormLane {
    factory: EventFactory,
    secret: SigningSecret,
    target: WebhookTarget,
    run: String,
    user: usize,
    step: usize,
    version: usize,
    updates: usize,
    deadline: Instant,
}

impl Iterator for StormLane {
    type Item = HttpRequest;

    fn next(&mut self) -> Option<HttpRequest> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let delivery = self.factory.upsert(&self.run, self.user, self.version);
        if self.version == self.updates {
            self.version = 0;
            self.user += self.step;
        } else {
            self.version += 1;
        }
        Some(load::signed_request(
            &self.target,
            &self.secret,
            load::unix_now(),
            &delivery,
        ))
    }
}

/// Users a query can ask for.
struct Known {
    ids: Vec<String>,
    emails: Vec<String>,
    /// (user id, organization id) of known memberships.
    memberships: Vec<(String, String)>,
}

async fn known_users(
    args: &QueryArgs,
    target: &GrpcTarget,
    channel: Channel,
) -> anyhow::Result<Known> {
    if let (Some(run), Some(users)) = (&args.run_id, args.users) {
        let users = users as usize;
        return Ok(Known {
            ids: (0..users).map(|n| user_id(run, n)).collect(),
            emails: (0..users).map(|n| user_email(run, n)).collect(),
            memberships: Vec::new(),
        });
    }
    let mut client = UserDirectoryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut known = Known {
        ids: Vec::new(),
        emails: Vec::new(),
        memberships: Vec::new(),
    };
    let mut page_token = String::new();
    while known.ids.len() < args.sample as usize {
        let page = client
            .list_users(target.request(ListUsersRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            }))
            .await
            .map_err(|s| anyhow::anyhow!("ListUsers failed: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        for user in page.users {
            if let Some(email) = user.primary_email_address.clone() {
                known.emails.push(email);
            }
            known.ids.push(user.id);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    known.ids.truncate(args.sample as usize);
    if known.ids.is_empty() {
        anyhow::bail!("the directory has no users to query: run `clerk-sync-bench ingest` first");
    }
    if args.method == Method::FindUserByEmail && known.emails.is_empty() {
        anyhow::bail!("no sampled user has a primary email address to look up");
    }
    Ok(known)
}

/// Whether lane tickets go on: below `count`, or before the deadline.
fn keep_going(load: &LoadArgs, count: u64) -> impl Fn(u64) -> bool + Clone + Send + 'static {
    let deadline = load
        .duration
        .map(|seconds| Instant::now() + Duration::from_secs(seconds));
    move |ticket| match deadline {
        Some(deadline) => Instant::now() < deadline,
        None => ticket < count,
    }
}

/// `query`: drives one directory method (or the health check); the report.
pub async fn query(args: &QueryArgs) -> anyhow::Result<Report> {
    let target = GrpcTarget::new(args.sync_service_url.clone(), args.token.as_deref())
        .map_err(anyhow::Error::msg)?;
    let watch = Watch::new(args.load.server_pids.clone())?;
    let lanes = args.load.connections as usize;
    let mut channels = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        channels.push(target.connect().await?);
    }
    let known = Arc::new(match args.method {
        Method::Health => Known {
            ids: Vec::new(),
            emails: Vec::new(),
            memberships: Vec::new(),
        },
        Method::CheckPermission | Method::GetMembership => Known {
            ids: Vec::new(),
            emails: Vec::new(),
            memberships: crate::organizations::known_memberships(
                &target,
                channels[0].clone(),
                args.sample,
            )
            .await?,
        },
        _ => known_users(args, &target, channels[0].clone()).await?,
    });
    let keys = known
        .ids
        .len()
        .max(known.emails.len())
        .max(known.memberships.len());
    let name = format!("{:?}", args.method);
    println!(
        "query {name}: {} over {lanes} connections -> {} ({} known users, {} memberships)",
        args.load
            .duration
            .map_or(format!("{} calls", args.calls), |s| format!("{s} s")),
        target.url,
        known.ids.len(),
        known.memberships.len(),
    );
    let directories: Vec<_> = channels
        .iter()
        .map(|c| UserDirectoryServiceClient::new(c.clone()).max_decoding_message_size(64 << 20))
        .collect();
    let health: Vec<_> = channels
        .iter()
        .map(|c| HealthClient::new(c.clone()))
        .collect();
    let organizations: Vec<_> = channels
        .iter()
        .map(|c| OrganizationDirectoryServiceClient::new(c.clone()))
        .collect();
    let method = args.method;
    let batch = args.batch_size as usize;
    let call = {
        let target = target.clone();
        move |lane: usize, random: u64| {
            let mut directory = directories[lane].clone();
            let mut health = health[lane].clone();
            let mut organizations = organizations[lane].clone();
            let target = target.clone();
            let known = Arc::clone(&known);
            async move {
                let pick = |r: u64| &known.ids[(r % known.ids.len() as u64) as usize];
                let member = |r: u64| {
                    known.memberships[(r % known.memberships.len() as u64) as usize].clone()
                };
                match method {
                    Method::GetUser => directory
                        .get_user(target.request(GetUserRequest {
                            id: pick(random).clone(),
                        }))
                        .await
                        .map(drop),
                    Method::BatchGetUsers => {
                        let mut random = crate::plan::XorShift::new(random);
                        let ids = (0..batch)
                            .map(|_| pick(random.next_u64()).clone())
                            .collect();
                        directory
                            .batch_get_users(target.request(BatchGetUsersRequest { ids }))
                            .await
                            .map(drop)
                    }
                    Method::FindUserByEmail => {
                        let email = &known.emails[(random % known.emails.len() as u64) as usize];
                        directory
                            .find_user_by_email(target.request(FindUserByEmailRequest {
                                email_address: email.clone(),
                            }))
                            .await
                            .map(drop)
                    }
                    Method::ListUsers => directory
                        .list_users(target.request(ListUsersRequest {
                            page_size: batch as i32,
                            ..Default::default()
                        }))
                        .await
                        .map(drop),
                    Method::CheckPermission => {
                        let (user_id, organization_id) = member(random);
                        organizations
                            .check_permission(target.request(CheckPermissionRequest {
                                user_id,
                                organization_id,
                                permission: crate::organizations::PERMISSION.into(),
                            }))
                            .await
                            .map(drop)
                    }
                    Method::GetMembership => {
                        let (user_id, organization_id) = member(random);
                        organizations
                            .get_membership(target.request(GetMembershipRequest {
                                organization_id,
                                user_id,
                            }))
                            .await
                            .map(drop)
                    }
                    Method::Health => health
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .map(drop),
                }
            }
        }
    };
    if args.warm_up {
        // Key i is the i-th known one: every key is read once.
        futures::stream::iter(0..keys)
            .map(|i| call(i % lanes, i as u64))
            .buffer_unordered(lanes)
            .for_each(|_| async {})
            .await;
    }
    let progress = Progress::default();
    let middle = match args.load.duration {
        Some(seconds) => Middle::AfterTime(Duration::from_secs(seconds) / 2),
        None => Middle::AfterRequests(args.calls / 2),
    };
    let report = measured(
        &watch,
        progress.clone(),
        middle,
        load::call_lanes(lanes, keep_going(&args.load, args.calls), call, progress),
    )
    .await?;
    println!("{}", report.summary(&name, "calls"));
    print_result(&format!("query method={}", kebab(&name)), &report);
    Ok(report)
}

/// `scan`: pages through the whole directory once, one page after the other
/// (a full pass is sequential: each page starts where the last one ended).
pub async fn scan(args: &ScanArgs) -> anyhow::Result<()> {
    let target = GrpcTarget::new(args.sync_service_url.clone(), args.token.as_deref())
        .map_err(anyhow::Error::msg)?;
    let mut client = UserDirectoryServiceClient::new(target.connect().await?)
        .max_decoding_message_size(64 << 20);
    let (mut users, mut page_times) = (0_u64, Vec::new());
    let mut page_token = String::new();
    let started = Instant::now();
    loop {
        let asked = Instant::now();
        let page = client
            .list_users(target.request(ListUsersRequest {
                page_size: args.page_size as i32,
                page_token,
                ..Default::default()
            }))
            .await
            .map_err(|s| anyhow::anyhow!("ListUsers failed: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        page_times.push(asked.elapsed().as_micros() as u64);
        users += page.users.len() as u64;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let seconds = started.elapsed().as_secs_f64();
    page_times.sort_unstable();
    let page_ms = |p| crate::stats::percentile(&page_times, p).unwrap_or(0) as f64 / 1000.0;
    println!(
        "scan: {users} users in {} pages of {} in {seconds:.2} s",
        page_times.len(),
        args.page_size
    );
    println!(
        "RESULT scan users={users} pages={} seconds={seconds:.2} rate={:.0} page_p50_ms={:.2} page_p99_ms={:.2}",
        page_times.len(),
        users as f64 / seconds.max(f64::EPSILON),
        page_ms(50.0),
        page_ms(99.0),
    );
    Ok(())
}

/// `ready`: polls the health check every 10 ms until it says SERVING.
pub async fn ready(args: &ReadyArgs) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let started = Instant::now();
    let target =
        GrpcTarget::new(args.sync_service_url.clone(), None).map_err(anyhow::Error::msg)?;
    let deadline = started + Duration::from_secs(args.timeout);
    loop {
        if let Ok(channel) = target.connect().await {
            let answer = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if matches!(answer, Ok(response) if response.get_ref().status == ServingStatus::Serving as i32)
            {
                break;
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{} was not SERVING after {} s", target.url, args.timeout);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("ready: {} SERVING after {seconds:.2} s", target.url);
    println!("RESULT ready seconds={seconds:.2}");
    Ok(())
}

fn kebab(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The secret the baselines' requests are signed with (the baseline ignores it).
const BASELINE_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// `baselines`: starts both baseline servers as child processes, measures
/// each with the same load as `ingest` / `query`; both reports.
pub async fn baselines(args: &BaselineArgs) -> anyhow::Result<(Report, Report)> {
    let lanes = args.load.connections as usize;

    let hyper = BaselineServer::start("serve-hyper-baseline")?;
    let url: http::Uri = format!("http://{}/clerk", hyper.address).parse()?;
    let target = WebhookTarget::resolve(&url).await?;
    let watch = Watch::new(vec![hyper.pid()])?;
    println!(
        "baseline hyper 200 {{}} (pid {}) at {}, {lanes} connections",
        hyper.pid(),
        hyper.address
    );
    let progress = Progress::default();
    let http = if let Some(seconds) = args.load.duration {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let secret: SigningSecret = BASELINE_SECRET.parse().map_err(anyhow::Error::msg)?;
        let lanes: Vec<_> = (0..lanes)
            .map(|lane| StormLane {
                factory: EventFactory::new(),
                secret: secret.clone(),
                target: target.clone(),
                run: "baseline".into(),
                user: lane,
                step: lanes,
                version: 0,
                updates: 4,
                deadline,
            })
            .collect();
        measured(
            &watch,
            progress.clone(),
            Middle::AfterTime(Duration::from_secs(seconds) / 2),
            load::post_lanes(&target, lanes, Pace::ClosedLoop, progress),
        )
        .await?
    } else {
        // The same kind of requests as an ingest: signed user events.
        let users = args.requests.div_ceil(5) as usize;
        let plan = Plan::new(
            &PlanSpec {
                run: "baseline".into(),
                users,
                updates: 4,
                delete_rate: 0.0,
                duplicate_rate: 0.0,
                shuffle: false,
                seed: 1,
            },
            &EventFactory::new(),
        );
        let mut plan = plan;
        plan.deliveries.truncate(args.requests as usize);
        let secret: SigningSecret = BASELINE_SECRET.parse().map_err(anyhow::Error::msg)?;
        let lanes = signed_lanes(&target, &secret, &plan, lanes);
        measured(
            &watch,
            progress.clone(),
            Middle::AfterRequests(args.requests / 2),
            load::post_lanes(&target, lanes, Pace::ClosedLoop, progress),
        )
        .await?
    };
    drop(hyper);
    println!("{}", http.summary("baseline hyper", "requests"));
    print_result("baseline kind=hyper", &http);

    let tonic = BaselineServer::start("serve-tonic-baseline")?;
    println!(
        "baseline tonic grpc.health.v1 Check (pid {}) at {}, {lanes} connections",
        tonic.pid(),
        tonic.address
    );
    let health = QueryArgs {
        sync_service_url: format!("http://{}", tonic.address).parse()?,
        token: None,
        method: Method::Health,
        calls: args.requests,
        batch_size: 1,
        run_id: None,
        users: None,
        sample: 1,
        warm_up: false,
        load: LoadArgs {
            server_pids: vec![tonic.pid()],
            ..args.load.clone()
        },
    };
    let grpc = query(&health).await?;
    drop(tonic);
    print_result("baseline kind=tonic", &grpc);
    Ok((http, grpc))
}
