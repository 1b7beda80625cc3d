//! Pre-authentication limits, like OpenSSH's `MaxStartups`,
//! `LoginGraceTime` and `PerSourcePenalties`: a cap on unauthenticated
//! connections overall and per source address, and a per-source budget of
//! failed logins. A flood from one address costs that address, not the
//! honest users elsewhere.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The limits, from configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_startups: usize,
    pub max_startups_per_source: usize,
    pub max_auth_failures_per_source: usize,
    pub failure_window: Duration,
    pub login_grace_time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_startups: 256,
            max_startups_per_source: 16,
            max_auth_failures_per_source: 60,
            failure_window: Duration::from_secs(60),
            login_grace_time: Duration::from_secs(30),
        }
    }
}

/// Sources tracked before idle ones are swept.
const MAX_TRACKED_SOURCES: usize = 4096;

/// The unit a source limit applies to: an IPv4 address, or an IPv6 /64
/// (one host usually holds a whole /64, so single addresses are free).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

#[derive(Default)]
struct Source {
    unauthenticated: usize,
    failures: usize,
    window_start: Option<Instant>,
}

#[derive(Default)]
struct State {
    unauthenticated: usize,
    sources: HashMap<IpAddr, Source>,
}

/// Admission control; one per server.
pub struct Gatekeeper {
    pub limits: Limits,
    state: Mutex<State>,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    TooManyUnauthenticated,
    TooManyFromSource,
    TooManyFailures,
}

impl Gatekeeper {
    pub fn new(limits: Limits) -> Arc<Gatekeeper> {
        Arc::new(Gatekeeper {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Admit a new connection from `ip` as unauthenticated, or refuse it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<PreAuth, Refused> {
        let ip = source_of(ip);
        let mut st = self.lock();
        let now = Instant::now();
        let window = self.limits.failure_window;
        if st.sources.len() > MAX_TRACKED_SOURCES {
            // Forget sources with nothing open and no failures in the window.
            st.sources.retain(|_, s| {
                s.unauthenticated > 0
                    || s.window_start
                        .is_some_and(|t| now.duration_since(t) <= window)
            });
        }
        let src = st.sources.entry(ip).or_default();
        if src
            .window_start
            .is_some_and(|t| now.duration_since(t) > window)
        {
            src.failures = 0;
            src.window_start = None;
        }
        if src.failures >= self.limits.max_auth_failures_per_source {
            return Err(Refused::TooManyFailures);
        }
        if src.unauthenticated >= self.limits.max_startups_per_source {
            return Err(Refused::TooManyFromSource);
        }
        src.unauthenticated += 1;
        if st.unauthenticated >= self.limits.max_startups {
            if let Some(s) = st.sources.get_mut(&ip) {
                s.unauthenticated -= 1;
            }
            return Err(Refused::TooManyUnauthenticated);
        }
        st.unauthenticated += 1;
        Ok(PreAuth {
            gk: self.clone(),
            ip,
            released: false,
        })
    }

    /// Count a failed login from `ip`; returns true when this failure
    /// used up the source's budget.
    pub fn failed(&self, ip: IpAddr) -> bool {
        let ip = source_of(ip);
        let mut st = self.lock();
        let src = st.sources.entry(ip).or_default();
        let now = Instant::now();
        if src
            .window_start
            .is_none_or(|t| now.duration_since(t) > self.limits.failure_window)
        {
            src.window_start = Some(now);
            src.failures = 0;
        }
        src.failures += 1;
        src.failures == self.limits.max_auth_failures_per_source
    }

    fn release(&self, ip: IpAddr) {
        let ip = source_of(ip);
        let mut st = self.lock();
        st.unauthenticated = st.unauthenticated.saturating_sub(1);
        let forget = match st.sources.get_mut(&ip) {
            Some(s) => {
                s.unauthenticated = s.unauthenticated.saturating_sub(1);
                s.unauthenticated == 0 && s.failures == 0
            }
            None => false,
        };
        if forget {
            st.sources.remove(&ip);
        }
    }

    /// Unauthenticated connections now (for tests and metrics).
    pub fn unauthenticated(&self) -> usize {
        self.lock().unauthenticated
    }
}

/// Held by a connection until it authenticates or ends.
pub struct PreAuth {
    gk: Arc<Gatekeeper>,
    ip: IpAddr,
    released: bool,
}

impl PreAuth {
    /// The connection authenticated: it no longer counts.
    pub fn authenticated(mut self) {
        self.released = true;
        self.gk.release(self.ip);
    }
}

impl Drop for PreAuth {
    fn drop(&mut self) {
        if !self.released {
            self.gk.release(self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn caps_per_source_and_overall() {
        let gk = Gatekeeper::new(Limits {
            max_startups: 3,
            max_startups_per_source: 2,
            ..Limits::default()
        });
        let a1 = gk.admit(ip("127.0.0.2")).expect("first");
        let _a2 = gk.admit(ip("127.0.0.2")).expect("second");
        assert_eq!(
            gk.admit(ip("127.0.0.2")).err(),
            Some(Refused::TooManyFromSource)
        );
        let _b1 = gk.admit(ip("127.0.0.1")).expect("other source");
        assert_eq!(
            gk.admit(ip("127.0.0.3")).err(),
            Some(Refused::TooManyUnauthenticated)
        );
        a1.authenticated();
        assert_eq!(gk.unauthenticated(), 2);
        assert!(gk.admit(ip("127.0.0.3")).is_ok());
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let gk = Gatekeeper::new(Limits {
            max_startups_per_source: 2,
            ..Limits::default()
        });
        let _a = gk.admit(ip("2001:db8::1")).expect("first");
        let _b = gk.admit(ip("2001:db8::2")).expect("second");
        assert_eq!(
            gk.admit(ip("2001:db8::3")).err(),
            Some(Refused::TooManyFromSource)
        );
        assert!(gk.admit(ip("2001:db8:0:1::1")).is_ok(), "another /64");
    }

    #[test]
    fn failures_close_a_source() {
        let gk = Gatekeeper::new(Limits {
            max_auth_failures_per_source: 3,
            ..Limits::default()
        });
        assert!(!gk.failed(ip("10.0.0.1")));
        assert!(!gk.failed(ip("10.0.0.1")));
        assert!(gk.failed(ip("10.0.0.1")));
        assert_eq!(
            gk.admit(ip("10.0.0.1")).err(),
            Some(Refused::TooManyFailures)
        );
        assert!(gk.admit(ip("10.0.0.2")).is_ok());
    }
}
