//! Requests → approvals → grants, and the certificates grants carry.
//! Every rule a requester or approver can trip over lives here, with a
//! message that says which rule it was.

use std::time::Duration;

use russh::keys::PublicKey;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::App;
use crate::ca::{self, now_secs, CertRequest};
use crate::policy::{Policy, Role};
use crate::store::{StoreError, GRANTS, REQUESTS};

/// How far ahead a planned window may start.
pub const MAX_START_AHEAD: Duration = Duration::from_secs(30 * 24 * 3600);

/// Who is asking: a policy user over SSH, or the local admin over the socket.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub groups: Vec<String>,
    /// The key the caller authenticated with (SSH callers only).
    pub key: Option<PublicKey>,
}

impl Caller {
    /// The local administrator on the control socket.
    pub fn local_admin() -> Caller {
        Caller {
            name: "ctl".into(),
            groups: vec![crate::policy::ADMIN_GROUP.into()],
            key: None,
        }
    }
    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
    pub fn is_admin(&self) -> bool {
        self.in_group(crate::policy::ADMIN_GROUP)
    }
    pub fn is_auditor(&self) -> bool {
        self.is_admin() || self.in_group(crate::policy::AUDITOR_GROUP)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
    Expired,
}

/// One decision by one person.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub by: String,
    pub at: u64,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub user: String,
    pub role: String,
    pub reason: String,
    pub duration_secs: u64,
    pub targets: Vec<String>,
    pub created: u64,
    pub state: RequestState,
    pub approvals: Vec<Decision>,
    pub denial: Option<Decision>,
    pub grant: Option<String>,
    /// The requester's public key (OpenSSH text); the certificate is for it.
    pub key: String,
    /// A planned window's start (unix seconds); `None` = on approval.
    #[serde(default)]
    pub start: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub request: String,
    pub user: String,
    pub role: String,
    pub logins: Vec<String>,
    pub targets: Vec<String>,
    pub start: u64,
    pub end: u64,
    pub serial: u64,
    pub key: String,
    pub cert: Option<String>,
    pub revoked: Option<Decision>,
}

impl Grant {
    /// Live: not revoked and `now` inside the window.
    pub fn live_at(&self, now: u64) -> bool {
        self.revoked.is_none() && self.start <= now && now < self.end
    }
    pub fn state(&self, now: u64) -> &'static str {
        if self.revoked.is_some() {
            "revoked"
        } else if now < self.start {
            "future"
        } else if now >= self.end {
            "expired"
        } else {
            "live"
        }
    }
}

/// Why an access operation was refused. Messages are shown to users.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("unknown role {0:?}")]
    UnknownRole(String),
    #[error("you may not request role {0:?} (requestable by: {1})")]
    NotRequestable(String, String),
    #[error("--for {asked} is longer than role {role:?} allows (max_ttl {max})")]
    TooLong {
        role: String,
        asked: String,
        max: String,
    },
    #[error("bad duration {0:?}: {1}")]
    BadDuration(String, String),
    #[error("a reason is required (--reason TEXT)")]
    NoReason,
    #[error("--targets {0:?} selects none of the role's targets")]
    NoTargets(String),
    #[error("unknown id {0:?}")]
    UnknownId(String),
    #[error("request {0} is {1}, not pending")]
    NotPending(String, String),
    #[error("you cannot approve or deny your own request")]
    OwnRequest,
    #[error("you are not an approver for role {0:?} (approvals from: {1})")]
    NotApprover(String, String),
    #[error("you have already approved {0}")]
    AlreadyApproved(String),
    #[error("request {0} has no grant yet (state: {1})")]
    NoGrant(String, String),
    #[error("grant {0} is {1}")]
    GrantNotLive(String, String),
    #[error("only the requester can fetch this certificate")]
    NotYours,
    #[error("this verb needs an SSH login with your enrolled key")]
    NeedsKey,
    #[error("this verb is for admins")]
    AdminOnly,
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("{0}")]
    Internal(String),
}

fn parse_duration(s: &str) -> Result<Duration, AccessError> {
    humantime::parse_duration(s).map_err(|e| AccessError::BadDuration(s.to_string(), e.to_string()))
}

fn role<'p>(policy: &'p Policy, name: &str) -> Result<&'p Role, AccessError> {
    policy
        .roles
        .get(name)
        .ok_or_else(|| AccessError::UnknownRole(name.to_string()))
}

/// A request as the requester filed it.
pub struct NewRequest<'a> {
    pub role: &'a str,
    pub duration: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub targets: Option<&'a str>,
    /// Start of a planned window (unix seconds).
    pub start: Option<u64>,
}

pub fn request(app: &App, caller: &Caller, new: NewRequest<'_>) -> Result<Request, AccessError> {
    let policy = app.policy();
    let key = caller.key.as_ref().ok_or(AccessError::NeedsKey)?;
    let role = role(&policy, new.role)?;
    if !role.requestable_by.iter().any(|g| caller.in_group(g)) {
        return Err(AccessError::NotRequestable(
            role.name.clone(),
            role.requestable_by.join(", "),
        ));
    }
    let reason = new
        .reason
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or(AccessError::NoReason)?;
    let duration = match new.duration {
        Some(d) => parse_duration(d)?,
        None => role.default_ttl,
    };
    if duration > role.max_ttl || duration.is_zero() {
        return Err(AccessError::TooLong {
            role: role.name.clone(),
            asked: humantime::format_duration(duration).to_string(),
            max: humantime::format_duration(role.max_ttl).to_string(),
        });
    }
    let targets: Vec<String> = new
        .targets
        .map(|t| {
            t.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if policy.targets_for(role, &targets).is_empty() {
        return Err(AccessError::NoTargets(
            new.targets.unwrap_or("").to_string(),
        ));
    }
    if let Some(start) = new.start {
        if start > now_secs() + MAX_START_AHEAD.as_secs() {
            return Err(AccessError::Internal(format!(
                "--start is more than {} ahead",
                humantime::format_duration(MAX_START_AHEAD)
            )));
        }
    }
    let id = app.store.new_id(REQUESTS, "req")?;
    let mut req = Request {
        id,
        user: caller.name.clone(),
        role: role.name.clone(),
        reason: reason.to_string(),
        duration_secs: duration.as_secs(),
        targets,
        created: now_secs(),
        state: RequestState::Pending,
        approvals: Vec::new(),
        denial: None,
        grant: None,
        key: key
            .to_openssh()
            .map_err(|e| AccessError::Internal(e.to_string()))?,
        start: new.start.filter(|s| *s > now_secs()),
    };
    app.audit.record(
        "request.created",
        &caller.name,
        json!({ "request": req.id, "role": req.role, "duration_secs": req.duration_secs, "reason": req.reason, "targets": req.targets }),
    )?;
    if role.approvals_required == 0 {
        grant_request(app, role, &mut req)?;
    }
    app.store.put(REQUESTS, &req.id, &req)?;
    Ok(req)
}

/// Load a request, expiring it if it waited too long.
pub fn load_request(app: &App, id: &str) -> Result<Request, AccessError> {
    let mut req: Request = app
        .store
        .get(REQUESTS, id)?
        .ok_or_else(|| AccessError::UnknownId(id.to_string()))?;
    if req.state == RequestState::Pending
        && now_secs() >= req.created + app.config.request_ttl.as_secs()
    {
        req.state = RequestState::Expired;
        app.store.put(REQUESTS, &req.id, &req)?;
        app.audit
            .record("request.expired", "-", json!({ "request": req.id }))?;
    }
    Ok(req)
}

fn may_decide(policy: &Policy, caller: &Caller, req: &Request) -> Result<(), AccessError> {
    if req.user == caller.name {
        return Err(AccessError::OwnRequest);
    }
    let role = role(policy, &req.role)?;
    if caller.is_admin() || role.approvals_from.iter().any(|g| caller.in_group(g)) {
        Ok(())
    } else {
        Err(AccessError::NotApprover(
            role.name.clone(),
            role.approvals_from.join(", "),
        ))
    }
}

fn state_name(s: RequestState) -> String {
    s.as_str().to_string()
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Expired => "expired",
        }
    }
}

pub fn approve(
    app: &App,
    caller: &Caller,
    id: &str,
    comment: Option<&str>,
) -> Result<Request, AccessError> {
    let _guard = app.access_lock.lock().unwrap_or_else(|p| p.into_inner());
    let policy = app.policy();
    let mut req = load_request(app, id)?;
    may_decide(&policy, caller, &req)?;
    if req.state != RequestState::Pending {
        return Err(AccessError::NotPending(
            req.id.clone(),
            state_name(req.state),
        ));
    }
    if req.approvals.iter().any(|a| a.by == caller.name) {
        return Err(AccessError::AlreadyApproved(req.id.clone()));
    }
    req.approvals.push(Decision {
        by: caller.name.clone(),
        at: now_secs(),
        text: comment.map(str::to_string),
    });
    app.audit.record(
        "request.approved_by",
        &caller.name,
        json!({ "request": req.id, "comment": comment, "approvals": req.approvals.len() }),
    )?;
    let role = role(&policy, &req.role)?;
    if req.approvals.len() >= role.approvals_required {
        grant_request(app, role, &mut req)?;
    }
    app.store.put(REQUESTS, &req.id, &req)?;
    Ok(req)
}

pub fn deny(app: &App, caller: &Caller, id: &str, reason: &str) -> Result<Request, AccessError> {
    let _guard = app.access_lock.lock().unwrap_or_else(|p| p.into_inner());
    let policy = app.policy();
    let mut req = load_request(app, id)?;
    may_decide(&policy, caller, &req)?;
    if req.state != RequestState::Pending {
        return Err(AccessError::NotPending(
            req.id.clone(),
            state_name(req.state),
        ));
    }
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(AccessError::NoReason);
    }
    req.state = RequestState::Denied;
    req.denial = Some(Decision {
        by: caller.name.clone(),
        at: now_secs(),
        text: Some(reason.to_string()),
    });
    app.store.put(REQUESTS, &req.id, &req)?;
    app.audit.record(
        "request.denied",
        &caller.name,
        json!({ "request": req.id, "reason": reason }),
    )?;
    Ok(req)
}

fn grant_request(app: &App, role: &Role, req: &mut Request) -> Result<(), AccessError> {
    let id = app.store.new_id(GRANTS, "grant")?;
    let serial = app.store.new_serial(&id)?;
    let start = req.start.unwrap_or(0).max(now_secs());
    let grant = Grant {
        id: id.clone(),
        request: req.id.clone(),
        user: req.user.clone(),
        role: role.name.clone(),
        logins: role.logins.clone(),
        targets: req.targets.clone(),
        start,
        end: start.saturating_add(req.duration_secs),
        serial,
        key: req.key.clone(),
        cert: None,
        revoked: None,
    };
    app.store.put(GRANTS, &id, &grant)?;
    app.audit.record(
        "grant.created",
        "-",
        json!({ "request": req.id, "grant": id, "user": grant.user, "role": grant.role, "start": grant.start, "end": grant.end, "serial": serial }),
    )?;
    req.state = RequestState::Approved;
    req.grant = Some(id);
    Ok(())
}

/// Requests the caller may see: their own, those they may decide, or all
/// for admins and auditors.
pub fn visible_requests(
    app: &App,
    caller: &Caller,
    pending_only: bool,
) -> Result<Vec<Request>, AccessError> {
    let policy = app.policy();
    let ids: Vec<Request> = app.store.all(REQUESTS)?;
    let mut out = Vec::new();
    for r in ids {
        let r = load_request(app, &r.id)?;
        let visible = caller.is_auditor()
            || r.user == caller.name
            || policy
                .roles
                .get(&r.role)
                .is_some_and(|role| role.approvals_from.iter().any(|g| caller.in_group(g)));
        if visible && (!pending_only || r.state == RequestState::Pending) {
            out.push(r);
        }
    }
    out.sort_by_key(|r| r.created);
    Ok(out)
}

/// The grant behind a request id or a grant id.
pub fn find_grant(app: &App, id: &str) -> Result<Grant, AccessError> {
    if let Some(g) = app.store.get::<Grant>(GRANTS, id)? {
        return Ok(g);
    }
    let req = load_request(app, id)?;
    let gid = req
        .grant
        .clone()
        .ok_or_else(|| AccessError::NoGrant(req.id.clone(), state_name(req.state)))?;
    app.store
        .get::<Grant>(GRANTS, &gid)?
        .ok_or(AccessError::UnknownId(gid))
}

/// The certificate for a grant, issued on first ask and the same after.
pub fn certificate(app: &App, caller: &Caller, id: &str) -> Result<(Grant, String), AccessError> {
    let _guard = app.access_lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut grant = find_grant(app, id)?;
    if grant.user != caller.name {
        return Err(AccessError::NotYours);
    }
    let now = now_secs();
    if grant.revoked.is_some() || now >= grant.end {
        return Err(AccessError::GrantNotLive(
            grant.id.clone(),
            grant.state(now).into(),
        ));
    }
    if let Some(c) = &grant.cert {
        return Ok((grant.clone(), c.clone()));
    }
    let policy = app.policy();
    let role = role(&policy, &grant.role)?;
    let key =
        PublicKey::from_openssh(&grant.key).map_err(|e| AccessError::Internal(e.to_string()))?;
    let cert = ca::issue(
        &app.ca,
        &CertRequest {
            key: &key,
            serial: grant.serial,
            key_id: format!("{}/{}/{}", grant.user, grant.request, grant.id),
            principals: &grant.logins,
            valid_after: grant.start,
            valid_before: grant.end,
            permit_port_forwarding: !role.port_forwards.is_empty(),
        },
    )
    .map_err(AccessError::Internal)?;
    let text = cert
        .to_openssh()
        .map_err(|e| AccessError::Internal(e.to_string()))?;
    grant.cert = Some(text.clone());
    app.store.put(GRANTS, &grant.id, &grant)?;
    app.audit.record(
        "cert.issued",
        &caller.name,
        json!({ "grant": grant.id, "serial": grant.serial, "principals": grant.logins, "valid_before": grant.end }),
    )?;
    Ok((grant, text))
}

pub fn visible_grants(app: &App, caller: &Caller) -> Result<Vec<Grant>, AccessError> {
    let mut all: Vec<Grant> = app.store.all(GRANTS)?;
    all.retain(|g| caller.is_auditor() || g.user == caller.name);
    all.sort_by_key(|g| g.start);
    Ok(all)
}

pub fn revoke(app: &App, caller: &Caller, id: &str, reason: &str) -> Result<Grant, AccessError> {
    let _guard = app.access_lock.lock().unwrap_or_else(|p| p.into_inner());
    if !caller.is_admin() {
        return Err(AccessError::AdminOnly);
    }
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(AccessError::NoReason);
    }
    let mut grant = find_grant(app, id)?;
    if grant.revoked.is_none() {
        grant.revoked = Some(Decision {
            by: caller.name.clone(),
            at: now_secs(),
            text: Some(reason.to_string()),
        });
        app.store.put(GRANTS, &grant.id, &grant)?;
        app.audit.record(
            "grant.revoked",
            &caller.name,
            json!({ "grant": grant.id, "serial": grant.serial, "reason": reason }),
        )?;
    }
    Ok(grant)
}

/// A grant an admin may change: it exists and is not over or revoked.
fn live_grant_for_admin(app: &App, caller: &Caller, id: &str) -> Result<Grant, AccessError> {
    if !caller.is_admin() {
        return Err(AccessError::AdminOnly);
    }
    let grant = find_grant(app, id)?;
    let now = now_secs();
    if grant.revoked.is_some() || now >= grant.end {
        return Err(AccessError::GrantNotLive(
            grant.id.clone(),
            grant.state(now).into(),
        ));
    }
    Ok(grant)
}

/// `extend GRANT --by D`: a longer window, within the role's `max_ttl`
/// from the grant's start unless an admin forces it with a reason. The
/// certificate is re-issued on the next `cert` for the new window.
pub fn extend(
    app: &App,
    caller: &Caller,
    id: &str,
    by: &str,
    force_reason: Option<&str>,
) -> Result<Grant, AccessError> {
    let _guard = app.access_lock.lock().unwrap_or_else(|p| p.into_inner());
    let by = parse_duration(by)?;
    let mut grant = live_grant_for_admin(app, caller, id)?;
    let policy = app.policy();
    let role = role(&policy, &grant.role)?;
    let new_end = grant.end.saturating_add(by.as_secs());
    let force = force_reason.map(str::trim).filter(|r| !r.is_empty());
    if new_end - grant.start > role.max_ttl.as_secs() && force.is_none() {
        return Err(AccessError::TooLong {
            role: role.name.clone(),
            asked: humantime::format_duration(Duration::from_secs(new_end - grant.start))
                .to_string(),
            max: format!(
                "{}; an admin may pass --force --reason TEXT",
                humantime::format_duration(role.max_ttl)
            ),
        });
    }
    let old_end = grant.end;
    grant.end = new_end;
    grant.cert = None;
    app.store.put(GRANTS, &grant.id, &grant)?;
    app.audit.record(
        "grant.extended",
        &caller.name,
        json!({ "grant": grant.id, "old_end": old_end, "new_end": new_end, "forced": force }),
    )?;
    Ok(grant)
}

/// `shorten GRANT --to D`: the window ends `D` from now (live sessions are
/// cut when it does).
pub fn shorten(app: &App, caller: &Caller, id: &str, to: &str) -> Result<Grant, AccessError> {
    let _guard = app.access_lock.lock().unwrap_or_else(|p| p.into_inner());
    let to = parse_duration(to)?;
    let mut grant = live_grant_for_admin(app, caller, id)?;
    let now = now_secs();
    let new_end = now.max(grant.start).saturating_add(to.as_secs());
    if new_end >= grant.end {
        return Err(AccessError::Internal(format!(
            "grant {} already ends sooner; use extend to lengthen it",
            grant.id
        )));
    }
    let old_end = grant.end;
    grant.end = new_end;
    grant.cert = None;
    app.store.put(GRANTS, &grant.id, &grant)?;
    app.audit.record(
        "grant.shortened",
        &caller.name,
        json!({ "grant": grant.id, "old_end": old_end, "new_end": new_end }),
    )?;
    Ok(grant)
}

/// Serials of revoked grants, for the KRL.
pub fn revoked_serials(app: &App) -> Result<Vec<u64>, AccessError> {
    let all: Vec<Grant> = app.store.all(GRANTS)?;
    let mut s: Vec<u64> = all
        .iter()
        .filter(|g| g.revoked.is_some())
        .map(|g| g.serial)
        .collect();
    s.sort_unstable();
    Ok(s)
}
